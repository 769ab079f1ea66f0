import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelError } from './errors.ts';
import { loadTokenizer } from './tokenizer.ts';

const dirs: string[] = [];
async function modelDir(files: Record<string, unknown>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tok-'));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) {
    await writeFile(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

const demoConfig = {
  byte_level: true,
  added_tokens_decoder: {
    '256': { content: '<|system|>', special: true, lstrip: false, rstrip: false, normalized: false, single_word: false },
    '257': { content: '<|user|>', special: true },
    '258': { content: '<|assistant|>', special: true },
    '259': { content: '<|end|>', special: true },
  },
  bos_token: null,
  eos_token: '<|end|>',
  pad_token: '<|end|>',
};

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ModelError);
    return `${(e as ModelError).code}: ${(e as Error).message}`;
  }
  throw new Error('expected a ModelError');
}

describe('loadTokenizer', () => {
  it('loads the demo model byte-level tokenizer from tokenizer_config.json', async () => {
    const t = await loadTokenizer(await modelDir({ 'tokenizer_config.json': demoConfig }), 264);
    expect(t.vocabSize).toBe(260);
    expect(t.stopTokenIds).toEqual([259]);
    expect(t.encode('<|user|>', { allowSpecial: true })).toEqual([257]);
  });

  it('uses bytes for a small model with no tokenizer files at all', async () => {
    const t = await loadTokenizer(await modelDir({}), 256);
    expect(t.vocabSize).toBe(256);
    expect(t.stopTokenIds).toEqual([]);
    expect(t.decode(t.encode('ok ✓'))).toBe('ok ✓');
  });

  it('loads tokenizer.json when present', async () => {
    const dir = await modelDir({});
    await cp(join(import.meta.dirname, 'testing/fixtures/neox-tiny'), dir, { recursive: true });
    const t = await loadTokenizer(dir, 536);
    expect(t.vocabSize).toBe(531);
    expect(t.stopTokenIds).toEqual([0]);
  });

  it('refuses a big model whose tokenizer.json is missing instead of feeding it bytes', async () => {
    expect(await codeOf(loadTokenizer(await modelDir({}), 50280))).toMatch(/^tokenizer_invalid: .*no tokenizer\.json.*50280/);
  });

  it('refuses a tokenizer that can produce ids past the embedding rows', async () => {
    expect(await codeOf(loadTokenizer(await modelDir({ 'tokenizer_config.json': demoConfig }), 258))).toMatch(
      /^tokenizer_invalid: .*ids up to 259 .*only 258 embedding rows/,
    );
  });

  it('names the file of a broken tokenizer_config.json or tokenizer.json', async () => {
    const broken = await modelDir({ 'tokenizer_config.json': '{nope' });
    expect(await codeOf(loadTokenizer(broken, 264))).toContain(join(broken, 'tokenizer_config.json'));
    const badIds = await modelDir({ 'tokenizer_config.json': { added_tokens_decoder: { x: { content: 'a' } } } });
    expect(await codeOf(loadTokenizer(badIds, 264))).toMatch(/^tokenizer_invalid: .*tokenizer_config\.json: added_tokens_decoder/);
    const badJson = await modelDir({ 'tokenizer.json': '[' });
    expect(await codeOf(loadTokenizer(badJson, 264))).toContain(join(badJson, 'tokenizer.json'));
  });
});

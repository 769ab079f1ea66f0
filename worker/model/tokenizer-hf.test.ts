import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ModelError } from './errors.ts';
import { HfTokenizer } from './tokenizer-hf.ts';

// A GPT-NeoX-style byte-level BPE and the Rust `tokenizers` library's encodings of tricky
// strings (testing/fixtures/make_tokenizer_fixture.py): an independent implementation.
const FIXTURE = join(import.meta.dirname, 'testing/fixtures/neox-tiny');
const tokenizerJson = JSON.parse(readFileSync(join(FIXTURE, 'tokenizer.json'), 'utf8'));
const tokenizerConfig = JSON.parse(readFileSync(join(FIXTURE, 'tokenizer_config.json'), 'utf8'));
const golden = JSON.parse(readFileSync(join(FIXTURE, 'golden.json'), 'utf8')) as {
  vocab_size: number;
  samples: { text: string; allow_special: number[]; plain: number[]; decoded: string; decoded_skip_special: string }[];
};

const load = () => HfTokenizer.fromJson(tokenizerJson, tokenizerConfig, 'tokenizer.json');

describe('HfTokenizer (GPT-NeoX-style byte-level BPE)', () => {
  it('has the vocabulary size and special ids of the Rust tokenizer', () => {
    const t = load();
    expect(t.vocabSize).toBe(golden.vocab_size);
    expect(t.tokenId('<|endoftext|>')).toBe(0);
    expect(t.tokenId('<|padding|>')).toBe(1);
    expect(t.stopTokenIds).toEqual([0]); // eos_token of tokenizer_config.json
  });

  it.each(golden.samples.map((s) => [JSON.stringify(s.text).slice(0, 40), s] as const))('encodes %s exactly as the Rust tokenizer', (_, s) => {
    const t = load();
    expect(t.encode(s.text, { allowSpecial: true })).toEqual(s.allow_special);
    expect(t.encode(s.text)).toEqual(s.plain);
  });

  it.each(golden.samples.map((s) => [JSON.stringify(s.text).slice(0, 40), s] as const))('decodes %s exactly as the Rust tokenizer', (_, s) => {
    const t = load();
    expect(t.decode(s.allow_special)).toBe(s.decoded);
    expect(t.decode(s.allow_special, { skipSpecial: true })).toBe(s.decoded_skip_special);
  });

  it('keeps special tokens out of user text', () => {
    const t = load();
    const ids = t.encode('ignore that<|endoftext|><|padding|>');
    expect(ids).not.toContain(0);
    expect(ids).not.toContain(1);
    expect(t.decode(ids)).toBe('ignore that<|endoftext|><|padding|>');
  });

  it('adds no BOS/EOS of its own', () => {
    const t = load();
    expect(t.encode('Hello world')[0]).not.toBe(0);
    expect(t.encode('')).toEqual([]);
    expect(t.decode([])).toBe('');
  });

  it('does not clean up tokenization spaces (lossy, and it breaks streaming)', () => {
    const t = load();
    const text = 'a . b , c ! d ? e';
    expect(t.decode(t.encode(text))).toBe(text);
  });

  it('decodes a character split across tokens to U+FFFD until it is complete', () => {
    const t = load();
    const ids = t.encode('👋'); // 4 bytes; this small vocabulary has no merge for it
    expect(ids.length).toBeGreaterThan(1);
    expect(t.decode(ids.slice(0, -1)).endsWith('\uFFFD')).toBe(true);
    expect(t.decode(ids)).toBe('👋');
  });

  it('refuses out-of-range ids with token_out_of_range', () => {
    const t = load();
    expect(() => t.decode([5, golden.vocab_size])).toThrow(ModelError);
    expect(() => t.decode([-1])).toThrow(/outside the tokenizer's vocabulary/);
  });

  it('rejects a malformed tokenizer.json with tokenizer_invalid naming the file', () => {
    for (const bad of [null, [], {}, { model: {}, added_tokens: 'x' }, { ...tokenizerJson, added_tokens: [{ id: -1, content: 'x' }] }]) {
      try {
        HfTokenizer.fromJson(bad, {}, '/models/m/tokenizer.json');
        expect.unreachable();
      } catch (e) {
        expect((e as ModelError).code).toBe('tokenizer_invalid');
        expect((e as Error).message).toContain('/models/m/tokenizer.json');
      }
    }
  });

  it('never lets a BPE piece that spells a special token through from user text', () => {
    // A vocabulary whose merges build "<|x|>" from plain characters and which also lists it
    // as a special token: user text must still not produce the special id.
    const vocab: Record<string, number> = { '<|x|>': 0, '<': 1, '|': 2, x: 3, '>': 4, '<|': 5, '<|x': 6, '<|x|': 7 };
    const json = {
      version: '1.0',
      added_tokens: [{ id: 0, content: '<|x|>', special: true, single_word: false, lstrip: false, rstrip: false, normalized: false }],
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      model: { type: 'BPE', vocab, merges: ['< |', '<| x', '<|x |', '<|x| >'], unk_token: null, dropout: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, continuing_subword_prefix: null, end_of_word_suffix: null },
    };
    const t = HfTokenizer.fromJson(json, {}, 'tokenizer.json');
    expect(t.encode('<|x|>', { allowSpecial: true })).toEqual([0]);
    const ids = t.encode('<|x|>');
    expect(ids).not.toContain(0);
    expect(ids).toEqual([1, 2, 3, 2, 4]);
  });
});

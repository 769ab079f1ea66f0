// The real bin, spawned as a user runs it: arguments, exit codes, stdout JSON.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from './cli.ts';
import { ReferenceEngine } from './engine/reference/reference-engine.ts';
import { openCheckpoint } from './model/checkpoint.ts';
import { writeRandomCheckpoint } from './model/testing/random-checkpoint.ts';

const BIN = resolve(import.meta.dirname, '../bin/mamba-serve.mjs');
let root: string;
let model: string; // HF layout, byte-level vocabulary (264 rows), no tokenizer files
let demo: string; // demo-model layout: tokenizer_config.json with specials and a Jinja template

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], cwd = root): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { cwd, maxBuffer: 64 << 20, env: { ...process.env, MODEL_CACHE_DIR: join(root, 'cache') } }, (error, stdout, stderr) => {
      done({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function inProcess(args: string[]): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const sink = (append: (s: string) => void) => new Writable({ write: (chunk, _enc, cb) => (append(String(chunk)), cb()) });
  const code = await main(args, { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)), env: {} });
  return { code, stdout, stderr };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cli-'));
  model = join(root, 'model');
  demo = join(root, 'demo');
  await writeRandomCheckpoint(model, { hiddenSize: 16, numLayers: 2, vocabSize: 264, seed: 7 });
  await writeRandomCheckpoint(demo, { hiddenSize: 16, numLayers: 1, vocabSize: 264, seed: 8 });
  await writeFile(
    join(demo, 'tokenizer_config.json'),
    JSON.stringify({
      byte_level: true,
      added_tokens_decoder: Object.fromEntries(['<|system|>', '<|user|>', '<|assistant|>', '<|end|>'].map((c, i) => [String(256 + i), { content: c, special: true }])),
      eos_token: '<|end|>',
      chat_template:
        "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}",
    }),
  );
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const logitsOf = (r: Run): number[][] => {
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const parsed = JSON.parse(r.stdout) as { logits: number[][] };
  expect(Object.keys(parsed)).toEqual(['logits']);
  return parsed.logits;
};

function maxDiff(a: number[][], b: number[][]): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  a.forEach((row, i) => {
    expect(row.length).toBe(b[i]!.length);
    row.forEach((v, j) => (m = Math.max(m, Math.abs(v - b[i]![j]!))));
  });
  return m;
}

describe('mamba-serve CLI', () => {
  it('logits: full == step == resumed, and equal the reference engine computed in-process', async () => {
    const tokens = [3, 1, 4, 1, 5, 9, 2, 6];
    const args = ['logits', '--model', model, '--tokens', tokens.join(','), '--engine', 'reference'];
    const [full, step, resumed, resumedStep, resumedZero] = await Promise.all([
      cli(args),
      cli([...args, '--mode', 'step']),
      cli([...args, '--resume-at', '3']),
      cli([...args, '--mode', 'step', '--resume-at', '5']),
      cli([...args, '--resume-at', '0']),
    ]);
    const rows = logitsOf(full);
    expect(rows.length).toBe(tokens.length);
    expect(rows[0]!.length).toBe(264);
    for (const other of [step, resumed, resumedStep, resumedZero]) expect(maxDiff(rows, logitsOf(other))).toBeLessThan(1e-4);

    const engine = await ReferenceEngine.load(await openCheckpoint(model));
    const direct = await engine.prefill(await engine.newState(), Int32Array.from(tokens), { allLogits: true });
    const directRows = Array.from({ length: tokens.length }, (_, r) => Array.from(direct.data.subarray(r * 264, (r + 1) * 264)));
    expect(maxDiff(rows, directRows)).toBe(0); // float32 values survive JSON exactly
  });

  it('logits: the default engine (auto) agrees with the reference within 1e-4', async () => {
    const tokens = '5,6,7,8';
    const [auto, ref] = await Promise.all([cli(['logits', '--model', model, '--tokens', tokens]), cli(['logits', '--model', model, '--tokens', tokens, '--engine', 'reference'])]);
    expect(maxDiff(logitsOf(auto), logitsOf(ref))).toBeLessThan(1e-4);
  });

  it('logits: a token id out of range is a coded error, exit 1', async () => {
    const r = await cli(['logits', '--model', model, '--tokens', '1,264', '--engine', 'reference']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error \[token_out_of_range\]: token id 264 at position 1/);
  });

  it('info prints config, parameter count, dtype and state bytes as JSON', async () => {
    const r = await cli(['info', '--model', model]);
    expect(r.code).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.config).toMatchObject({ hiddenSize: 16, numLayers: 2, intermediateSize: 32, stateSize: 8, convKernel: 4 });
    expect(info.dtype).toBe('F32');
    expect(info.parameter_count).toBe((await openCheckpoint(model)).parameterCount);
    expect(info.state_bytes).toBe(4 * 2 * 32 * (4 + 8));
    expect(info.fingerprint).toMatch(/^[0-9a-f]{64}$/);
  });

  it('generate streams text; a seed makes it reproducible; --temperature 0 is greedy', async () => {
    const args = ['generate', '--model', model, '--prompt', 'hello', '--max-tokens', '12', '--engine', 'reference'];
    const [a, b, g1, g2] = await Promise.all([
      cli([...args, '--seed', '5', '--temperature', '1.2', '--top-k', '50', '--top-p', '0.9']),
      cli([...args, '--seed', '5', '--temperature', '1.2', '--top-k', '50', '--top-p', '0.9']),
      cli([...args, '--temperature', '0']),
      cli([...args, '--temperature', '0', '--seed', '99']),
    ]);
    for (const r of [a, g1]) {
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/^\[length: 5 prompt \+ 12 generated tokens in [\d.]+ s, engine reference\]\n$/);
    }
    expect(a.stdout).toBe(b.stdout);
    expect(g1.stdout).toBe(g2.stdout);
  });

  it('generate --chat uses the model’s template and stops at <|end|>', async () => {
    const r = await cli(['generate', '--model', demo, '--prompt', 'hi', '--chat', '--max-tokens', '8', '--temperature', '0', '--engine', 'reference']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^\[(stop|length): 6 prompt \+ \d+ generated tokens/); // <|user|> h i <|end|> \n <|assistant|>
    expect(r.stdout).not.toContain('<|end|>');
  });

  it('bad arguments print the usage and exit 2', async () => {
    const cases = [
      [],
      ['frobnicate'],
      ['logits', '--model', model],
      ['logits', '--model', model, '--tokens', '1,x'],
      ['logits', '--model', model, '--tokens', '1,2', '--mode', 'fast'],
      ['logits', '--model', model, '--tokens', '1,2', '--resume-at', '3'],
      ['generate', '--prompt', 'x'],
      ['generate', '--model', model, '--prompt', 'x', '--temperature', '-1'],
      ['generate', '--model', model, '--prompt', 'x', '--top-p', '0'],
      ['generate', '--model', model, '--prompt', 'x', '--max-tokens', '1.5'],
      ['generate', '--model', model, '--prompt', 'x', '--engine', 'gpu'],
      ['generate', '--model', model, '--prompt', ''],
      ['info', '--model', model, '--unknown-flag'],
    ];
    // In-process (main() is what the bin runs) to spare a Node start per case; two spawned.
    const runs = await Promise.all(cases.map((c, i) => (i < 2 ? cli(c) : inProcess(c))));
    runs.forEach((r, i) => {
      expect(r.code, JSON.stringify(cases[i])).toBe(2);
      expect(r.stderr).toContain('usage:');
      expect(r.stdout).toBe('');
    });
  });

  it('--help prints the usage and exits 0', async () => {
    const r = await cli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('mamba-serve logits');
  });

  it('model errors are coded, exit 1, and the bin works from any directory', async () => {
    const r = await cli(['info', '--model', join(root, 'missing')], tmpdir());
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error \[model_not_found\]: .*missing: model directory does not exist/);
  });
});

// The ORT engine held to the plain reference: full prompt == step by step == resumed from
// exported bytes == reference, on random checkpoints in every layout the loader accepts, both
// as it runs by default (f32 on the native kernels where they are built and apply: pure Mamba,
// d_inner a multiple of 16) and on ONNX Runtime's graph (ORT_NATIVE_KERNELS=off).
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StateFormatError } from '../../../shared/mstate.ts';
import { openCheckpoint, type Checkpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../../model/testing/random-checkpoint.ts';
import { EngineError, type Engine, type StateHandle } from '../engine.ts';
import { ReferenceEngine } from '../reference/reference-engine.ts';
import { maxAbsDiff, prefilledStates, stepLogits, tokensFor } from '../testing/compare.ts';
import { ensureGraphBuild } from './graph-cache.ts';
import { OrtEngine, type OrtEngineOptions } from './ort-engine.ts';

const FP32_TOLERANCE = 1e-4;

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-ort-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});




const layouts: [string, RandomCheckpointOptions][] = [
  ['HF naming, fp32, tied, conv bias', { seed: 1 }],
  ['HF naming, biases everywhere, untied head', { seed: 2, bias: true, tied: false }],
  ['state-spaces naming, no conv bias', { seed: 3, naming: 'state-spaces', convBias: false, vocabSize: 251 }],
  ['bf16 weights, sharded', { seed: 4, dtype: 'BF16', shards: 3 }],
  // dt pre-activations from -90 to 150: softplus' underflow, its v > 20 and v > 80 branches.
  ['extreme dt (softplus far from 0)', { seed: 6, dtBias: [-90, -30, -3, 0.5, 25, 85, 150], weightScale: 0.3 }],
  ['fp16 weights, odd sizes (d_conv 3, d_state 5, expand 1.5)', { seed: 5, dtype: 'F16', convKernel: 3, stateSize: 5, expand: 1.5, hiddenSize: 24, numLayers: 3 }],
];

const paths: [string, Partial<OrtEngineOptions>][] = [
  ['by default', {}],
  ['ONNX Runtime graph', { nativeKernels: 'off' }],
];

describe.each(paths.flatMap(([path, pathOptions]) => layouts.map(([name, options]) => [path, name, options, pathOptions] as const)))('ORT engine (%s) vs reference: %s', (path, name, options, pathOptions) => {
  let ckpt: Checkpoint;
  let ref: ReferenceEngine;
  let ort: Engine;
  const L = 23;

  beforeAll(async () => {
    const dir = join(root, `${path}-${name}`.replace(/[^a-z0-9]+/gi, '-'));
    await writeRandomCheckpoint(dir, options);
    ckpt = await openCheckpoint(dir);
    ref = await ReferenceEngine.load(ckpt);
    ort = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 1, ...pathOptions });
  });
  afterAll(async () => {
    await ort?.close();
    await ref?.close();
  });

  it('full-prompt logits of every position match the reference within 1e-4', async () => {
    const tokens = tokensFor(L, ckpt.config.vocabSize, 1);
    const expected = await ref.prefill(await ref.newState(), tokens, { allLogits: true });
    const got = await ort.prefill(await ort.newState(), tokens, { allLogits: true });
    expect(got.rows).toBe(L);
    expect(maxAbsDiff(got.data, expected.data)).toBeLessThan(FP32_TOLERANCE);
  });

  it('step-by-step logits equal full-prompt logits', async () => {
    const tokens = tokensFor(L, ckpt.config.vocabSize, 2);
    const full = await ort.prefill(await ort.newState(), tokens, { allLogits: true });
    const step = await stepLogits(ort, tokens);
    expect(maxAbsDiff(step, full.data)).toBeLessThan(FP32_TOLERANCE);
  });

  it('a state exported after K tokens and imported into a fresh engine continues exactly', async () => {
    const tokens = tokensFor(L, ckpt.config.vocabSize, 3);
    const K = 9;
    const first = await ort.newState();
    await ort.prefill(first, tokens.subarray(0, K));
    const bytes = await ort.exportState(first, { parentVersion: 4, transcriptHash: 'abc' });
    const fresh = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 1, ...pathOptions });
    try {
      const imported = await fresh.importState(bytes);
      expect(imported.parentVersion).toBe(4);
      expect(imported.transcriptHash).toBe('abc');
      expect(imported.state.tokensAbsorbed).toBe(K);
      const rest = await fresh.prefill(imported.state, tokens.subarray(K), { allLogits: true });
      const whole = await ref.prefill(await ref.newState(), tokens, { allLogits: true });
      const V = ckpt.vocabRows;
      expect(maxAbsDiff(rest.data, whole.data.subarray(K * V))).toBeLessThan(FP32_TOLERANCE);
    } finally {
      await fresh.close();
    }
  });

  it('a batched decode step equals each sequence decoded alone', async () => {
    const histories = [3, 11, 1, 6].map((n, i) => tokensFor(n, ckpt.config.vocabSize, 10 + i));
    const batchStates = await prefilledStates(ort, histories);
    const soloStates = [];
    for (const s of batchStates) soloStates.push(await ort.cloneState(s));
    const V = ckpt.vocabRows;
    // Three steps with the same batch (the engine reuses its batch buffers), then a changed batch.
    for (let step = 0; step < 3; step++) {
      const next = histories.map((_, i) => (step * 31 + i * 17) % ckpt.config.vocabSize);
      const batched = await ort.decode(batchStates.map((state, i) => ({ state, token: next[i]! })));
      for (let i = 0; i < histories.length; i++) {
        const solo = await ort.decode([{ state: soloStates[i]!, token: next[i]! }]);
        expect(maxAbsDiff(batched.data.subarray(i * V, (i + 1) * V), solo.data)).toBeLessThan(1e-5);
      }
    }
    const sub = await ort.decode([{ state: batchStates[2]!, token: 5 }, { state: batchStates[0]!, token: 6 }]);
    const solo2 = await ort.decode([{ state: soloStates[2]!, token: 5 }]);
    const solo0 = await ort.decode([{ state: soloStates[0]!, token: 6 }]);
    expect(maxAbsDiff(sub.data.subarray(0, V), solo2.data)).toBeLessThan(1e-5);
    expect(maxAbsDiff(sub.data.subarray(V), solo0.data)).toBeLessThan(1e-5);
  });

  // reuseOutput: the rows come in the engine's shared buffer (two slots taken in turn, a larger
  // buffer when a batch outgrows them), equal to a plain decode's, and a result stays intact
  // through the next such decode.
  it('decode with reuseOutput returns the rows a plain decode does, in its own buffer, intact until the decode after the next', async () => {
    const histories = [2, 9, 4, 1, 7].map((n, i) => tokensFor(n, ckpt.config.vocabSize, 50 + i));
    const reused = await prefilledStates(ort, histories);
    const plain: StateHandle[] = [];
    for (const s of reused) plain.push(await ort.cloneState(s));
    const V = ckpt.vocabRows;
    const step = async (rows: number[], token: number) => {
      const got = await ort.decode(rows.map((i) => ({ state: reused[i]!, token: token + i })), { reuseOutput: true });
      const want = await ort.decode(rows.map((i) => ({ state: plain[i]!, token: token + i })));
      expect(got.rows).toBe(rows.length);
      expect(got.data.length).toBe(rows.length * V);
      expect(maxAbsDiff(got.data, want.data)).toBe(0);
      return { got, copy: got.data.slice() };
    };
    const first = await step([0, 1, 2], 3);
    const second = await step([1], 4);
    expect(second.got.data.buffer).toBe(first.got.data.buffer);
    expect(maxAbsDiff(first.got.data, first.copy)).toBe(0);
    // Five rows outgrow the slots (of four rows): a larger buffer, the earlier results untouched.
    const third = await step([4, 3, 2, 1, 0], 5);
    expect(third.got.data.buffer).not.toBe(first.got.data.buffer);
    expect(maxAbsDiff(second.got.data, second.copy)).toBe(0);
    const fourth = await step([2, 0], 6);
    expect(fourth.got.data.buffer).toBe(third.got.data.buffer);
    expect(maxAbsDiff(third.got.data, third.copy)).toBe(0);
  });
});

// ORT_PREPACK_WEIGHTS=false: the MatMuls read the mapped weights as they are (other MLAS
// kernels: the one-row kernel for a decode step, panels packed per call for batches and
// prompts). Held to the reference the same way, in prefill, single and batched decode.
describe.each(layouts.slice(0, 2))('ORT engine with weights not pre-packed vs reference: %s', (name, options) => {
  let ckpt: Checkpoint;
  let ref: ReferenceEngine;
  let ort: Engine;

  beforeAll(async () => {
    const dir = join(root, `unpacked-${name.replace(/[^a-z0-9]+/gi, '-')}`);
    await writeRandomCheckpoint(dir, options);
    ckpt = await openCheckpoint(dir);
    ref = await ReferenceEngine.load(ckpt);
    ort = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 2, prepackWeights: false, nativeKernels: 'off' });
  });
  afterAll(async () => {
    await ort?.close();
    await ref?.close();
  });

  it('prefill, step-by-step and batched decode match the reference within 1e-4', async () => {
    const V = ckpt.vocabRows;
    const tokens = tokensFor(19, ckpt.config.vocabSize, 4);
    const expected = await ref.prefill(await ref.newState(), tokens, { allLogits: true });
    expect(maxAbsDiff((await ort.prefill(await ort.newState(), tokens, { allLogits: true })).data, expected.data)).toBeLessThan(FP32_TOLERANCE);
    expect(maxAbsDiff(await stepLogits(ort, tokens), expected.data)).toBeLessThan(FP32_TOLERANCE);

    const histories = [5, 2, 9].map((n, i) => tokensFor(n, ckpt.config.vocabSize, 20 + i));
    const ours = await prefilledStates(ort, histories);
    const theirs = await prefilledStates(ref, histories);
    for (let step = 0; step < 2; step++) {
      const next = histories.map((_, i) => (step * 13 + i * 7 + 1) % ckpt.config.vocabSize);
      const batched = await ort.decode(ours.map((state, i) => ({ state, token: next[i]! })));
      for (let i = 0; i < histories.length; i++) {
        const solo = await ref.decode([{ state: theirs[i]!, token: next[i]! }]);
        expect(maxAbsDiff(batched.data.subarray(i * V, (i + 1) * V), solo.data)).toBeLessThan(FP32_TOLERANCE);
      }
    }
  });
});

// On ONNX Runtime's graph: its spin settings and prompt chunks are its own.
describe('ORT engine behaviour', () => {
  let ckpt: Checkpoint;
  let ort: Engine;
  const cacheDir = () => join(root, 'cache-behaviour');
  const load = (c: Checkpoint, options: Partial<OrtEngineOptions>) => OrtEngine.load(c, { cacheDir: cacheDir(), intraOpThreads: 1, nativeKernels: 'off', ...options });

  beforeAll(async () => {
    const dir = join(root, 'behaviour');
    await writeRandomCheckpoint(dir, { seed: 7, hiddenSize: 64, numLayers: 2 });
    ckpt = await openCheckpoint(dir);
    ort = await load(ckpt, { maxPrefillChunk: 16 });
  });
  afterAll(async () => {
    await ort?.close();
  });

  it('reuses its graph build on restart and reports the checkpoint fingerprint', async () => {
    const again = await ensureGraphBuild(ckpt, cacheDir());
    expect(again.built).toBe(false);
    expect(again.fingerprint).toBe(await ckpt.fingerprint());
    expect(ort.model.fingerprint).toBe(await ckpt.fingerprint());
  });

  it('runs with each intra-op spin setting (none, bounded, ORT\'s own) and computes the same', async () => {
    const tokens = tokensFor(20, ckpt.config.vocabSize, 12);
    const expected = await ort.prefill(await ort.newState(), tokens, { allLogits: true });
    for (const spin of [{ intraOpSpinMicros: 50 }, { intraOpSpinning: true }]) {
      const other = await load(ckpt, { intraOpThreads: 2, maxPrefillChunk: 16, ...spin });
      try {
        const got = await other.prefill(await other.newState(), tokens, { allLogits: true });
        expect(maxAbsDiff(got.data, expected.data)).toBeLessThan(1e-5);
      } finally {
        await other.close();
      }
    }
  });

  it('chunks long prompts without changing the result', async () => {
    const tokens = tokensFor(50, ckpt.config.vocabSize, 9);
    const whole = await load(ckpt, { maxPrefillChunk: 4096 });
    try {
      const a = await ort.prefill(await ort.newState(), tokens, { allLogits: true });
      const b = await whole.prefill(await whole.newState(), tokens, { allLogits: true });
      expect(a.rows).toBe(50);
      expect(maxAbsDiff(a.data, b.data)).toBeLessThan(1e-5);
      const last = await ort.prefill(await ort.newState(), tokens);
      expect(last.rows).toBe(1);
      expect(maxAbsDiff(last.data, b.data.subarray(49 * ckpt.vocabRows))).toBeLessThan(1e-5);
    } finally {
      await whole.close();
    }
  });

  it('refuses token ids outside the vocabulary without touching the state', async () => {
    const state = await ort.newState();
    await expect(ort.prefill(state, Int32Array.of(1, ckpt.vocabRows))).rejects.toMatchObject({ code: 'token_out_of_range' });
    await expect(ort.decode([{ state, token: -1 }])).rejects.toBeInstanceOf(EngineError);
    expect(state.tokensAbsorbed).toBe(0);
  });

  it('refuses a corrupt state and a state of another model', async () => {
    const state = await ort.newState();
    await ort.prefill(state, tokensFor(5, ckpt.config.vocabSize, 1));
    const bytes = await ort.exportState(state, { parentVersion: null, transcriptHash: null });
    const corrupt = bytes.slice();
    corrupt[200] = corrupt[200]! ^ 0xff;
    await expect(ort.importState(corrupt)).rejects.toMatchObject({ code: 'state_invalid' });
    await expect(ort.importState(bytes.subarray(0, bytes.length - 10))).rejects.toBeInstanceOf(StateFormatError);

    const otherDir = join(root, 'other');
    await writeRandomCheckpoint(otherDir, { seed: 8, hiddenSize: 64, numLayers: 2 });
    const other = await load(await openCheckpoint(otherDir), {});
    try {
      await expect(other.importState(bytes)).rejects.toMatchObject({ code: 'state_model_mismatch' });
    } finally {
      await other.close();
    }
  });

  it('refuses handles that were freed or belong to another engine', async () => {
    const state = await ort.newState();
    ort.freeState(state);
    await expect(ort.prefill(state, Int32Array.of(1))).rejects.toMatchObject({ code: 'state_freed' });
    const ref = await ReferenceEngine.load(ckpt);
    await expect(ort.prefill(await ref.newState(), Int32Array.of(1))).rejects.toMatchObject({ code: 'state_foreign' });
  });

  it('close() right after freeState() finishes before a script with nothing else to do exits', () => {
    const script = join(import.meta.dirname, 'testing', 'close-after-free.mts');
    const run = spawnSync(process.execPath, ['--import', 'tsx', script, ckpt.dir, cacheDir()], { encoding: 'utf8', timeout: 60_000 });
    expect(run.stderr).toBe('');
    expect(run.stdout).toContain('closed cleanly');
    expect(run.status).toBe(0);
  });

  it('starts and runs with a long command line (ONNX Runtime walks it recursively on its thread)', () => {
    // A 16 KB prompt given as `--prompt` crashed the process (SIGSEGV) on the thread's default stack.
    const script = join(import.meta.dirname, 'testing', 'close-after-free.mts');
    const padding = 'x'.repeat(120_000);
    const run = spawnSync(process.execPath, ['--import', 'tsx', script, ckpt.dir, cacheDir(), padding], { encoding: 'utf8', timeout: 120_000 });
    expect(run.signal).toBeNull();
    expect(run.stdout).toContain('closed cleanly');
  });

  it('keeps the event loop free while a prefill runs', async () => {
    const tokens = tokensFor(2000, ckpt.config.vocabSize, 4);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const started = performance.now();
    await ort.prefill(await ort.newState(), tokens);
    const elapsed = performance.now() - started;
    clearInterval(timer);
    // A blocked loop would tick about once; a free one about every 5 ms of the run.
    expect(ticks).toBeGreaterThan(Math.min(10, elapsed / 20));
  });
});

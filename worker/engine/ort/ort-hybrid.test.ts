// The ORT engine on attention hybrids, held to the plain reference: full prompt == step by
// step == resumed == reference within 1e-4 (fp32), at positions below the window, at it and
// after many wraps of the ring; prefill chunks that cut the window; batched decode of sessions
// at different positions; positions around 10,000,000; a state whose size never grows.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type Checkpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../../model/testing/random-checkpoint.ts';
import type { Engine, StateHandle } from '../engine.ts';
import { ReferenceEngine } from '../reference/reference-engine.ts';
import { maxAbsDiff, prefilledStates, stepLogits, tokensFor, zeroStateAt } from '../testing/compare.ts';
import { OrtEngine } from './ort-engine.ts';

const FP32_TOLERANCE = 1e-4;

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-ort-hybrid-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});





const base = { hiddenSize: 32, numLayers: 3, vocabSize: 64, stateSize: 8 } satisfies RandomCheckpointOptions;
const layouts: [string, RandomCheckpointOptions][] = [
  ['W 5, grouped KV heads (4 over 2), biases, RoPE', { ...base, seed: 21, hybrid: { attentionLayers: [1], window: 5, heads: 4, kvHeads: 2, headDim: 8, bias: true } }],
  ['W 4, no positional encoding, one KV head per query head', { ...base, seed: 22, hybrid: { attentionLayers: [2], window: 4, heads: 2, kvHeads: 2, headDim: 16, ropeTheta: null } }],
  ['W 64 (wider than every prompt), one KV head for all', { ...base, seed: 23, hybrid: { attentionLayers: [1], window: 64, heads: 4, kvHeads: 1, headDim: 8 } }],
  ['attention first and last, W 1 and bf16 weights', { ...base, seed: 24, numLayers: 4, dtype: 'BF16', hybrid: { attentionLayers: [0, 3], window: 1, heads: 2, kvHeads: 1, headDim: 16 } }],
  ['W 3, d_conv 3, d_state 5, rope_theta 500', { ...base, seed: 25, convKernel: 3, stateSize: 5, hybrid: { attentionLayers: [0], window: 3, heads: 4, kvHeads: 2, headDim: 8, ropeTheta: 500 } }],
];

describe.each(layouts)('ORT hybrid vs reference: %s', (name, options) => {
  let ckpt: Checkpoint;
  let ref: ReferenceEngine;
  let ort: Engine;
  const L = 23; // several times every window here but the widest: below W, at W and after wraps

  beforeAll(async () => {
    const dir = join(root, name.replace(/[^a-z0-9]+/gi, '-'));
    await writeRandomCheckpoint(dir, options);
    ckpt = await openCheckpoint(dir);
    ref = await ReferenceEngine.load(ckpt);
    ort = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 1 });
  });
  afterAll(async () => {
    await ort?.close();
    await ref?.close();
  });

  it('full-prompt logits match the reference, and the reference decode matches its prefill', async () => {
    const tokens = tokensFor(L, ckpt.config.vocabSize, 1);
    const expected = await ref.prefill(await ref.newState(), tokens, { allLogits: true });
    const refSteps = await stepLogits(ref, tokens, await ref.newState());
    expect(maxAbsDiff(refSteps, expected.data)).toBeLessThan(1e-5);
    const got = await ort.prefill(await ort.newState(), tokens, { allLogits: true });
    expect(maxAbsDiff(got.data, expected.data)).toBeLessThan(FP32_TOLERANCE);
  });

  it('step-by-step logits equal full-prompt logits', async () => {
    const tokens = tokensFor(L, ckpt.config.vocabSize, 2);
    const full = await ort.prefill(await ort.newState(), tokens, { allLogits: true });
    const step = await stepLogits(ort, tokens, await ort.newState());
    expect(maxAbsDiff(step, full.data)).toBeLessThan(FP32_TOLERANCE);
  });

  it.each([2, 5, 9, 17])('a state exported after %i tokens continues exactly in a fresh engine', async (K) => {
    const tokens = tokensFor(L, ckpt.config.vocabSize, 3);
    const first = await ort.newState();
    await ort.prefill(first, tokens.subarray(0, K));
    const bytes = await ort.exportState(first, { parentVersion: 1, transcriptHash: null });
    const fresh = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 1 });
    try {
      const { state } = await fresh.importState(bytes);
      expect(state.tokensAbsorbed).toBe(K);
      const rest = await fresh.prefill(state, tokens.subarray(K), { allLogits: true });
      const whole = await ref.prefill(await ref.newState(), tokens, { allLogits: true });
      expect(maxAbsDiff(rest.data, whole.data.subarray(K * ckpt.vocabRows))).toBeLessThan(FP32_TOLERANCE);
      // The same bytes on the reference engine, continued by decode steps.
      const onRef = (await ref.importState(bytes)).state;
      const stepped = await stepLogits(ref, tokens.subarray(K), onRef);
      expect(maxAbsDiff(stepped, rest.data)).toBeLessThan(FP32_TOLERANCE);
    } finally {
      await fresh.close();
    }
  });

  it('prefill chunks that cut the window give the same logits and state', async () => {
    const tokens = tokensFor(L, ckpt.config.vocabSize, 4);
    const chunked = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 1, maxPrefillChunk: 3 });
    try {
      const a = await chunked.newState();
      const got = await chunked.prefill(a, tokens, { allLogits: true });
      const whole = await ort.prefill(await ort.newState(), tokens, { allLogits: true });
      expect(maxAbsDiff(got.data, whole.data)).toBeLessThan(1e-5);
      const next = await chunked.decode([{ state: a, token: 7 }]);
      const b = await ref.newState();
      await ref.prefill(b, tokens);
      expect(maxAbsDiff(next.data, (await ref.decode([{ state: b, token: 7 }])).data)).toBeLessThan(FP32_TOLERANCE);
    } finally {
      await chunked.close();
    }
  });

  it('a batched decode step equals each session decoded alone, at different positions', async () => {
    const histories = [0, 2, 11, 30].map((n, i) => tokensFor(n, ckpt.config.vocabSize, 10 + i));
    const batch = await prefilledStates(ort, histories);
    const solo: StateHandle[] = [];
    for (const s of batch) solo.push(await ref.cloneState((await ref.importState(await ort.exportState(s, { parentVersion: null, transcriptHash: null }))).state));
    const V = ckpt.vocabRows;
    // Several steps with the same batch (the engine reuses its batch buffers and writes the rings in place), then a changed batch.
    for (let step = 0; step < 7; step++) {
      const next = histories.map((_, i) => (step * 31 + i * 17) % ckpt.config.vocabSize);
      const batched = await ort.decode(batch.map((state, i) => ({ state, token: next[i]! })));
      for (let i = 0; i < histories.length; i++) {
        const alone = await ref.decode([{ state: solo[i]!, token: next[i]! }]);
        expect(maxAbsDiff(batched.data.subarray(i * V, (i + 1) * V), alone.data)).toBeLessThan(FP32_TOLERANCE);
      }
    }
    const sub = await ort.decode([{ state: batch[3]!, token: 5 }, { state: batch[1]!, token: 6 }]);
    expect(maxAbsDiff(sub.data.subarray(0, V), (await ref.decode([{ state: solo[3]!, token: 5 }])).data)).toBeLessThan(FP32_TOLERANCE);
    expect(maxAbsDiff(sub.data.subarray(V), (await ref.decode([{ state: solo[1]!, token: 6 }])).data)).toBeLessThan(FP32_TOLERANCE);
  });
});

describe('ORT hybrid: positions, size and mismatches', () => {
  let ckpt: Checkpoint;
  let ref: ReferenceEngine;
  let ort: Engine;

  beforeAll(async () => {
    const dir = join(root, 'far');
    await writeRandomCheckpoint(dir, { ...base, seed: 31, hybrid: { attentionLayers: [1], window: 6, heads: 4, kvHeads: 2, headDim: 16 } });
    ckpt = await openCheckpoint(dir);
    ref = await ReferenceEngine.load(ckpt);
    ort = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 1 });
  });
  afterAll(async () => {
    await ort?.close();
    await ref?.close();
  });

  it.each([9_999_990, 10_000_000, 123_456_789_012])('prefill and decode at position %i match the reference', async (position) => {
    const bytes = zeroStateAt(ref, position);
    const tokens = tokensFor(15, ckpt.config.vocabSize, 5);
    const want = await ref.prefill((await ref.importState(bytes)).state, tokens, { allLogits: true });
    const got = await ort.prefill((await ort.importState(bytes)).state, tokens, { allLogits: true });
    expect(maxAbsDiff(got.data, want.data)).toBeLessThan(FP32_TOLERANCE);
    const stepped = await stepLogits(ort, tokens, (await ort.importState(bytes)).state);
    expect(maxAbsDiff(stepped, want.data)).toBeLessThan(FP32_TOLERANCE);
  });

  it('RoPE stays relative at 10^7: the same history shifted by ten million positions gives the same logits', async () => {
    // Scores depend only on position differences, so shifting everything (zero keys included:
    // a rotated zero is zero) changes nothing, unless the angles lose precision far out, as an
    // fp32 t * inv_freq does (tenths of a radian at 10^7).
    const tokens = tokensFor(15, ckpt.config.vocabSize, 5);
    const far = await ort.prefill((await ort.importState(zeroStateAt(ref, 10_000_009))).state, tokens, { allLogits: true });
    const near = await ort.prefill((await ort.importState(zeroStateAt(ref, 9))).state, tokens, { allLogits: true });
    expect(maxAbsDiff(far.data, near.data)).toBeLessThan(FP32_TOLERANCE);
  });

  it('exports the same number of bytes after 10 tokens and after 1,000', async () => {
    const s = await ort.newState();
    await ort.prefill(s, tokensFor(10, ckpt.config.vocabSize, 6));
    const small = await ort.exportState(s, { parentVersion: null, transcriptHash: null });
    await ort.prefill(s, tokensFor(990, ckpt.config.vocabSize, 7));
    const large = await ort.exportState(s, { parentVersion: null, transcriptHash: null });
    expect(s.tokensAbsorbed).toBe(1000);
    expect(large.length).toBe(small.length);
    // 2 Mamba layers x d_inner 64 x (d_conv 4 + d_state 8), and k + v rings of W 6 x KV 2 x hd 16, fp32.
    expect(ort.model.stateBytes).toBe(4 * (2 * 64 * (4 + 8) + 2 * 6 * 2 * 16));
  });

  it('refuses a pure model state, and a pure model refuses a hybrid state (state_model_mismatch)', async () => {
    const pureDir = join(root, 'pure');
    await writeRandomCheckpoint(pureDir, { ...base, seed: 31 });
    const pure = await OrtEngine.load(await openCheckpoint(pureDir), { cacheDir: join(root, 'cache'), intraOpThreads: 1 });
    try {
      const p = await pure.newState();
      await pure.prefill(p, tokensFor(4, 64, 1));
      await expect(ort.importState(await pure.exportState(p, { parentVersion: null, transcriptHash: null }))).rejects.toMatchObject({
        code: 'state_model_mismatch',
      });
      const h = await ort.newState();
      await ort.prefill(h, tokensFor(4, 64, 1));
      await expect(pure.importState(await ort.exportState(h, { parentVersion: null, transcriptHash: null }))).rejects.toMatchObject({
        code: 'state_model_mismatch',
      });
    } finally {
      await pure.close();
    }
  });
});

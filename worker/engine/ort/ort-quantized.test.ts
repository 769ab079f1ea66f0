// Quantized builds (WEIGHTS_DTYPE int8 / int4) held to independent numbers: the float64
// reference engine run on the dequantized weights (testing/quantized-view.ts). With exact
// activations the only difference left is rounding (1e-4); as served (int8 activations, like
// llama.cpp's Q8_0/Q4_0 dot products) the logits stay within a few percent of their range,
// and the engine's own consistency (full prompt == step by step == batched == resumed) holds
// to 1e-4 as in fp32. Served engines run both ways where they can: ONNX Runtime's graph and the
// native kernels (native-kernels.ts; pure Mamba models with d_inner a multiple of 16, on a CPU
// with AVX-512 VNNI or AVX2: each build this CPU runs), which must meet the same bounds.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type Checkpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../../model/testing/random-checkpoint.ts';
import { ReferenceEngine } from '../reference/reference-engine.ts';
import { maxAbsDiff, prefilledStates, stepLogits, tokensFor } from '../testing/compare.ts';
import { ensureGraphBuild } from './graph-cache.ts';
import type { Engine } from '../engine.ts';
import { OrtEngine } from './ort-engine.ts';
import { nativeKernelsUnavailable, testableNativeBuilds } from './testing/native-availability.ts';
import { quantizedView } from './testing/quantized-view.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-ortq-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

const layouts: [string, RandomCheckpointOptions][] = [
  ['HF naming, tied, conv bias', { seed: 1 }],
  // dt_proj's K (time_step_rank 2) is far below a quantization block; x_proj's N is odd-sized.
  ['biases everywhere, untied head, fp16, odd sizes', { seed: 2, bias: true, tied: false, dtype: 'F16', convKernel: 3, stateSize: 5, expand: 1.5, hiddenSize: 24, numLayers: 3 }],
  ['hybrid: grouped KV heads, attention biases, RoPE', { seed: 7, hiddenSize: 32, numLayers: 3, vocabSize: 64, hybrid: { attentionLayers: [1], window: 5, heads: 4, kvHeads: 2, headDim: 8, bias: true } }],
  // What the native kernels can take besides the default: biases, an untied head, fp16,
  // a short conv, a small odd state, a padded last block (d = 200).
  ['biases everywhere, untied head, fp16, d_inner 400', { seed: 3, bias: true, tied: false, dtype: 'F16', convKernel: 3, stateSize: 5, hiddenSize: 200, numLayers: 2 }],
];

const nativeSkip = nativeKernelsUnavailable();
if (nativeSkip) console.warn(`native kernel tests skip: ${nativeSkip}`);
/** The native kernels' builds this CPU runs (avx512 and avx2 on an AVX-512 VNNI CPU), by name. */
const nativeBuilds = new Map(testableNativeBuilds().map((b) => [`native ${b.isa}`, b.addon]));
/** The paths a layout is served with: ONNX Runtime's always, each native build where the kernels apply. */
const decodePaths = (options: RandomCheckpointOptions): string[] => {
  const D = Math.trunc((options.expand ?? 2) * (options.hiddenSize ?? 32));
  return nativeSkip || options.hybrid || D % 16 !== 0 ? ['onnxruntime'] : ['onnxruntime', ...nativeBuilds.keys()];
};

describe.each(['int8', 'int4'] as const)('%s weights', (dtype) => {
  describe.each(layouts.flatMap(([name, options]) => decodePaths(options).map((decode) => [`${name}, on ${decode}`, options, decode] as const)))('%s', (name, options, decode) => {
    let ckpt: Checkpoint;
    let ref: ReferenceEngine;
    let served: Engine;
    const L = 19;

    beforeAll(async () => {
      const dir = join(root, `${dtype}-${name.replace(/[^a-z0-9]+/gi, '-')}`);
      await writeRandomCheckpoint(dir, options);
      ckpt = await openCheckpoint(dir);
      ref = await ReferenceEngine.load(quantizedView(ckpt, dtype));
      const addon = nativeBuilds.get(decode);
      // Two threads: the native kernels split channels by blocks of 128 between them (d_inner 400:
      // two blocks each, the last one partial).
      served = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 2, weightsDtype: dtype, ...(addon ? { nativeKernels: 'on', nativeKernelsAddon: addon } : { nativeKernels: 'off' }) });
    });
    afterAll(async () => {
      await served?.close();
      await ref?.close();
    });

    // Exact activations are a graph setting (the native kernels always quantize them): once a layout.
    it.skipIf(decode !== 'onnxruntime')('with exact activations, every position matches the float64 reference on the dequantized weights within 1e-4', async () => {
      const exact = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 1, weightsDtype: dtype, quantizedActivations: 'f32' });
      try {
        const tokens = tokensFor(L, ckpt.config.vocabSize, 1);
        const expected = await ref.prefill(await ref.newState(), tokens, { allLogits: true });
        const got = await exact.prefill(await exact.newState(), tokens, { allLogits: true });
        expect(maxAbsDiff(got.data, expected.data)).toBeLessThan(1e-4);
        expect(maxAbsDiff(await stepLogits(exact, tokens), expected.data)).toBeLessThan(1e-4);
      } finally {
        await exact.close();
      }
    });

    it('as served (int8 activations): within 3% of the logit range of that reference', async () => {
      const tokens = tokensFor(L, ckpt.config.vocabSize, 2);
      const expected = await ref.prefill(await ref.newState(), tokens, { allLogits: true });
      const got = await served.prefill(await served.newState(), tokens, { allLogits: true });
      expect(maxAbsDiff(got.data, expected.data)).toBeLessThan(0.03 * maxAbs(expected.data));
    });

    // Batched rows match alone to rounding, not bit for bit as in f32: MLAS's int8 kernels
    // order a row's block sums differently at M = 1 and M > 1 (1e-5 seen on logits of ~40).
    it('as served: step by step == full prompt, batched == alone, resumed from bytes == uninterrupted (1e-4)', async () => {
      const tokens = tokensFor(L, ckpt.config.vocabSize, 3);
      const V = ckpt.vocabRows;
      const full = await served.prefill(await served.newState(), tokens, { allLogits: true });
      expect(maxAbsDiff(await stepLogits(served, tokens), full.data)).toBeLessThan(1e-4);

      const histories = [3, 11, 1].map((n, i) => tokensFor(n, ckpt.config.vocabSize, 10 + i));
      const batch = await prefilledStates(served, histories);
      const alone = [];
      for (const s of batch) alone.push(await served.cloneState(s));
      const batched = await served.decode(batch.map((state, i) => ({ state, token: i + 1 })));
      for (let i = 0; i < alone.length; i++) {
        const solo = await served.decode([{ state: alone[i]!, token: i + 1 }]);
        expect(maxAbsDiff(batched.data.subarray(i * V, (i + 1) * V), solo.data)).toBeLessThan(1e-4);
      }

      const K = 7;
      const first = await served.newState();
      await served.prefill(first, tokens.subarray(0, K));
      const bytes = await served.exportState(first, { parentVersion: null, transcriptHash: null });
      const resumed = (await served.importState(bytes)).state;
      const rest = await served.prefill(resumed, tokens.subarray(K), { allLogits: true });
      expect(maxAbsDiff(rest.data, full.data.subarray(K * V))).toBeLessThan(1e-4);
    });
  });
});

describe('graph cache across weights dtypes', () => {
  it('f32, int8 and int4 builds of one checkpoint live side by side and are each reused', async () => {
    const dir = join(root, 'cache-dtypes');
    await writeRandomCheckpoint(dir, { seed: 9 });
    const ckpt = await openCheckpoint(dir);
    const cacheDir = join(root, 'cache-dtypes-builds');
    const builds = [];
    for (const dtype of ['f32', 'int8', 'int4'] as const) builds.push(await ensureGraphBuild(ckpt, cacheDir, { dtype }));
    expect(new Set(builds.map((b) => dirname(b.modelPath))).size).toBe(3);
    expect(builds.every((b) => b.built)).toBe(true);
    expect(new Set(builds.map((b) => b.fingerprint)).size).toBe(1); // states carry the checkpoint's identity, not the dtype's
    for (const [i, dtype] of (['f32', 'int8', 'int4'] as const).entries()) {
      const again = await ensureGraphBuild(ckpt, cacheDir, { dtype });
      expect(again).toEqual({ ...builds[i], built: false });
      const meta = JSON.parse(await readFile(join(dirname(again.modelPath), 'meta.json'), 'utf8')) as { weights_dtype: string };
      expect(meta.weights_dtype).toBe(dtype);
    }
  });
});

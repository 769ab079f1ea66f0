// The native decode step (native-decode.ts, worker/native-cpu/): when the engine uses it, what
// it does with a batch larger than its kernels take at once, how it falls back, and how the
// addon refuses bad input. Its numbers are held to the float64 reference and to ONNX Runtime's
// decode in ort-quantized.test.ts, beside the graph's own path.
import { createRequire } from 'node:module';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type Checkpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint } from '../../model/testing/random-checkpoint.ts';
import { maxAbsDiff, prefilledStates, tokensFor } from '../testing/compare.ts';
import { ensureGraphBuild } from './graph-cache.ts';
import { planNativeDecode, type NativeDecoderOptions } from './native-decode.ts';
import { OrtEngine, type OrtEngineOptions } from './ort-engine.ts';
import { nativeDecodeUnavailable, testableNativeBuilds } from './testing/native-availability.ts';

const skip = nativeDecodeUnavailable();
if (skip) console.warn(`native decode tests skip: ${skip}`);

let root: string;
let ckpt: Checkpoint;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-native-'));
  await writeRandomCheckpoint(join(root, 'model'), { seed: 21, hiddenSize: 32, numLayers: 3, vocabSize: 200 });
  ckpt = await openCheckpoint(join(root, 'model'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const load = (options: Partial<OrtEngineOptions>) => OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 2, weightsDtype: 'int8', ...options });

const builds = testableNativeBuilds();

describe.skipIf(skip)('the native decode step in the engine', () => {
  it.each(builds.map((b) => [b.isa, b.addon] as const))('%s build: decodes a batch larger than its kernels take at once (11 sequences, groups of 8) as ONNX Runtime does, row for row', async (_isa, addon) => {
    for (const dtype of ['int8', 'int4'] as const) {
      const native = await load({ weightsDtype: dtype, nativeDecode: 'on', nativeDecodeAddon: addon });
      const graph = await load({ weightsDtype: dtype, nativeDecode: 'off' });
      try {
        const histories = Array.from({ length: 11 }, (_, i) => tokensFor(1 + ((i * 5) % 13), ckpt.config.vocabSize, 40 + i));
        const a = await prefilledStates(native, histories);
        const b = await prefilledStates(graph, histories);
        for (let step = 0; step < 4; step++) {
          const tokens = histories.map((_, i) => (i * 17 + step * 3) % ckpt.config.vocabSize);
          const got = await native.decode(a.map((state, i) => ({ state, token: tokens[i]! })));
          const want = await graph.decode(b.map((state, i) => ({ state, token: tokens[i]! })));
          expect(got.rows).toBe(11);
          expect(maxAbsDiff(got.data, want.data)).toBeLessThan(1e-4);
        }
        // The states it wrote are the graph's: a prefill after native steps continues alike.
        const more = tokensFor(5, ckpt.config.vocabSize, 99);
        const after = await native.prefill(a[10]!, more, { allLogits: true });
        expect(maxAbsDiff(after.data, (await graph.prefill(b[10]!, more, { allLogits: true })).data)).toBeLessThan(1e-4);
      } finally {
        await native.close();
        await graph.close();
      }
    }
  });

  it('says which decode it runs', async () => {
    const infos: { msg: string; fields?: Record<string, unknown> }[] = [];
    const engine = await load({ log: { info: (msg, fields) => infos.push({ msg, fields }), warn: () => {} } });
    await engine.close();
    // The best build this CPU runs, unasked.
    expect(infos).toContainEqual({ msg: 'decode steps run on the native kernels', fields: { weights: 'int8', threads: 2, isa: builds[0]!.isa } });
  });

  it('falls back to ONNX Runtime, with a warning, when the addon does not load; ORT_NATIVE_DECODE=on refuses to start', async () => {
    const broken = join(root, 'broken.node');
    await writeFile(broken, 'not a shared object');
    const warnings: Record<string, unknown>[] = [];
    const engine = await load({ nativeDecodeAddon: broken, log: { info: () => {}, warn: (msg, fields) => warnings.push({ msg, ...fields }) } });
    try {
      expect(warnings).toEqual([expect.objectContaining({ msg: 'native decode step did not load: decoding with ONNX Runtime', code: 'native_decode_unavailable' })]);
      const [state] = await prefilledStates(engine, [tokensFor(4, ckpt.config.vocabSize, 1)]);
      expect((await engine.decode([{ state: state!, token: 3 }])).rows).toBe(1);
    } finally {
      await engine.close();
    }
    await expect(load({ nativeDecodeAddon: broken, nativeDecode: 'on' })).rejects.toMatchObject({ code: 'native_decode_unavailable' });
  });
});

describe('when the native decode step does not apply', () => {
  const plan = async (over: Partial<Parameters<typeof planNativeDecode>[0]>) => {
    const build = await ensureGraphBuild(ckpt, join(root, 'cache'), { dtype: 'int8' });
    return planNativeDecode({ setting: 'auto', modelPath: build.modelPath, config: ckpt.config, dtype: 'int8', threads: 1, executionProvider: 'cpu', ...over });
  };

  it('says why and decodes with ONNX Runtime (auto), or refuses to start (on)', async () => {
    expect(await plan({ dtype: 'f32' })).toEqual({ reason: expect.stringMatching(/f32 weights decode with ONNX Runtime/) });
    expect(await plan({ setting: 'off' })).toEqual({ reason: 'ORT_NATIVE_DECODE=off' });
    expect(await plan({ executionProvider: 'cuda' })).toEqual({ reason: expect.stringMatching(/CUDA/) });
    expect(await plan({ config: { ...ckpt.config, intermediateSize: 40 } })).toEqual({ reason: expect.stringMatching(/not a multiple of 16/) });
    const hybrid = { ...ckpt.config, hybrid: {} as NonNullable<Checkpoint['config']['hybrid']> };
    expect(await plan({ config: hybrid })).toEqual({ reason: expect.stringMatching(/hybrid models decode with ONNX Runtime/) });
    if (!skip) expect(await plan({ addonPath: join(root, 'absent.node') })).toEqual({ reason: expect.stringMatching(/absent.node does not exist/) });
    await expect(plan({ setting: 'on', dtype: 'f32' })).rejects.toMatchObject({ code: 'native_decode_unavailable', message: expect.stringMatching(/^ORT_NATIVE_DECODE=on, but f32/) });
  });
});

describe.skipIf(skip)('the addon refuses bad input with a code', () => {
  type Decoder = { decode(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array): void; close(): void };
  const { Decoder } = (skip ? { Decoder: undefined } : createRequire(import.meta.url)(builds[0]!.addon)) as { Decoder: new (o: NativeDecoderOptions) => Decoder };
  let options: NativeDecoderOptions;
  beforeAll(async () => {
    const build = await ensureGraphBuild(ckpt, join(root, 'cache'), { dtype: 'int8' });
    const planned = await planNativeDecode({ setting: 'on', modelPath: build.modelPath, config: ckpt.config, dtype: 'int8', threads: 1, executionProvider: 'cpu' });
    if (!('plan' in planned)) throw new Error(planned.reason);
    options = planned.plan.decoder;
  });

  it('weights: a range outside the file or of the wrong size, a file that is not there', () => {
    expect(() => new Decoder({ ...options, normF: [1 << 30, 4 * options.dims.d] })).toThrow(expect.objectContaining({ code: 'native_weights_invalid' }));
    expect(() => new Decoder({ ...options, normF: [options.normF[0], options.normF[1] - 4] })).toThrow(expect.objectContaining({ code: 'native_weights_invalid', message: expect.stringMatching(/normF holds/) }));
    expect(() => new Decoder({ ...options, dims: { ...options.dims, D: 40 } })).toThrow(expect.objectContaining({ code: 'native_weights_invalid' }));
    expect(() => new Decoder({ ...options, weightsPath: join(root, 'absent.bin') })).toThrow(expect.objectContaining({ code: 'native_weights_unreadable' }));
  });

  it('decode: states of the wrong size, a token outside the vocabulary, a closed decoder', () => {
    const decoder = new Decoder(options);
    const { layers, K, N, D, V } = options.dims;
    const conv = Array.from({ length: layers }, () => new Float32Array(K * D));
    const ssm = Array.from({ length: layers }, () => new Float32Array(N * D));
    const logits = new Float32Array(V);
    decoder.decode(Int32Array.of(5), conv, ssm, logits);
    expect(logits.some((v) => v !== 0)).toBe(true);
    expect(() => decoder.decode(Int32Array.of(5), conv.slice(1), ssm, logits)).toThrow(expect.objectContaining({ code: 'native_decode_invalid' }));
    expect(() => decoder.decode(Int32Array.of(5), [new Float32Array(3), ...conv.slice(1)], ssm, logits)).toThrow(expect.objectContaining({ code: 'native_decode_invalid' }));
    expect(() => decoder.decode(Int32Array.of(V), conv, ssm, logits)).toThrow(expect.objectContaining({ code: 'native_decode_invalid', message: expect.stringMatching(/outside the vocabulary/) }));
    expect(() => decoder.decode(Int32Array.of(5), conv, ssm, new Float32Array(V - 1))).toThrow(expect.objectContaining({ code: 'native_decode_invalid' }));
    decoder.close();
    expect(() => decoder.decode(Int32Array.of(5), conv, ssm, logits)).toThrow(expect.objectContaining({ code: 'native_closed' }));
  });
});

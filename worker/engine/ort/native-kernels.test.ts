// The native kernels (native-kernels.ts, worker/native-cpu/): when the engine uses them, that
// they prefill and decode as ONNX Runtime's graph does (a batch larger than the kernels take at
// once, a prompt longer than their chunk), that the process then loads no ONNX Runtime, how they
// fall back, and how the addon refuses bad input. Their numbers are held to the float64
// reference in ort-quantized.test.ts (int8, int4), and in ort-engine.test.ts and golden.test.ts
// (f32, which the engine runs on them by default), beside the graph's own path.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type Checkpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint } from '../../model/testing/random-checkpoint.ts';
import { maxAbsDiff, prefilledStates, stepLogits, tokensFor } from '../testing/compare.ts';
import { ensureGraphBuild } from './graph-cache.ts';
import { planNativeKernels, type NativeDecoderOptions } from './native-kernels.ts';
import { STRIPS_FILE } from './native-strips.ts';
import { OrtEngine, type OrtEngineOptions } from './ort-engine.ts';
import { nativeKernelsUnavailable, testableNativeBuilds } from './testing/native-availability.ts';

const skip = nativeKernelsUnavailable();
if (skip) console.warn(`native kernel tests skip: ${skip}`);

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

describe.skipIf(skip)('the native kernels in the engine', () => {
  it.each(builds.map((b) => [b.isa, b.addon] as const))('%s build: decodes a batch larger than its kernels take at once (11 sequences, groups of 8) as ONNX Runtime does, row for row', async (_isa, addon) => {
    for (const dtype of ['int8', 'int4', 'f32'] as const) {
      const native = await load({ weightsDtype: dtype, nativeKernels: 'on', nativeKernelsAddon: addon });
      const graph = await load({ weightsDtype: dtype, nativeKernels: 'off' });
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

  // dt_proj runs by columns (mamba_cpu.h, dtProjChannels), its blocks of 128 columns one after
  // another: a dt rank of 130 (mamba-2.8b's is 160) takes a full block and 2 columns of a second.
  it.each(builds.map((b) => [b.isa, b.addon] as const))('%s build: a dt rank of more than one block (130) decodes and prefills as ONNX Runtime does', async (_isa, addon) => {
    const dir = join(root, 'wide-dt-rank');
    await writeRandomCheckpoint(dir, { seed: 23, hiddenSize: 32, numLayers: 2, vocabSize: 150, timeStepRank: 130 });
    const wide = await openCheckpoint(dir);
    for (const dtype of ['int8', 'int4'] as const) {
      const options = { cacheDir: join(root, 'cache'), intraOpThreads: 2, weightsDtype: dtype };
      const native = await OrtEngine.load(wide, { ...options, nativeKernels: 'on', nativeKernelsAddon: addon });
      const graph = await OrtEngine.load(wide, { ...options, nativeKernels: 'off' });
      try {
        const tokens = tokensFor(9, wide.config.vocabSize, 5);
        const a = await native.newState();
        const b = await graph.newState();
        expect(maxAbsDiff((await native.prefill(a, tokens, { allLogits: true })).data, (await graph.prefill(b, tokens, { allLogits: true })).data)).toBeLessThan(1e-4);
        for (let step = 0; step < 3; step++) {
          const got = await native.decode([{ state: a, token: 7 + step }]);
          expect(maxAbsDiff(got.data, (await graph.decode([{ state: b, token: 7 + step }])).data)).toBeLessThan(1e-4);
        }
        // And a prompt leaves what its steps leave.
        const stepped = await native.newState();
        expect(maxAbsDiff((await native.prefill(await native.newState(), tokens, { allLogits: true })).data, await stepLogits(native, tokens, stepped))).toBe(0);
      } finally {
        await native.close();
        await graph.close();
      }
    }
  });

  // A step's threads meet at TeamBarrier (mamba_cpu.h), which spins and then sleeps: its memory
  // order is what lets each thread read what the others wrote. Every value is computed by the
  // same arithmetic whichever thread takes it, so any team decodes the same floats; 3 threads on
  // a 2-vCPU machine (CI) sleep at every barrier instead of spinning.
  it.each(builds.map((b) => [b.isa, b.addon] as const))('%s build: teams of 1, 2 and 3 threads decode the same floats, step after step', async (_isa, addon) => {
    for (const dtype of ['int8', 'int4', 'f32'] as const) {
      const engines = await Promise.all([1, 2, 3].map((intraOpThreads) => load({ weightsDtype: dtype, nativeKernels: 'on', nativeKernelsAddon: addon, intraOpThreads })));
      try {
        const histories = Array.from({ length: 3 }, (_, i) => tokensFor(2 + i, ckpt.config.vocabSize, 70 + i));
        const states = await Promise.all(engines.map((e) => prefilledStates(e, histories)));
        for (let step = 0; step < 12; step++) {
          const tokens = histories.map((_, i) => (i * 29 + step * 7) % ckpt.config.vocabSize);
          const [one, ...more] = await Promise.all(engines.map((e, k) => e.decode(states[k]!.map((state, i) => ({ state, token: tokens[i]! })))));
          for (const got of more) expect(maxAbsDiff(got.data, one!.data)).toBe(0);
        }
      } finally {
        await Promise.all(engines.map((e) => e.close()));
      }
    }
  });

  // The kernels' arithmetic is the decode step's token for token, so a prompt matches its own
  // steps exactly. Against ONNX Runtime's graph, whose float sums run in another order, it
  // matches to rounding (1e-5 here), but over a long prompt such a difference now and then moves
  // an activation across the rounding boundary of its int8 code: over 129 and 300 tokens that
  // moved a row by up to 0.19 on logits of ~44 (and the rows after it, less and less). So short
  // prompts are held to the graph at 1e-4, and prompts longer than the kernels' chunk of 128 to
  // their own steps exactly and to the graph within 2 % of the logit range. f32 has no codes to
  // round: it is held to the graph at 1e-4 at every length.
  it.each(builds.map((b) => [b.isa, b.addon] as const))(
    '%s build: prefills as ONNX Runtime does (short prompts; f32 every prompt), and prompts longer than its chunk as its own steps do',
    async (_isa, addon) => {
      for (const dtype of ['int8', 'int4', 'f32'] as const) {
        const native = await load({ weightsDtype: dtype, nativeKernels: 'on', nativeKernelsAddon: addon });
        const graph = await load({ weightsDtype: dtype, nativeKernels: 'off' });
        const V = ckpt.vocabRows;
        try {
          for (const [length, allLogits] of [[1, false], [7, true], [19, false]] as const) {
            const tokens = tokensFor(length, ckpt.config.vocabSize, length);
            const a = await native.newState();
            const b = await graph.newState();
            const got = await native.prefill(a, tokens, { allLogits });
            const want = await graph.prefill(b, tokens, { allLogits });
            expect(got.rows).toBe(allLogits ? length : 1);
            expect(got.data.length).toBe(want.data.length);
            expect(maxAbsDiff(got.data, want.data)).toBeLessThan(1e-4);
            // The states after: the next step's logits agree.
            const next = await native.decode([{ state: a, token: 9 }]);
            expect(maxAbsDiff(next.data, (await graph.decode([{ state: b, token: 9 }])).data)).toBeLessThan(1e-4);
          }
          for (const length of [129, 300]) {
            const tokens = tokensFor(length, ckpt.config.vocabSize, length);
            const prefilled = await native.newState();
            const stepped = await native.newState();
            const prompt = await native.prefill(prefilled, tokens, { allLogits: true });
            expect(maxAbsDiff(prompt.data, await stepLogits(native, tokens, stepped))).toBe(0);
            const next = await native.decode([{ state: prefilled, token: 9 }]);
            expect(maxAbsDiff(next.data, (await native.decode([{ state: stepped, token: 9 }])).data)).toBe(0);
            const last = await native.prefill(await native.newState(), tokens);
            expect(maxAbsDiff(last.data, prompt.data.subarray((length - 1) * V))).toBe(0);
            const graphRows = (await graph.prefill(await graph.newState(), tokens, { allLogits: true })).data;
            const range = graphRows.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
            expect(maxAbsDiff(prompt.data, graphRows)).toBeLessThan(dtype === 'f32' ? 1e-4 : 0.02 * range);
          }
        } finally {
          await native.close();
          await graph.close();
        }
      }
    },
  );

  it('says what it runs on', async () => {
    const infos: { msg: string; fields?: Record<string, unknown> }[] = [];
    const engine = await load({ log: { info: (msg, fields) => infos.push({ msg, fields }), warn: () => {} } });
    await engine.close();
    // The best build this CPU runs, unasked.
    expect(infos).toContainEqual({ msg: 'prefill and decode run on the native kernels (no ONNX Runtime session)', fields: { weights: 'int8', threads: 2, isa: builds[0]!.isa } });
  });

  it('f32 runs on them by default, with its strips file, and then makes no packed-weights file for ONNX Runtime (it does with ORT_NATIVE_KERNELS=off)', async () => {
    const cacheDir = join(root, 'cache-f32');
    const build = await ensureGraphBuild(ckpt, cacheDir, { dtype: 'f32' });
    const packedFiles = async () => (await readdir(dirname(build.modelPath))).filter((f) => f.startsWith('packed-'));
    const infos: string[] = [];
    const native = await OrtEngine.load(ckpt, { cacheDir, intraOpThreads: 2, log: { info: (msg) => infos.push(msg), warn: () => {} } });
    await native.close();
    expect(infos).toContain('prefill and decode run on the native kernels (no ONNX Runtime session)');
    expect(await packedFiles()).toEqual([]);
    // Its in_proj and out_proj in column strips, made beside the build (native-strips.ts).
    expect(await readdir(dirname(build.modelPath))).toContain(STRIPS_FILE);
    const graph = await OrtEngine.load(ckpt, { cacheDir, intraOpThreads: 2, nativeKernels: 'off', log: { info: () => {}, warn: () => {} } });
    await graph.close();
    expect(await packedFiles()).not.toEqual([]);
  });

  // The close: Node unloads the addon with the thread that loaded it, and an addon that took
  // libgomp with it killed the process (SIGSEGV) while the team's threads still ran.
  it('a process serving on them never loads ONNX Runtime (it does with ORT_NATIVE_KERNELS=off), and closes and exits cleanly on two threads', async () => {
    await ensureGraphBuild(ckpt, join(root, 'cache'), { dtype: 'int8' });
    const script = join(import.meta.dirname, 'testing', 'native-process.mts');
    const run = (setting: string) => {
      const child = spawnSync(process.execPath, ['--import', 'tsx', script, ckpt.dir, join(root, 'cache'), setting], { encoding: 'utf8', timeout: 60_000 });
      expect(child.stderr).toBe('');
      expect(child.signal).toBeNull();
      expect(child.status).toBe(0);
      return JSON.parse(child.stdout) as { onnxruntimeMapped: boolean; logitsFinite: boolean };
    };
    expect(run('on')).toEqual({ onnxruntimeMapped: false, logitsFinite: true });
    expect(run('off')).toEqual({ onnxruntimeMapped: true, logitsFinite: true });
  });

  it('falls back to ONNX Runtime, with a warning, when the addon does not load; ORT_NATIVE_KERNELS=on refuses to start', async () => {
    const broken = join(root, 'broken.node');
    await writeFile(broken, 'not a shared object');
    const warnings: Record<string, unknown>[] = [];
    const engine = await load({ nativeKernelsAddon: broken, log: { info: () => {}, warn: (msg, fields) => warnings.push({ msg, ...fields }) } });
    try {
      expect(warnings).toEqual([expect.objectContaining({ msg: 'native kernels did not load: running on ONNX Runtime', code: 'native_kernels_unavailable' })]);
      const [state] = await prefilledStates(engine, [tokensFor(4, ckpt.config.vocabSize, 1)]);
      expect((await engine.decode([{ state: state!, token: 3 }])).rows).toBe(1);
    } finally {
      await engine.close();
    }
    await expect(load({ nativeKernelsAddon: broken, nativeKernels: 'on' })).rejects.toMatchObject({ code: 'native_kernels_unavailable' });
  });
});

describe('when the native kernels do not apply', () => {
  const plan = async (over: Partial<Parameters<typeof planNativeKernels>[0]>) => {
    const build = await ensureGraphBuild(ckpt, join(root, 'cache'), { dtype: 'int8' });
    return planNativeKernels({ setting: 'auto', modelPath: build.modelPath, config: ckpt.config, dtype: 'int8', threads: 1, executionProvider: 'cpu', ...over });
  };

  it('says why and runs on ONNX Runtime (auto), or refuses to start (on)', async () => {
    expect(await plan({ setting: 'off' })).toEqual({ reason: 'ORT_NATIVE_KERNELS=off' });
    expect(await plan({ executionProvider: 'cuda' })).toEqual({ reason: expect.stringMatching(/CUDA/) });
    expect(await plan({ config: { ...ckpt.config, intermediateSize: 40 } })).toEqual({ reason: expect.stringMatching(/not a multiple of 16/) });
    const hybrid = { ...ckpt.config, hybrid: {} as NonNullable<Checkpoint['config']['hybrid']> };
    expect(await plan({ config: hybrid })).toEqual({ reason: expect.stringMatching(/hybrid models run on ONNX Runtime/) });
    if (!skip) expect(await plan({ addonPath: join(root, 'absent.node') })).toEqual({ reason: expect.stringMatching(/absent.node does not exist/) });
    await expect(plan({ setting: 'on', executionProvider: 'cuda' })).rejects.toMatchObject({ code: 'native_kernels_unavailable', message: expect.stringMatching(/^ORT_NATIVE_KERNELS=on, but the CUDA/) });
  });
});

describe.skipIf(skip)('the addon refuses bad input with a code', () => {
  type Decoder = {
    decode(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array): void;
    prefill(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array, allLogits: boolean): void;
    close(): void;
  };
  const { Decoder } = (skip ? { Decoder: undefined } : createRequire(import.meta.url)(builds[0]!.addon)) as { Decoder: new (o: NativeDecoderOptions) => Decoder };
  let options: NativeDecoderOptions;
  beforeAll(async () => {
    const build = await ensureGraphBuild(ckpt, join(root, 'cache'), { dtype: 'int8' });
    const planned = await planNativeKernels({ setting: 'on', modelPath: build.modelPath, config: ckpt.config, dtype: 'int8', threads: 1, executionProvider: 'cpu' });
    if (!('plan' in planned)) throw new Error(planned.reason);
    options = planned.plan.decoder;
  });

  it('f32 weights: scales where there are none, a matrix or strips of the wrong size, strips without their file or for the head, bits other than 8, 4 or 32', async () => {
    const build = await ensureGraphBuild(ckpt, join(root, 'cache'), { dtype: 'f32' });
    const planned = await planNativeKernels({ setting: 'on', modelPath: build.modelPath, config: ckpt.config, dtype: 'f32', threads: 1, executionProvider: 'cpu' });
    if (!('plan' in planned)) throw new Error(planned.reason);
    const f32 = planned.plan.decoder;
    expect(f32.bits).toBe(32);
    const layer = f32.layers[0]!;
    const withLayer = (l: Partial<typeof layer>) => ({ ...f32, layers: [{ ...layer, ...l }, ...f32.layers.slice(1)] });
    expect(() => new Decoder(withLayer({ inProj: { ...layer.inProj, scales: f32.normF } }))).toThrow(expect.objectContaining({ code: 'native_weights_invalid', message: expect.stringMatching(/f32 and takes no scales/) }));
    // in_proj and out_proj come from the strips file (native-strips.ts), x_proj from the build's Wᵀ.
    if (!('strips' in layer.outProj) || !('data' in layer.xProj)) throw new Error('f32 plan without strips');
    const outStrips = layer.outProj.strips;
    const [offset, length] = outStrips;
    expect(() => new Decoder(withLayer({ outProj: { strips: [offset, length - 4] } }))).toThrow(expect.objectContaining({ code: 'native_weights_invalid', message: expect.stringMatching(/outProj.strips holds/) }));
    const [xOffset, xLength] = layer.xProj.data;
    expect(() => new Decoder(withLayer({ xProj: { data: [xOffset, xLength + 4] } }))).toThrow(expect.objectContaining({ code: 'native_weights_invalid', message: expect.stringMatching(/xProj.data holds/) }));
    expect(() => new Decoder({ ...f32, head: { strips: outStrips } })).toThrow(expect.objectContaining({ code: 'native_weights_invalid', message: expect.stringMatching(/head.strips needs stripsPath and a projection/) }));
    const { stripsPath: _, ...noStrips } = f32;
    expect(() => new Decoder(noStrips)).toThrow(expect.objectContaining({ code: 'native_weights_invalid', message: expect.stringMatching(/strips needs stripsPath/) }));
    expect(() => new Decoder({ ...f32, bits: 16 as 32 })).toThrow(expect.objectContaining({ code: 'native_weights_invalid', message: expect.stringMatching(/bits must be 8, 4 or 32/) }));
    const decoder = new Decoder(f32);
    const { layers, K, N, D, V } = f32.dims;
    const logits = new Float32Array(V);
    decoder.prefill(Int32Array.of(5, 6), Array.from({ length: layers }, () => new Float32Array(K * D)), Array.from({ length: layers }, () => new Float32Array(N * D)), logits, false);
    expect(logits.every(Number.isFinite) && logits.some((v) => v !== 0)).toBe(true);
    decoder.close();
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

  it('prefill: no tokens, logits of the wrong size, a state per sequence instead of per layer, a token outside the vocabulary, a closed decoder', () => {
    const decoder = new Decoder(options);
    const { layers, K, N, D, V } = options.dims;
    const conv = Array.from({ length: layers }, () => new Float32Array(K * D));
    const ssm = Array.from({ length: layers }, () => new Float32Array(N * D));
    const tokens = Int32Array.of(5, 6, 7);
    decoder.prefill(tokens, conv, ssm, new Float32Array(3 * V), true);
    const last = new Float32Array(V);
    decoder.prefill(tokens, conv, ssm, last, false);
    expect(last.some((v) => v !== 0)).toBe(true);
    const refused = (args: Parameters<Decoder['prefill']>, message: RegExp) =>
      expect(() => decoder.prefill(...args)).toThrow(expect.objectContaining({ code: 'native_decode_invalid', message: expect.stringMatching(message) }));
    refused([new Int32Array(0), conv, ssm, last, false], /no tokens/);
    refused([tokens, conv, ssm, last, true], /logits must hold/);
    refused([tokens, conv, ssm, new Float32Array(3 * V), false], /logits must hold/);
    refused([tokens, [...conv, ...conv], [...ssm, ...ssm], last, false], /one array per layer/);
    refused([Int32Array.of(5, -1), conv, ssm, last, false], /outside the vocabulary/);
    refused([tokens, conv.map(() => new Float32Array(2)), ssm, last, false], /state arrays must be/);
    decoder.close();
    expect(() => decoder.prefill(tokens, conv, ssm, last, false)).toThrow(expect.objectContaining({ code: 'native_closed' }));
  });
});

// The packed-weights file (packed-weights.ts): made once per build, ORT and CPU, reused,
// remade when damaged, and loaded to the same logits, bit for bit, as packing at load. Plus
// the two ORT 1.30 defects it works around or avoids: the serializer's repeated subgraph
// initializers, and MatMulNBits' int8-compute packing that does not survive the file.
import { mkdir, mkdtemp, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type Checkpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../../model/testing/random-checkpoint.ts';
import { maxAbsDiff, prefilledStates, tokensFor } from '../testing/compare.ts';
import { ensureGraphBuild } from './graph-cache.ts';
import { stateInput } from './mamba-graph.ts';
import type { Engine } from '../engine.ts';
import { OrtEngine, type OrtEngineOptions } from './ort-engine.ts';
import { dropRepeatedSubgraphInitializers } from './packed-model-fix.mjs';
import { discardPackedModel, ensurePackedModel, PackedMeta } from './packed-weights.ts';

const { onnx } = onnxProto;

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-packed-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function checkpoint(name: string, options: RandomCheckpointOptions): Promise<Checkpoint> {
  const dir = join(root, name);
  await writeRandomCheckpoint(dir, options);
  return openCheckpoint(dir);
}

/** Every subgraph's initializer names, repeated ones included. */
function subgraphInitializerNames(bytes: Uint8Array): string[][] {
  const out: string[][] = [];
  const walk = (g: onnxProto.onnx.IGraphProto, sub: boolean) => {
    if (sub) out.push((g.initializer ?? []).map((t) => t.name!));
    for (const n of g.node ?? []) for (const a of n.attribute ?? []) if (a.g) walk(a.g, true);
  };
  walk(onnx.ModelProto.decode(bytes).graph!, false);
  return out;
}

/** All-position prefill logits, then three batched decode steps, of a fresh engine. */
async function transcript(engine: Engine, vocab: number): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  out.push((await engine.prefill(await engine.newState(), tokensFor(13, vocab, 3), { allLogits: true })).data);
  const states = await prefilledStates(engine, [tokensFor(5, vocab, 4), tokensFor(9, vocab, 5)]);
  for (let i = 0; i < 3; i++) out.push((await engine.decode(states.map((state, b) => ({ state, token: (i * 7 + b) % vocab })))).data);
  return out;
}

const layouts: [string, RandomCheckpointOptions][] = [
  ['pure Mamba, tied head', { seed: 11 }],
  ['hybrid with attention', { seed: 12, hiddenSize: 32, numLayers: 3, vocabSize: 64, hybrid: { attentionLayers: [1], window: 5, heads: 4, kvHeads: 2, headDim: 8 } }],
];

describe.each(layouts)('f32 build, %s', (name, options) => {
  let ckpt: Checkpoint;
  let cacheDir: string;
  // ONNX Runtime's packing is what is tested: not the native kernels, which make no packed file.
  const load = (more: Partial<OrtEngineOptions> = {}) => OrtEngine.load(ckpt, { cacheDir, intraOpThreads: 1, nativeKernels: 'off', ...more });

  beforeAll(async () => {
    ckpt = await checkpoint(name.replace(/\W+/g, '-'), options);
    cacheDir = join(root, `cache-${name.replace(/\W+/g, '-')}`);
  });

  it('is made once beside the build, reused after, and has no repeated subgraph initializers', async () => {
    const build = await ensureGraphBuild(ckpt, cacheDir);
    const first = await ensurePackedModel(build.modelPath);
    expect(first.built).toBe(true);
    expect(dirname(dirname(first.modelPath))).toBe(dirname(build.modelPath));
    expect(await readdir(dirname(first.modelPath))).toEqual(expect.arrayContaining(['model.onnx', 'weights.bin', 'meta.json']));
    const again = await ensurePackedModel(build.modelPath);
    expect(again).toEqual({ modelPath: first.modelPath, built: false });
    for (const names of subgraphInitializerNames(await readFile(first.modelPath))) expect(new Set(names).size).toBe(names.length);
  });

  it("a new file replaces those another ORT version made, and keeps other CPUs'", async () => {
    const build = await ensureGraphBuild(ckpt, cacheDir);
    const buildDir = dirname(build.modelPath);
    const sibling = async (name: string, meta: Record<string, string>) => {
      await mkdir(join(buildDir, name), { recursive: true });
      await writeFile(join(buildDir, name, 'meta.json'), JSON.stringify(meta));
    };
    const { modelPath } = await ensurePackedModel(build.modelPath);
    const ours = PackedMeta.parse(JSON.parse(await readFile(join(dirname(modelPath), 'meta.json'), 'utf8')));
    await sibling('packed-old-ort', { ...ours, ort_version: '1.20.0' });
    await sibling('packed-other-cpu', { ...ours, cpu: 'another CPU' });
    await discardPackedModel(modelPath);
    expect((await ensurePackedModel(build.modelPath)).built).toBe(true);
    const left = (await readdir(buildDir)).filter((f) => f.startsWith('packed-'));
    expect(left.sort()).toEqual([basename(dirname(modelPath)), 'packed-other-cpu'].sort());
    await rm(join(buildDir, 'packed-other-cpu'), { recursive: true });
  });

  it('gives the same logits, bit for bit, as packing at load (prefill, batched decode)', async () => {
    const warnings: string[] = [];
    const packed = await load({ log: { info: (msg) => warnings.push(msg), warn: (msg) => warnings.push(msg) } });
    expect(warnings).toEqual([]); // loaded from the file (quickly made or found), not fallen back
    const atLoad = await load({ packedWeightsFile: false });
    try {
      const [a, b] = [await transcript(packed, ckpt.config.vocabSize), await transcript(atLoad, ckpt.config.vocabSize)];
      a.forEach((logits, i) => expect(maxAbsDiff(logits, b[i]!)).toBe(0));
    } finally {
      await packed.close();
      await atLoad.close();
    }
  });

  it('a damaged file is reported, the build loads instead, and the next start makes the file again', async () => {
    const build = await ensureGraphBuild(ckpt, cacheDir);
    const { modelPath } = await ensurePackedModel(build.modelPath);
    await truncate(join(dirname(modelPath), 'weights.bin'), 100);
    const warnings: Record<string, unknown>[] = [];
    const infos: string[] = [];
    const engine = await load({ log: { info: (msg) => infos.push(msg), warn: (msg, fields) => warnings.push({ msg, ...fields }) } });
    const reference = await load({ packedWeightsFile: false });
    try {
      expect(warnings).toEqual([expect.objectContaining({ code: 'packed_weights_unreadable', msg: expect.stringMatching(/packs the weights at load/) })]);
      expect(infos).toEqual([]); // the damaged file was found whole-looking, not made
      const tokens = tokensFor(7, ckpt.config.vocabSize, 8);
      const got = await engine.prefill(await engine.newState(), tokens);
      const want = await reference.prefill(await reference.newState(), tokens);
      expect(maxAbsDiff(got.data, want.data)).toBe(0);
    } finally {
      await engine.close();
      await reference.close();
    }
    const next: string[] = [];
    const restarted = await load({ log: { info: (msg) => next.push(msg), warn: (msg) => next.push(msg) }, packingNoticeAfterMs: 0 });
    await restarted.close();
    expect(next).toEqual([expect.stringMatching(/^packing the f32 weights/), 'packed weights file made']);
    expect(await ensurePackedModel(build.modelPath)).toEqual({ modelPath, built: false });
  });
});

describe('ORT 1.30 defects', () => {
  it('dropRepeatedSubgraphInitializers drops byte-identical repeats in subgraphs and refuses differing ones', () => {
    const t = (name: string, v: number) => onnx.TensorProto.create({ name, dims: [1], dataType: onnx.TensorProto.DataType.FLOAT, floatData: [v] });
    const model = (second: number) =>
      onnx.ModelProto.encode(
        onnx.ModelProto.create({
          graph: onnx.GraphProto.create({
            name: 'main',
            initializer: [t('m', 1)],
            node: [
              onnx.NodeProto.create({
                opType: 'If',
                attribute: [onnx.AttributeProto.create({ name: 'then_branch', type: onnx.AttributeProto.AttributeType.GRAPH, g: onnx.GraphProto.create({ name: 'then', initializer: [t('c', 2), t('d', 3), t('c', second)] }) })],
              }),
            ],
          }),
        }),
      ).finish();
    const fixed = dropRepeatedSubgraphInitializers(model(2));
    expect(fixed.dropped).toBe(1);
    expect(subgraphInitializerNames(fixed.bytes)).toEqual([['c', 'd']]);
    expect(() => dropRepeatedSubgraphInitializers(model(5))).toThrow(/initializer c appears twice with different contents/);
  });

  // Why quantized builds pack at load. If this fails, an ORT upgrade restores MatMulNBits'
  // packing from the file correctly: let OrtEngine.load use the file for int8/int4 too.
  it('an int4 build loaded from its packed-weights file computes wrong logits, so quantized builds never use it', async () => {
    const ckpt = await checkpoint('int4', { seed: 13 });
    const build = await ensureGraphBuild(ckpt, join(root, 'cache-int4'), { dtype: 'int4' });
    const { modelPath } = await ensurePackedModel(build.modelPath);
    const layers = ckpt.config.numLayers;
    const D = ckpt.config.intermediateSize;
    const feeds: Record<string, ort.Tensor> = {
      tokens: new ort.Tensor('int64', BigInt64Array.of(1n), [1, 1]),
      logits_start: new ort.Tensor('int64', BigInt64Array.of(0n), [1]),
    };
    for (let i = 0; i < layers; i++) {
      feeds[stateInput('conv', i)] = new ort.Tensor('float32', new Float32Array(ckpt.config.convKernel * D), [1, ckpt.config.convKernel, D]);
      feeds[stateInput('ssm', i)] = new ort.Tensor('float32', new Float32Array(ckpt.config.stateSize * D), [1, ckpt.config.stateSize, D]);
    }
    const logits = async (path: string) => {
      const session = await ort.InferenceSession.create(path, { executionProviders: ['cpu'], intraOpNumThreads: 1, logSeverityLevel: 3 });
      try {
        return (await session.run(feeds)).logits!.data as Float32Array;
      } finally {
        await session.release();
      }
    };
    const packedAtLoad = await logits(build.modelPath);
    const fromFile = await logits(modelPath);
    expect(packedAtLoad.every(Number.isFinite)).toBe(true);
    expect(fromFile.every((v, i) => v === packedAtLoad[i])).toBe(false);

    // And the engine keeps off it: an int4 load makes no packed-weights file of its own.
    await discardPackedModel(modelPath);
    const engine = await OrtEngine.load(ckpt, { cacheDir: join(root, 'cache-int4'), intraOpThreads: 1, weightsDtype: 'int4', nativeKernels: 'off' });
    await engine.close();
    expect((await readdir(dirname(build.modelPath))).filter((f) => f.startsWith('packed-'))).toEqual([]);
  });
});

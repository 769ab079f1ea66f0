// How fast ONNX Runtime's matmul kernels read weights, apart from everything else a decode step
// does: graphs of nothing but mamba-130m's projections (24 layers of in_proj 768→3072, x_proj
// 1536→80, dt_proj 48→1536, out_proj 1536→768, chained through Slices as in the model), and of
// its LM head (768→50280), in each weights format the engine could use, timed in alternating
// runs, as GB/s of weight bytes and a share of the read bandwidth (bench/memory-bandwidth.ts).
// It answers whether a decode goal is out of reach whatever the rest of the graph costs.
//
//   npx tsx bench/ort-matmul-rates.ts [--runs 100] [--threads 2]
//
// Formats: f32 MatMul (B packed at load, as served); MatMulNBits 8 and 4 bits in blocks of 128
// with int8 activations (accuracy_level 4, as served); DynamicQuantizeMatMul (per-column int8
// weights, activations quantized per tensor: ORT's other int8 matmul). Random weights: the
// speed of these kernels does not depend on the values.
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { Rng } from '../shared/rng.ts';
import { encodeModel, GraphBuilder, MS_DOMAIN } from '../worker/engine/ort/onnx-builder.ts';
import { intraOpSpin } from '../worker/engine/ort/ort-engine.ts';
import { measureReadBandwidth } from './memory-bandwidth.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '100' },
    threads: { type: 'string', default: String(Math.min(2, availableParallelism())) },
  },
});
const runs = Number(args.runs);
const threads = Number(args.threads);

type Format = 'f32' | 'nbits8' | 'nbits4' | 'dqmm8';
const FORMATS: Format[] = ['f32', 'nbits8', 'nbits4', 'dqmm8'];
const BLOCK = 128;
const HIDDEN = 768;

const rng = new Rng(17);
const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** One projection [K → N] of x in `format`, added to `g`; returns its output and its weight bytes. */
function projection(g: GraphBuilder, format: Format, name: string, x: string, K: number, N: number): { out: string; bytes: number } {
  if (format === 'f32') {
    const w = Float32Array.from({ length: K * N }, () => (rng.next() - 0.5) * 0.05);
    return { out: g.op('MatMul', [x, g.inlineFloat(name, [K, N], w)]), bytes: w.byteLength };
  }
  if (format === 'dqmm8') {
    const w = Int8Array.from({ length: K * N }, () => Math.floor(rng.next() * 255) - 127);
    const scales = new Float32Array(N).fill(4e-4);
    const inputs = [x, g.inlineRaw(name, 'int8', [K, N], bytesOf(w)), g.inlineFloat(`${name}_s`, [N], scales)];
    return { out: g.opN('DynamicQuantizeMatMul', inputs, [g.fresh('y')], {}, MS_DOMAIN)[0]!, bytes: w.byteLength + scales.byteLength };
  }
  const bits = format === 'nbits8' ? 8 : 4;
  const blocks = Math.ceil(K / BLOCK);
  const data = Uint8Array.from({ length: (N * blocks * BLOCK * bits) / 8 }, () => Math.floor(rng.next() * 256));
  const scales = new Float32Array(N * blocks).fill(4e-4);
  const inputs = [x, g.inlineRaw(name, 'uint8', [N, blocks, (BLOCK * bits) / 8], data), g.inlineFloat(`${name}_s`, [N * blocks], scales)];
  const attrs = { K, N, bits, block_size: BLOCK, accuracy_level: 4 };
  return { out: g.opN('MatMulNBits', inputs, [g.fresh('y')], attrs, MS_DOMAIN)[0]!, bytes: data.byteLength + scales.byteLength };
}

/** A model of `body`'s matmuls over x [batch, HIDDEN]; returns it and its weight bytes. */
function model(body: (g: GraphBuilder, x: string) => { out: string; bytes: number }): { model: Uint8Array; bytes: number } {
  const g = new GraphBuilder('matmuls');
  const { out, bytes } = body(g, g.input('x', 'float', ['batch', HIDDEN]));
  g.output(out, 'float');
  return { model: encodeModel(g.build()), bytes };
}

/** 24 layers of the model's four projections, chained as in a layer (Slices stand in for the rest). */
const projectionsModel = (format: Format) =>
  model((g, x) => {
    let bytes = 0;
    const add = (p: { out: string; bytes: number }) => {
      bytes += p.bytes;
      return p.out;
    };
    const first = (v: string, width: number) => g.op('Slice', [v, g.constInt64([0]), g.constInt64([width]), g.constInt64([1])]);
    for (let l = 0; l < 24; l++) {
      const xz = add(projection(g, format, `l${l}_in`, x, HIDDEN, 3072));
      const dbc = add(projection(g, format, `l${l}_x`, first(xz, 1536), 1536, 80));
      const dt = add(projection(g, format, `l${l}_dt`, first(dbc, 48), 48, 1536));
      x = add(projection(g, format, `l${l}_out`, dt, 1536, HIDDEN));
    }
    return { out: x, bytes };
  });

const headModel = (format: Format) => model((g, x) => projection(g, format, 'lm_head', x, HIDDEN, 50280));

const options: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: threads,
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
  extra: { session: { intra_op: intraOpSpin({}) } },
};

const bandwidth = (await measureReadBandwidth(threads)).bytesPerSecond;
console.log(`ONNX Runtime matmuls alone, ${threads} intra-op threads, median of ${runs} alternating runs; read bandwidth ${(bandwidth / 1e9).toFixed(1)} GB/s\n`);
console.log('| graph | format | weight bytes | batch 1, ms | GB/s | ÷ bandwidth | batch 8, ms |\n|---|---|---|---|---|---|---|');
for (const [label, make] of [['24 layers of projections', projectionsModel], ['LM head', headModel]] as const) {
  const built = FORMATS.map((f) => ({ format: f, ...make(f) }));
  const sessions = await Promise.all(built.map((b) => ort.InferenceSession.create(b.model, options)));
  const times = new Map<number, number[][]>();
  for (const batch of [1, 8]) {
    const feed = { x: new ort.Tensor('float32', Float32Array.from({ length: batch * HIDDEN }, () => rng.next() - 0.5), [batch, HIDDEN]) };
    const t = sessions.map(() => [] as number[]);
    for (const s of sessions) for (let i = 0; i < 5; i++) await s.run(feed);
    for (let i = 0; i < runs; i++) {
      for (let j = 0; j < sessions.length; j++) {
        const k = (i + j) % sessions.length; // rotate who goes first
        const started = performance.now();
        await sessions[k]!.run(feed);
        t[k]!.push(performance.now() - started);
      }
    }
    times.set(batch, t);
  }
  built.forEach((b, j) => {
    const ms1 = median(times.get(1)![j]!);
    const ms8 = median(times.get(8)![j]!);
    const gbs = b.bytes / (ms1 / 1000) / 1e9;
    console.log(`| ${label} | ${b.format} | ${(b.bytes / 1e6).toFixed(1)} MB | ${ms1.toFixed(2)} | ${gbs.toFixed(1)} | ${((100 * gbs * 1e9) / bandwidth).toFixed(0)} % | ${ms8.toFixed(2)} |`);
  });
  await Promise.all(sessions.map((s) => s.release()));
}

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
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { DEFAULT_ORT_INTRA_OP_SPIN_US } from '../shared/config.ts';
import { intraOpSpin } from '../worker/engine/ort/ort-engine.ts';
import { measureReadBandwidth } from './memory-bandwidth.ts';
import { median } from './stats.ts';

const { onnx } = onnxProto;
const T = onnx.TensorProto.DataType;
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

let seed = 17;
const random = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;

/** One projection [K → N] in `format`: its initializers, its node, and its weight bytes. */
function projection(format: Format, name: string, x: string, K: number, N: number) {
  const inits: onnxProto.onnx.ITensorProto[] = [];
  const out = `${name}_y`;
  let node: onnxProto.onnx.INodeProto;
  if (format === 'f32') {
    const w = Float32Array.from({ length: K * N }, () => (random() - 0.5) * 0.05);
    inits.push({ name, dataType: T.FLOAT, dims: [K, N], rawData: new Uint8Array(w.buffer) });
    node = { opType: 'MatMul', input: [x, name], output: [out] };
  } else if (format === 'dqmm8') {
    const w = Int8Array.from({ length: K * N }, () => Math.floor(random() * 255) - 127);
    const scales = new Float32Array(N).fill(4e-4);
    inits.push({ name, dataType: T.INT8, dims: [K, N], rawData: new Uint8Array(w.buffer) });
    inits.push({ name: `${name}_s`, dataType: T.FLOAT, dims: [N], rawData: new Uint8Array(scales.buffer) });
    node = { opType: 'DynamicQuantizeMatMul', domain: 'com.microsoft', input: [x, name, `${name}_s`], output: [out] };
  } else {
    const bits = format === 'nbits8' ? 8 : 4;
    const blocks = Math.ceil(K / BLOCK);
    const data = Uint8Array.from({ length: (N * blocks * BLOCK * bits) / 8 }, () => Math.floor(random() * 256));
    const scales = new Float32Array(N * blocks).fill(4e-4);
    inits.push({ name, dataType: T.UINT8, dims: [N, blocks, (BLOCK * bits) / 8], rawData: data });
    inits.push({ name: `${name}_s`, dataType: T.FLOAT, dims: [N * blocks], rawData: new Uint8Array(scales.buffer) });
    const attrs: [string, number][] = [['K', K], ['N', N], ['bits', bits], ['block_size', BLOCK], ['accuracy_level', 4]];
    node = {
      opType: 'MatMulNBits',
      domain: 'com.microsoft',
      input: [x, name, `${name}_s`],
      output: [out],
      attribute: attrs.map(([n, i]) => ({ name: n, type: onnx.AttributeProto.AttributeType.INT, i })),
    };
  }
  const bytes = inits.reduce((n, t) => n + t.rawData!.byteLength, 0);
  return { inits, node, out, bytes };
}

function encode(nodes: onnxProto.onnx.INodeProto[], inits: onnxProto.onnx.ITensorProto[], input: string, output: string): Uint8Array {
  const info = (name: string, dims?: number[]) => ({
    name,
    type: { tensorType: { elemType: T.FLOAT, ...(dims ? { shape: { dim: [{ dimParam: 'batch' }, ...dims.map((d) => ({ dimValue: d }))] } } : {}) } },
  });
  return onnx.ModelProto.encode({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }, { domain: 'com.microsoft', version: 1 }],
    graph: { name: 'matmuls', node: nodes, initializer: inits, input: [info(input, [HIDDEN])], output: [info(output)] },
  }).finish();
}

/** 24 layers of the model's four projections, chained as in a layer (Slices stand in for the rest). */
function projectionsModel(format: Format): { model: Uint8Array; bytes: number } {
  const nodes: onnxProto.onnx.INodeProto[] = [];
  const inits: onnxProto.onnx.ITensorProto[] = [];
  let bytes = 0;
  const slice = (x: string, width: number, name: string) => {
    inits.push({ name: `${name}_ends`, dataType: T.INT64, dims: [1], int64Data: [width] });
    inits.push({ name: `${name}_starts`, dataType: T.INT64, dims: [1], int64Data: [0] });
    inits.push({ name: `${name}_axes`, dataType: T.INT64, dims: [1], int64Data: [1] });
    nodes.push({ opType: 'Slice', input: [x, `${name}_starts`, `${name}_ends`, `${name}_axes`], output: [`${name}_o`] });
    return `${name}_o`;
  };
  let x = 'x';
  for (let l = 0; l < 24; l++) {
    const add = (p: ReturnType<typeof projection>) => {
      nodes.push(p.node);
      inits.push(...p.inits);
      bytes += p.bytes;
      return p.out;
    };
    const xz = add(projection(format, `l${l}_in`, x, HIDDEN, 3072));
    const xs = slice(xz, 1536, `l${l}_xs`);
    const dbc = add(projection(format, `l${l}_x`, xs, 1536, 80));
    const dt = add(projection(format, `l${l}_dt`, slice(dbc, 48, `l${l}_dts`), 48, 1536));
    x = add(projection(format, `l${l}_out`, dt, 1536, HIDDEN));
  }
  return { model: encode(nodes, inits, 'x', x), bytes };
}

function headModel(format: Format): { model: Uint8Array; bytes: number } {
  const p = projection(format, 'lm_head', 'x', HIDDEN, 50280);
  return { model: encode([p.node], p.inits, 'x', p.out), bytes: p.bytes };
}

const options: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: threads,
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
  extra: { session: { intra_op: intraOpSpin({ intraOpSpinMicros: DEFAULT_ORT_INTRA_OP_SPIN_US }) } },
};

const bandwidth = (await measureReadBandwidth(threads)).bytesPerSecond;
console.log(`ONNX Runtime matmuls alone, ${threads} intra-op threads, median of ${runs} alternating runs; read bandwidth ${(bandwidth / 1e9).toFixed(1)} GB/s\n`);
console.log('| graph | format | weight bytes | batch 1, ms | GB/s | ÷ bandwidth | batch 8, ms |\n|---|---|---|---|---|---|---|');
for (const [label, make] of [['24 layers of projections', projectionsModel], ['LM head', headModel]] as const) {
  const built = FORMATS.map((f) => ({ format: f, ...make(f) }));
  const sessions = await Promise.all(built.map((b) => ort.InferenceSession.create(b.model, options)));
  const times = new Map<number, number[][]>();
  for (const batch of [1, 8]) {
    const feed = { x: new ort.Tensor('float32', Float32Array.from({ length: batch * HIDDEN }, () => random() - 0.5), [batch, HIDDEN]) };
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

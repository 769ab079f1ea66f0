// ONNX Runtime's fused Mamba-style contrib ops against the standard-op formulations our graph
// uses, at mamba-130m's shapes (d_inner 1536, conv kernel 4), on the CPU provider:
// - the causal depthwise conv + SiLU: CausalConvWithState (channels last, fused SiLU) against
//   the graph's decode form (a weighted tap sum as Mul + MatMul by ones, bias, SiLU) and its
//   prefill form (Transpose, Conv, Transpose, SiLU);
// - dt = softplus(dt_proj(x) + bias): LinearAttentionGate against the bias Add and the graph's
//   five-op softplus.
// (ORT's LinearAttention as the selective scan is a variant of bench/ort-scan-formulations.ts.)
//
//   npx tsx bench/ort-fused-ops.ts [--threads 2] [--rounds 40]
//
// Each model chains its formulation 24 times (a layer's output is the next one's input, as in
// the 24-layer model), so one run is one step's worth of these ops; A and B run alternately in
// one process, and the table gives the median run. Outputs are checked equal first. When
// onnxruntime-node is upgraded, run this again: the graph adopts a fused op once it wins here
// (worker/engine/ort/mamba-graph.ts; judged then by bench/ort-graph-ab.ts on the whole graph).
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { Rng } from '../shared/rng.ts';
import { GraphBuilder, MS_DOMAIN, encodeModel } from '../worker/engine/ort/onnx-builder.ts';
import { intraOpSpin } from '../worker/engine/ort/ort-engine.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({ options: { threads: { type: 'string', default: '2' }, rounds: { type: 'string', default: '40' } } });
const D = 1536;
const K = 4;
const LAYERS = 24;
const rng = new Rng(7);
const randn = (n: number, scale: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
const convW = randn(D * K, 0.3); // [D, 1, K]: small enough that 24 chained layers stay bounded
const convWKD = new Float32Array(K * D); // [K, D], the decode form's layout
for (let ch = 0; ch < D; ch++) for (let k = 0; k < K; k++) convWKD[k * D + ch] = convW[ch * K + k]!;
const convBias = randn(D, 0.1);
const dtBias = Float32Array.from({ length: D }, () => -2 - rng.next()); // the usual negative dt bias

interface Case {
  readonly name: string;
  readonly batch: number;
  readonly length: number;
  /** One layer's formulation: input [B, L, D] (and the carried conv rows [B, K-1, D]) -> output [B, L, D]. */
  readonly standard: (g: GraphBuilder, x: string, carried: string) => string;
  readonly fused: (g: GraphBuilder, x: string, carried: string) => string;
}

const silu = (g: GraphBuilder, v: string) => g.op('Mul', [v, g.op('Sigmoid', [v])]);
const fusedConv = (g: GraphBuilder, x: string, carried: string) =>
  g.opN('CausalConvWithState', [x, g.constFloat(convW, [D, 1, K], 'conv_w'), g.constFloat(convBias, [D], 'conv_b'), carried], [g.fresh('y'), g.fresh('carry')], { ndim: 1, channels_last: 1, activation: 'silu' }, MS_DOMAIN)[0]!;
const softplusFused = (g: GraphBuilder, a: string) =>
  g.opN('LinearAttentionGate', [a, g.constFloat(dtBias, [D], 'dt_b'), g.constFloat(new Array<number>(D).fill(1), [D], 'ones_d')], [g.fresh('dt')], {}, MS_DOMAIN)[0]!;
const softplusStandard = (g: GraphBuilder, a: string) => {
  const v = g.op('Add', [a, g.constFloat(dtBias, [D], 'dt_b')]);
  const exp = g.op('Exp', [g.op('Min', [v, g.constFloat([80], [], 'eighty')])]);
  return g.op('Max', [v, g.op('Log', [g.op('Add', [exp, g.constFloat([1], [], 'one')])])]);
};

const cases: Case[] = [
  ...[1, 8].map(
    (batch): Case => ({
      name: `conv + SiLU, decode (batch ${batch})`,
      batch,
      length: 1,
      standard: (g, x, carried) => {
        const cat = g.op('Concat', [carried, x], { axis: 1 }); // [B, K, D]: the decode step's window
        const sum = g.op('MatMul', [g.constFloat(new Array<number>(K).fill(1), [1, K], 'ones_k'), g.op('Mul', [cat, g.constFloat(convWKD, [K, D], 'conv_w_kd')])]);
        return silu(g, g.op('Add', [sum, g.constFloat(convBias, [D], 'conv_b')]));
      },
      fused: fusedConv,
    }),
  ),
  {
    name: 'conv + SiLU, prefill (L 256)',
    batch: 1,
    length: 256,
    standard: (g, x, carried) => {
      const cat = g.op('Transpose', [g.op('Concat', [carried, x], { axis: 1 })], { perm: [0, 2, 1] }); // [B, D, K-1+L]
      const y = g.op('Conv', [cat, g.constFloat(convW, [D, 1, K], 'conv_w'), g.constFloat(convBias, [D], 'conv_b')], { group: D, kernel_shape: [K], pads: [0, 0], strides: [1], dilations: [1] });
      return silu(g, g.op('Transpose', [y], { perm: [0, 2, 1] }));
    },
    fused: fusedConv,
  },
  ...[
    [1, 1],
    [8, 1],
    [1, 256],
  ].map(
    ([batch, length]): Case => ({
      name: `softplus(a + bias), ${length === 1 ? `decode (batch ${batch})` : `prefill (L ${length})`}`,
      batch: batch!,
      length: length!,
      standard: (g, x) => softplusStandard(g, x),
      fused: (g, x) => softplusFused(g, x),
    }),
  ),
];

function model(c: Case, layer: Case['standard']): Uint8Array {
  const g = new GraphBuilder('fused_ops');
  let x = g.input('x', 'float', [c.batch, c.length, D]);
  const carried = g.input('carried', 'float', [c.batch, K - 1, D]);
  for (let i = 0; i < LAYERS; i++) x = layer(g, x, carried);
  g.op('Identity', [x], {}, 'y');
  g.output('y', 'float');
  return encodeModel(g.build());
}

const options: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: Number(args.threads),
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
  extra: { session: { intra_op: intraOpSpin({}) } }, // the engine's default, as served
};
const rounds = Number(args.rounds);
console.log(`ORT fused contrib ops vs the graph's standard ops: d_inner ${D}, conv kernel ${K}, ${LAYERS} layers chained, ${options.intraOpNumThreads} intra-op threads, median of ${rounds} alternating runs\n`);
console.log('| formulation | standard ops, µs a layer | fused op, µs a layer | fused ÷ standard | max |Δ| ÷ max |y| |\n|---|---|---|---|---|');
for (const c of cases) {
  const [a, b] = await Promise.all([c.standard, c.fused].map((f) => ort.InferenceSession.create(model(c, f), options)));
  const feeds = {
    x: new ort.Tensor('float32', randn(c.batch * c.length * D, 1), [c.batch, c.length, D]),
    carried: new ort.Tensor('float32', randn(c.batch * (K - 1) * D, 1), [c.batch, K - 1, D]),
  };
  const [ya, yb] = [(await a!.run(feeds)).y!.data as Float32Array, (await b!.run(feeds)).y!.data as Float32Array];
  let diff = 0;
  let largest = 0;
  for (let i = 0; i < ya.length; i++) {
    diff = Math.max(diff, Math.abs(ya[i]! - yb[i]!));
    largest = Math.max(largest, Math.abs(ya[i]!));
  }
  const times: [number[], number[]] = [[], []];
  for (let r = 0; r < rounds; r++) {
    // Alternate which goes first, so a slow spell of the machine falls on both alike.
    for (const i of r % 2 ? [1, 0] : [0, 1]) {
      const started = performance.now();
      await [a, b][i]!.run(feeds);
      times[i]!.push(performance.now() - started);
    }
  }
  const [ma, mb] = times.map((t) => median(t) * (1000 / LAYERS)) as [number, number];
  console.log(`| ${c.name} | ${ma.toFixed(1)} | ${mb.toFixed(1)} | ${(mb / ma).toFixed(2)} | ${(diff / largest).toExponential(1)} |`);
  await Promise.all([a!.release(), b!.release()]);
}

// Which formulation of Mamba's selective scan in ONNX ops is fastest on this CPU? (Standard
// ops, and ONNX Runtime's own LinearAttention contrib kernel.)
// One layer of mamba-130m's shape (d_inner 1536, d_state 16), L tokens, batch 1: every
// variant computes y [B, L, D] and the final state from the same inputs; the outputs are
// checked against each other before timing.
//
//   npx tsx bench/ort-scan-formulations.ts [--length 2048] [--threads 1]
//
// The engine uses "step-ND, 6-op body" (see worker/engine/ort/mamba-graph.ts).
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { Rng } from '../shared/rng.ts';
import { GraphBuilder, MS_DOMAIN, encodeModel } from '../worker/engine/ort/onnx-builder.ts';
import { intraOpSpin } from '../worker/engine/ort/ort-engine.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({
  options: { length: { type: 'string', default: '2048' }, threads: { type: 'string', default: '1' }, repeats: { type: 'string', default: '7' } },
});
const D = 1536;
const N = 16;
const L = Number(args.length);
const threads = Number(args.threads);
const repeats = Number(args.repeats);
const rng = new Rng(42);
const A = Float32Array.from({ length: D * N }, (_, i) => -(1 + (i % N)) * (0.5 + rng.next())); // [D, N]
const AT = new Float32Array(D * N); // [N, D]
for (let dd = 0; dd < D; dd++) for (let n = 0; n < N; n++) AT[n * D + dd] = A[dd * N + n]!;

interface Variant {
  readonly name: string;
  readonly idea: string;
  build(g: GraphBuilder, io: { dt: string; dtx: string; Bm: string; Cm: string; h0: string }): void; // must produce 'y' and 'hL' ([B, D, N])
}

const scanAttrs = (n: number, body: GraphBuilder) => ({
  num_scan_inputs: n,
  body: { graph: body.build() },
  scan_input_axes: Array.from({ length: n }, () => 1),
  scan_output_axes: [1],
});

/** A Scan body and its five per-step inputs: the state, dt, dt·x, B and C (named b_…). */
function scanBody() {
  const body = new GraphBuilder('b', 'b_');
  const [h, dt, dtx, b, c] = ['h', 'dt', 'dtx', 'b', 'c'].map((name) => body.input(`b_${name}`, 'float')) as [string, string, string, string, string];
  return { body, h, dt, dtx, b, c };
}

/** One step on h laid out [B, N, D]: 6 ops, broadcasts along contiguous D, y by MatMul. */
function stepND(body: GraphBuilder, p: string, AT_: string, h: string, dt: string, dtx: string, b: string, c: string) {
  const one = body.constInt64([1]);
  const two = body.constInt64([2]);
  const decay = body.op('Exp', [body.op('Mul', [body.op('Unsqueeze', [dt, one]), AT_])]);
  const inject = body.op('Mul', [body.op('Unsqueeze', [dtx, one]), body.op('Unsqueeze', [b, two])]);
  const hNew = body.op('Add', [body.op('Mul', [decay, h]), inject]);
  body.op('Identity', [hNew], {}, `${p}h_out`);
  body.op('Squeeze', [body.op('MatMul', [body.op('Unsqueeze', [c, one]), hNew]), one], {}, `${p}y`);
}

const variants: Variant[] = [
  {
    name: 'precomputed',
    idea: 'exp(dt*A) and dt*B*x for all L first ([B,L,D,N] each), then a 4-op Scan body',
    build(g, io) {
      const Ac = g.constFloat(A, [D, N]);
      const dA = g.op('Exp', [g.op('Mul', [g.op('Unsqueeze', [io.dt, g.constInt64([3])]), Ac])]);
      const dBx = g.op('Mul', [g.op('Unsqueeze', [io.dtx, g.constInt64([3])]), g.op('Unsqueeze', [io.Bm, g.constInt64([2])])]);
      const body = new GraphBuilder('b', 'b_');
      const h = body.input('b_h', 'float');
      const a = body.input('b_a', 'float');
      const u = body.input('b_u', 'float');
      const c = body.input('b_c', 'float');
      const hn = body.op('Add', [body.op('Mul', [a, h]), u]);
      body.op('Identity', [hn], {}, 'b_h_out');
      body.op('ReduceSum', [body.op('Mul', [hn, body.op('Unsqueeze', [c, body.constInt64([1])])]), body.constInt64([2])], { keepdims: 0 }, 'b_y');
      body.output('b_h_out', 'float');
      body.output('b_y', 'float');
      g.opN('Scan', [io.h0, dA, dBx, io.Cm], ['hL', 'y'], scanAttrs(3, body));
    },
  },
  {
    name: 'precomputed-ND',
    idea: 'exp(dt*A) and dt*x*B for all L first in the [N, D] layout ([B,L,N,D] each, broadcasts along contiguous D), then a 3-op Scan body (Mul, Add, MatMul)',
    build(g, io) {
      const ATc = g.constFloat(AT, [N, D]);
      const r = (v: string, ...shape: number[]) => g.op('Reshape', [v, g.constInt64([0, 0, ...shape])]);
      const dA = g.op('Exp', [g.op('Mul', [r(io.dt, 1, D), ATc])]); // [B, L, N, D]
      const dBx = g.op('Mul', [r(io.dtx, 1, D), r(io.Bm, N, 1)]); // [B, L, N, D]
      const body = new GraphBuilder('b', 'b_');
      const h = body.input('b_h', 'float');
      const a = body.input('b_a', 'float');
      const u = body.input('b_u', 'float');
      const c = body.input('b_c', 'float');
      const hn = body.op('Add', [body.op('Mul', [a, h]), u], {}, 'b_h_out');
      body.op('MatMul', [c, hn], {}, 'b_y');
      body.output('b_h_out', 'float');
      body.output('b_y', 'float');
      const h0t = g.op('Transpose', [io.h0], { perm: [0, 2, 1] });
      const [hLt, ys] = g.opN('Scan', [h0t, dA, dBx, r(io.Cm, 1, N)], ['hLt', 'ys'], scanAttrs(3, body));
      g.op('Transpose', [hLt!], { perm: [0, 2, 1] }, 'hL');
      g.op('Reshape', [ys!, g.constInt64([0, 0, D])], {}, 'y');
    },
  },
  {
    name: 'step-DN',
    idea: 'discretize inside a Scan body, state in HF layout [B,D,N]',
    build(g, io) {
      const Ac = g.constFloat(A, [D, N]);
      const { body, h, dt, dtx, b, c } = scanBody();
      const one = body.constInt64([1]);
      const two = body.constInt64([2]);
      const decay = body.op('Exp', [body.op('Mul', [body.op('Unsqueeze', [dt, two]), Ac])]);
      const inject = body.op('Mul', [body.op('Unsqueeze', [dtx, two]), body.op('Unsqueeze', [b, one])]);
      const hn = body.op('Add', [body.op('Mul', [decay, h]), inject]);
      body.op('Identity', [hn], {}, 'b_h_out');
      body.op('ReduceSum', [body.op('Mul', [hn, body.op('Unsqueeze', [c, one])]), two], { keepdims: 0 }, 'b_y');
      body.output('b_h_out', 'float');
      body.output('b_y', 'float');
      g.opN('Scan', [io.h0, io.dt, io.dtx, io.Bm, io.Cm], ['hL', 'y'], scanAttrs(4, body));
    },
  },
  {
    name: 'step-ND, per-step Unsqueeze/Squeeze/Identity (graph v7)',
    idea: 'discretize inside a Scan body, state [B,N,D] (broadcast along contiguous D), y = C·h by MatMul; the body reshapes each step\'s slices itself (11 ops)',
    build(g, io) {
      const ATc = g.constFloat(AT, [N, D]);
      const { body, h, dt, dtx, b, c } = scanBody();
      stepND(body, 'b_', ATc, h, dt, dtx, b, c);
      body.output('b_h_out', 'float');
      body.output('b_y', 'float');
      const h0t = g.op('Transpose', [io.h0], { perm: [0, 2, 1] });
      const [hLt] = g.opN('Scan', [h0t, io.dt, io.dtx, io.Bm, io.Cm], ['hLt', 'y'], scanAttrs(4, body));
      g.op('Transpose', [hLt!], { perm: [0, 2, 1] }, 'hL');
    },
  },
  ...[
    {
      axis: 1,
      injectByMatMul: false,
      name: 'step-ND, 6-op body (used)',
      idea: 'the same step; its inputs reshaped once outside so each slice has the shape its broadcast wants: the body is the 6 ops of the step',
    },
    {
      axis: 1,
      injectByMatMul: true,
      name: 'step-ND, 6-op body, (dt·x) ⊗ B by a K = 1 MatMul',
      idea: 'the used body with the outer product as MatMul([B,N,1], [B,1,D]) instead of a broadcasting Mul (what the decode step does since graph v11)',
    },
    {
      axis: 0,
      injectByMatMul: false,
      name: 'step-ND, 6-op body, time-major (scan axis 0)',
      idea: 'the same 6-op body over inputs transposed to [L, B, ...] outside, so Scan iterates its first axis (no internal transposes)',
    },
  ].map(
    ({ axis, injectByMatMul, name, idea }): Variant => ({
      name,
      idea,
      build(g, io) {
        const ATc = g.constFloat(AT, [N, D]);
        const { body, h, dt, dtx, b, c } = scanBody();
        const inject = injectByMatMul ? body.op('MatMul', [b, dtx]) : body.op('Mul', [dtx, b]);
        const hNew = body.op('Add', [body.op('Mul', [body.op('Exp', [body.op('Mul', [dt, ATc])]), h]), inject], {}, 'b_h_out');
        body.op('MatMul', [c, hNew], {}, 'b_y');
        body.output('b_h_out', 'float');
        body.output('b_y', 'float');
        // [B, L, x] -> [B, L, ...shape] (axis 1) or [L, B, ...shape] (axis 0).
        const steps = (v: string, ...shape: number[]) =>
          axis === 1 ? g.op('Reshape', [v, g.constInt64([0, 0, ...shape])]) : g.op('Reshape', [g.op('Transpose', [v], { perm: [1, 0, 2] }), g.constInt64([0, 0, ...shape])]);
        const h0t = g.op('Transpose', [io.h0], { perm: [0, 2, 1] });
        const [hLt, ys] = g.opN('Scan', [h0t, steps(io.dt, 1, D), steps(io.dtx, 1, D), steps(io.Bm, N, 1), steps(io.Cm, 1, N)], ['hLt', 'ys'], {
          ...scanAttrs(4, body),
          scan_input_axes: [axis, axis, axis, axis],
          scan_output_axes: [axis],
        });
        g.op('Transpose', [hLt!], { perm: [0, 2, 1] }, 'hL');
        const rows = g.op('Reshape', [ys!, g.constInt64([0, 0, D])]);
        if (axis === 1) g.op('Identity', [rows], {}, 'y');
        else g.op('Transpose', [rows], { perm: [1, 0, 2] }, 'y');
      },
    }),
  ),
  {
    name: "ORT's LinearAttention (com.microsoft, update_rule gated)",
    idea: 'one kernel: S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = q_t^T S_t with a head per channel (D heads, d_k = N, d_v = 1), k = B and q = C shared by all heads, g = dt*A for all L first ([B,L,D,N])',
    build(g, io) {
      const logDecay = g.op('Reshape', [g.op('Mul', [g.op('Unsqueeze', [io.dt, g.constInt64([3])]), g.constFloat(A, [D, N])]), g.constInt64([0, 0, D * N])]);
      const state = g.op('Reshape', [io.h0, g.constInt64([0, D, N, 1])]); // [B, heads, d_k, d_v]
      const [y, hL] = g.opN('LinearAttention', [io.Cm, io.Bm, io.dtx, state, logDecay], ['la_y', 'la_h'], { q_num_heads: 1, kv_num_heads: D, update_rule: 'gated', scale: { float: 1 } }, MS_DOMAIN);
      g.op('Identity', [y!], {}, 'y');
      g.op('Reshape', [hL!, g.constInt64([0, D, N])], {}, 'hL');
    },
  },
  ...[8, 32].map(
    (T): Variant => ({
      name: `unrolled-${T}`,
      idea: `Scan over chunks of ${T}; body discretizes the chunk at once then unrolls ${T} steps ([B,N,D])`,
      build(g, io) {
        const ATc = g.constFloat(AT, [N, D]);
        const pad = (L % T === 0 ? 0 : T - (L % T));
        // dt = 0 on padded steps leaves the state unchanged (decay 1, input 0).
        const padded = (x: string, last: number) =>
          g.op('Reshape', [pad ? g.op('Pad', [x, g.constInt64([0, 0, 0, 0, pad, 0])]) : x, g.constInt64([0, -1, T, last])]);
        const { body, h, dt: dtc, dtx: dtxc, b: bc, c: cc } = scanBody();
        const one = body.constInt64([1]);
        const two = body.constInt64([2]);
        const three = body.constInt64([3]);
        const a = body.op('Exp', [body.op('Mul', [body.op('Unsqueeze', [dtc, two]), ATc])]);
        const u = body.op('Mul', [body.op('Unsqueeze', [dtxc, two]), body.op('Unsqueeze', [bc, three])]);
        const as = body.opN('Split', [a], Array.from({ length: T }, (_, i) => `b_a${i}`), { axis: 1 });
        const us = body.opN('Split', [u], Array.from({ length: T }, (_, i) => `b_u${i}`), { axis: 1 });
        let cur = body.op('Unsqueeze', [h, one]);
        const hs: string[] = [];
        for (let t = 0; t < T; t++) {
          cur = body.op('Add', [body.op('Mul', [as[t]!, cur]), us[t]!]);
          hs.push(cur);
        }
        body.op('Squeeze', [cur, one], {}, 'b_h_out');
        body.op('Squeeze', [body.op('MatMul', [body.op('Unsqueeze', [cc, two]), body.op('Concat', hs, { axis: 1 })]), two], {}, 'b_y');
        body.output('b_h_out', 'float');
        body.output('b_y', 'float');
        const h0t = g.op('Transpose', [io.h0], { perm: [0, 2, 1] });
        const [hLt, yc] = g.opN('Scan', [h0t, padded(io.dt, D), padded(io.dtx, D), padded(io.Bm, N), padded(io.Cm, N)], ['hLt', 'yc'], scanAttrs(4, body));
        g.op('Transpose', [hLt!], { perm: [0, 2, 1] }, 'hL');
        g.op('Slice', [g.op('Reshape', [yc!, g.constInt64([0, -1, D])]), g.constInt64([0]), g.constInt64([L]), g.constInt64([1])], {}, 'y');
      },
    }),
  ),
];

function buildModel(v: Variant): Uint8Array {
  const g = new GraphBuilder('scan');
  const io = {
    dt: g.input('dt', 'float', [1, L, D]),
    dtx: g.input('dtx', 'float', [1, L, D]),
    Bm: g.input('Bm', 'float', [1, L, N]),
    Cm: g.input('Cm', 'float', [1, L, N]),
    h0: g.input('h0', 'float', [1, D, N]),
  };
  v.build(g, io);
  g.output('y', 'float');
  g.output('hL', 'float');
  return encodeModel(g.build());
}

const randn = (n: number, scale: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
const feeds = {
  dt: new ort.Tensor('float32', Float32Array.from({ length: L * D }, () => 0.001 + 0.1 * rng.next()), [1, L, D]),
  dtx: new ort.Tensor('float32', randn(L * D, 0.1), [1, L, D]),
  Bm: new ort.Tensor('float32', randn(L * N, 1), [1, L, N]),
  Cm: new ort.Tensor('float32', randn(L * N, 1), [1, L, N]),
  h0: new ort.Tensor('float32', randn(D * N, 1), [1, D, N]),
};

console.log(`selective scan, one layer: B=1, L=${L}, d_inner=${D}, d_state=${N}, ${threads} intra-op thread(s)\n`);
console.log('| formulation | ms (median) | tokens/s (one layer) | max |Δy| vs the used one | idea |\n|---|---|---|---|---|');
// All variants' sessions side by side, runs alternating in rotating order (a shared machine's
// slow spells then fall on every variant alike), the median run of each.
// The served bounded spin: ORT's own long spin after every run would have each idle session's
// threads compete with the one running.
const sessionOptions: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: threads,
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
  extra: { session: { intra_op: intraOpSpin({}) } },
};
const sessions = await Promise.all(variants.map((v) => ort.InferenceSession.create(buildModel(v), sessionOptions)));
const outputs = await Promise.all(sessions.map((session) => session.run(feeds)));
const times = sessions.map(() => [] as number[]);
for (let r = 0; r < repeats; r++) {
  for (let k = 0; k < sessions.length; k++) {
    const j = (r + k) % sessions.length;
    const started = performance.now();
    await sessions[j]!.run(feeds);
    times[j]!.push(performance.now() - started);
  }
}
const results = variants.map((v, j) => ({ name: v.name, ms: median(times[j]!), y: outputs[j]!.y!.data as Float32Array, idea: v.idea }));
const referenceY = results.find((r) => r.name.includes('(used)'))?.y;
await Promise.all(sessions.map((session) => session.release()));
for (const r of results) {
  let diff = 0;
  for (let i = 0; i < r.y.length; i++) diff = Math.max(diff, Math.abs(r.y[i]! - referenceY![i]!));
  console.log(`| ${r.name} | ${r.ms.toFixed(1)} | ${((L * 1000) / r.ms).toFixed(0)} | ${diff.toExponential(1)} | ${r.idea} |`);
}

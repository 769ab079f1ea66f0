// The ONNX graph of a Mamba model: one graph serves prefill (L tokens) and decode (L = 1),
// so the weights are held once by one InferenceSession (onnxruntime-node cannot share
// initializers between sessions).
//
// The two cases want different formulations, so the graph is one top-level If whose branches
// each hold the whole model and read the same weights from the main graph (outer scope):
// - decode (L = 1): a straight line of ops — conv as a K-tap weighted sum, one scan step.
//   No control flow inside: every Scan/If invocation costs ORT ~0.15-0.2 ms of subgraph
//   set-up, which per layer would be a large share of a decode step.
// - prefill (L > 1): ONNX Conv for the causal depthwise conv, and a Scan over the sequence.
//
// Inputs:  tokens int64 [B, L]; logits_start int64 [1] (first position whose logits are
//          returned: L-1 for "last only", 0 for all); per Mamba layer (numbered i = 0, 1, ...
//          over the Mamba layers only), conv_state_i [B, K, D] and ssm_state_i [B, N, D]. The
//          states are stored transposed from HF's layout ([D, K], [D, N]) so every broadcast
//          runs along the contiguous D axis and decode needs no transposes; the engine converts
//          on import/export only. A hybrid's attention layers add their rings, the window mask
//          and the RoPE tables (attention-graph.ts).
// Outputs: logits [B, L - logits_start, V]; conv_state_out_i, ssm_state_out_i (same shapes);
//          a hybrid's attn_k_new_a / attn_v_new_a.
//
// For L > 1 the selective scan is an ONNX Scan over the sequence whose body does one step
// with the state laid out [B, N, D] (broadcasts run along the contiguous D axis, and y = C·h is a
// MatMul). bench/ort-scan-formulations.ts measures this against the alternatives
// (discretization precomputed for all L, chunked/unrolled bodies, nested scans); this one
// won on this CPU because the per-iteration cost of Scan is small next to the elementwise
// work, and the alternatives add memory traffic of [L, N, D] intermediates.
//
// ONNX Runtime 1.30 also has fused contrib kernels for this family of models (LinearAttention
// for the scan, CausalConvWithState for the conv + SiLU, LinearAttentionGate for softplus(a +
// bias)). On its CPU provider each is slower at our shapes than the standard ops used here
// (bench/ort-fused-ops.ts and bench/ort-scan-formulations.ts; a whole graph built with the conv
// and gate ops decoded 10 % slower at batch 1 and 21 % at batch 8 under bench/ort-graph-ab.ts),
// so they are not used.
import type { Checkpoint } from '../../model/checkpoint.ts';
import { layerTypes } from '../../model/mamba-config.ts';
import {
  ATTENTION_INPUTS,
  emitAttentionLayer,
  emitAttentionShared,
  registerAttentionWeights,
  ringInput,
  ringOutput,
  type AttentionDims,
  type AttentionWeightNames,
  type AttentionWeightRefs,
} from './attention-graph.ts';
import { emitLinear, nbitsNames, registerLinear, type LinearNames, type LinearRef, type NBitsActivations } from './linear.ts';
import { GraphBuilder, encodeModel, MS_DOMAIN, type ExternalRef } from './onnx-builder.ts';
import { blocksPerRow, type WeightsDtype } from './quantize.ts';

/** Where each weight lives in the external weights file, as the graph needs it. */
export interface GraphWeights {
  readonly dtype: WeightsDtype;
  /** f32: the [V, d] table; quantized: the [V, d] matrix block-quantized by rows. */
  embeddings: { readonly kind: 'f32'; readonly table: ExternalRef } | { readonly kind: 'nbits'; readonly matrix: Extract<LinearRef, { kind: 'nbits' }> };
  /** f32: a [V, d] matrix the head's Gemm reads transposed (a tied head is the table itself); quantized: a projection d -> V. */
  head: { readonly kind: 'f32'; readonly rows: ExternalRef } | Extract<LinearRef, { kind: 'nbits' }>;
  normF: ExternalRef;
  /** In layer order; attention entries only in a hybrid. */
  layers: (LayerWeightRefs | AttentionWeightRefs)[];
}

export interface LayerWeightRefs {
  readonly kind: 'mamba';
  norm: ExternalRef; // [d]
  inProj: LinearRef; // d -> 2D (rows 0..D-1 make x, D..2D-1 make z)
  convW: ExternalRef; // [D, 1, K] for Conv (prefill)
  convWKD: ExternalRef; // [K, D] the same weights for the single-step form
  convBias?: ExternalRef; // [D]
  xProj: LinearRef; // D -> R + 2N
  dtProj: LinearRef; // R -> D, with dt_proj's bias
  negExpAT: ExternalRef; // [N, D] = -exp(A_log)^T
  Dskip: ExternalRef; // [D]
  outProj: LinearRef; // D -> d
}

export const GRAPH_INPUTS = { tokens: 'tokens', logitsStart: 'logits_start' } as const;
export const GRAPH_OUTPUTS = { logits: 'logits' } as const;
/** States are fed and returned one tensor per layer: no Gather/Concat of a whole state per call. */
export const stateInput = (kind: 'conv' | 'ssm', layer: number) => `${kind}_state_${layer}`;
export const stateOutput = (kind: 'conv' | 'ssm', layer: number) => `${kind}_state_out_${layer}`;

/** Bumped whenever the graph changes, so cached builds of an older graph are rebuilt. */
export const GRAPH_VERSION = 11;

type Mode = 'step' | 'seq';

/** Names of the weights as initializers of the main graph, visible to both branches. */
interface WeightNames {
  /** f32: Gather's table; quantized: GatherBlockQuantized's rows and their scales. */
  embeddings: { kind: 'f32'; table: string } | { kind: 'nbits'; data: string; scales: string; attrs: Record<string, number>; cols: number };
  /** rows: the f32 [V, d] matrix for Gemm transB; else a projection. */
  head: { kind: 'rows'; rows: string } | LinearNames;
  normF: string;
  layers: (MambaWeightNames | AttentionWeightNames)[];
}

interface MambaWeightNames {
  kind: 'mamba';
  norm: string;
  inProj: LinearNames;
  convW: string;
  convWKD: string;
  convBias?: string;
  xProj: LinearNames;
  dtProj: LinearNames;
  negExpAT: string;
  Dskip: string;
  outProj: LinearNames;
}

interface Dims {
  d: number;
  D: number;
  N: number;
  K: number;
  R: number;
  V: number;
  nL: number;
  eps: number;
  /** Present for a hybrid. */
  attention?: AttentionDims;
}

/**
 * The names of the graph's model-wide initializers, and of Mamba layer i's (projections are
 * named further by linear.ts). registerWeights names them so; native-kernels.ts finds a build's
 * weights in weights.bin by them.
 */
export const WEIGHT_NAMES = { embeddings: 'embeddings', head: 'lm_head', normF: 'norm_f' } as const;
export const layerPrefix = (i: number) => `l${i}.`;
export function mambaLayerWeightNames(i: number) {
  const p = layerPrefix(i);
  return {
    norm: `${p}norm`,
    inProj: `${p}in_proj`,
    convW: `${p}conv_w`,
    convWKD: `${p}conv_w_kd`,
    convBias: `${p}conv_b`,
    xProj: `${p}x_proj`,
    dtProj: `${p}dt_proj`,
    negExpAT: `${p}neg_exp_a_t`,
    Dskip: `${p}d_skip`,
    outProj: `${p}out_proj`,
  };
}

function registerWeights(g: GraphBuilder, weights: GraphWeights, dims: Dims, activations: NBitsActivations): WeightNames {
  const linear = (name: string, ref: LinearRef) => registerLinear(g, name, ref, activations);
  const { d, D, N, K, V } = dims;
  const w = (name: string, shape: number[], ref: ExternalRef) => g.externalFloat(name, shape, ref);
  let embeddings: WeightNames['embeddings'];
  if (weights.embeddings.kind === 'f32') embeddings = { kind: 'f32', table: w(WEIGHT_NAMES.embeddings, [V, d], weights.embeddings.table) };
  else {
    // GatherBlockQuantized wants the scales with the data's rank ([V, blocks, 1]); MatMulNBits
    // wants them flat. Two initializers over the same bytes of the weights file: ORT maps the
    // file, so they are one copy in memory, and the head's (packed by MatMulNBits at load) is
    // released while the gather's is only ever touched at the rows it reads.
    const m = weights.embeddings.matrix;
    const kb = blocksPerRow(m.in, m.block);
    const named = nbitsNames(WEIGHT_NAMES.embeddings, m.bits);
    embeddings = {
      kind: 'nbits',
      data: g.external(named.data, 'uint8', [V, kb, (m.block * m.bits) / 8], m.data),
      scales: g.externalFloat(named.scales, [V, kb, 1], m.scales),
      attrs: { gather_axis: 0, quantize_axis: 2, block_size: m.block, bits: m.bits },
      cols: m.in,
    };
  }
  // A tied head reads the embedding bytes under a second name (Gemm with transB reads the
  // [V, d] rows as stored; MatMulNBits reads the quantized rows). One name would keep the whole
  // table resident twice: ORT pre-packs the head's copy at load, and releases the original only
  // when no other node reads it; under its own name the gather's mapping of the file is
  // touched only at the rows it gathers.
  const head: WeightNames['head'] =
    weights.head.kind === 'f32' ? { kind: 'rows', rows: w(WEIGHT_NAMES.head, [V, d], weights.head.rows) } : linear(WEIGHT_NAMES.head, weights.head);
  return {
    embeddings,
    head,
    normF: w(WEIGHT_NAMES.normF, [d], weights.normF),
    layers: weights.layers.map((lw, i) => {
      if (lw.kind === 'attention') return registerAttentionWeights(g, layerPrefix(i), lw, dims.attention!, activations);
      const n = mambaLayerWeightNames(i);
      const names: MambaWeightNames = {
        kind: 'mamba',
        norm: w(n.norm, [d], lw.norm),
        inProj: linear(n.inProj, lw.inProj),
        convW: w(n.convW, [D, 1, K], lw.convW),
        convWKD: w(n.convWKD, [K, D], lw.convWKD),
        xProj: linear(n.xProj, lw.xProj),
        dtProj: linear(n.dtProj, lw.dtProj),
        negExpAT: w(n.negExpAT, [N, D], lw.negExpAT),
        Dskip: w(n.Dskip, [D], lw.Dskip),
        outProj: linear(n.outProj, lw.outProj),
      };
      if (lw.convBias) names.convBias = w(n.convBias, [D], lw.convBias);
      return names;
    }),
  };
}

/** The whole model as one branch of the top-level If; returns [logits, conv_out…, ssm_out…, k_new…, v_new…]. */
function emitModel(g: GraphBuilder, mode: Mode, W: WeightNames, dims: Dims): string[] {
  const { d, D, N, K, R, V, nL } = dims;
  const i64 = (...v: number[]) => g.constInt64(v);
  const one = i64(1);
  const BIG = i64(Number.MAX_SAFE_INTEGER);
  const eps = g.constFloat([dims.eps], [], 'eps');
  const two = g.constFloat([2], [], 'two');

  // x / sqrt(mean(x^2) + eps) * w is the pattern ORT fuses into SimplifiedLayerNormalization.
  const rmsNorm = (x: string, weight: string) => {
    const ms = g.op('ReduceMean', [g.op('Pow', [x, two])], { axes: [-1], keepdims: 1 });
    return g.op('Mul', [g.op('Div', [x, g.op('Sqrt', [g.op('Add', [ms, eps])])]), weight]);
  };
  // The residual stream: each layer's output is added to it right before the next norm reads
  // it, so the add and the norm are one SkipSimplifiedLayerNormalization (ORT's contrib op; it
  // returns the normalized sum and the sum) — one kernel a layer fewer, which at decode is most
  // of what a small op costs. `pending` is the output not yet added.
  let pending: string | undefined;
  const normOfResid = (weight: string) => {
    if (pending === undefined) return rmsNorm(resid, weight);
    const [y, sum] = [g.fresh('skipnorm'), g.fresh('resid')];
    g.opN('SkipSimplifiedLayerNormalization', [resid, pending, weight], [y, '', '', sum], { epsilon: { float: dims.eps } }, MS_DOMAIN);
    resid = sum;
    pending = undefined;
    return y;
  };
  const silu = (x: string) => g.op('Mul', [x, g.op('Sigmoid', [x])]);
  // softplus(v) = max(v, log(1 + exp(min(v, 80)))): exact in fp32 for every v (above 80
  // log1p(exp(v)) rounds to v, and the clamp keeps exp finite), in five vectorized ops —
  // measured 3-4x faster than ORT's Softplus kernel, which is scalar.
  const oneF = g.constFloat([1], [], 'one');
  const onesK = mode === 'step' ? g.constFloat(new Array<number>(K).fill(1), [1, K], 'ones_k') : ''; // the step's conv sum
  const eighty = g.constFloat([80], [], 'eighty');
  const softplus = (v: string) =>
    g.op('Max', [v, g.op('Log', [g.op('Add', [g.op('Exp', [g.op('Min', [v, eighty])]), oneF])])]);
  const linear = (x: string, w: LinearNames) => emitLinear(g, x, w);

  let resid: string; // [B, L, d]
  const E = W.embeddings;
  if (E.kind === 'f32') resid = g.op('Gather', [E.table, GRAPH_INPUTS.tokens], { axis: 0 });
  else {
    // [B, L, blocks, block] -> [B, L, blocks * block], cut to d if the last block is padded.
    const rows = g.opN('GatherBlockQuantized', [E.data, GRAPH_INPUTS.tokens, E.scales], [g.fresh('emb_q')], E.attrs, MS_DOMAIN)[0]!;
    resid = g.op('Reshape', [rows, i64(0, 0, -1)]);
    if (E.cols % E.attrs.block_size! !== 0) resid = g.op('Slice', [resid, i64(0), i64(E.cols), i64(2)]);
  }
  const convOuts: string[] = [];
  const ssmOuts: string[] = [];
  const kOuts: string[] = [];
  const vOuts: string[] = [];
  const shared = dims.attention ? emitAttentionShared(g, dims.attention) : undefined;

  W.layers.forEach((lw) => {
    if (lw.kind === 'attention') {
      const { out, kNew, vNew } = emitAttentionLayer(g, lw, dims.attention!, normOfResid(lw.norm), kOuts.length, shared!);
      kOuts.push(kNew);
      vOuts.push(vNew);
      pending = out;
      return;
    }
    const i = convOuts.length; // rank among the Mamba layers: names the state inputs
    const h = normOfResid(lw.norm);
    const [x, z] = g.opN('Split', [linear(h, lw.inProj), i64(D, D)], [g.fresh('x'), g.fresh('z')], { axis: -1 }) as [string, string]; // [B, L, D] each

    // Causal depthwise conv over [last K-1 inputs | new inputs] (time on axis 1): exactly L
    // outputs, and the last K rows are the new conv state (the oldest input falls off).
    const convState = stateInput('conv', i); // [B, K, D]
    const cat = g.op('Concat', [g.op('Slice', [convState, one, BIG, one]), x], { axis: 1 }); // [B, K-1+L, D]
    let convOut: string;
    if (mode === 'step') {
      convOuts.push(cat); // L = 1: cat is exactly the new state
      // Σ over the K taps as a MatMul by ones ([1, K] x [B, K, D] -> [B, 1, D]): ORT's ReduceSum
      // over a middle axis this short is a strided loop, measured 2-5x slower than the GEMM.
      convOut = g.op('MatMul', [onesK, g.op('Mul', [cat, lw.convWKD])]); // [B, 1, D]
      if (lw.convBias) convOut = g.op('Add', [convOut, lw.convBias]);
    } else {
      convOuts.push(g.op('Slice', [cat, i64(-K), BIG, one]));
      const inputs = [g.op('Transpose', [cat], { perm: [0, 2, 1] }), lw.convW];
      if (lw.convBias) inputs.push(lw.convBias);
      const y = g.op('Conv', inputs, { group: D, kernel_shape: [K], pads: [0, 0], strides: [1], dilations: [1] });
      convOut = g.op('Transpose', [y], { perm: [0, 2, 1] });
    }
    const xc = silu(convOut); // [B, L, D]

    const xdbl = linear(xc, lw.xProj); // [B, L, R+2N]
    const [dtIn, Bm, Cm] = g.opN('Split', [xdbl, i64(R, N, N)], [g.fresh('dt_in'), g.fresh('B'), g.fresh('C')], { axis: -1 });
    const dt = softplus(linear(dtIn!, lw.dtProj)); // [B, L, D]
    const dtx = g.op('Mul', [dt, xc]);
    const h0 = stateInput('ssm', i); // [B, N, D]

    // One step: h = exp(dt*A) * h + (dt*x) outer B ; y = C . h, with h laid out [B, N, D].
    let yScan: string;
    let hLast: string;
    if (mode === 'step') {
      const decay = g.op('Exp', [g.op('Mul', [dt, lw.negExpAT])]); // [B,1,D] x [N,D] -> [B,N,D]
      // The outer product (dt·x) ⊗ B as a K = 1 MatMul ([B,N,1] x [B,1,D] -> [B,N,D]), cheaper in
      // ORT than the broadcasting Mul; [B,1,N] -> [B,N,1] is a Reshape (same element order).
      const inject = g.op('MatMul', [g.op('Reshape', [Bm!, i64(0, N, 1)]), dtx]);
      hLast = g.op('Add', [g.op('Mul', [decay, h0]), inject]);
      yScan = g.op('MatMul', [Cm!, hLast]); // [B,1,N] x [B,N,D] -> [B,1,D]
    } else {
      // The scanned inputs are reshaped once, outside, so that each step's slice already has
      // the shape its broadcast wants ([B,1,D], [B,N,1], [B,1,N]): the body is the six ops of
      // the step and nothing else. (Unsqueezing per step cost, under ORT's profiler, about as
      // much as the arithmetic: every body op pays the same per-iteration dispatch.)
      const scope = `${g.fresh('sb')}_`;
      const body = new GraphBuilder(`scan_body${i}`, scope);
      const bh = body.input(`${scope}h`, 'float', ['batch', N, D]);
      const bdt = body.input(`${scope}dt`, 'float', ['batch', 1, D]);
      const bdtx = body.input(`${scope}dtx`, 'float', ['batch', 1, D]);
      const bB = body.input(`${scope}b`, 'float', ['batch', N, 1]);
      const bC = body.input(`${scope}c`, 'float', ['batch', 1, N]);
      const decay = body.op('Exp', [body.op('Mul', [bdt, lw.negExpAT])]);
      const hNew = body.op('Add', [body.op('Mul', [decay, bh]), body.op('Mul', [bdtx, bB])], {}, `${scope}h_out`);
      body.op('MatMul', [bC, hNew], {}, `${scope}y`);
      body.output(`${scope}h_out`, 'float', ['batch', N, D]);
      body.output(`${scope}y`, 'float', ['batch', 1, D]);
      const steps = (v: string, ...shape: number[]) => g.op('Reshape', [v, i64(0, 0, ...shape)]);
      let yRows: string;
      [hLast, yRows] = g.opN('Scan', [h0, steps(dt, 1, D), steps(dtx, 1, D), steps(Bm!, N, 1), steps(Cm!, 1, N)], [g.fresh('h_last'), g.fresh('y_scan')], {
        num_scan_inputs: 4,
        body: { graph: body.build() },
        scan_input_axes: [1, 1, 1, 1],
        scan_output_axes: [1],
      }) as [string, string];
      yScan = g.op('Reshape', [yRows, i64(0, 0, D)]); // [B, L, 1, D] -> [B, L, D]
    }
    ssmOuts.push(hLast);

    const y = g.op('Mul', [g.op('Add', [yScan, g.op('Mul', [xc, lw.Dskip])]), silu(z)]);
    pending = linear(y, lw.outProj);
  });

  const hf = normOfResid(W.normF);
  const picked = mode === 'step' ? hf : g.op('Slice', [hf, GRAPH_INPUTS.logitsStart, BIG, one]); // [B, L', d]
  let logits: string;
  if (W.head.kind !== 'rows') logits = linear(picked, W.head); // MatMulNBits takes [B, L', d] as it is
  else {
    // Gemm (2-D only) reads the [V, d] rows transposed; the batch axes are flattened around it.
    const flat = g.op('Reshape', [picked, i64(-1, d)]);
    const shape = mode === 'step' ? i64(-1, 1, V) : g.op('Concat', [g.op('Slice', [g.op('Shape', [picked]), i64(0), i64(2), i64(0)]), i64(V)], { axis: 0 });
    logits = g.op('Reshape', [g.op('Gemm', [flat, W.head.rows], { transB: 1 }), shape]);
  }
  g.output(logits, 'float', ['batch', 'rows', V]);
  for (const c of convOuts) g.output(c, 'float', ['batch', K, D]);
  for (const h of ssmOuts) g.output(h, 'float', ['batch', N, D]);
  const a = dims.attention;
  for (const k of [...kOuts, ...vOuts]) g.output(k, 'float', ['batch', 'seq', a!.KV, a!.hd]);
  return [logits, ...convOuts, ...ssmOuts, ...kOuts, ...vOuts];
}

export interface GraphOptions {
  /** Quantized builds: how MatMulNBits treats activations (linear.ts; default int8). */
  readonly activations?: NBitsActivations;
}

export function buildMambaGraph(ckpt: Pick<Checkpoint, 'config' | 'vocabRows'>, weights: GraphWeights, options: GraphOptions = {}): Uint8Array {
  const c = ckpt.config;
  const h = c.hybrid;
  const dims: Dims = {
    d: c.hiddenSize,
    D: c.intermediateSize,
    N: c.stateSize,
    K: c.convKernel,
    R: c.timeStepRank,
    V: ckpt.vocabRows,
    nL: c.numLayers,
    eps: c.layerNormEpsilon,
  };
  if (h) dims.attention = { d: c.hiddenSize, H: h.numHeads, KV: h.numKvHeads, hd: h.headDim, W: h.window, rope: h.ropeTheta !== null };
  const { D, N, K, V } = dims;
  const types = layerTypes(c);
  const nMamba = types.filter((t) => t === 'mamba').length;
  const nAttn = types.length - nMamba;
  const g = new GraphBuilder('mamba');
  g.input(GRAPH_INPUTS.tokens, 'int64', ['batch', 'seq']);
  g.input(GRAPH_INPUTS.logitsStart, 'int64', [1]);
  for (let i = 0; i < nMamba; i++) g.input(stateInput('conv', i), 'float', ['batch', K, D]);
  for (let i = 0; i < nMamba; i++) g.input(stateInput('ssm', i), 'float', ['batch', N, D]);
  const a = dims.attention;
  if (a) {
    for (let i = 0; i < nAttn; i++) g.input(ringInput('k', i), 'float', ['batch', a.KV, a.W, a.hd]);
    for (let i = 0; i < nAttn; i++) g.input(ringInput('v', i), 'float', ['batch', a.KV, a.W, a.hd]);
    g.input(ATTENTION_INPUTS.mask, 'float', ['batch', 'seq', 'keys']);
    if (a.rope) {
      g.input(ATTENTION_INPUTS.cos, 'float', ['batch', 'seq', a.hd]);
      g.input(ATTENTION_INPUTS.sin, 'float', ['batch', 'seq', a.hd]);
    }
  }
  const W = registerWeights(g, weights, dims, options.activations ?? 'int8');

  const seqLen = g.op('Slice', [g.op('Shape', [GRAPH_INPUTS.tokens]), g.constInt64([1]), g.constInt64([2]), g.constInt64([0])]);
  const isStep = g.op('Squeeze', [g.op('Equal', [seqLen, g.constInt64([1])]), g.constInt64([0])]);
  const decode = new GraphBuilder('decode', 'dec_');
  emitModel(decode, 'step', W, dims);
  const prefill = new GraphBuilder('prefill', 'pre_');
  emitModel(prefill, 'seq', W, dims);
  const convOuts = Array.from({ length: nMamba }, (_, i) => stateOutput('conv', i));
  const ssmOuts = Array.from({ length: nMamba }, (_, i) => stateOutput('ssm', i));
  const kOuts = Array.from({ length: nAttn }, (_, i) => ringOutput('k', i));
  const vOuts = Array.from({ length: nAttn }, (_, i) => ringOutput('v', i));
  g.opN('If', [isStep], [GRAPH_OUTPUTS.logits, ...convOuts, ...ssmOuts, ...kOuts, ...vOuts], {
    then_branch: { graph: decode.build() },
    else_branch: { graph: prefill.build() },
  });
  g.output(GRAPH_OUTPUTS.logits, 'float', ['batch', 'rows', V]);
  for (const c of convOuts) g.output(c, 'float', ['batch', K, D]);
  for (const h of ssmOuts) g.output(h, 'float', ['batch', N, D]);
  for (const k of [...kOuts, ...vOuts]) g.output(k, 'float', ['batch', 'seq', a!.KV, a!.hd]);
  const shape = h ? `hybrid ${nMamba} Mamba + ${nAttn} attention (W ${h.window})` : `Mamba ${dims.nL}`;
  return encodeModel(g.build(), `${shape} x ${dims.d}, ${weights.dtype} weights, built by mamba-serve graph v${GRAPH_VERSION}`);
}

// A hybrid's sliding-window attention layer in the ONNX graph (see mamba-graph.ts for the
// whole model). One formulation serves prefill and decode: the queries of the call's L tokens
// attend over [the ring's W keys | the call's L new keys] under an additive mask, so decode
// (L = 1, a batch of sessions, each with its own ring and position) and prefill (one
// session, a chunk of L) are the same ops.
//
// What the graph does not do, on purpose: anything that depends on absolute positions. The
// window mask [B, L, W + L] and the RoPE tables [B, L, hd] are inputs, computed by the host in
// float64 (window-inputs.mjs), and the ring is not rewritten in the graph: it returns only the
// new rotated keys and values [B, L, KV, hd] and the host writes them into the ring in place
// (slot = position mod W). A graph that output the whole ring would copy W x KV x hd floats
// per layer per decode step for the sake of one row.
//
// Inputs per attention layer a: attn_k_{a}, attn_v_{a} [B, KV, W, hd] (keys after RoPE; KV-major,
// so each head's window is a contiguous [W, hd] matrix the MatMuls read in place; the .mstate
// layout [W, KV, hd] is converted on import/export only);
// shared: attn_mask [B, L, W + L], and rope_cos / rope_sin [B, L, hd] when the model uses RoPE.
// Outputs per layer: attn_k_new_{a}, attn_v_new_{a} [B, L, KV, hd].
import { emitLinear, registerLinear, type LinearNames, type LinearRef, type NBitsActivations } from './linear.ts';
import type { ExternalRef, GraphBuilder } from './onnx-builder.ts';

/** The projections (with their biases) in the build's weights dtype, like a Mamba layer's. */
export interface AttentionWeightRefs {
  readonly kind: 'attention';
  norm: ExternalRef; // [d]
  q: LinearRef; // d -> H*hd, weight and bias pre-scaled by 1/sqrt(hd) (RoPE is linear, so scaling before it is the same)
  k: LinearRef; // d -> KV*hd
  v: LinearRef; // d -> KV*hd
  o: LinearRef; // H*hd -> d
}

export interface AttentionWeightNames {
  readonly kind: 'attention';
  norm: string;
  q: LinearNames;
  k: LinearNames;
  v: LinearNames;
  o: LinearNames;
}

export interface AttentionDims {
  d: number;
  H: number;
  KV: number;
  hd: number;
  W: number;
  rope: boolean;
}

export const ATTENTION_INPUTS = { mask: 'attn_mask', cos: 'rope_cos', sin: 'rope_sin' } as const;
export const ringInput = (kind: 'k' | 'v', slot: number) => `attn_${kind}_${slot}`;
export const ringOutput = (kind: 'k' | 'v', slot: number) => `attn_${kind}_new_${slot}`;

export function registerAttentionWeights(g: GraphBuilder, prefix: string, refs: AttentionWeightRefs, dims: AttentionDims, activations: NBitsActivations): AttentionWeightNames {
  return {
    kind: 'attention',
    norm: g.externalFloat(`${prefix}norm`, [dims.d], refs.norm),
    q: registerLinear(g, `${prefix}q_proj`, refs.q, activations),
    k: registerLinear(g, `${prefix}k_proj`, refs.k, activations),
    v: registerLinear(g, `${prefix}v_proj`, refs.v, activations),
    o: registerLinear(g, `${prefix}o_proj`, refs.o, activations),
  };
}

/** Values every attention layer of one branch reads: the mask tiled over query groups, the RoPE tables with a head axis. */
export interface AttentionShared {
  mask: string; // [B, 1, G*L, W+L]
  cos?: string; // [B, L, 1, hd]
  sin?: string;
}

export function emitAttentionShared(g: GraphBuilder, dims: AttentionDims): AttentionShared {
  const group = dims.H / dims.KV;
  // Query rows are ordered (group, position) per KV head, so the [L, S] mask repeats per group.
  const tiled = group === 1 ? ATTENTION_INPUTS.mask : g.op('Tile', [ATTENTION_INPUTS.mask, g.constInt64([1, group, 1])]);
  const shared: AttentionShared = { mask: g.op('Unsqueeze', [tiled, g.constInt64([1])]) };
  if (dims.rope) {
    shared.cos = g.op('Unsqueeze', [ATTENTION_INPUTS.cos, g.constInt64([2])]);
    shared.sin = g.op('Unsqueeze', [ATTENTION_INPUTS.sin, g.constInt64([2])]);
  }
  return shared;
}

/**
 * One attention block's residual branch for normed input h [B, L, d]: returns the branch
 * output [B, L, d] and the call's new rotated keys and values [B, L, KV, hd].
 */
export function emitAttentionLayer(
  g: GraphBuilder,
  w: AttentionWeightNames,
  dims: AttentionDims,
  h: string,
  slot: number,
  shared: AttentionShared,
): { out: string; kNew: string; vNew: string } {
  const { H, KV, hd } = dims;
  const group = H / KV;
  const i64 = (...v: number[]) => g.constInt64(v);
  const heads = (x: string, n: number) => g.op('Reshape', [x, i64(0, 0, n, hd)]); // [B, L, n, hd]
  // x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[hd/2:], x[:hd/2]) on the last axis.
  const rope = (x: string) => {
    if (!shared.cos || !shared.sin) return x;
    const half = hd / 2;
    const lo = g.op('Slice', [x, i64(0), i64(half), i64(3)]);
    const hi = g.op('Slice', [x, i64(half), i64(hd), i64(3)]);
    const rot = g.op('Concat', [g.op('Neg', [hi]), lo], { axis: 3 });
    return g.op('Add', [g.op('Mul', [x, shared.cos]), g.op('Mul', [rot, shared.sin])]);
  };

  const q = rope(heads(emitLinear(g, h, w.q), H)); // [B, L, H, hd], already scaled by 1/sqrt(hd)
  const kNew = rope(heads(emitLinear(g, h, w.k), KV)); // [B, L, KV, hd]
  const vNew = heads(emitLinear(g, h, w.v), KV);

  // Query head h = kv * group + g reads key/value head kv: rows of one KV head are (g, position).
  const qG = g.op('Reshape', [q, i64(0, 0, KV, group, hd)]);
  const qRows = g.op('Reshape', [g.op('Transpose', [qG], { perm: [0, 2, 3, 1, 4] }), i64(0, KV, -1, hd)]); // [B, KV, G*L, hd]
  // The ring ([B, KV, W, hd]) is read where it lies: its scores through a transposed MatMul
  // (ORT fuses the Transpose into the MatMul), its values as the MatMul's right operand. Only
  // the call's few new keys are moved; concatenating them to the ring first would copy the
  // whole window twice per layer per step.
  const ringScores = g.op('MatMul', [qRows, g.op('Transpose', [ringInput('k', slot)], { perm: [0, 1, 3, 2] })]); // [B, KV, G*L, W]
  const newScores = g.op('MatMul', [qRows, g.op('Transpose', [kNew], { perm: [0, 2, 3, 1] })]); // [B, KV, G*L, L]
  const scores = g.op('Add', [g.op('Concat', [ringScores, newScores], { axis: 3 }), shared.mask]); // [B, KV, G*L, W+L]
  const probs = g.op('Softmax', [scores], { axis: -1 });
  const ringProbs = g.op('Slice', [probs, i64(0), i64(dims.W), i64(3)]);
  const newProbs = g.op('Slice', [probs, i64(dims.W), i64(Number.MAX_SAFE_INTEGER), i64(3)]);
  const ctx = g.op('Add', [
    g.op('MatMul', [ringProbs, ringInput('v', slot)]),
    g.op('MatMul', [newProbs, g.op('Transpose', [vNew], { perm: [0, 2, 1, 3] })]),
  ]); // [B, KV, G*L, hd]
  const ctxG = g.op('Reshape', [ctx, i64(0, KV, group, -1, hd)]); // [B, KV, G, L, hd]
  const merged = g.op('Reshape', [g.op('Transpose', [ctxG], { perm: [0, 3, 1, 2, 4] }), i64(0, 0, H * hd)]); // [B, L, H*hd]
  return { out: emitLinear(g, merged, w.o), kNew, vNew };
}

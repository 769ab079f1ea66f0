// A projection (y = x·Wᵀ + b) in the ONNX graph, in either weights dtype:
// - f32: a plain MatMul with W stored pre-transposed [in, out] (and an Add for a bias);
// - int8 / int4: ONNX Runtime's MatMulNBits over W block-quantized in its own [out, in]
//   layout (quantize.ts), the bias fused into the op. accuracy_level 4 lets MLAS quantize each
//   row of x to int8 per block and run integer dot products (the same scheme as llama.cpp's
//   Q8_0/Q4_0 vec_dot): measured 2-3x faster than dequantizing to fp32 at batch 1 and 8 on
//   this AVX-512 machine, and the only fast path ORT has for 8-bit weights.
import { blocksPerRow, type QuantBits } from './quantize.ts';
import { MS_DOMAIN, type ExternalRef, type GraphBuilder } from './onnx-builder.ts';

export type LinearRef =
  | { readonly kind: 'f32'; readonly in: number; readonly out: number; readonly wT: ExternalRef; readonly bias?: ExternalRef }
  | {
      readonly kind: 'nbits';
      readonly in: number;
      readonly out: number;
      readonly bits: QuantBits;
      readonly block: number;
      /** uint8 [out, blocks, block·bits/8] */
      readonly data: ExternalRef;
      /** float [out · blocks] */
      readonly scales: ExternalRef;
      readonly bias?: ExternalRef;
    };

/** A projection's initializers, registered once in the main graph. */
export type LinearNames =
  | { readonly kind: 'f32'; readonly wT: string; readonly bias?: string }
  | { readonly kind: 'nbits'; readonly data: string; readonly scales: string; readonly bias?: string; readonly attrs: Record<string, number> };

/**
 * How MatMulNBits treats the activations: 'int8' (accuracy_level 4: quantized per block, int32
 * accumulation; what serving uses) or 'f32' (accuracy_level 0: exact products with the
 * dequantized weights; slow, 8-bit weights have no fast fp32 kernel; for tests that hold the
 * weights path to the float64 reference).
 */
export type NBitsActivations = 'int8' | 'f32';

/** The initializer names of a quantized projection `name`: its codes, their scales and its bias (native-kernels.ts finds them by these). */
export const nbitsNames = (name: string, bits: QuantBits) => ({ data: `${name}_q${bits}`, scales: `${name}_scales`, bias: `${name}_b` });

/** The initializer names of an f32 projection `name`: Wᵀ [in, out] and its bias (native-kernels.ts finds them by these). */
export const f32LinearNames = (name: string) => ({ wT: `${name}_t`, bias: `${name}_b` });

export function registerLinear(g: GraphBuilder, name: string, ref: LinearRef, activations: NBitsActivations = 'int8'): LinearNames {
  if (ref.kind === 'f32') {
    const named = f32LinearNames(name);
    const wT = g.externalFloat(named.wT, [ref.in, ref.out], ref.wT);
    return ref.bias ? { kind: 'f32', wT, bias: g.externalFloat(named.bias, [ref.out], ref.bias) } : { kind: 'f32', wT };
  }
  const kb = blocksPerRow(ref.in, ref.block);
  const named = nbitsNames(name, ref.bits);
  const names = {
    kind: 'nbits' as const,
    data: g.external(named.data, 'uint8', [ref.out, kb, (ref.block * ref.bits) / 8], ref.data),
    scales: g.externalFloat(named.scales, [ref.out * kb], ref.scales),
    attrs: { K: ref.in, N: ref.out, bits: ref.bits, block_size: ref.block, accuracy_level: activations === 'int8' ? 4 : 0 },
  };
  return ref.bias ? { ...names, bias: g.externalFloat(named.bias, [ref.out], ref.bias) } : names;
}

/** x [..., in] -> [..., out]. */
export function emitLinear(g: GraphBuilder, x: string, w: LinearNames): string {
  if (w.kind === 'f32') {
    const y = g.op('MatMul', [x, w.wT]);
    return w.bias ? g.op('Add', [y, w.bias]) : y;
  }
  // Inputs: A, B, scales, zero_points, g_idx, bias (absent ones named '').
  const inputs = w.bias ? [x, w.data, w.scales, '', '', w.bias] : [x, w.data, w.scales];
  return g.opN('MatMulNBits', inputs, [g.fresh('mmnb')], w.attrs, MS_DOMAIN)[0]!;
}

// Block-wise weight quantization for the ORT engine's quantized builds (WEIGHTS_DTYPE int8 /
// int4), in the layout ONNX Runtime's MatMulNBits and GatherBlockQuantized read:
//
//   a matrix W [N, K] (rows = output features, HF's own layout) becomes
//   data   uint8 [N, ceil(K / block), block * bits / 8]: each row cut into blocks of `block`
//          values along K; a value v is stored as q = round(v / scale) + 2^(bits-1), clamped to
//          [0, 2^bits - 1]; 4-bit values pack two to a byte, the even index in the low nibble;
//   scales float [N * ceil(K / block)]: one per block; the zero point is the implicit
//          2^(bits-1) (8 or 128), so W ≈ (q - 2^(bits-1)) * scale. A short last block is
//          zero-padded (a padded q is the zero point, so it adds nothing).
//
// The scales are chosen here, at graph build, per block: int8 maps the block's largest
// magnitude to 127; int4 tries a few divisors around 7.5 and keeps the one with the least
// squared error over the block (the clamp to [-8, 7] makes the plain amax / 7 waste half a
// step). Everything is plain float64 arithmetic, so a test can recompute it independently.

export type WeightsDtype = 'f32' | 'int8' | 'int4';
export const WEIGHTS_DTYPES: readonly WeightsDtype[] = ['f32', 'int8', 'int4'];

/** A weights setting the chosen engine cannot run (quantized weights on the reference or CUDA engine; unpacked quantized weights). */
export class WeightsDtypeError extends Error {
  readonly code = 'weights_dtype_unsupported';
  constructor(message: string) {
    super(message);
    this.name = 'WeightsDtypeError';
  }
}

export type QuantBits = 4 | 8;
export const bitsOf = (dtype: Exclude<WeightsDtype, 'f32'>): QuantBits => (dtype === 'int8' ? 8 : 4);

/**
 * Values per block (MatMulNBits accepts powers of two from 16). 128, ORT's own default: MLAS's
 * int8-activation kernels ran a mamba-130m decode step 1.4x (int8) and 1.5x (int4) faster than
 * with llama.cpp's 32, for 0.25 bits a weight of scales instead of 1. The accuracy given up,
 * measured on the demo model (bench/quantized-accuracy.ts, 1.08M predictions): int8 +0.06 % loss
 * (32: +0.04 %), int4 +3.4 % (32: +2.2 %).
 */
export const QUANT_BLOCK = 128;

export interface QuantizedMatrix {
  readonly rows: number; // N
  readonly cols: number; // K
  readonly bits: QuantBits;
  readonly block: number;
  /** [N, blocksPerRow, block * bits / 8] */
  readonly data: Uint8Array;
  /** [N * blocksPerRow] */
  readonly scales: Float32Array;
}

export const blocksPerRow = (cols: number, block: number) => Math.ceil(cols / block);

/** int4 candidates: scale = amax / divisor; 8 reaches the most negative code, 7 keeps the positive end unclamped. */
const INT4_DIVISORS = [7, 7.25, 7.5, 7.75, 8];

function encode(v: number, scale: number, bits: QuantBits): number {
  const zero = 1 << (bits - 1);
  if (scale === 0) return zero;
  return Math.max(0, Math.min((1 << bits) - 1, Math.round(v / scale) + zero));
}

function blockError(w: ArrayLike<number>, start: number, end: number, scale: number, bits: QuantBits): number {
  const zero = 1 << (bits - 1);
  let e = 0;
  for (let i = start; i < end; i++) {
    const d = (encode(w[i]!, scale, bits) - zero) * scale - w[i]!;
    e += d * d;
  }
  return e;
}

/** Quantize `w` ([rows, cols], row-major) block-wise along its rows. */
export function quantizeMatrix(w: Float32Array, rows: number, cols: number, bits: QuantBits, block = QUANT_BLOCK): QuantizedMatrix {
  if (w.length !== rows * cols) throw new Error(`quantizeMatrix: ${w.length} values for [${rows}, ${cols}]`);
  if (block < 16 || (block & (block - 1)) !== 0) throw new Error(`quantizeMatrix: block ${block} is not a power of two >= 16`);
  const kb = blocksPerRow(cols, block);
  const blob = (block * bits) / 8;
  const data = new Uint8Array(rows * kb * blob);
  const scales = new Float32Array(rows * kb);
  const zero = 1 << (bits - 1);
  // The padded tail of a short last block holds the zero point (a 4-bit byte of two zero points is 0x88).
  if (cols % block !== 0) data.fill(bits === 8 ? zero : zero | (zero << 4));
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < kb; b++) {
      const start = r * cols + b * block;
      const end = r * cols + Math.min(cols, (b + 1) * block);
      let amax = 0;
      for (let i = start; i < end; i++) amax = Math.max(amax, Math.abs(w[i]!));
      let scale = 0;
      if (amax > 0) {
        if (bits === 8) scale = Math.fround(amax / 127);
        else {
          let best = Infinity;
          for (const div of INT4_DIVISORS) {
            const s = Math.fround(amax / div);
            const e = blockError(w, start, end, s, bits);
            if (e < best) [best, scale] = [e, s];
          }
        }
      }
      scales[r * kb + b] = scale;
      const at = (r * kb + b) * blob;
      for (let i = start; i < end; i++) {
        const j = i - start;
        const q = encode(w[i]!, scale, bits);
        if (bits === 8) data[at + j] = q;
        else if (j % 2 === 0) data[at + (j >> 1)] = (data[at + (j >> 1)]! & 0xf0) | q;
        else data[at + (j >> 1)] = (data[at + (j >> 1)]! & 0x0f) | (q << 4);
      }
    }
  }
  return { rows, cols, bits, block, data, scales };
}

/** The values a quantized matrix stands for, [rows, cols] (float32, as the kernels see them). */
export function dequantizeMatrix(q: QuantizedMatrix): Float32Array {
  const { rows, cols, bits, block, data, scales } = q;
  const kb = blocksPerRow(cols, block);
  const blob = (block * bits) / 8;
  const zero = 1 << (bits - 1);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const b = Math.floor(c / block);
      const j = c % block;
      const at = (r * kb + b) * blob;
      const byte = data[at + (bits === 8 ? j : j >> 1)]!;
      const code = bits === 8 ? byte : j % 2 === 0 ? byte & 0x0f : byte >> 4;
      out[r * cols + c] = (code - zero) * scales[r * kb + b]!;
    }
  }
  return out;
}

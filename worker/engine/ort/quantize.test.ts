// Block quantization: the codes and scales (against plain arithmetic), and the layout against
// what ONNX Runtime's MatMulNBits and GatherBlockQuantized actually read.
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { Rng } from '../../../shared/rng.ts';
import { encodeModel, GraphBuilder, MS_DOMAIN } from './onnx-builder.ts';
import { blocksPerRow, dequantizeMatrix, QUANT_BLOCK, quantizeMatrix, type QuantBits } from './quantize.ts';

function randomMatrix(rows: number, cols: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  // Mostly small values with a few large ones per row: the case block scales exist for.
  return Float32Array.from({ length: rows * cols }, (_, i) => (rng.normal() * (i % 17 === 0 ? 4 : 1)) / Math.sqrt(cols));
}

describe('quantizeMatrix', () => {
  it.each([8, 4] as const)('int%i: every value within half a step of its block scale (or the int4 clamp)', (bits) => {
    const [rows, cols] = [7, 100]; // 100 = 3 whole blocks of 32 and a short one of 4
    const w = randomMatrix(rows, cols, bits);
    const q = quantizeMatrix(w, rows, cols, bits, 32);
    expect(q.data.length).toBe(rows * 4 * ((32 * bits) / 8));
    expect(q.scales.length).toBe(rows * 4);
    const back = dequantizeMatrix(q);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const scale = q.scales[r * 4 + Math.floor(c / 32)]!;
        const v = w[r * cols + c]!;
        // int4's codes reach -8·scale and 7·scale: a value beyond 7.5 steps is clamped.
        const limit = bits === 4 && v > 7.5 * scale ? v - 7 * scale : scale / 2;
        expect(Math.abs(back[r * cols + c]! - v)).toBeLessThanOrEqual(limit * (1 + 1e-6));
      }
    }
  });

  it('int4 scales beat the plain amax / 7 (least squared error per block)', () => {
    const [rows, cols] = [64, 256];
    const w = randomMatrix(rows, cols, 3);
    const back = dequantizeMatrix(quantizeMatrix(w, rows, cols, 4, 32));
    let ours = 0;
    let plain = 0;
    for (let b = 0; b < (rows * cols) / 32; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(w[b * 32 + j]!));
      const s = amax / 7;
      for (let j = 0; j < 32; j++) {
        const v = w[b * 32 + j]!;
        ours += (back[b * 32 + j]! - v) ** 2;
        plain += (Math.max(-8, Math.min(7, Math.round(v / s))) * s - v) ** 2;
      }
    }
    expect(ours).toBeLessThan(plain * 0.95);
  });

  it('an all-zero block has scale 0 and decodes to zeros', () => {
    const q = quantizeMatrix(new Float32Array(64), 2, 32, 4);
    expect([...q.scales]).toEqual([0, 0]);
    expect([...dequantizeMatrix(q)].every((v) => v === 0)).toBe(true);
  });
});

/** One session running MatMulNBits (x·Wᵀ) and GatherBlockQuantized (rows of W) on a quantized W. */
async function runOrtOps(w: Float32Array, rows: number, cols: number, bits: QuantBits, block: number, x: Float32Array, m: number, ids: number[]) {
  const q = quantizeMatrix(w, rows, cols, bits, block);
  const kb = blocksPerRow(cols, q.block);
  const g = new GraphBuilder('q');
  g.input('x', 'float', [m, cols]);
  g.input('ids', 'int64', [ids.length]);
  g.inlineRaw('w_q', 'uint8', [rows, kb, (q.block * bits) / 8], q.data);
  g.inlineFloat('w_s', [rows * kb], q.scales);
  g.inlineFloat('w_s3', [rows, kb, 1], q.scales);
  // accuracy_level 0 multiplies in fp32: this checks the layout, not int8 activations.
  g.opN('MatMulNBits', ['x', 'w_q', 'w_s'], ['y'], { K: cols, N: rows, bits, block_size: q.block, accuracy_level: 0 }, MS_DOMAIN);
  g.opN('GatherBlockQuantized', ['w_q', 'ids', 'w_s3'], ['e'], { gather_axis: 0, quantize_axis: 2, block_size: q.block, bits }, MS_DOMAIN);
  g.output('y', 'float', [m, rows]);
  g.output('e', 'float');
  const session = await ort.InferenceSession.create(encodeModel(g.build()), { logSeverityLevel: 3 });
  try {
    const out = await session.run({ x: new ort.Tensor('float32', x, [m, cols]), ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [ids.length]) });
    return { y: out.y!.data as Float32Array, e: out.e!.data as Float32Array, eDims: out.e!.dims, deq: dequantizeMatrix(q) };
  } finally {
    await session.release();
  }
}

describe('the quantized layout is what ONNX Runtime reads', () => {
  // K shorter than, or not a multiple of, the block (dt_proj's K is time_step_rank); 128 is what builds use.
  it.each([
    [8, 40, 96, 32],
    [4, 40, 96, 32],
    [8, 24, 48, 32],
    [4, 24, 8, 32],
    [8, 40, 300, QUANT_BLOCK],
    [4, 40, 300, QUANT_BLOCK],
  ] as const)('int%i [%i, %i], blocks of %i: MatMulNBits and GatherBlockQuantized match float64 products of the dequantized matrix', async (bits, rows, cols, block) => {
    const w = randomMatrix(rows, cols, rows + cols);
    const m = 3;
    const x = randomMatrix(m, cols, 99);
    const ids = [0, rows - 1, 5];
    const { y, e, eDims, deq } = await runOrtOps(w, rows, cols, bits, block, x, m, ids);
    let err = 0;
    let scale = 0;
    for (let i = 0; i < m; i++) {
      for (let n = 0; n < rows; n++) {
        let ref = 0;
        for (let k = 0; k < cols; k++) ref += x[i * cols + k]! * deq[n * cols + k]!;
        err = Math.max(err, Math.abs(ref - y[i * rows + n]!));
        scale = Math.max(scale, Math.abs(ref));
      }
    }
    expect(err).toBeLessThan(1e-5 * Math.max(1, scale));
    // Rows come back padded to whole blocks: [ids, blocks, block].
    const kb = blocksPerRow(cols, block);
    expect(eDims).toEqual([ids.length, kb, block]);
    ids.forEach((id, r) => {
      for (let c = 0; c < cols; c++) expect(e[r * kb * block + c]).toBe(deq[id * cols + c]);
    });
  });
});

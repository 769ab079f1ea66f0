// What a quantized build computes with, as a checkpoint: every projection the ORT engine
// quantizes (in_proj, x_proj, dt_proj, out_proj, a hybrid's q/k/v/o, the embeddings and the
// head) replaced by its dequantized block-quantized values; everything else as stored. The
// float64 reference engine run on this view is the independent yardstick of a quantized ORT
// engine: what remains between them is ORT's arithmetic (int8 activations), not the weights.
import type { Checkpoint } from '../../../model/checkpoint.ts';
import { bitsOf, dequantizeMatrix, QUANT_BLOCK, quantizeMatrix, type WeightsDtype } from '../quantize.ts';

const PROJECTION = /(\.mixer\.(in_proj|x_proj|dt_proj|out_proj|q_proj|k_proj|v_proj|o_proj)\.weight|^backbone\.embeddings\.weight|^lm_head\.weight)$/;

export function quantizedView(ckpt: Checkpoint, dtype: Exclude<WeightsDtype, 'f32'>): Checkpoint {
  return {
    ...ckpt,
    async read(name: string): Promise<Float32Array> {
      const w = await ckpt.read(name);
      if (!PROJECTION.test(name)) return w;
      const shape = ckpt.tensors.get(name)!.shape;
      const cols = shape[shape.length - 1]!;
      return dequantizeMatrix(quantizeMatrix(w, w.length / cols, cols, bitsOf(dtype), QUANT_BLOCK));
    },
  };
}

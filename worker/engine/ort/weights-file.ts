// Writes a checkpoint's weights, in the layouts the ONNX graph wants, into one external-data
// file that ONNX Runtime memory-maps: f32 projections transposed to [in, out], or (WEIGHTS_DTYPE
// int8/int4) block-quantized in their own [out, in] layout (quantize.ts); A as -exp(A_log)
// transposed. The SSM parameters, norms, conv and biases stay fp32 in every dtype. Tensors pass
// through one at a time, so the JS heap never holds more than the largest tensor.
import { open, type FileHandle } from 'node:fs/promises';
import { EMBEDDINGS, LM_HEAD, NORM_F, layerTensorName, type AttentionTensorName, type Checkpoint, type LayerTensorName } from '../../model/checkpoint.ts';
import { layerTypes } from '../../model/mamba-config.ts';
import type { AttentionWeightRefs } from './attention-graph.ts';
import type { LinearRef } from './linear.ts';
import type { ExternalRef } from './onnx-builder.ts';
import type { GraphWeights, LayerWeightRefs } from './mamba-graph.ts';
import { bitsOf, QUANT_BLOCK, quantizeMatrix, type WeightsDtype } from './quantize.ts';
import { transposeLast2 } from './transpose.ts';

type NBitsRef = Extract<LinearRef, { kind: 'nbits' }>;

/** ORT can memory-map external data at page-aligned offsets. */
const ALIGN = 4096;

const transpose = (m: Float32Array, rows: number, cols: number) => transposeLast2(m, 1, rows, cols);

class ExternalWriter {
  private offset = 0;
  constructor(
    private readonly fh: FileHandle,
    private readonly location: string,
  ) {}

  async write(data: Float32Array | Uint8Array): Promise<ExternalRef> {
    const start = Math.ceil(this.offset / ALIGN) * ALIGN;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.fh.write(bytes, done, bytes.length - done, start + done);
      done += bytesWritten;
    }
    this.offset = start + bytes.length;
    return { location: this.location, offset: start, length: bytes.length };
  }
}

/** Writes each projection in the build's dtype; counts the fp32 bytes of the checkpoint consumed (progress). */
class LayoutWriter {
  consumed = 0;
  constructor(
    readonly out: ExternalWriter,
    readonly dtype: WeightsDtype,
    private readonly onProgress: (consumed: number) => void,
  ) {}

  /** A tensor kept fp32 as given (`counted`: a checkpoint tensor, not a second layout of one). */
  async raw(data: Float32Array, counted = true): Promise<ExternalRef> {
    const ref = await this.out.write(data);
    if (counted) this.progress(data.length);
    return ref;
  }

  /** w: HF's [out, in] weight of y = x·wᵀ + bias. */
  async linear(w: Float32Array, outF: number, inF: number, bias?: Float32Array): Promise<LinearRef> {
    const biasRef = bias ? await this.out.write(bias) : undefined;
    const withBias = <T extends object>(r: T): T & { bias?: ExternalRef } => (biasRef ? { ...r, bias: biasRef } : r);
    this.progress(w.length + (bias?.length ?? 0));
    if (this.dtype === 'f32') return withBias({ kind: 'f32' as const, in: inF, out: outF, wT: await this.out.write(transpose(w, outF, inF)) });
    return withBias(await this.quantized(w, outF, inF));
  }

  /** w [out, in] block-quantized in the build's dtype (never f32). */
  async quantized(w: Float32Array, outF: number, inF: number): Promise<NBitsRef> {
    if (this.dtype === 'f32') throw new Error('quantized(): an f32 build quantizes nothing');
    const q = quantizeMatrix(w, outF, inF, bitsOf(this.dtype), QUANT_BLOCK);
    return { kind: 'nbits', in: inF, out: outF, bits: q.bits, block: q.block, data: await this.out.write(q.data), scales: await this.out.write(q.scales) };
  }

  /** Progress for tensors written by quantized(). */
  counted(floats: number) {
    this.progress(floats);
  }

  private progress(floats: number) {
    this.consumed += 4 * floats;
    this.onProgress(this.consumed);
  }
}

/** An attention layer's projections; q (and its bias) pre-scaled by 1/sqrt(head_dim). */
async function writeAttentionLayer(ckpt: Checkpoint, i: number, w: LayoutWriter): Promise<AttentionWeightRefs> {
  const h = ckpt.config.hybrid!;
  const d = ckpt.config.hiddenSize;
  const read = (n: AttentionTensorName) => ckpt.read(layerTensorName(i, n));
  const bias = (n: AttentionTensorName) => (h.bias ? read(n) : Promise.resolve(undefined));
  const scale = 1 / Math.sqrt(h.headDim);
  const scaled = (m: Float32Array | undefined) => m?.map((v) => v * scale);
  const q = h.numHeads * h.headDim;
  const kv = h.numKvHeads * h.headDim;
  return {
    kind: 'attention',
    norm: await w.raw(await read('norm.weight')),
    q: await w.linear(scaled(await read('mixer.q_proj.weight'))!, q, d, scaled(await bias('mixer.q_proj.bias'))),
    k: await w.linear(await read('mixer.k_proj.weight'), kv, d, await bias('mixer.k_proj.bias')),
    v: await w.linear(await read('mixer.v_proj.weight'), kv, d, await bias('mixer.v_proj.bias')),
    o: await w.linear(await read('mixer.o_proj.weight'), d, q, await bias('mixer.o_proj.bias')),
  };
}

async function writeMambaLayer(ckpt: Checkpoint, i: number, w: LayoutWriter): Promise<LayerWeightRefs> {
  const c = ckpt.config;
  const d = c.hiddenSize;
  const D = c.intermediateSize;
  const N = c.stateSize;
  const R = c.timeStepRank;
  const read = (n: LayerTensorName) => ckpt.read(layerTensorName(i, n));
  const optional = (n: LayerTensorName) => (ckpt.tensors.has(layerTensorName(i, n)) ? read(n) : Promise.resolve(undefined));
  const aLog = await read('mixer.A_log'); // [D, N]
  const negExpAT = new Float32Array(D * N);
  for (let ch = 0; ch < D; ch++) for (let n = 0; n < N; n++) negExpAT[n * D + ch] = -Math.exp(aLog[ch * N + n]!);
  // in_proj's rows are x then z: one projection d -> 2D, split in the graph (one matmul a layer
  // fewer: at decode each costs its dispatch more than its arithmetic).
  const inProj = await read('mixer.in_proj.weight');
  const inBias = await optional('mixer.in_proj.bias');
  const convW = await read('mixer.conv1d.weight'); // [D, 1, K]
  const convBias = await optional('mixer.conv1d.bias');
  const refs: LayerWeightRefs = {
    kind: 'mamba',
    norm: await w.raw(await read('norm.weight')),
    inProj: await w.linear(inProj, 2 * D, d, inBias),
    convW: await w.raw(convW),
    convWKD: await w.raw(transpose(convW, D, c.convKernel), false),
    xProj: await w.linear(await read('mixer.x_proj.weight'), R + 2 * N, D),
    dtProj: await w.linear(await read('mixer.dt_proj.weight'), D, R, await read('mixer.dt_proj.bias')),
    negExpAT: await w.raw(negExpAT),
    Dskip: await w.raw(await read('mixer.D')),
    outProj: await w.linear(await read('mixer.out_proj.weight'), d, D, await optional('mixer.out_proj.bias')),
  };
  if (convBias) refs.convBias = await w.raw(convBias);
  return refs;
}

/** Bytes of fp32 checkpoint tensors the build reads (its progress total). */
export function graphWeightBytes(ckpt: Checkpoint): number {
  return [...ckpt.tensors.values()].reduce((n, t) => n + 4 * t.shape.reduce((a, b) => a * b, 1), 0);
}

/**
 * Write `ckpt`'s weights in `dtype` to `path` (file name `location` as the graph will
 * reference it); `onProgress` hears the checkpoint bytes consumed so far.
 */
export async function writeGraphWeights(
  ckpt: Checkpoint,
  path: string,
  location: string,
  onProgress: (consumed: number) => void = () => {},
  dtype: WeightsDtype = 'f32',
): Promise<GraphWeights> {
  const c = ckpt.config;
  const d = c.hiddenSize;
  const V = ckpt.vocabRows;
  const fh = await open(path, 'w');
  try {
    const w = new LayoutWriter(new ExternalWriter(fh, location), dtype, onProgress);
    const layers: (LayerWeightRefs | AttentionWeightRefs)[] = [];
    const types = layerTypes(c);
    for (let i = 0; i < c.numLayers; i++) {
      layers.push(types[i] === 'sliding_attention' ? await writeAttentionLayer(ckpt, i, w) : await writeMambaLayer(ckpt, i, w));
    }
    const normF = await w.raw(await ckpt.read(NORM_F));
    const table = await ckpt.read(EMBEDDINGS); // [V, d]
    let weights: GraphWeights;
    if (dtype === 'f32') {
      // The head is a Gemm reading [V, d] transposed: a tied head is the embedding table itself.
      const embeddings = await w.raw(table);
      weights = { dtype, embeddings: { kind: 'f32', table: embeddings }, head: { kind: 'f32', rows: ckpt.has.lmHead ? await w.raw(await ckpt.read(LM_HEAD)) : embeddings }, normF, layers };
    } else {
      // Rows of the quantized [V, d] matrix are what GatherBlockQuantized reads for the embedding
      // and what MatMulNBits reads as the head (N = V, K = d): a tied head is the same bytes.
      const embeddings = await w.quantized(table, V, d);
      w.counted(table.length);
      let head = embeddings;
      if (ckpt.has.lmHead) {
        head = await w.quantized(await ckpt.read(LM_HEAD), V, d);
        w.counted(V * d);
      }
      weights = { dtype, embeddings: { kind: 'nbits', matrix: embeddings }, head, normF, layers };
    }
    await fh.sync();
    return weights;
  } finally {
    await fh.close();
  }
}

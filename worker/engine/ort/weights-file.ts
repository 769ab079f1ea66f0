// Writes a checkpoint's weights, in the layouts the ONNX graph wants (projections
// transposed to [in, out], A as -exp(A_log) transposed), into one external-data file that
// ONNX Runtime loads itself. Tensors pass through one at a time, so the JS heap never
// holds more than the largest tensor.
import { open, type FileHandle } from 'node:fs/promises';
import { EMBEDDINGS, LM_HEAD, NORM_F, layerTensorName, type AttentionTensorName, type Checkpoint, type LayerTensorName } from '../../model/checkpoint.ts';
import { layerTypes } from '../../model/mamba-config.ts';
import type { AttentionWeightRefs } from './attention-graph.ts';
import type { ExternalRef } from './onnx-builder.ts';
import type { GraphWeights, LayerWeightRefs } from './mamba-graph.ts';
import { transposeLast2 } from './transpose.ts';

/** ORT can memory-map external data at page-aligned offsets. */
const ALIGN = 4096;

const transpose = (m: Float32Array, rows: number, cols: number) => transposeLast2(m, 1, rows, cols);

class ExternalWriter {
  private offset = 0;
  /** Bytes written so far (for progress). */
  written = 0;
  constructor(
    private readonly fh: FileHandle,
    private readonly location: string,
    private readonly onProgress: (written: number) => void = () => {},
  ) {}

  async write(data: Float32Array): Promise<ExternalRef> {
    const start = Math.ceil(this.offset / ALIGN) * ALIGN;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.fh.write(bytes, done, bytes.length - done, start + done);
      done += bytesWritten;
    }
    this.offset = start + bytes.length;
    this.written += bytes.length;
    this.onProgress(this.written);
    return { location: this.location, offset: start, length: bytes.length };
  }
}

/** An attention layer's projections, transposed to [in, out]; q pre-scaled by 1/sqrt(head_dim). */
async function writeAttentionLayer(ckpt: Checkpoint, i: number, out: ExternalWriter): Promise<AttentionWeightRefs> {
  const h = ckpt.config.hybrid!;
  const d = ckpt.config.hiddenSize;
  const read = (n: AttentionTensorName) => ckpt.read(layerTensorName(i, n));
  const scale = 1 / Math.sqrt(h.headDim);
  const scaled = (m: Float32Array) => m.map((v) => v * scale);
  const q = h.numHeads * h.headDim;
  const kv = h.numKvHeads * h.headDim;
  const refs: AttentionWeightRefs = {
    kind: 'attention',
    norm: await out.write(await read('norm.weight')),
    qT: await out.write(transpose(scaled(await read('mixer.q_proj.weight')), q, d)),
    kT: await out.write(transpose(await read('mixer.k_proj.weight'), kv, d)),
    vT: await out.write(transpose(await read('mixer.v_proj.weight'), kv, d)),
    oT: await out.write(transpose(await read('mixer.o_proj.weight'), d, q)),
  };
  if (h.bias) {
    refs.qBias = await out.write(scaled(await read('mixer.q_proj.bias')));
    refs.kBias = await out.write(await read('mixer.k_proj.bias'));
    refs.vBias = await out.write(await read('mixer.v_proj.bias'));
    refs.oBias = await out.write(await read('mixer.o_proj.bias'));
  }
  return refs;
}

/** Bytes the weights file will hold (every tensor as fp32; the transposed copies of conv weights add little). */
export function graphWeightBytes(ckpt: Checkpoint): number {
  return [...ckpt.tensors.values()].reduce((n, t) => n + 4 * t.shape.reduce((a, b) => a * b, 1), 0);
}

/**
 * Write `ckpt`'s weights to `path` (file name `location` as the graph will reference it);
 * `onProgress` hears the bytes written so far.
 */
export async function writeGraphWeights(ckpt: Checkpoint, path: string, location: string, onProgress?: (written: number) => void): Promise<GraphWeights> {
  const c = ckpt.config;
  const d = c.hiddenSize;
  const D = c.intermediateSize;
  const N = c.stateSize;
  const R = c.timeStepRank;
  const fh = await open(path, 'w');
  try {
    const out = new ExternalWriter(fh, location, onProgress);
    const layers: (LayerWeightRefs | AttentionWeightRefs)[] = [];
    const types = layerTypes(c);
    for (let i = 0; i < c.numLayers; i++) {
      if (types[i] === 'sliding_attention') {
        layers.push(await writeAttentionLayer(ckpt, i, out));
        continue;
      }
      const read = (n: LayerTensorName) => ckpt.read(layerTensorName(i, n));
      const has = (n: LayerTensorName) => ckpt.tensors.has(layerTensorName(i, n));
      const aLog = await read('mixer.A_log'); // [D, N]
      const negExpAT = new Float32Array(D * N);
      for (let ch = 0; ch < D; ch++) for (let n = 0; n < N; n++) negExpAT[n * D + ch] = -Math.exp(aLog[ch * N + n]!);
      // in_proj's rows are x then z; the graph multiplies by each half separately (no Split copy).
      const inProj = await read('mixer.in_proj.weight');
      const convW = await read('mixer.conv1d.weight'); // [D, 1, K]
      const refs: LayerWeightRefs = {
        kind: 'mamba',
        norm: await out.write(await read('norm.weight')),
        inProjXT: await out.write(transpose(inProj.subarray(0, D * d), D, d)),
        inProjZT: await out.write(transpose(inProj.subarray(D * d), D, d)),
        convW: await out.write(convW),
        convWKD: await out.write(transpose(convW, D, c.convKernel)),
        xProjT: await out.write(transpose(await read('mixer.x_proj.weight'), R + 2 * N, D)),
        dtProjT: await out.write(transpose(await read('mixer.dt_proj.weight'), D, R)),
        dtBias: await out.write(await read('mixer.dt_proj.bias')),
        negExpAT: await out.write(negExpAT),
        Dskip: await out.write(await read('mixer.D')),
        outProjT: await out.write(transpose(await read('mixer.out_proj.weight'), d, D)),
      };
      if (has('mixer.in_proj.bias')) {
        const bias = await read('mixer.in_proj.bias');
        refs.inProjXBias = await out.write(bias.slice(0, D));
        refs.inProjZBias = await out.write(bias.slice(D));
      }
      if (has('mixer.conv1d.bias')) refs.convBias = await out.write(await read('mixer.conv1d.bias'));
      if (has('mixer.out_proj.bias')) refs.outProjBias = await out.write(await read('mixer.out_proj.bias'));
      layers.push(refs);
    }
    const weights: GraphWeights = {
      embeddings: await out.write(await ckpt.read(EMBEDDINGS)),
      normF: await out.write(await ckpt.read(NORM_F)),
      layers,
    };
    if (ckpt.has.lmHead) weights.lmHead = await out.write(await ckpt.read(LM_HEAD));
    await fh.sync();
    return weights;
  } finally {
    await fh.close();
  }
}

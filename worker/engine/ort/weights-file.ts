// Writes a checkpoint's weights, in the layouts the ONNX graph wants (projections
// transposed to [in, out], A as -exp(A_log) transposed), into one external-data file that
// ONNX Runtime loads itself. Tensors pass through one at a time, so the JS heap never
// holds more than the largest tensor.
import { open, type FileHandle } from 'node:fs/promises';
import { EMBEDDINGS, LM_HEAD, NORM_F, layerTensorName, type Checkpoint, type LayerTensorName } from '../../model/checkpoint.ts';
import type { ExternalRef } from './onnx-builder.ts';
import type { GraphWeights, LayerWeightRefs } from './mamba-graph.ts';
import { transposeLast2 } from './transpose.ts';

/** ORT can memory-map external data at page-aligned offsets. */
const ALIGN = 4096;

const transpose = (m: Float32Array, rows: number, cols: number) => transposeLast2(m, 1, rows, cols);

class ExternalWriter {
  private offset = 0;
  constructor(
    private readonly fh: FileHandle,
    private readonly location: string,
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
    return { location: this.location, offset: start, length: bytes.length };
  }
}

/** Write `ckpt`'s weights to `path` (file name `location` as the graph will reference it). */
export async function writeGraphWeights(ckpt: Checkpoint, path: string, location: string): Promise<GraphWeights> {
  const c = ckpt.config;
  const d = c.hiddenSize;
  const D = c.intermediateSize;
  const N = c.stateSize;
  const R = c.timeStepRank;
  const fh = await open(path, 'w');
  try {
    const out = new ExternalWriter(fh, location);
    const layers: LayerWeightRefs[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const read = (n: LayerTensorName) => ckpt.read(layerTensorName(i, n));
      const has = (n: LayerTensorName) => ckpt.tensors.has(layerTensorName(i, n));
      const aLog = await read('mixer.A_log'); // [D, N]
      const negExpAT = new Float32Array(D * N);
      for (let ch = 0; ch < D; ch++) for (let n = 0; n < N; n++) negExpAT[n * D + ch] = -Math.exp(aLog[ch * N + n]!);
      // in_proj's rows are x then z; the graph multiplies by each half separately (no Split copy).
      const inProj = await read('mixer.in_proj.weight');
      const convW = await read('mixer.conv1d.weight'); // [D, 1, K]
      const refs: LayerWeightRefs = {
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

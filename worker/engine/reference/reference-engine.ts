// The plain reference: Hugging Face MambaForCausalLM's math, one token at a time, in
// float64 loops over fp32 weights. Slow and obviously correct; every fast engine is held
// to its numbers. Nothing here is optimized on purpose.
import {
  EMBEDDINGS,
  LM_HEAD,
  NORM_F,
  layerTensorName,
  type Checkpoint,
  type LayerTensorName,
} from '../../model/checkpoint.ts';
import type { MambaConfig } from '../../model/mamba-config.ts';
import {
  checkTokens,
  EngineError,
  type DecodeStep,
  type Engine,
  type ExportMeta,
  type ImportedState,
  type Logits,
  type ModelInfo,
  type PrefillOptions,
  type StateHandle,
} from '../engine.ts';
import {
  asHostState,
  cloneHostState,
  exportHostState,
  importHostState,
  zeroHostState,
  type HostState,
} from '../host-state.ts';
import { modelInfoFromCheckpoint } from '../model-info.ts';

interface LayerWeights {
  norm: Float32Array;
  A: Float64Array; // -exp(A_log), [D, N]
  D: Float32Array;
  convW: Float32Array; // [D, K]
  convB: Float32Array | undefined;
  inW: Float32Array; // [2D, d]
  inB: Float32Array | undefined;
  xW: Float32Array; // [R + 2N, D]
  dtW: Float32Array; // [D, R]
  dtB: Float32Array;
  outW: Float32Array; // [d, D]
  outB: Float32Array | undefined;
}

const silu = (v: number) => v / (1 + Math.exp(-v));
// torch.nn.functional.softplus(beta=1, threshold=20)
const softplus = (v: number) => (v > 20 ? v : Math.log1p(Math.exp(v)));

/** out[r] = sum_c W[r, c] * x[c] (+ b[r]) for row-major W [rows, cols]. */
function matvec(W: Float32Array, x: ArrayLike<number>, rows: number, cols: number, b?: Float32Array): Float64Array {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = b ? b[r]! : 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) acc += W[base + c]! * x[c]!;
    out[r] = acc;
  }
  return out;
}

function rmsNorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ms = 0;
  for (let i = 0; i < x.length; i++) ms += x[i]! * x[i]!;
  const scale = 1 / Math.sqrt(ms / x.length + eps);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = w[i]! * (x[i]! * scale);
  return out;
}

export class ReferenceEngine implements Engine {
  readonly kind = 'reference' as const;
  private closed = false;

  private constructor(
    readonly model: ModelInfo,
    private readonly cfg: MambaConfig,
    private readonly embeddings: Float32Array,
    private readonly lmHead: Float32Array,
    private readonly normF: Float32Array,
    private readonly layers: LayerWeights[],
  ) {}

  static async load(ckpt: Checkpoint): Promise<ReferenceEngine> {
    const cfg = ckpt.config;
    const layers: LayerWeights[] = [];
    for (let i = 0; i < cfg.numLayers; i++) {
      const get = (n: LayerTensorName) => ckpt.read(layerTensorName(i, n));
      const opt = async (n: LayerTensorName) => (ckpt.tensors.has(layerTensorName(i, n)) ? get(n) : undefined);
      const Alog = await get('mixer.A_log');
      layers.push({
        norm: await get('norm.weight'),
        A: Float64Array.from(Alog, (v) => -Math.exp(v)),
        D: await get('mixer.D'),
        convW: await get('mixer.conv1d.weight'),
        convB: await opt('mixer.conv1d.bias'),
        inW: await get('mixer.in_proj.weight'),
        inB: await opt('mixer.in_proj.bias'),
        xW: await get('mixer.x_proj.weight'),
        dtW: await get('mixer.dt_proj.weight'),
        dtB: await get('mixer.dt_proj.bias'),
        outW: await get('mixer.out_proj.weight'),
        outB: await opt('mixer.out_proj.bias'),
      });
    }
    const embeddings = await ckpt.read(EMBEDDINGS);
    const lmHead = ckpt.has.lmHead ? await ckpt.read(LM_HEAD) : embeddings;
    return new ReferenceEngine(await modelInfoFromCheckpoint(ckpt), cfg, embeddings, lmHead, await ckpt.read(NORM_F), layers);
  }

  private live(): void {
    if (this.closed) throw new EngineError('engine_closed', 'engine is closed');
  }

  async newState(): Promise<StateHandle> {
    this.live();
    return zeroHostState(this.kind, this.model);
  }

  async cloneState(state: StateHandle): Promise<StateHandle> {
    return cloneHostState(asHostState(this.kind, state));
  }

  freeState(state: StateHandle): void {
    asHostState(this.kind, state).freed = true;
  }

  async importState(bytes: Uint8Array): Promise<ImportedState> {
    this.live();
    return importHostState(this.kind, this.model, bytes);
  }

  async exportState(state: StateHandle, meta: ExportMeta): Promise<Uint8Array> {
    return exportHostState(this.model, asHostState(this.kind, state), meta);
  }

  async prefill(state: StateHandle, tokens: Int32Array, options: PrefillOptions = {}): Promise<Logits> {
    this.live();
    const s = asHostState(this.kind, state);
    checkTokens(tokens, this.model.vocabRows);
    const V = this.model.vocabRows;
    const rows = options.allLogits ? tokens.length : Math.min(1, tokens.length);
    const data = new Float32Array(rows * V);
    for (let t = 0; t < tokens.length; t++) {
      const logits = this.step(s, tokens[t]!);
      if (options.allLogits) data.set(logits, t * V);
      else if (t === tokens.length - 1) data.set(logits, 0);
    }
    return { rows, vocab: V, data };
  }

  async decode(steps: readonly DecodeStep[]): Promise<Logits> {
    this.live();
    const V = this.model.vocabRows;
    const states = steps.map((st) => asHostState(this.kind, st.state));
    if (new Set(states).size !== states.length) throw new EngineError('state_foreign', 'a state appears twice in one decode batch');
    checkTokens(steps.map((st) => st.token), V);
    const data = new Float32Array(steps.length * V);
    steps.forEach((st, i) => data.set(this.step(states[i]!, st.token), i * V));
    return { rows: steps.length, vocab: V, data };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Absorb one token into `s`; return the logits after it. */
  private step(s: HostState, token: number): Float64Array {
    const c = this.cfg;
    const d = c.hiddenSize;
    const D = c.intermediateSize;
    const N = c.stateSize;
    const K = c.convKernel;
    const R = c.timeStepRank;
    const residual = Float64Array.from(this.embeddings.subarray(token * d, (token + 1) * d));

    this.layers.forEach((w, layer) => {
      const h = rmsNorm(residual, w.norm, c.layerNormEpsilon);
      const xz = matvec(w.inW, h, 2 * D, d, w.inB);
      const convBase = layer * D * K;
      const xc = new Float64Array(D);
      for (let ch = 0; ch < D; ch++) {
        // conv_state holds the last K raw inputs, oldest first: shift left, append.
        const st = convBase + ch * K;
        for (let k = 0; k < K - 1; k++) s.conv[st + k] = s.conv[st + k + 1]!;
        s.conv[st + K - 1] = xz[ch]!;
        let acc = w.convB ? w.convB[ch]! : 0;
        for (let k = 0; k < K; k++) acc += w.convW[ch * K + k]! * s.conv[st + k]!;
        xc[ch] = silu(acc);
      }
      const xdbl = matvec(w.xW, xc, R + 2 * N, D);
      const dtIn = xdbl.subarray(0, R);
      const B = xdbl.subarray(R, R + N);
      const C = xdbl.subarray(R + N, R + 2 * N);
      const dtPre = matvec(w.dtW, dtIn, D, R, w.dtB);
      const y = new Float64Array(D);
      const ssmBase = layer * D * N;
      for (let ch = 0; ch < D; ch++) {
        const dt = softplus(dtPre[ch]!);
        let acc = 0;
        for (let n = 0; n < N; n++) {
          const idx = ssmBase + ch * N + n;
          const hNew = Math.exp(dt * w.A[ch * N + n]!) * s.ssm[idx]! + dt * B[n]! * xc[ch]!;
          s.ssm[idx] = hNew;
          acc += hNew * C[n]!;
        }
        y[ch] = (acc + w.D[ch]! * xc[ch]!) * silu(xz[D + ch]!);
      }
      const out = matvec(w.outW, y, d, D, w.outB);
      for (let i = 0; i < d; i++) residual[i] = residual[i]! + out[i]!;
    });

    s.tokensAbsorbed += 1;
    const hf = rmsNorm(residual, this.normF, c.layerNormEpsilon);
    return matvec(this.lmHead, hf, this.model.vocabRows, d);
  }
}

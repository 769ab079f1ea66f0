// The plain reference: Hugging Face MambaForCausalLM's math, and the attention hybrid's, in
// float64 loops over fp32 weights. Slow and obviously correct; every fast engine is held
// to its numbers. Nothing here is optimized on purpose.
//
// Two separate paths, which the tests hold to each other:
// - prefill runs layer by layer over the whole input: a Mamba layer's recurrence token by
//   token, an attention layer as a masked window over every key of the sequence (the ring's
//   earlier keys, then the new ones; token t sees t-W < j <= t);
// - decode runs token by token through every layer, an attention layer reading its ring
//   buffer (slot = position mod W) after writing the new key into it.
import {
  EMBEDDINGS,
  LM_HEAD,
  NORM_F,
  layerTensorName,
  type AttentionTensorName,
  type Checkpoint,
  type LayerTensorName,
} from '../../model/checkpoint.ts';
import { layerTypes, type HybridConfig, type MambaConfig } from '../../model/mamba-config.ts';
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

interface AttentionWeights {
  kind: 'attention';
  /** Rank among the attention layers: the layer's slot in the state's rings. */
  slot: number;
  norm: Float32Array;
  q: Float32Array; // [H*hd, d]
  k: Float32Array; // [KV*hd, d]
  v: Float32Array; // [KV*hd, d]
  o: Float32Array; // [d, H*hd]
  qB: Float32Array | undefined;
  kB: Float32Array | undefined;
  vB: Float32Array | undefined;
  oB: Float32Array | undefined;
}

interface MambaWeights {
  kind: 'mamba';
  /** Rank among the Mamba layers: the layer's slot in conv_state / ssm_state. */
  slot: number;
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

type LayerWeights = MambaWeights | AttentionWeights;

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

/**
 * x (heads x hd, row per head) rotated for absolute position t: RoPE in the rotate-half
 * convention. inv_freq and the angle in float64, so a position of 10^7 is as exact as 10.
 */
function rope(x: Float64Array, heads: number, hd: number, t: number, theta: number | null): Float64Array {
  if (theta === null) return x;
  const half = hd / 2;
  const out = new Float64Array(x.length);
  for (let i = 0; i < half; i++) {
    const angle = t * Math.pow(theta, (-2 * i) / hd);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    for (let h = 0; h < heads; h++) {
      const a = x[h * hd + i]!;
      const b = x[h * hd + half + i]!;
      out[h * hd + i] = a * c - b * s; // rotate_half(x)[i] = -x[half + i]
      out[h * hd + half + i] = b * c + a * s; // rotate_half(x)[half + i] = x[i]
    }
  }
  return out;
}

/** One query (H heads) over keys/values (each KV heads x hd); returns the H*hd concatenated heads. */
function attend(q: Float64Array, keys: ArrayLike<number>[], values: ArrayLike<number>[], h: HybridConfig): Float64Array {
  const { numHeads: H, numKvHeads: KV, headDim: hd } = h;
  const group = H / KV;
  const out = new Float64Array(H * hd);
  for (let head = 0; head < H; head++) {
    const kvHead = Math.floor(head / group);
    const scores = keys.map((k) => {
      let dot = 0;
      for (let i = 0; i < hd; i++) dot += q[head * hd + i]! * k[kvHead * hd + i]!;
      return dot / Math.sqrt(hd);
    });
    const max = Math.max(...scores);
    const weights = scores.map((sc) => Math.exp(sc - max));
    const total = weights.reduce((a, b) => a + b, 0);
    values.forEach((v, j) => {
      for (let i = 0; i < hd; i++) out[head * hd + i] = out[head * hd + i]! + (weights[j]! / total) * v[kvHead * hd + i]!;
    });
  }
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
    const types = layerTypes(cfg);
    const slots = { mamba: 0, attention: 0 };
    for (let i = 0; i < cfg.numLayers; i++) {
      const get = (n: LayerTensorName | AttentionTensorName) => ckpt.read(layerTensorName(i, n));
      const opt = async (n: LayerTensorName | AttentionTensorName) => (ckpt.tensors.has(layerTensorName(i, n)) ? get(n) : undefined);
      if (types[i] === 'sliding_attention') {
        layers.push({
          kind: 'attention',
          slot: slots.attention++,
          norm: await get('norm.weight'),
          q: await get('mixer.q_proj.weight'),
          k: await get('mixer.k_proj.weight'),
          v: await get('mixer.v_proj.weight'),
          o: await get('mixer.o_proj.weight'),
          qB: await opt('mixer.q_proj.bias'),
          kB: await opt('mixer.k_proj.bias'),
          vB: await opt('mixer.v_proj.bias'),
          oB: await opt('mixer.o_proj.bias'),
        });
        continue;
      }
      const Alog = await get('mixer.A_log');
      layers.push({
        kind: 'mamba',
        slot: slots.mamba++,
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
    const d = this.cfg.hiddenSize;
    const T = tokens.length;
    const rows = options.allLogits ? T : Math.min(1, T);
    const data = new Float32Array(rows * V);
    if (T === 0) return { rows, vocab: V, data };
    // The residual stream of every position, advanced one whole layer at a time.
    const residual = Array.from(tokens, (t) => Float64Array.from(this.embeddings.subarray(t * d, (t + 1) * d)));
    const start = s.tokensAbsorbed;
    for (const w of this.layers) {
      const hs = residual.map((r) => rmsNorm(r, w.norm, this.cfg.layerNormEpsilon));
      const outs = w.kind === 'attention' ? this.attentionSequence(s, w, hs, start) : hs.map((h) => this.mambaLayer(s, w, h));
      outs.forEach((o, t) => {
        for (let i = 0; i < d; i++) residual[t]![i] = residual[t]![i]! + o[i]!;
      });
    }
    s.tokensAbsorbed += T;
    for (let t = options.allLogits ? 0 : T - 1; t < T; t++) data.set(this.head(residual[t]!), (options.allLogits ? t : 0) * V);
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
    const d = this.cfg.hiddenSize;
    const residual = Float64Array.from(this.embeddings.subarray(token * d, (token + 1) * d));
    for (const w of this.layers) {
      const h = rmsNorm(residual, w.norm, this.cfg.layerNormEpsilon);
      const out = w.kind === 'attention' ? this.attentionStep(s, w, h) : this.mambaLayer(s, w, h);
      for (let i = 0; i < d; i++) residual[i] = residual[i]! + out[i]!;
    }
    s.tokensAbsorbed += 1;
    return this.head(residual);
  }

  private head(residual: Float64Array): Float64Array {
    const hf = rmsNorm(residual, this.normF, this.cfg.layerNormEpsilon);
    return matvec(this.lmHead, hf, this.model.vocabRows, this.cfg.hiddenSize);
  }

  /** One token through one Mamba layer: advances that layer's conv and ssm state, returns its output. */
  private mambaLayer(s: HostState, w: MambaWeights, h: Float64Array): Float64Array {
    const c = this.cfg;
    const d = c.hiddenSize;
    const D = c.intermediateSize;
    const N = c.stateSize;
    const K = c.convKernel;
    const R = c.timeStepRank;
    const xz = matvec(w.inW, h, 2 * D, d, w.inB);
    const convBase = w.slot * D * K;
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
    const ssmBase = w.slot * D * N;
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
    return matvec(w.outW, y, d, D, w.outB);
  }

  /** q (rotated), k (rotated) and v of one normed input at absolute position t. */
  private qkv(w: AttentionWeights, h: Float64Array, t: number): { q: Float64Array; k: Float64Array; v: Float64Array } {
    const a = this.cfg.hybrid!;
    const d = this.cfg.hiddenSize;
    const q = matvec(w.q, h, a.numHeads * a.headDim, d, w.qB);
    const k = matvec(w.k, h, a.numKvHeads * a.headDim, d, w.kB);
    const v = matvec(w.v, h, a.numKvHeads * a.headDim, d, w.vB);
    return { q: rope(q, a.numHeads, a.headDim, t, a.ropeTheta), k: rope(k, a.numKvHeads, a.headDim, t, a.ropeTheta), v };
  }

  /** Decode: write the new key/value into slot t mod W, then attend over the ring's live slots. */
  private attentionStep(s: HostState, w: AttentionWeights, h: Float64Array): Float64Array {
    const a = this.cfg.hybrid!;
    const t = s.tokensAbsorbed;
    const width = a.numKvHeads * a.headDim;
    const ring = w.slot * a.window * width;
    const { q, k, v } = this.qkv(w, h, t);
    s.attnK.set(k, ring + (t % a.window) * width);
    s.attnV.set(v, ring + (t % a.window) * width);
    // Live slots: positions max(0, t-W+1)..t (after t >= W-1, every slot).
    const live = Math.min(t + 1, a.window);
    const keys: Float32Array[] = [];
    const values: Float32Array[] = [];
    for (let slot = 0; slot < live; slot++) {
      keys.push(s.attnK.subarray(ring + slot * width, ring + (slot + 1) * width));
      values.push(s.attnV.subarray(ring + slot * width, ring + (slot + 1) * width));
    }
    return matvec(w.o, attend(q, keys, values, a), this.cfg.hiddenSize, a.numHeads * a.headDim, w.oB);
  }

  /**
   * Prefill: every position at once, as a masked window over the whole sequence. The keys are
   * the ring's (positions start-n .. start-1, n = min(start, W-1)) followed by the new ones;
   * the query at position p sees keys at p-W < j <= p. Afterwards the ring holds the last W.
   */
  private attentionSequence(s: HostState, w: AttentionWeights, hs: Float64Array[], start: number): Float64Array[] {
    const a = this.cfg.hybrid!;
    const W = a.window;
    const width = a.numKvHeads * a.headDim;
    const ring = w.slot * W * width;
    const keys: { pos: number; k: ArrayLike<number>; v: ArrayLike<number> }[] = [];
    for (let p = start - Math.min(start, W - 1); p < start; p++) {
      const at = ring + (p % W) * width;
      keys.push({ pos: p, k: s.attnK.slice(at, at + width), v: s.attnV.slice(at, at + width) });
    }
    const queries = hs.map((h, i) => {
      const { q, k, v } = this.qkv(w, h, start + i);
      keys.push({ pos: start + i, k, v });
      return q;
    });
    const outs = queries.map((q, i) => {
      const p = start + i;
      const visible = keys.filter((e) => e.pos <= p && p - e.pos < W);
      const o = attend(q, visible.map((e) => e.k), visible.map((e) => e.v), a);
      return matvec(w.o, o, this.cfg.hiddenSize, a.numHeads * a.headDim, w.oB);
    });
    for (const e of keys.slice(-W)) {
      s.attnK.set(e.k, ring + (e.pos % W) * width);
      s.attnV.set(e.v, ring + (e.pos % W) * width);
    }
    return outs;
  }
}

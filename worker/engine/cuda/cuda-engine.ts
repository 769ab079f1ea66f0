// The cuda engine: our own kernels (worker/native) behind the Engine interface. A session's
// state is a slot in the addon's device pool, so decode steps move no state through JS; only
// importState/exportState copy a state, to and from `.mstate` bytes (shared/mstate.ts through
// host-state.ts, the same conversion the CPU engines use).
//
// Attention hybrids: the slot also holds each attention layer's key/value ring, and every
// prefill/decode call passes each state's tokensAbsorbed as its position (RoPE angles, ring
// rows and the window depend on it). This side is the position's only source of truth: the
// addon keeps none, so a state imported at position 10^7 needs nothing but its bytes.
import { readTensorBytes } from '../../model/safetensors.ts';
import type { Checkpoint } from '../../model/checkpoint.ts';
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
import { exportHostState, HostState, importHostState, stateSizes } from '../host-state.ts';
import { modelInfoFromCheckpoint } from '../model-info.ts';
import {
  cudaAvailability,
  CudaUnavailableError,
  loadCudaAddon,
  type NativeDType,
  type NativeEngine,
  type NativeEngineInfo,
  type NativeErrorCode,
  type NativeHybrid,
} from './cuda-addon.ts';

export interface CudaEngineOptions {
  /** Weights and activations; the state is fp32 regardless. Default: the checkpoint's dtype (F32 if mixed). */
  readonly dtype?: NativeDType;
  /** Sessions whose state can be on the device at once (newState beyond it: EngineError 'capacity'). */
  readonly maxSlots?: number;
  /** Largest decode batch per launch; larger batches are split. */
  readonly maxBatch?: number;
  /** Longest piece of a prompt per pass (bounds activation memory; the state carries between pieces). */
  readonly prefillChunk?: number;
  /** Decode through CUDA graphs (default true); false launches kernel by kernel, e.g. under compute-sanitizer. */
  readonly useGraphs?: boolean;
  /** Channels per block of the prefill scan (1, 2 or 4); 0 = the addon's default. */
  readonly scanChannels?: number;
  /**
   * Hybrids: keys per block of decode attention (a longer window is split over several blocks
   * and merged). Default 256; tests set it small to exercise the merge on short windows.
   */
  readonly attnSplitKeys?: number;
  readonly device?: number;
  /** The checkpoint's fingerprint when already known (saves hashing the weights again). */
  readonly fingerprint?: string;
}

/** A failure inside the addon that is not one of the Engine interface's own codes. */
export class CudaEngineError extends Error {
  readonly code: NativeErrorCode;
  constructor(code: NativeErrorCode, message: string) {
    super(message);
    this.name = 'CudaEngineError';
    this.code = code;
  }
}

function translate(err: unknown): Error {
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  if (code === 'capacity') return new EngineError('capacity', message);
  if (code === 'engine_closed') return new EngineError('engine_closed', message);
  if (code === 'cuda_error' || code === 'cublas_error' || code === 'invalid_argument' || code === 'internal') {
    return new CudaEngineError(code, message);
  }
  return err instanceof Error ? err : new Error(message);
}

async function native<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw translate(err);
  }
}

class CudaState implements StateHandle {
  readonly engine = 'cuda' as const;
  freed = false;
  constructor(
    readonly owner: CudaEngine,
    readonly slot: number,
    public tokensAbsorbed: number,
  ) {}
}

const LAYER_TENSOR = /^backbone\.layers\.(\d+)\.(.+)$/;

/** The addon's name and layer for a canonical (HF) checkpoint tensor name. */
function nativeTensorName(name: string): { name: string; layer: number } {
  if (name === 'backbone.embeddings.weight') return { name: 'embeddings', layer: -1 };
  if (name === 'backbone.norm_f.weight') return { name: 'norm_f', layer: -1 };
  if (name === 'lm_head.weight') return { name: 'lm_head', layer: -1 };
  const m = LAYER_TENSOR.exec(name);
  if (!m) throw new Error(`cuda engine: unexpected tensor "${name}"`);
  return { name: m[2]!, layer: Number(m[1]) };
}

/** The addon's description of a hybrid's attention layers, or undefined for a pure model. */
function nativeHybrid(c: MambaConfig): NativeHybrid | undefined {
  const h = c.hybrid;
  if (!h) return undefined;
  return {
    layerTypes: [...h.layerTypes],
    window: h.window,
    numHeads: h.numHeads,
    numKvHeads: h.numKvHeads,
    headDim: h.headDim,
    bias: h.bias,
    ropeTheta: h.ropeTheta,
  };
}

export class CudaEngine implements Engine {
  readonly kind = 'cuda' as const;
  private closed = false;

  private constructor(
    readonly model: ModelInfo,
    private readonly nativeEngine: NativeEngine,
    private readonly maxBatch: number,
  ) {}

  /**
   * Uploads the checkpoint to the GPU (tensor by tensor, converted there to `dtype`).
   * Throws CudaUnavailableError with the reason when the addon or a GPU is missing.
   */
  static async load(ckpt: Checkpoint, options: CudaEngineOptions = {}): Promise<CudaEngine> {
    const device = options.device ?? 0;
    const availability = cudaAvailability(device);
    if (!availability.ok) throw new CudaUnavailableError(availability.reason);
    const addon = loadCudaAddon();
    const c = ckpt.config;
    const dtype: NativeDType = options.dtype ?? (ckpt.dtype === 'mixed' ? 'F32' : ckpt.dtype);
    const maxBatch = options.maxBatch ?? 64;
    const nativeEngine = new addon.NativeEngine(
      {
        dModel: c.hiddenSize,
        dInner: c.intermediateSize,
        dState: c.stateSize,
        dConv: c.convKernel,
        dtRank: c.timeStepRank,
        nLayers: c.numLayers,
        vocabRows: ckpt.vocabRows,
        eps: c.layerNormEpsilon,
        ...(c.hybrid ? { hybrid: nativeHybrid(c) } : {}),
      },
      {
        dtype,
        maxSlots: options.maxSlots ?? 128,
        maxBatch,
        prefillChunk: options.prefillChunk ?? 2048,
        useGraphs: options.useGraphs ?? true,
        scanChannels: options.scanChannels ?? 0,
        attnSplitKeys: options.attnSplitKeys ?? 256,
        device,
      },
    );
    await native(() => nativeEngine.init());
    try {
      for (const [name, entry] of ckpt.tensors) {
        const target = nativeTensorName(name);
        const bytes = await readTensorBytes(entry);
        await native(() => nativeEngine.setTensor(target.name, target.layer, bytes, entry.dtype));
      }
      await native(() => nativeEngine.finalize());
      const model = await modelInfoFromCheckpoint(ckpt, options.fingerprint);
      return new CudaEngine(model, nativeEngine, maxBatch);
    } catch (err) {
      await nativeEngine.close().catch(() => undefined);
      throw err;
    }
  }

  /** Device, memory and build facts, for logs and benchmarks. */
  info(): NativeEngineInfo {
    return this.nativeEngine.info();
  }

  private live(): void {
    if (this.closed) throw new EngineError('engine_closed', 'engine is closed');
  }

  private own(state: StateHandle): CudaState {
    if (!(state instanceof CudaState) || state.owner !== this) {
      throw new EngineError('state_foreign', 'state handle was not made by this cuda engine');
    }
    if (state.freed) throw new EngineError('state_freed', 'state handle was freed');
    return state;
  }

  async newState(): Promise<StateHandle> {
    this.live();
    const slot = await native(() => this.nativeEngine.allocSlot());
    return new CudaState(this, slot, 0);
  }

  async cloneState(state: StateHandle): Promise<StateHandle> {
    this.live();
    const src = this.own(state);
    const slot = await native(() => this.nativeEngine.allocSlot());
    try {
      await native(() => this.nativeEngine.copySlot(slot, src.slot));
    } catch (err) {
      this.nativeEngine.freeSlot(slot);
      throw err;
    }
    return new CudaState(this, slot, src.tokensAbsorbed);
  }

  freeState(state: StateHandle): void {
    const s = this.own(state);
    s.freed = true;
    this.nativeEngine.freeSlot(s.slot);
  }

  async importState(bytes: Uint8Array): Promise<ImportedState> {
    this.live();
    // Parsing and every check (checksum, fingerprint, layout, finite values) are the CPU
    // engines' own; only the upload is ours.
    const parsed = importHostState('cuda', this.model, bytes);
    const slot = await native(() => this.nativeEngine.allocSlot());
    try {
      const st = parsed.state;
      await native(() => this.nativeEngine.importSlot(slot, st.conv, st.ssm, st.attnK, st.attnV));
    } catch (err) {
      this.nativeEngine.freeSlot(slot);
      throw err;
    }
    return {
      state: new CudaState(this, slot, parsed.state.tokensAbsorbed),
      parentVersion: parsed.parentVersion,
      transcriptHash: parsed.transcriptHash,
    };
  }

  async exportState(state: StateHandle, meta: ExportMeta): Promise<Uint8Array> {
    this.live();
    const s = this.own(state);
    const n = stateSizes(this.model.layout);
    const conv = new Float32Array(n.conv);
    const ssm = new Float32Array(n.ssm);
    const attnK = new Float32Array(n.attn);
    const attnV = new Float32Array(n.attn);
    await native(() => this.nativeEngine.exportSlot(s.slot, conv, ssm, attnK, attnV));
    return exportHostState(this.model, new HostState('cuda', conv, ssm, s.tokensAbsorbed, attnK, attnV), meta);
  }

  async prefill(state: StateHandle, tokens: Int32Array, options: PrefillOptions = {}): Promise<Logits> {
    this.live();
    const s = this.own(state);
    const V = this.model.vocabRows;
    checkTokens(tokens, V);
    const rows = options.allLogits ? tokens.length : Math.min(1, tokens.length);
    const data = new Float32Array(rows * V);
    if (tokens.length > 0) {
      await native(() => this.nativeEngine.prefill(s.slot, s.tokensAbsorbed, tokens, options.allLogits === true, data));
      s.tokensAbsorbed += tokens.length;
    }
    return { rows, vocab: V, data };
  }

  async decode(steps: readonly DecodeStep[]): Promise<Logits> {
    this.live();
    const { slots, positions, tokens, states } = this.batch(steps);
    const V = this.model.vocabRows;
    const data = new Float32Array(steps.length * V);
    for (let i = 0; i < steps.length; i += this.maxBatch) {
      const end = Math.min(steps.length, i + this.maxBatch);
      await native(() =>
        this.nativeEngine.decode(slots.subarray(i, end), positions.subarray(i, end), tokens.subarray(i, end), data.subarray(i * V, end * V), null),
      );
    }
    for (const s of states) s.tokensAbsorbed += 1;
    return { rows: steps.length, vocab: V, data };
  }

  /**
   * A decode step that returns the greedy next token of each row instead of its logits: the
   * argmax runs on the device, so only 4 bytes per row cross PCIe (the logits of a batch of
   * 64 at a 50k vocabulary are 13 MB). Not part of the Engine interface (yet).
   */
  async decodeGreedy(steps: readonly DecodeStep[]): Promise<Int32Array> {
    this.live();
    const { slots, positions, tokens, states } = this.batch(steps);
    const out = new Int32Array(steps.length);
    for (let i = 0; i < steps.length; i += this.maxBatch) {
      const end = Math.min(steps.length, i + this.maxBatch);
      await native(() =>
        this.nativeEngine.decode(slots.subarray(i, end), positions.subarray(i, end), tokens.subarray(i, end), null, out.subarray(i, end)),
      );
    }
    for (const s of states) s.tokensAbsorbed += 1;
    return out;
  }

  /**
   * Median device time of one decode step for these states (benchmarks). Every timed step
   * replays the same positions, so the states' device data is for timing only afterwards.
   */
  async timeDecode(steps: readonly DecodeStep[], iters: number): Promise<number> {
    this.live();
    const { slots, positions, tokens } = this.batch(steps);
    if (steps.length > this.maxBatch) throw new EngineError('capacity', `timeDecode: batch ${steps.length} exceeds maxBatch ${this.maxBatch}`);
    return native(() => this.nativeEngine.timeDecode(slots, positions, tokens, iters));
  }

  private batch(steps: readonly DecodeStep[]): { slots: Int32Array; positions: Float64Array; tokens: Int32Array; states: CudaState[] } {
    const states = steps.map((st) => this.own(st.state));
    if (new Set(states).size !== states.length) throw new EngineError('state_foreign', 'a state appears twice in one decode batch');
    const tokens = Int32Array.from(steps, (st) => st.token);
    checkTokens(tokens, this.model.vocabRows);
    // Each row's position is its state's tokensAbsorbed: sessions in one batch sit anywhere.
    const positions = Float64Array.from(states, (s) => s.tokensAbsorbed);
    return { slots: Int32Array.from(states, (s) => s.slot), positions, tokens, states };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await native(() => this.nativeEngine.close());
  }
}

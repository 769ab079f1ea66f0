// The ORT engine on the native kernels (native-kernels.ts, worker/native-cpu/): prefill and
// decode of pure Mamba builds run on our own kernels, called synchronously on the caller's
// thread, the worker's main thread. No ONNX Runtime session, no thread of the engine's own.
//
// Why on the main thread: a decode step of int4 mamba-130m is ~1.35 ms, and the round trip to a
// worker thread cost ~0.15 ms of it (a message each way, each waking a sleeping thread on a
// small VM; docs/cpu-engine.md, "The engine's thread"). The kernels' own team of threads
// (OpenMP) still does the arithmetic on every core; the main thread is its first member.
// The event loop then waits for one call at a time: a decode step (1.5–20 ms for mamba-130m at
// batch 1 to 8 on host F), or one piece of a prefill (at most PREFILL_PIECE tokens: the engine
// yields to the event loop between pieces, so a long prompt never blocks timers and sockets for
// more than one piece).
//
// States are host arrays in the graph's layout, conv [layers, K, D] and ssm [layers, N, D], which
// the kernels read and write in place; export and import transpose to and from `.mstate`'s.
import { createRequire } from 'node:module';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import {
  checkTokens,
  EngineError,
  type DecodeOptions,
  type DecodeStep,
  type Engine,
  type ExportMeta,
  type ImportedState,
  type Logits,
  type ModelInfo,
  type PrefillOptions,
  type StateHandle,
} from '../engine.ts';
import { exportHostState, HostState, importHostState } from '../host-state.ts';
import { LogitsSlots } from './logits-slots.ts';
import type { NativeDecoderOptions, NativeKernelsPlan } from './native-kernels.ts';
import { transposeLast2 } from './transpose.ts';

/**
 * Tokens of a prompt run in one call before the engine yields to the event loop: the kernels'
 * own chunk (mamba_cpu.h, kPrefillChunk), so the pieces split the work where the kernels do. On
 * host F of docs/cpu-engine.md (2 vCPUs) a piece of mamba-130m is 80–125 ms in any dtype
 * (prefill 1000–1700 tok/s).
 */
export const PREFILL_PIECE = 128;

/** worker/native-cpu/src/addon.cpp's Decoder. */
interface NativeDecoder {
  decode(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array): void;
  prefill(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array, allLogits: boolean): void;
  close(): void;
}

class NativeState implements StateHandle {
  readonly engine = 'ort' as const;
  freed = false;
  /** Per-layer views of `conv` and `ssm`: what the kernels take. */
  convLayers: Float32Array[];
  ssmLayers: Float32Array[];
  constructor(
    /** [layers, K, D] */
    public conv: Float32Array,
    /** [layers, N, D] */
    public ssm: Float32Array,
    public tokensAbsorbed: number,
    layers: number,
  ) {
    const split = (flat: Float32Array) => {
      const size = flat.length / layers;
      return Array.from({ length: layers }, (_, i) => flat.subarray(i * size, (i + 1) * size));
    };
    this.convLayers = split(conv);
    this.ssmLayers = split(ssm);
  }
}

export class NativeKernelsEngine implements Engine {
  readonly kind = 'ort' as const;
  private closed: EngineError | undefined;
  /** Decode's logits with reuseOutput (logits-slots.ts). */
  private readonly logitsSlots: LogitsSlots<ArrayBuffer>;
  /** The head's row of a prompt piece whose logits nobody asked for. */
  private readonly discard: Float32Array;
  private readonly dims: NativeDecoderOptions['dims'];

  private constructor(
    readonly model: ModelInfo,
    private readonly decoder: NativeDecoder,
    dims: NativeDecoderOptions['dims'],
  ) {
    this.dims = dims;
    this.discard = new Float32Array(dims.V);
    this.logitsSlots = new LogitsSlots(dims.V, (bytes) => new ArrayBuffer(bytes));
  }

  /** Load the plan's addon and map its weights; throws (the addon's coded errors) where it cannot. */
  static open(model: ModelInfo, plan: NativeKernelsPlan): NativeKernelsEngine {
    const { Decoder } = createRequire(import.meta.url)(plan.addonPath) as { Decoder: new (o: NativeDecoderOptions) => NativeDecoder };
    const decoder = new Decoder(plan.decoder);
    if (plan.decoder.dims.V !== model.vocabRows) {
      decoder.close();
      throw new Error(`the native kernels' vocabulary rows (${plan.decoder.dims.V}) are not the model's (${model.vocabRows})`);
    }
    return new NativeKernelsEngine(model, decoder, plan.decoder.dims);
  }

  private live(state: StateHandle): NativeState {
    if (this.closed) throw this.closed;
    if (!(state instanceof NativeState)) throw new EngineError('state_foreign', 'state handle was not made by the ort engine');
    if (state.freed) throw new EngineError('state_freed', 'state handle was freed');
    return state;
  }

  private zeroState(): NativeState {
    const { layers, K, N, D } = this.dims;
    return new NativeState(new Float32Array(layers * K * D), new Float32Array(layers * N * D), 0, layers);
  }

  async newState(): Promise<StateHandle> {
    if (this.closed) throw this.closed;
    return this.zeroState();
  }

  async cloneState(state: StateHandle): Promise<StateHandle> {
    const s = this.live(state);
    return new NativeState(s.conv.slice(), s.ssm.slice(), s.tokensAbsorbed, this.dims.layers);
  }

  freeState(state: StateHandle): void {
    const s = this.live(state);
    s.freed = true;
    // The handle may outlive the session: let its memory go now.
    s.conv = s.ssm = new Float32Array(0);
    s.convLayers = s.ssmLayers = [];
  }

  async importState(bytes: Uint8Array): Promise<ImportedState> {
    if (this.closed) throw this.closed;
    const imported = importHostState('ort', this.model, bytes);
    // HF layout ([M, D, K], [M, D, N]) to the kernels' ([M, K, D], [M, N, D]).
    const { layers, K, N, D } = this.dims;
    const conv = transposeLast2(imported.state.conv, layers, D, K);
    const ssm = transposeLast2(imported.state.ssm, layers, D, N);
    return { state: new NativeState(conv, ssm, imported.state.tokensAbsorbed, layers), parentVersion: imported.parentVersion, transcriptHash: imported.transcriptHash };
  }

  async exportState(state: StateHandle, meta: ExportMeta): Promise<Uint8Array> {
    const s = this.live(state);
    const { layers, K, N, D } = this.dims;
    const hf = new HostState('ort', transposeLast2(s.conv, layers, K, D), transposeLast2(s.ssm, layers, N, D), s.tokensAbsorbed);
    return exportHostState(this.model, hf, meta);
  }

  async prefill(state: StateHandle, tokens: Int32Array, options: PrefillOptions = {}): Promise<Logits> {
    const s = this.live(state);
    checkTokens(tokens, this.model.vocabRows);
    const V = this.dims.V;
    const T = tokens.length;
    const allLogits = options.allLogits === true;
    const logits = new Float32Array((T === 0 ? 0 : allLogits ? T : 1) * V);
    for (let at = 0; at < T; at += PREFILL_PIECE) {
      if (at > 0) {
        await yieldToEventLoop();
        // Closed or freed while the event loop ran: the prompt stops here.
        this.live(s);
      }
      const n = Math.min(PREFILL_PIECE, T - at);
      const out = allLogits ? logits.subarray(at * V, (at + n) * V) : at + n === T ? logits : this.discard;
      this.decoder.prefill(tokens.subarray(at, at + n), s.convLayers, s.ssmLayers, out, allLogits);
      // Counted as it is absorbed: a prompt stopped part way leaves a state that says so.
      s.tokensAbsorbed += n;
    }
    return { rows: T === 0 ? 0 : allLogits ? T : 1, vocab: V, data: logits };
  }

  async decode(steps: readonly DecodeStep[], options?: DecodeOptions): Promise<Logits> {
    const states = steps.map((st) => this.live(st.state));
    if (new Set(states).size !== states.length) throw new EngineError('state_foreign', 'a state appears twice in one decode batch');
    // Checked as given: an Int32Array would turn 1.5 into 1 and NaN into 0.
    checkTokens(steps.map((st) => st.token), this.model.vocabRows);
    const tokens = Int32Array.from(steps, (st) => st.token);
    const V = this.dims.V;
    const B = steps.length;
    if (B === 0) return { rows: 0, vocab: V, data: new Float32Array(0) };
    const logits = options?.reuseOutput ? this.logitsSlots.next(B * V).view : new Float32Array(B * V);
    const conv: Float32Array[] = [];
    const ssm: Float32Array[] = [];
    for (const s of states) {
      conv.push(...s.convLayers);
      ssm.push(...s.ssmLayers);
    }
    this.decoder.decode(tokens, conv, ssm, logits);
    for (const s of states) s.tokensAbsorbed += 1;
    return { rows: B, vocab: V, data: logits };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = new EngineError('engine_closed', 'engine is closed');
    this.decoder.close();
  }
}

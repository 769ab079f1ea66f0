// The portable engine: the checkpoint compiled to one ONNX graph (see mamba-graph.ts) and
// run by onnxruntime-node on a worker thread (see ort-thread.mjs for why a thread). States
// live on that thread; handles here are ids. Where the native kernels apply (pure Mamba builds
// on x86-64 with the addon built: native-kernels.ts), `OrtEngine.load` returns their engine
// instead (native-engine.ts), which runs no ONNX Runtime and no thread.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { DEFAULT_ORT_INTRA_OP_SPIN_US } from '../../../shared/config.ts';
import { createLogger, type Logger } from '../../../shared/logger.ts';
import type { Checkpoint } from '../../model/checkpoint.ts';
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
import { layersOfType } from '../../model/mamba-config.ts';
import { modelInfoFromCheckpoint } from '../model-info.ts';
import { ensureGraphBuild } from './graph-cache.ts';
import type { NBitsActivations } from './linear.ts';
import { LogitsSlots } from './logits-slots.ts';
import { NativeKernelsEngine } from './native-engine.ts';
import { NativeKernelsUnavailableError, planNativeKernels, type NativeKernelsSetting } from './native-kernels.ts';
import { discardPackedModel, ensurePackedModel, PackedWeightsError } from './packed-weights.ts';
import { WeightsDtypeError, type WeightsDtype } from './quantize.ts';
import { transposeLast2 } from './transpose.ts';
import { swapRingAxes } from './window-inputs.mjs';

export interface OrtEngineOptions {
  /** Where graph builds are cached (MODEL_CACHE_DIR). */
  readonly cacheDir: string;
  readonly executionProvider?: 'cpu' | 'cuda';
  /** Intra-op threads of ONNX Runtime; 0 = one per core. */
  readonly intraOpThreads?: number;
  /**
   * ORT's own spin: the intra-op threads spin-wait between ops and a long while after a run
   * (overrides intraOpSpinMicros). Off unless asked for: measured on a 2-vCPU machine, the spin
   * left after a run took the cores a neighbour (the event loop, another process) needed
   * (bench/ort-spinning.ts).
   */
  readonly intraOpSpinning?: boolean;
  /**
   * When intraOpSpinning is off: how long (µs) an idle intra-op thread spins for the next op of
   * a run before it sleeps (ORT's `session.intra_op.spin_duration_us`); 0 = it sleeps at once.
   * Bounded, the spin covers the gaps between a run's ops without the long spin ORT's own
   * default leaves after a run. Default 100 µs (DEFAULT_ORT_INTRA_OP_SPIN_US, also
   * ORT_INTRA_OP_SPIN_US's default): end to end it served as much as no spin or more, also
   * beside a busy neighbour (bench/ort-spinning.ts).
   */
  readonly intraOpSpinMicros?: number;
  /**
   * Longest piece of a prompt run in one graph call (default 256, as the scheduler feeds
   * prompts). It bounds activation memory, about 0.24 MB a token for mamba-130m (a 2048-token
   * call held ~500 MB, more than its int8 weights thrice over), and prefill throughput does
   * not depend on it: the scan, token by token, is the work.
   */
  readonly maxPrefillChunk?: number;
  /** Weights of the graph build: f32 (exact, the default) or block-quantized int8 / int4. */
  readonly weightsDtype?: WeightsDtype;
  /**
   * Let ONNX Runtime pack the matmul weights into its kernels' layout (default true; fastest
   * decode). For f32 the packed copy is mapped from a file made once (packedWeightsFile), or,
   * with that off, made in the process's memory at every load (the load then peaks at the
   * mapped build file and the packed copy together). false: the f32 MatMuls read the mapped
   * build file as it is — one copy, shared with every process on the host that maps the same
   * build — and decode pays for packing panels on the fly (measured in docs/cpu-engine.md, "Memory").
   * Quantized builds always pack (MatMulNBits computes from its own layout); false is refused
   * for them.
   */
  readonly prepackWeights?: boolean;
  /**
   * f32 builds with prepackWeights: map ONNX Runtime's packed weights from a file made once
   * beside the build (packed-weights.ts) instead of packing them at every load (default true).
   * The load's peak of two copies goes, and the packed copy is page cache that processes share.
   * Where ORT cannot make or read that file, the engine packs at load as before and says so
   * through `log`. Quantized builds always pack at load (ORT 1.30 restores their packing wrongly).
   */
  readonly packedWeightsFile?: boolean;
  /** Where the engine reports making the packed-weights file and a degraded load (default: JSON lines on stderr). */
  readonly log?: Pick<Logger, 'info' | 'warn'>;
  /**
   * Making the packed-weights file is announced once it has taken this long (default 2000 ms),
   * and its end then too: quick work prints nothing, as a graph build's progress does.
   */
  readonly packingNoticeAfterMs?: number;
  /** Quantized builds: 'f32' multiplies exactly by the dequantized weights (slow; tests). Default int8. */
  readonly quantizedActivations?: NBitsActivations;
  /**
   * Prefill and decode of int8 / int4 builds of pure Mamba models on our own AVX-512 VNNI / AVX2
   * kernels (native-kernels.ts; `npm run build:cpu`) instead of the ONNX graph, with no ONNX
   * Runtime session then: 'auto' (default) where the addon is built and the CPU and model allow
   * it, 'on' refuses to start elsewhere, 'off' never. The engine logs which it runs on.
   */
  readonly nativeKernels?: NativeKernelsSetting;
  /** Tests: the native kernels' build to load (default: the one this CPU runs, native-cpu/support.ts). */
  readonly nativeKernelsAddon?: string;
}

/**
 * The packed-weights model of a build (made first if need be), announced through `log` when
 * making it takes longer than `noticeAfterMs`, and its end then too.
 */
async function packedModelWithNotice(buildModelPath: string, log: Pick<Logger, 'info'>, noticeAfterMs: number): Promise<string> {
  const started = performance.now();
  let notice: NodeJS.Timeout | undefined;
  let announced = false;
  const made = await ensurePackedModel(buildModelPath, {
    onMake: (dir) => {
      notice = setTimeout(() => {
        announced = true;
        log.info('packing the f32 weights for this CPU and ONNX Runtime, once', { dir });
      }, noticeAfterMs);
    },
  }).finally(() => clearTimeout(notice));
  if (announced) log.info('packed weights file made', { seconds: Number(((performance.now() - started) / 1000).toFixed(1)) });
  return made.modelPath;
}

/** ORT's intra-op spin settings (`session.intra_op.*`): its own long spin, a bounded one, or none. */
export function intraOpSpin(options: Pick<OrtEngineOptions, 'intraOpSpinning' | 'intraOpSpinMicros'>): Record<string, string> {
  if (options.intraOpSpinning) return { allow_spinning: '1' };
  const micros = options.intraOpSpinMicros ?? DEFAULT_ORT_INTRA_OP_SPIN_US;
  return micros > 0 ? { allow_spinning: '1', spin_duration_us: String(Math.round(micros)) } : { allow_spinning: '0' };
}

class OrtState implements StateHandle {
  readonly engine = 'ort' as const;
  freed = false;
  constructor(
    readonly sid: number,
    public tokensAbsorbed: number,
  ) {}
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
}

/**
 * The ORT thread's stack. ONNX Runtime reads the process's command line (/proc/self/cmdline)
 * when a session is created and walks it recursively, a few hundred bytes of stack per
 * character: with a worker thread's default 4 MiB, a 16 KB command line (`mamba-serve generate
 * --prompt "<a long text>"`) crashed the process with SIGSEGV. 64 MiB covers the longest single
 * argument Linux allows (128 KiB); more is reserved for longer command lines. The stack is
 * address space, committed only as it is used.
 */
function ortThreadStackMb(): number {
  let bytes = 0;
  try {
    bytes = readFileSync('/proc/self/cmdline').length;
  } catch {
    bytes = [...process.execArgv, ...process.argv].reduce((n, a) => n + Buffer.byteLength(a) + 1, 0);
  }
  return Math.min(1024, Math.max(64, Math.ceil((bytes * 512) / 2 ** 20) + 16));
}

export class OrtEngine implements Engine {
  readonly kind = 'ort' as const;
  private nextRequest = 1;
  private nextState = 1;
  private readonly pending = new Map<number, Pending>();
  private closed: Error | undefined;
  /** Decode's logits with reuseOutput: two slots in a buffer shared with the thread (sent along with the first decode that uses it); the reply then carries nothing. */
  private readonly logitsSlots: LogitsSlots<SharedArrayBuffer>;

  /** Mamba layers (all layers but a hybrid's attention layers): the conv/ssm tensors' first axis. */
  private readonly mambaLayers: number;

  private constructor(
    readonly model: ModelInfo,
    private readonly thread: Worker,
  ) {
    this.mambaLayers = layersOfType(model.config, 'mamba').length;
    this.logitsSlots = new LogitsSlots(model.vocabRows, (bytes) => new SharedArrayBuffer(bytes));
    thread.on('message', (msg: { id: number; ok: boolean; result?: unknown; error?: string }) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (this.pending.size === 0) this.thread.unref();
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`onnxruntime: ${msg.error}`));
    });
    const fail = (err: Error) => {
      this.closed ??= new EngineError('engine_closed', `ORT engine thread stopped: ${err.message}`);
      for (const p of this.pending.values()) p.reject(this.closed);
      this.pending.clear();
    };
    thread.on('error', fail);
    thread.on('exit', (code) => fail(new Error(`exit code ${code}`)));
  }

  static async load(ckpt: Checkpoint, options: OrtEngineOptions): Promise<Engine> {
    const weightsDtype = options.weightsDtype ?? 'f32';
    const prepack = options.prepackWeights ?? true;
    if (!prepack && weightsDtype !== 'f32') {
      throw new WeightsDtypeError(`ORT_PREPACK_WEIGHTS=false is for f32 weights only: ${weightsDtype} matmuls compute from their packed layout`);
    }
    const build = await ensureGraphBuild(ckpt, options.cacheDir, {
      dtype: weightsDtype,
      ...(options.quantizedActivations ? { activations: options.quantizedActivations } : {}),
    });
    const log = options.log ?? createLogger('ort-engine');
    const info = await modelInfoFromCheckpoint(ckpt, build.fingerprint);
    const { intermediate_size: dInner, conv_kernel: dConv, state_size: dState } = info.layout;
    const h = ckpt.config.hybrid;
    const layers = layersOfType(ckpt.config, 'mamba').length;
    const attention = h
      ? { layers: layersOfType(ckpt.config, 'sliding_attention').length, window: h.window, heads: h.numHeads, kvHeads: h.numKvHeads, headDim: h.headDim, ropeTheta: h.ropeTheta }
      : null;
    const threads = options.intraOpThreads || availableParallelism();
    // Quantized activations 'f32' are a test setting the native step does not have.
    const planned = await planNativeKernels({
      setting: options.quantizedActivations === 'f32' ? 'off' : (options.nativeKernels ?? 'auto'),
      modelPath: build.modelPath,
      config: ckpt.config,
      dtype: weightsDtype,
      threads,
      executionProvider: options.executionProvider ?? 'cpu',
      ...(options.nativeKernelsAddon ? { addonPath: options.nativeKernelsAddon } : {}),
    });
    if ('plan' in planned) {
      const plan = planned.plan;
      try {
        const engine = NativeKernelsEngine.open(info, plan);
        log.info('prefill and decode run on the native kernels (no ONNX Runtime session)', { weights: weightsDtype, threads, isa: plan.isa });
        return engine;
      } catch (err) {
        const e = err as { code?: unknown; message?: unknown };
        const error = `${typeof e?.code === 'string' ? `${e.code}: ` : ''}${String(e?.message ?? err)}`;
        if (options.nativeKernels === 'on') throw new NativeKernelsUnavailableError(`ORT_NATIVE_KERNELS=on, but the native kernels did not load: ${error}`);
        log.warn('native kernels did not load: running on ONNX Runtime', { code: 'native_kernels_unavailable', error });
      }
    } else if ((options.nativeKernels ?? 'auto') === 'auto') {
      log.info('prefill and decode run on ONNX Runtime', { weights: weightsDtype, reason: planned.reason });
    }
    /** The engine on the model at `modelPath` (the build, or its packed-weights model). */
    const start = async (modelPath: string): Promise<OrtEngine> => {
      const thread = new Worker(new URL('./ort-thread.mjs', import.meta.url), {
        resourceLimits: { stackSizeMb: ortThreadStackMb() },
        workerData: {
          modelPath,
          layers,
          dInner,
          dConv,
          dState,
          attention,
          maxPrefillChunk: options.maxPrefillChunk ?? 256,
          sessionOptions: {
            executionProviders: [options.executionProvider ?? 'cpu'],
            intraOpNumThreads: threads,
            interOpNumThreads: 1,
            graphOptimizationLevel: 'all',
            // Warnings about initializers the optimizer folded away are noise for a generated graph.
            logSeverityLevel: 3,
            extra: { session: { intra_op: intraOpSpin(options), ...(prepack ? {} : { disable_prepacking: '1' }) } },
          },
        },
      });
      const engine = new OrtEngine(info, thread);
      try {
        await engine.request(0, undefined);
      } catch (err) {
        await thread.terminate();
        throw err;
      }
      return engine;
    };

    // The packed-weights file (packed-weights.ts): f32 builds on the CPU provider only. ORT 1.30
    // restores MatMulNBits' int8-compute packing from that file wrongly (NaN logits;
    // packed-weights.test.ts keeps checking), so quantized builds pack at load; the file is
    // this CPU's layout, which the CUDA provider does not read.
    const usePackedFile = prepack && weightsDtype === 'f32' && (options.executionProvider ?? 'cpu') === 'cpu' && (options.packedWeightsFile ?? true);
    if (usePackedFile) {
      let packed: string | undefined;
      try {
        packed = await packedModelWithNotice(build.modelPath, log, options.packingNoticeAfterMs ?? 2000);
        return await start(packed);
      } catch (err) {
        // A degraded start, not a failed one: the build itself loads, packing in memory.
        log.warn('packed weights file unusable: ONNX Runtime packs the weights at load instead', {
          code: err instanceof PackedWeightsError ? err.code : 'packed_weights_unreadable',
          error: err instanceof Error ? err.message : String(err),
        });
        // A file ORT could not read is damaged: the next start makes it again.
        if (packed) await discardPackedModel(packed);
      }
    }
    return start(build.modelPath);
  }

  /** Send `op` (or, for id 0, wait for the thread's ready message). */
  private request<T>(id: number, msg: Record<string, unknown> | undefined, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.closed) return Promise.reject(this.closed);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.thread.ref();
      if (msg) this.thread.postMessage({ ...msg, id }, transfer);
    });
  }

  private call<T>(msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<T> {
    return this.request<T>(this.nextRequest++, msg, transfer);
  }

  private live(state: StateHandle): OrtState {
    if (!(state instanceof OrtState)) throw new EngineError('state_foreign', 'state handle was not made by the ort engine');
    if (state.freed) throw new EngineError('state_freed', 'state handle was freed');
    return state;
  }

  /** Rings between .mstate's [A, W, KV, hd] and the graph's [A, KV, W, hd] (empty for a pure model). */
  private ringsToGraph(rings: Float32Array, to: 'graph' | 'mstate'): Float32Array {
    const h = this.model.config.hybrid;
    if (!h || rings.length === 0) return new Float32Array(0);
    const layers = rings.length / (h.window * h.numKvHeads * h.headDim);
    return to === 'graph'
      ? swapRingAxes(rings, layers, h.window, h.numKvHeads, h.headDim)
      : swapRingAxes(rings, layers, h.numKvHeads, h.window, h.headDim);
  }

  async newState(): Promise<StateHandle> {
    const s = new OrtState(this.nextState++, 0);
    await this.call({ op: 'new', sid: s.sid });
    return s;
  }

  async cloneState(state: StateHandle): Promise<StateHandle> {
    const src = this.live(state);
    const dst = new OrtState(this.nextState++, src.tokensAbsorbed);
    await this.call({ op: 'clone', src: src.sid, dst: dst.sid });
    return dst;
  }

  freeState(state: StateHandle): void {
    const s = this.live(state);
    s.freed = true;
    if (!this.closed) void this.call({ op: 'free', sid: s.sid }).catch(() => {});
  }

  async importState(bytes: Uint8Array): Promise<ImportedState> {
    const imported = importHostState('ort', this.model, bytes);
    const s = new OrtState(this.nextState++, imported.state.tokensAbsorbed);
    // HF layout ([M, D, K], [M, D, N]) to the graph's ([M, K, D], [M, N, D]); rings from
    // .mstate's [A, W, KV, hd] to the graph's [A, KV, W, hd].
    const { intermediate_size: D, conv_kernel: K, state_size: N } = this.model.layout;
    const nL = this.mambaLayers;
    const conv = transposeLast2(imported.state.conv, nL, D, K);
    const ssm = transposeLast2(imported.state.ssm, nL, D, N);
    const k = this.ringsToGraph(imported.state.attnK, 'graph');
    const v = this.ringsToGraph(imported.state.attnV, 'graph');
    const buffers = [conv.buffer, ssm.buffer, k.buffer, v.buffer] as ArrayBuffer[];
    await this.call({ op: 'set', sid: s.sid, conv, ssm, k, v }, [...new Set(buffers)]);
    return { state: s, parentVersion: imported.parentVersion, transcriptHash: imported.transcriptHash };
  }

  async exportState(state: StateHandle, meta: ExportMeta): Promise<Uint8Array> {
    const s = this.live(state);
    const { conv, ssm, k, v } = await this.call<{ conv: Float32Array; ssm: Float32Array; k: Float32Array; v: Float32Array }>({ op: 'get', sid: s.sid });
    const { intermediate_size: D, conv_kernel: K, state_size: N } = this.model.layout;
    const nL = this.mambaLayers;
    const hf = new HostState('ort', transposeLast2(conv, nL, K, D), transposeLast2(ssm, nL, N, D), s.tokensAbsorbed, this.ringsToGraph(k, 'mstate'), this.ringsToGraph(v, 'mstate'));
    return exportHostState(this.model, hf, meta);
  }

  async prefill(state: StateHandle, tokens: Int32Array, options: PrefillOptions = {}): Promise<Logits> {
    const s = this.live(state);
    checkTokens(tokens, this.model.vocabRows);
    if (tokens.length === 0) return { rows: 0, vocab: this.model.vocabRows, data: new Float32Array(0) };
    const { logits } = await this.call<{ logits: Float32Array }>({
      op: 'prefill',
      sid: s.sid,
      tokens,
      allLogits: options.allLogits === true,
      position: s.tokensAbsorbed,
    });
    s.tokensAbsorbed += tokens.length;
    return { rows: options.allLogits ? tokens.length : 1, vocab: this.model.vocabRows, data: logits };
  }

  async decode(steps: readonly DecodeStep[], options?: DecodeOptions): Promise<Logits> {
    const states = steps.map((st) => this.live(st.state));
    if (new Set(states).size !== states.length) throw new EngineError('state_foreign', 'a state appears twice in one decode batch');
    const tokens = steps.map((st) => st.token);
    checkTokens(tokens, this.model.vocabRows);
    const V = this.model.vocabRows;
    if (steps.length === 0) return { rows: 0, vocab: V, data: new Float32Array(0) };
    const into = options?.reuseOutput ? this.logitsSlots.next(steps.length * V) : undefined;
    const { logits } = await this.call<{ logits: Float32Array | null }>({
      op: 'decode',
      sids: states.map((s) => s.sid),
      tokens,
      positions: states.map((s) => s.tokensAbsorbed),
      ...(into ? { into: { offset: into.offset }, ...(into.fresh ? { shared: into.buffer } : {}) } : {}),
    });
    for (const s of states) s.tokensAbsorbed += 1;
    const data = into ? into.view : logits!;
    return { rows: steps.length, vocab: V, data };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Release the session on its own thread first, after whatever it is still doing (requests
    // run in order): terminating a thread while ONNX Runtime's session is alive and a request is
    // in flight was seen to never finish (a script that freed a state and closed the engine
    // exited mid-await, code 13).
    try {
      await this.call({ op: 'close' });
    } catch {
      // The thread already stopped: nothing to release.
    }
    this.closed = new EngineError('engine_closed', 'engine is closed');
    // Hold a ref until the thread is gone: an unref'd thread's terminate() does not keep the
    // process alive.
    this.thread.ref();
    await this.thread.terminate();
  }
}

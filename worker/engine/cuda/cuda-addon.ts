// Loads the cuda engine's native addon (worker/native, built by `npm run build:cuda`) and types
// its surface. Nothing here loads at import: a process without CUDA imports this module freely
// and asks cudaAvailability() why the engine cannot run, in one sentence.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Must equal kAbi in worker/native/src/addon.cpp; a stale build is refused, not half-used. */
export const NATIVE_ABI = 2;

export type NativeDType = 'F32' | 'F16' | 'BF16';

export interface NativeDims {
  dModel: number;
  dInner: number;
  dState: number;
  dConv: number;
  dtRank: number;
  nLayers: number;
  vocabRows: number;
  eps: number;
  /** A hybrid's attention layers (HybridConfig); absent for a pure Mamba model. */
  hybrid?: NativeHybrid;
}

export interface NativeHybrid {
  layerTypes: readonly ('mamba' | 'sliding_attention')[];
  window: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  bias: boolean;
  /** RoPE base, or null for no positional encoding. */
  ropeTheta: number | null;
}

export interface NativeOptions {
  dtype: NativeDType;
  maxSlots?: number;
  maxBatch?: number;
  prefillChunk?: number;
  maxLogitRows?: number;
  scanChannels?: number;
  /** Keys per block of decode attention (flash-decoding split); 0 = one block per row and head. */
  attnSplitKeys?: number;
  useGraphs?: boolean;
  device?: number;
}

export interface NativeEngineInfo {
  deviceName: string;
  computeCapability: string;
  weightBytes: number;
  statePoolBytes: number;
  workspaceBytes: number;
  gemmBackend: string;
  dtype: NativeDType;
  maxSlots: number;
  maxBatch: number;
  useGraphs: boolean;
  attentionLayers: number;
}

/** Errors from the addon carry one of these codes (NativeError in worker/native/src/common.h). */
export type NativeErrorCode = 'cuda_error' | 'cublas_error' | 'invalid_argument' | 'capacity' | 'engine_closed' | 'internal';

/** The device-side engine: states are slot indices in its device pool. */
export interface NativeEngine {
  init(): Promise<void>;
  /** name: "embeddings" | "norm_f" | "lm_head" (layer -1), or a layer tensor relative to backbone.layers.{i}. */
  setTensor(name: string, layer: number, bytes: Uint8Array, dtype: NativeDType): Promise<void>;
  finalize(): Promise<void>;
  allocSlot(): Promise<number>;
  freeSlot(slot: number): void;
  copySlot(dst: number, src: number): Promise<void>;
  /** The state in HostState's layout: conv/ssm over the Mamba layers, attnK/attnV rings (empty for a pure model). */
  importSlot(slot: number, conv: Float32Array, ssm: Float32Array, attnK: Float32Array, attnV: Float32Array): Promise<void>;
  exportSlot(slot: number, conv: Float32Array, ssm: Float32Array, attnK: Float32Array, attnV: Float32Array): Promise<void>;
  /** position: the tokens the state absorbed before these (RoPE and the ring rows depend on it). */
  prefill(slot: number, position: number, tokens: Int32Array, allLogits: boolean, out: Float32Array): Promise<void>;
  decode(slots: Int32Array, positions: Float64Array, tokens: Int32Array, logits: Float32Array | null, argmax: Int32Array | null): Promise<void>;
  /** Median device milliseconds of one decode step (graph replay), for benchmarks; advances the slots. */
  timeDecode(slots: Int32Array, positions: Float64Array, tokens: Int32Array, iters: number): Promise<number>;
  info(): NativeEngineInfo;
  close(): Promise<void>;
}

export interface ProbeResult {
  ok: boolean;
  runtimeVersion: number;
  driverVersion: number;
  error?: string;
  errorName?: string;
  devices: { index: number; name: string; major: number; minor: number; totalMemory: number; multiprocessors: number }[];
}

export interface NativeAddon {
  abi: number;
  probe(): ProbeResult;
  gemmBackend(): string;
  NativeEngine: new (dims: NativeDims, options: NativeOptions) => NativeEngine;
}

export type CudaAvailability = { ok: true; device: string; addonPath: string } | { ok: false; reason: string };

const here = dirname(fileURLToPath(import.meta.url));

/** Where the addon is looked for: $MAMBA_CUDA_ADDON, else the build output of `npm run build:cuda`. */
export function cudaAddonPath(): string {
  return process.env.MAMBA_CUDA_ADDON ?? resolve(here, '../../native/build/Release/mamba_native.node');
}

export class CudaUnavailableError extends Error {
  readonly code = 'cuda_unavailable';
  constructor(message: string) {
    super(message);
    this.name = 'CudaUnavailableError';
  }
}

let cached: { addon: NativeAddon } | { reason: string } | undefined;

function tryLoad(): { addon: NativeAddon } | { reason: string } {
  const path = cudaAddonPath();
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return { reason: `the cuda engine is built for linux-x64 only (this is ${process.platform}-${process.arch})` };
  }
  if (!existsSync(path)) {
    return {
      reason:
        `CUDA addon not built: ${path} does not exist. Run \`npm run build:cuda\` on a machine with nvcc and cuBLAS ` +
        '(docs/cuda-engine.md), or set MAMBA_CUDA_ADDON to a built mamba_native.node',
    };
  }
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(path) as NativeAddon;
  } catch (err) {
    const msg = (err as Error).message;
    const hint = /libcublas|libcuda\.so/.test(msg)
      ? ' (the CUDA driver or cuBLAS shared library is not on the loader path: LD_LIBRARY_PATH)'
      : '';
    return { reason: `CUDA addon at ${path} failed to load: ${msg}${hint}` };
  }
  if (addon.abi !== NATIVE_ABI) {
    return { reason: `CUDA addon at ${path} is ABI ${addon.abi}, this code needs ${NATIVE_ABI}: rebuild with \`npm run build:cuda\`` };
  }
  return { addon };
}

/** The addon, or a CudaUnavailableError that says why not. Loaded once per process. */
export function loadCudaAddon(): NativeAddon {
  cached ??= tryLoad();
  if ('reason' in cached) throw new CudaUnavailableError(cached.reason);
  return cached.addon;
}

/**
 * Whether the cuda engine can run here, and if not, exactly why: not linux-x64, addon not built,
 * addon fails to load (driver or cuBLAS missing), or no usable GPU (the CUDA runtime's own
 * error, e.g. cudaErrorNoDevice or cudaErrorInsufficientDriver).
 */
export function cudaAvailability(device = 0): CudaAvailability {
  cached ??= tryLoad();
  if ('reason' in cached) return { ok: false, reason: cached.reason };
  const probe = cached.addon.probe();
  if (probe.error !== undefined) {
    return {
      ok: false,
      reason: `no usable CUDA device: ${probe.errorName ?? 'error'} (${probe.error}); driver API ${probe.driverVersion}, runtime ${probe.runtimeVersion}`,
    };
  }
  const dev = probe.devices.find((d) => d.index === device);
  if (!dev) return { ok: false, reason: `no CUDA device ${device} (${probe.devices.length} visible)` };
  if (dev.major < 8) {
    return { ok: false, reason: `CUDA device ${device} (${dev.name}) is sm_${dev.major}${dev.minor}; the addon is built for sm_80 and newer` };
  }
  return { ok: true, device: `${dev.name} (sm_${dev.major}${dev.minor}, ${(dev.totalMemory / 2 ** 30).toFixed(0)} GiB)`, addonPath: cudaAddonPath() };
}

export const CUDA_ADDON_DIR = join(here, '../../native');

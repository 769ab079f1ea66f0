// Picks and loads the engine a process runs: every entry point (CLI, worker, benchmarks)
// goes through here, so "which engine, which model" is decided in one place.
import type { Logger } from '../../shared/logger.ts';
import { openCheckpoint, type Checkpoint } from '../model/checkpoint.ts';
import { cudaAvailability } from './cuda/cuda-addon.ts';
import { CudaEngine } from './cuda/cuda-engine.ts';
import type { Engine, EngineKind } from './engine.ts';
import type { NativeKernelsSetting } from './ort/native-kernels.ts';
import { OrtEngine } from './ort/ort-engine.ts';
import { WeightsDtypeError, type WeightsDtype } from './ort/quantize.ts';
import { ReferenceEngine } from './reference/reference-engine.ts';

export type EngineChoice = EngineKind | 'auto';

export interface CreateEngineOptions {
  /** A local checkpoint directory. */
  readonly modelDir: string;
  /** 'auto': the CUDA engine where its addon is built and a GPU is present, else ORT. */
  readonly engine?: EngineChoice;
  /** Where compiled graphs are cached (MODEL_CACHE_DIR). */
  readonly cacheDir?: string;
  readonly ortExecutionProvider?: 'cpu' | 'cuda';
  /** 0 = one per core. */
  readonly intraOpThreads?: number;
  /** ORT_INTRA_OP_SPINNING (default off). */
  readonly intraOpSpinning?: boolean;
  /** ORT_INTRA_OP_SPIN_US: a bounded spin when intraOpSpinning is off (default: the ORT engine's, 100 µs). */
  readonly intraOpSpinMicros?: number;
  /** WEIGHTS_DTYPE: quantized weights (int8, int4) exist on the ORT engine only. */
  readonly weightsDtype?: WeightsDtype;
  /** ORT_PREPACK_WEIGHTS (default on; off: f32 weights held once). */
  readonly prepackWeights?: boolean;
  /** ORT_PACKED_WEIGHTS_FILE (default on): f32 packed weights mapped from a file made once. */
  readonly packedWeightsFile?: boolean;
  /** ORT_NATIVE_KERNELS (default auto): pure Mamba models' prefill and decode (f32, int8, int4) on the native kernels where they can run. */
  readonly nativeKernels?: NativeKernelsSetting;
  /** Benches and tests: which build of the native kernels to load (default: the one this CPU runs). */
  readonly nativeKernelsAddon?: string;
  /** Where the ORT engine reports load-time work and degradations (default: its own JSON lines on stderr). */
  readonly log?: Pick<Logger, 'info' | 'warn'>;
}

export { WeightsDtypeError };

export const DEFAULT_CACHE_DIR = '.cache/mamba-serve';

export async function createEngine(options: CreateEngineOptions): Promise<{ engine: Engine; checkpoint: Checkpoint }> {
  const checkpoint = await openCheckpoint(options.modelDir);
  const dtype = options.weightsDtype ?? 'f32';
  let choice = options.engine ?? 'auto';
  // Quantized weights are an ORT engine build: 'auto' means ORT for them, even beside a GPU.
  if (choice === 'auto') choice = dtype === 'f32' && cudaAvailability().ok ? 'cuda' : 'ort';
  if (dtype !== 'f32' && choice !== 'ort') {
    throw new WeightsDtypeError(`WEIGHTS_DTYPE=${dtype} runs on the ort engine only; the ${choice} engine computes with the checkpoint's weights in fp32`);
  }
  switch (choice) {
    case 'reference':
      return { engine: await ReferenceEngine.load(checkpoint), checkpoint };
    case 'cuda':
      // Throws CudaUnavailableError (code cuda_unavailable) saying why when it cannot run here.
      return { engine: await CudaEngine.load(checkpoint), checkpoint };
    case 'ort': {
      const engine = await OrtEngine.load(checkpoint, {
        cacheDir: options.cacheDir ?? DEFAULT_CACHE_DIR,
        executionProvider: options.ortExecutionProvider ?? 'cpu',
        intraOpThreads: options.intraOpThreads ?? 0,
        intraOpSpinning: options.intraOpSpinning ?? false,
        ...(options.intraOpSpinMicros !== undefined ? { intraOpSpinMicros: options.intraOpSpinMicros } : {}),
        weightsDtype: dtype,
        prepackWeights: options.prepackWeights ?? true,
        packedWeightsFile: options.packedWeightsFile ?? true,
        nativeKernels: options.nativeKernels ?? 'auto',
        ...(options.nativeKernelsAddon ? { nativeKernelsAddon: options.nativeKernelsAddon } : {}),
        ...(options.log ? { log: options.log } : {}),
      });
      return { engine, checkpoint };
    }
  }
}

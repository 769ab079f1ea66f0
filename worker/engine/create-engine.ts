// Picks and loads the engine a process runs: every entry point (CLI, worker, benchmarks)
// goes through here, so "which engine, which model" is decided in one place.
import { openCheckpoint, type Checkpoint } from '../model/checkpoint.ts';
import { cudaAvailability } from './cuda/cuda-addon.ts';
import { CudaEngine } from './cuda/cuda-engine.ts';
import type { Engine, EngineKind } from './engine.ts';
import { OrtEngine } from './ort/ort-engine.ts';
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
}

export const DEFAULT_CACHE_DIR = '.cache/mamba-serve';

export async function createEngine(options: CreateEngineOptions): Promise<{ engine: Engine; checkpoint: Checkpoint }> {
  const checkpoint = await openCheckpoint(options.modelDir);
  let choice = options.engine ?? 'auto';
  if (choice === 'auto') choice = cudaAvailability().ok ? 'cuda' : 'ort';
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
      });
      return { engine, checkpoint };
    }
  }
}

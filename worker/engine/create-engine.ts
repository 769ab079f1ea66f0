// Picks and loads the engine a process runs: every entry point (CLI, worker, benchmarks)
// goes through here, so "which engine, which model" is decided in one place.
import { openCheckpoint, type Checkpoint } from '../model/checkpoint.ts';
import type { Engine, EngineKind } from './engine.ts';
import { OrtEngine } from './ort/ort-engine.ts';
import { ReferenceEngine } from './reference/reference-engine.ts';

export type EngineChoice = EngineKind | 'auto';

export interface CreateEngineOptions {
  /** A local checkpoint directory. */
  readonly modelDir: string;
  /** 'auto' picks the fastest engine this machine can run. */
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
  const choice = options.engine ?? 'auto';
  switch (choice) {
    case 'reference':
      return { engine: await ReferenceEngine.load(checkpoint), checkpoint };
    case 'auto':
    case 'ort': {
      const engine = await OrtEngine.load(checkpoint, {
        cacheDir: options.cacheDir ?? DEFAULT_CACHE_DIR,
        executionProvider: options.ortExecutionProvider ?? 'cpu',
        intraOpThreads: options.intraOpThreads ?? 0,
      });
      return { engine, checkpoint };
    }
    case 'cuda':
      throw new Error('the cuda engine is not built into this installation (see docs/cuda-engine.md)');
  }
}

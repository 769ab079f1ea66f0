import type { Checkpoint } from '../model/checkpoint.ts';
import type { ModelInfo } from './engine.ts';
import { stateBytesF32 } from './host-state.ts';

/** What every engine reports about the checkpoint it loaded. */
/** `fingerprint` when already known (a cached build records it), else computed from the weights. */
export async function modelInfoFromCheckpoint(ckpt: Checkpoint, fingerprint?: string): Promise<ModelInfo> {
  const c = ckpt.config;
  const layout = {
    num_layers: c.numLayers,
    intermediate_size: c.intermediateSize,
    state_size: c.stateSize,
    conv_kernel: c.convKernel,
  };
  return {
    config: c,
    fingerprint: fingerprint ?? (await ckpt.fingerprint()),
    vocabRows: ckpt.vocabRows,
    layout,
    stateBytes: stateBytesF32({ layout }),
  };
}

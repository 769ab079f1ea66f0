import type { Checkpoint } from '../model/checkpoint.ts';
import type { ModelInfo } from './engine.ts';
import { stateBytesF32 } from './host-state.ts';

/** What every engine reports about the checkpoint it loaded. */
export async function modelInfoFromCheckpoint(ckpt: Checkpoint): Promise<ModelInfo> {
  const c = ckpt.config;
  const layout = {
    num_layers: c.numLayers,
    intermediate_size: c.intermediateSize,
    state_size: c.stateSize,
    conv_kernel: c.convKernel,
  };
  return {
    config: c,
    fingerprint: await ckpt.fingerprint(),
    vocabRows: ckpt.vocabRows,
    layout,
    stateBytes: stateBytesF32({ layout }),
  };
}

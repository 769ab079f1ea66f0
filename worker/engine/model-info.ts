import type { StateLayout } from '../../shared/mstate.ts';
import type { Checkpoint } from '../model/checkpoint.ts';
import type { MambaConfig } from '../model/mamba-config.ts';
import type { ModelInfo } from './engine.ts';
import { stateBytesF32 } from './host-state.ts';

/** The state layout a model's sessions have (shared/mstate.ts): hybrid fields only for hybrids. */
export function stateLayoutOf(c: MambaConfig): StateLayout {
  const layout: StateLayout = {
    num_layers: c.numLayers,
    intermediate_size: c.intermediateSize,
    state_size: c.stateSize,
    conv_kernel: c.convKernel,
  };
  if (c.hybrid) {
    layout.layer_types = [...c.hybrid.layerTypes];
    layout.sliding_window = c.hybrid.window;
    layout.num_key_value_heads = c.hybrid.numKvHeads;
    layout.head_dim = c.hybrid.headDim;
  }
  return layout;
}

/** What every engine reports about the checkpoint it loaded. */
/** `fingerprint` when already known (a cached build records it), else computed from the weights. */
export async function modelInfoFromCheckpoint(ckpt: Checkpoint, fingerprint?: string): Promise<ModelInfo> {
  const layout = stateLayoutOf(ckpt.config);
  return {
    config: ckpt.config,
    fingerprint: fingerprint ?? (await ckpt.fingerprint()),
    vocabRows: ckpt.vocabRows,
    layout,
    stateBytes: stateBytesF32({ layout }),
  };
}

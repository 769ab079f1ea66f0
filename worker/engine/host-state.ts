// A session state held in host memory, as the CPU engines (reference, ORT) keep it:
// conv_state [layers, d_inner, d_conv] (the last d_conv raw inputs of each channel, oldest
// first) and ssm_state [layers, d_inner, d_state]. Also the conversion to and from `.mstate`.
import {
  assertStateModel,
  decodeMState,
  encodeMState,
  StateFormatError,
  type MStateContent,
} from '../../shared/mstate.ts';
import { EngineError, type EngineKind, type ExportMeta, type ImportedState, type ModelInfo, type StateHandle } from './engine.ts';

export class HostState implements StateHandle {
  freed = false;
  constructor(
    readonly engine: EngineKind,
    public conv: Float32Array,
    public ssm: Float32Array,
    public tokensAbsorbed: number,
  ) {}
}

export function zeroHostState(engine: EngineKind, model: ModelInfo): HostState {
  const { num_layers: L, intermediate_size: D, state_size: N, conv_kernel: K } = model.layout;
  return new HostState(engine, new Float32Array(L * D * K), new Float32Array(L * D * N), 0);
}

/** The handle as a live HostState of this engine, or a clear error. */
export function asHostState(engine: EngineKind, state: StateHandle): HostState {
  if (!(state instanceof HostState) || state.engine !== engine) {
    throw new EngineError('state_foreign', `state handle was not made by the ${engine} engine`);
  }
  if (state.freed) throw new EngineError('state_freed', 'state handle was freed');
  return state;
}

export function cloneHostState(s: HostState): HostState {
  return new HostState(s.engine, s.conv.slice(), s.ssm.slice(), s.tokensAbsorbed);
}

export function exportHostState(model: ModelInfo, s: HostState, meta: ExportMeta): Uint8Array {
  const { num_layers: L, intermediate_size: D, state_size: N, conv_kernel: K } = model.layout;
  const content: MStateContent = {
    modelFingerprint: model.fingerprint,
    tokensAbsorbed: s.tokensAbsorbed,
    parentVersion: meta.parentVersion,
    transcriptHash: meta.transcriptHash,
    layout: model.layout,
    tensors: [
      { name: 'conv_state', shape: [L, D, K], data: s.conv },
      { name: 'ssm_state', shape: [L, D, N], data: s.ssm },
    ],
  };
  return encodeMState(content, meta.dtype === undefined ? {} : { dtype: meta.dtype });
}

export function importHostState(engine: EngineKind, model: ModelInfo, bytes: Uint8Array): ImportedState & { state: HostState } {
  const { header, content } = decodeMState(bytes);
  assertStateModel(header, model.fingerprint, model.layout);
  const { num_layers: L, intermediate_size: D, state_size: N, conv_kernel: K } = model.layout;
  const find = (name: string, shape: number[]) => {
    const t = content.tensors.find((x) => x.name === name);
    if (!t) throw new StateFormatError('state_invalid', `state has no tensor "${name}"`);
    if (t.shape.length !== shape.length || t.shape.some((v, i) => v !== shape[i])) {
      throw new StateFormatError('state_invalid', `state tensor "${name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    return t.data;
  };
  const conv = find('conv_state', [L, D, K]);
  const ssm = find('ssm_state', [L, D, N]);
  for (const arr of [conv, ssm]) {
    for (let i = 0; i < arr.length; i++) {
      if (!Number.isFinite(arr[i]!)) throw new StateFormatError('state_invalid', 'state holds a non-finite value');
    }
  }
  return {
    state: new HostState(engine, conv, ssm, content.tokensAbsorbed),
    parentVersion: content.parentVersion,
    transcriptHash: content.transcriptHash,
  };
}

export function stateBytesF32(model: Pick<ModelInfo, 'layout'>): number {
  const { num_layers: L, intermediate_size: D, state_size: N, conv_kernel: K } = model.layout;
  return 4 * L * D * (K + N);
}

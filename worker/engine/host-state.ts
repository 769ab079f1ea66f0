// A session state held in host memory, as the CPU engines (reference, ORT) keep it, in the
// `.mstate` layout (see shared/mstate.ts): over the Mamba layers in order, conv_state
// [M, d_inner, d_conv] (the last d_conv raw inputs of each channel, oldest first) and ssm_state
// [M, d_inner, d_state]; over a hybrid's attention layers in order, the key and value rings
// attn_k / attn_v [A, W, KV, head_dim] (position p in slot p mod W, keys after RoPE). Also the
// conversion to and from `.mstate`.
import {
  assertStateImportable,
  decodeMState,
  encodeMState,
  StateFormatError,
  stateTensorShapes,
  type MStateContent,
  type StateLayout,
} from '../../shared/mstate.ts';
import { EngineError, type EngineKind, type ExportMeta, type ImportedState, type ModelInfo, type StateHandle } from './engine.ts';

export class HostState implements StateHandle {
  freed = false;
  constructor(
    readonly engine: EngineKind,
    public conv: Float32Array,
    public ssm: Float32Array,
    public tokensAbsorbed: number,
    /** Attention rings (empty for a pure Mamba model). */
    public attnK: Float32Array = new Float32Array(0),
    public attnV: Float32Array = new Float32Array(0),
  ) {}
}

const elements = (shape: readonly number[] | undefined) => (shape ?? [0]).reduce((a, b) => a * b, 1);

/** Floats of each tensor of a state of this layout (attnK/attnV are 0 for a pure model). */
export function stateSizes(layout: StateLayout): { conv: number; ssm: number; attn: number } {
  const shapes = stateTensorShapes(layout);
  return { conv: elements(shapes.get('conv_state')), ssm: elements(shapes.get('ssm_state')), attn: shapes.has('attn_k') ? elements(shapes.get('attn_k')) : 0 };
}

export function zeroHostState(engine: EngineKind, model: ModelInfo): HostState {
  const n = stateSizes(model.layout);
  return new HostState(engine, new Float32Array(n.conv), new Float32Array(n.ssm), 0, new Float32Array(n.attn), new Float32Array(n.attn));
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
  return new HostState(s.engine, s.conv.slice(), s.ssm.slice(), s.tokensAbsorbed, s.attnK.slice(), s.attnV.slice());
}

export function exportHostState(model: ModelInfo, s: HostState, meta: ExportMeta): Uint8Array {
  const shapes = stateTensorShapes(model.layout);
  const data: Record<string, Float32Array> = { conv_state: s.conv, ssm_state: s.ssm, attn_k: s.attnK, attn_v: s.attnV };
  const content: MStateContent = {
    modelFingerprint: model.fingerprint,
    tokensAbsorbed: s.tokensAbsorbed,
    parentVersion: meta.parentVersion,
    transcriptHash: meta.transcriptHash,
    layout: model.layout,
    tensors: [...shapes].map(([name, shape]) => ({ name, shape, data: data[name]! })),
  };
  return encodeMState(content, meta.dtype === undefined ? {} : { dtype: meta.dtype });
}

export function importHostState(engine: EngineKind, model: ModelInfo, bytes: Uint8Array): ImportedState & { state: HostState } {
  // Every check the edge makes before it stores an upload (no tensor missing, extra or twice,
  // shapes, finite values, a sane token count), so an engine never loads what an import refuses.
  assertStateImportable(bytes, model.fingerprint, model.layout);
  const { content } = decodeMState(bytes);
  const find = (name: string, shape: readonly number[]) => {
    const t = content.tensors.find((x) => x.name === name);
    if (!t) throw new StateFormatError('state_invalid', `state has no tensor "${name}"`);
    if (t.shape.length !== shape.length || t.shape.some((v, i) => v !== shape[i])) {
      throw new StateFormatError('state_invalid', `state tensor "${name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    for (let i = 0; i < t.data.length; i++) {
      if (!Number.isFinite(t.data[i]!)) throw new StateFormatError('state_invalid', 'state holds a non-finite value');
    }
    return t.data;
  };
  const shapes = stateTensorShapes(model.layout);
  const got = Object.fromEntries([...shapes].map(([name, shape]) => [name, find(name, shape)]));
  const empty = new Float32Array(0);
  return {
    state: new HostState(engine, got.conv_state!, got.ssm_state!, content.tokensAbsorbed, got.attn_k ?? empty, got.attn_v ?? empty),
    parentVersion: content.parentVersion,
    transcriptHash: content.transcriptHash,
  };
}

export function stateBytesF32(model: Pick<ModelInfo, 'layout'>): number {
  const n = stateSizes(model.layout);
  return 4 * (n.conv + n.ssm + 2 * n.attn);
}

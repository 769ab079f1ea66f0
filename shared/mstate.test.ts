// The .mstate container: format version 2 round-trips hybrid layouts (attention rings beside
// the Mamba states), version 1 files written before hybrids still load, and a state of one
// layout never loads into another.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  assertStateModel,
  decodeMState,
  encodeMState,
  MSTATE_FORMAT_VERSION,
  readMStateHeader,
  StateFormatError,
  stateTensorShapes,
  type MStateContent,
  type StateLayout,
} from './mstate.ts';

const FP = 'a'.repeat(64);
const PURE: StateLayout = { num_layers: 2, intermediate_size: 4, state_size: 3, conv_kernel: 2 };
const HYBRID: StateLayout = {
  num_layers: 3,
  intermediate_size: 4,
  state_size: 3,
  conv_kernel: 2,
  layer_types: ['mamba', 'sliding_attention', 'mamba'],
  sliding_window: 5,
  num_key_value_heads: 2,
  head_dim: 4,
};

function content(layout: StateLayout, tokensAbsorbed = 7): MStateContent {
  const tensors = [...stateTensorShapes(layout)].map(([name, shape]) => ({
    name,
    shape,
    data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => i * 0.25 - 3),
  }));
  return { modelFingerprint: FP, tokensAbsorbed, parentVersion: 2, transcriptHash: null, layout, tensors };
}

/** The same file as format version `v`, checksum redone (what an older build wrote). */
function asVersion(bytes: Uint8Array, v: number): Uint8Array {
  const out = bytes.slice();
  new DataView(out.buffer).setUint32(8, v, true);
  out.set(createHash('sha256').update(out.subarray(0, out.length - 32)).digest(), out.length - 32);
  return out;
}

describe('.mstate format', () => {
  it('writes version 2 and round-trips a hybrid state: Mamba tensors over the Mamba layers, rings over the attention layers', () => {
    const shapes = stateTensorShapes(HYBRID);
    expect(Object.fromEntries(shapes)).toEqual({ conv_state: [2, 4, 2], ssm_state: [2, 4, 3], attn_k: [1, 5, 2, 4], attn_v: [1, 5, 2, 4] });
    const bytes = encodeMState(content(HYBRID, 10_000_000));
    expect(new DataView(bytes.buffer).getUint32(8, true)).toBe(MSTATE_FORMAT_VERSION);
    expect(MSTATE_FORMAT_VERSION).toBe(2);
    const { header, content: got } = decodeMState(bytes);
    expect(header.layout).toEqual(HYBRID);
    expect(got.tokensAbsorbed).toBe(10_000_000);
    expect(got.tensors.map((t) => t.name)).toEqual(['conv_state', 'ssm_state', 'attn_k', 'attn_v']);
    expect(Array.from(got.tensors[2]!.data)).toEqual(Array.from(content(HYBRID).tensors[2]!.data));
  });

  it('has a size fixed by the layout, whatever the position', () => {
    expect(encodeMState(content(HYBRID, 10)).length).toBe(encodeMState(content(HYBRID, 1_000_000)).length);
  });

  it('reads version 1 files (pure Mamba, written before hybrids)', () => {
    const v1 = asVersion(encodeMState(content(PURE)), 1);
    const { header, content: got } = decodeMState(v1);
    expect(header.layout).toEqual(PURE);
    expect(got.tensors.map((t) => t.name)).toEqual(['conv_state', 'ssm_state']);
    expect(() => assertStateModel(header, FP, PURE)).not.toThrow();
  });

  it('refuses a version 1 file that claims a hybrid layout, and versions it does not know', () => {
    expect(() => readMStateHeader(asVersion(encodeMState(content(HYBRID)), 1))).toThrow(/format version 1 cannot hold a hybrid layout/);
    expect(() => readMStateHeader(asVersion(encodeMState(content(PURE)), 3))).toThrow(/format version 3 is not supported \(this build reads 1 and 2\)/);
  });

  it('refuses half a hybrid layout', () => {
    const bad = { ...HYBRID, head_dim: undefined };
    expect(() => encodeMState(content({ ...PURE }))).not.toThrow();
    expect(() => encodeMState({ ...content(HYBRID), layout: bad })).toThrow(/hybrid layout needs layer_types/);
  });

  it.each<[string, StateLayout]>([
    ['a pure layout into a hybrid model', PURE],
    ['another window', { ...HYBRID, sliding_window: 6 }],
    ['other layer types', { ...HYBRID, layer_types: ['sliding_attention', 'mamba', 'mamba'] }],
    ['other KV heads', { ...HYBRID, num_key_value_heads: 1 }],
  ])('state_model_mismatch for %s', (_, layout) => {
    const { header } = decodeMState(encodeMState(content(layout)));
    let err: unknown;
    try {
      assertStateModel(header, FP, HYBRID);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StateFormatError);
    expect(err).toMatchObject({ code: 'state_model_mismatch' });
  });

  it('names both kinds when a hybrid state meets a pure model', () => {
    const { header } = decodeMState(encodeMState(content(HYBRID)));
    expect(() => assertStateModel(header, FP, PURE)).toThrow(/\(a hybrid\) does not match the model's .* \(a pure Mamba model\)/);
  });
});

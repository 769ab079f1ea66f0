// The .mstate container: format version 2 round-trips hybrid layouts (attention rings beside
// the Mamba states), version 1 files written before hybrids still load, and a state of one
// layout never loads into another.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  assertStateImportable,
  assertStateModel,
  MAX_TOKENS_ABSORBED,
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

/**
 * A file with exactly this header and these tensor bytes, framed and checksummed correctly:
 * what a hostile or broken client can upload (encodeMState itself refuses most of these).
 */
function craft(header: Record<string, unknown>, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const dataStart = Math.ceil((16 + json.length) / 64) * 64;
  const out = new Uint8Array(dataStart + data.length + 32);
  out.set([0x89, 0x4d, 0x53, 0x54, 0x41, 0x54, 0x45, 0x0a]);
  new DataView(out.buffer).setUint32(8, 2, true);
  new DataView(out.buffer).setUint32(12, json.length, true);
  out.set(json, 16);
  out.set(data, dataStart);
  out.set(createHash('sha256').update(out.subarray(0, out.length - 32)).digest(), out.length - 32);
  return out;
}

/** A good state's header and data, to be tampered with, then crafted again. */
function parts(layout: StateLayout): { header: Record<string, unknown> & { tensors: Array<Record<string, unknown>> }; data: Uint8Array } {
  const bytes = encodeMState(content(layout));
  const { header, dataStart } = readMStateHeader(bytes);
  return { header: JSON.parse(JSON.stringify(header)), data: bytes.slice(dataStart, bytes.length - 32) };
}

function importError(bytes: Uint8Array, layout: StateLayout): unknown {
  try {
    assertStateImportable(bytes, FP, layout);
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('importable states (poison states refused before they are stored)', () => {
  it.each<[string, StateLayout]>([
    ['pure', PURE],
    ['hybrid', HYBRID],
  ])('accepts a %s state as exported, and itself crafted back', (_, layout) => {
    expect(importError(encodeMState(content(layout)), layout)).toBeUndefined();
    const { header, data } = parts(layout);
    expect(importError(craft(header, data), layout)).toBeUndefined();
    for (const dtype of ['F16', 'BF16'] as const) expect(importError(encodeMState(content(layout), { dtype }), layout)).toBeUndefined();
  });

  type Tamper = (p: ReturnType<typeof parts>) => void;
  const tensor = (p: ReturnType<typeof parts>, name: string) => p.header.tensors.find((t) => t['name'] === name)!;
  const f32At = (p: ReturnType<typeof parts>, name: string, value: number) => new DataView(p.data.buffer).setFloat32(tensor(p, name)['offset'] as number, value, true);
  it.each<[string, StateLayout, Tamper, RegExp]>([
    ['a tensor missing', PURE, (p) => void p.header.tensors.pop(), /tensor "ssm_state" is missing/],
    ['a hybrid ring missing', HYBRID, (p) => void (p.header.tensors = p.header.tensors.filter((t) => t['name'] !== 'attn_v')), /tensor "attn_v" is missing/],
    ['an empty tensor', PURE, (p) => Object.assign(tensor(p, 'conv_state'), { shape: [0, 4, 2], byte_length: 0 }), /"conv_state" has shape \[0, 4, 2\], expected \[2, 4, 2\]/],
    ['a tensor reshaped', PURE, (p) => Object.assign(tensor(p, 'ssm_state'), { shape: [2, 3, 4] }), /"ssm_state" has shape \[2, 3, 4\]/],
    ['a ring of another window', HYBRID, (p) => Object.assign(tensor(p, 'attn_k'), { shape: [1, 4, 2, 5] }), /"attn_k" has shape/],
    [
      'two tensors swapped',
      PURE,
      (p) => {
        const [conv, ssm] = [tensor(p, 'conv_state'), tensor(p, 'ssm_state')];
        [conv['name'], ssm['name']] = [ssm['name'], conv['name']];
      },
      /has shape/,
    ],
    ['a tensor twice', PURE, (p) => void (tensor(p, 'ssm_state')['name'] = 'conv_state'), /appears twice|has shape/],
    ['an extra tensor', PURE, (p) => void p.header.tensors.push({ ...tensor(p, 'conv_state'), name: 'extra' }), /tensor "extra" is not part of this model's state/],
    ['NaN', PURE, (p) => f32At(p, 'ssm_state', NaN), /"ssm_state" holds a non-finite value/],
    ['Infinity', HYBRID, (p) => f32At(p, 'attn_v', Infinity), /"attn_v" holds a non-finite value/],
    ['-Infinity', PURE, (p) => f32At(p, 'conv_state', -Infinity), /non-finite/],
  ])('refuses %s', (_, layout, tamper, why) => {
    const p = parts(layout);
    tamper(p);
    const err = importError(craft(p.header, p.data), layout);
    expect(err).toBeInstanceOf(StateFormatError);
    expect(err).toMatchObject({ code: 'state_invalid', message: expect.stringMatching(why) });
  });

  it('refuses non-finite halves (F16 and BF16 Infinity / NaN bit patterns)', () => {
    for (const [dtype, bits] of [['F16', 0x7c00], ['BF16', 0x7fc0]] as const) {
      const bytes = encodeMState(content(PURE), { dtype });
      const { header, dataStart } = readMStateHeader(bytes);
      const data = bytes.slice(dataStart, bytes.length - 32);
      new DataView(data.buffer).setUint16(header.tensors[1]!.offset + 6, bits, true);
      expect(importError(craft(JSON.parse(JSON.stringify(header)), data), PURE)).toMatchObject({ code: 'state_invalid', message: expect.stringMatching(/non-finite value .* at element 3/) });
    }
  });

  it('refuses a token count of 2^53 - 1 (and anything past 2^40), accepts 2^40', () => {
    for (const tokens of [2 ** 53 - 1, MAX_TOKENS_ABSORBED + 1]) {
      const p = parts(HYBRID);
      p.header['tokens_absorbed'] = tokens;
      expect(importError(craft(p.header, p.data), HYBRID)).toMatchObject({ code: 'state_invalid', message: expect.stringMatching(/tokens_absorbed/) });
    }
    expect(importError(encodeMState(content(HYBRID, MAX_TOKENS_ABSORBED)), HYBRID)).toBeUndefined();
  });

  it('refuses another model\'s state as state_model_mismatch, as before', () => {
    expect(importError(encodeMState(content(PURE)), HYBRID)).toMatchObject({ code: 'state_model_mismatch' });
    expect(importError(encodeMState({ ...content(PURE), modelFingerprint: 'b'.repeat(64) }), PURE)).toMatchObject({ code: 'state_model_mismatch' });
  });
});

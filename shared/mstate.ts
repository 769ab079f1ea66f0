// The `.mstate` file: one session's recurrent state, self-describing and checksummed.
//
//   0   8 bytes  magic "\x89MSTATE\n" (the high byte and newline catch text-mode mangling)
//   8   u32 LE   format version (2; version 1 files, which predate hybrids, still load)
//   12  u32 LE   header length H
//   16  H bytes  header: UTF-8 JSON, schema MStateHeader below
//   …   zero padding to a 64-byte boundary, then each tensor at header.tensors[i].offset
//                (relative to the data start, 64-byte aligned), little-endian
//   end 32 bytes SHA-256 of every byte before it
//
// Tensors: `conv_state` [M, d_inner, d_conv] and `ssm_state` [M, d_inner, d_state] over the M
// Mamba layers in order; for a hybrid (version 2) also `attn_k` and `attn_v`
// [A, W, KV, head_dim] over the A attention layers: a ring of the last W keys (after RoPE) and
// values, the token at absolute position p in slot p mod W. That position is the header's
// `tokens_absorbed` (every token since version 0, across resumes, forks and imports), which
// RoPE and the ring's slots both read. Sizes depend on the model only, never on the history.
//
// Loading a file from another model (fingerprint), a truncated file or a bad checksum is
// a StateFormatError, never a silently wrong state.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { DTYPE_BYTES, fromFloat32, toFloat32 } from './dtype.ts';

export const MSTATE_MAGIC = Uint8Array.from([0x89, 0x4d, 0x53, 0x54, 0x41, 0x54, 0x45, 0x0a]);
export const MSTATE_FORMAT_VERSION = 2;
/** Versions this build reads: 1 (pure Mamba only) and 2 (adds hybrid layouts). */
const READABLE_VERSIONS = new Set([1, 2]);
export const MSTATE_MEDIA_TYPE = 'application/vnd.mamba-serve.mstate';
const ALIGN = 64;
const CHECKSUM_BYTES = 32;
/** Bounds what a header may claim, so a hostile file cannot make us allocate gigabytes for JSON. */
const MAX_HEADER_BYTES = 1 << 20;
/**
 * The most tokens a state may claim to have absorbed: 2^40 (about 1.1 trillion, 16 million
 * turns of the largest input). Far beyond any real session, far below 2^53, where the counter
 * (and a hybrid's ring slot and RoPE position, which read it) would stop being exact integers:
 * a crafted file claiming 2^53 - 1 would be accepted and then fail every later turn.
 */
export const MAX_TOKENS_ABSORBED = 2 ** 40;

export type StateErrorCode = 'state_invalid' | 'state_model_mismatch';

export class StateFormatError extends Error {
  readonly code: StateErrorCode;
  constructor(code: StateErrorCode, message: string) {
    super(message);
    this.name = 'StateFormatError';
    this.code = code;
  }
}

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits');

const positiveInt = z.number().int().positive();

/**
 * What a state's tensors are shaped by. The four Mamba sizes always; for a hybrid also the
 * type of every layer and the attention ring's shape (absent together for a pure model, so
 * a pure model's layout is what it was in format version 1).
 */
export const StateLayout = z
  .object({
    num_layers: positiveInt,
    intermediate_size: positiveInt,
    state_size: positiveInt,
    conv_kernel: positiveInt,
    layer_types: z.array(z.enum(['mamba', 'sliding_attention'])).max(4096).optional(),
    sliding_window: positiveInt.optional(),
    num_key_value_heads: positiveInt.optional(),
    head_dim: positiveInt.optional(),
  })
  .refine(
    (l) => {
      const hybrid = [l.layer_types, l.sliding_window, l.num_key_value_heads, l.head_dim].filter((v) => v !== undefined).length;
      return hybrid === 0 || (hybrid === 4 && l.layer_types!.length === l.num_layers);
    },
    { message: 'a hybrid layout needs layer_types (one per layer), sliding_window, num_key_value_heads and head_dim together' },
  );
export type StateLayout = z.infer<typeof StateLayout>;

/** The layout's fields that must agree between a state and a model, in a stable order. */
function layoutKey(l: StateLayout): string {
  return JSON.stringify([
    l.num_layers,
    l.intermediate_size,
    l.state_size,
    l.conv_kernel,
    l.layer_types ?? null,
    l.sliding_window ?? null,
    l.num_key_value_heads ?? null,
    l.head_dim ?? null,
  ]);
}

export function isHybridLayout(l: StateLayout): boolean {
  return l.layer_types !== undefined && l.layer_types.includes('sliding_attention');
}

/** The shape of every tensor a state of this layout holds, by name. */
export function stateTensorShapes(l: StateLayout): Map<string, number[]> {
  const types = l.layer_types ?? Array.from({ length: l.num_layers }, () => 'mamba');
  const mamba = types.filter((t) => t === 'mamba').length;
  const attention = types.length - mamba;
  const shapes = new Map<string, number[]>([
    ['conv_state', [mamba, l.intermediate_size, l.conv_kernel]],
    ['ssm_state', [mamba, l.intermediate_size, l.state_size]],
  ]);
  if (attention > 0) {
    const ring = [attention, l.sliding_window!, l.num_key_value_heads!, l.head_dim!];
    shapes.set('attn_k', ring);
    shapes.set('attn_v', ring);
  }
  return shapes;
}

const TensorHeader = z.object({
  name: z.string().regex(/^[a-z0-9_.]{1,64}$/),
  dtype: z.enum(['F32', 'F16', 'BF16']),
  shape: z.array(z.number().int().nonnegative()).max(8),
  offset: z.number().int().nonnegative(),
  byte_length: z.number().int().nonnegative(),
});

export const MStateHeader = z.object({
  model_fingerprint: Hex64,
  /** Tokens the state has absorbed since it was zero. */
  tokens_absorbed: z.number().int().nonnegative().max(MAX_TOKENS_ABSORBED),
  /** The session version this state was derived from, if any. */
  parent_version: z.number().int().nonnegative().nullable(),
  /** Hash of the conversation text absorbed, for prefix reuse; null when unknown. */
  transcript_hash: z.string().max(128).nullable(),
  layout: StateLayout,
  tensors: z.array(TensorHeader).min(1).max(64),
  created_at: z.string().max(64),
});
export type MStateHeader = z.infer<typeof MStateHeader>;

export interface MStateTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface MStateContent {
  readonly modelFingerprint: string;
  readonly tokensAbsorbed: number;
  readonly parentVersion: number | null;
  readonly transcriptHash: string | null;
  readonly layout: StateLayout;
  readonly tensors: readonly MStateTensor[];
  readonly createdAt?: string;
}

export interface EncodeOptions {
  /** Storage dtype. F32 (default) resumes exactly; F16/BF16 halve the size at a documented cost. */
  readonly dtype?: 'F32' | 'F16' | 'BF16';
}

const align = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

export function encodeMState(content: MStateContent, options: EncodeOptions = {}): Uint8Array {
  const dtype = options.dtype ?? 'F32';
  let offset = 0;
  const tensors = content.tensors.map((t) => {
    const elements = t.shape.reduce((a, b) => a * b, 1);
    if (elements !== t.data.length) {
      throw new Error(`mstate: tensor ${t.name} has ${t.data.length} values but shape [${t.shape.join(', ')}]`);
    }
    const entry = { name: t.name, dtype, shape: [...t.shape], offset, byte_length: elements * DTYPE_BYTES[dtype] };
    offset = align(offset + entry.byte_length);
    return entry;
  });
  const header: MStateHeader = MStateHeader.parse({
    model_fingerprint: content.modelFingerprint,
    tokens_absorbed: content.tokensAbsorbed,
    parent_version: content.parentVersion,
    transcript_hash: content.transcriptHash,
    layout: content.layout,
    tensors,
    created_at: content.createdAt ?? new Date().toISOString(),
  });
  const headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const dataStart = align(16 + headerBytes.length);
  const total = dataStart + offset + CHECKSUM_BYTES;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  out.set(MSTATE_MAGIC, 0);
  view.setUint32(8, MSTATE_FORMAT_VERSION, true);
  view.setUint32(12, headerBytes.length, true);
  out.set(headerBytes, 16);
  content.tensors.forEach((t, i) => out.set(fromFloat32(t.data, dtype), dataStart + tensors[i]!.offset));
  const digest = createHash('sha256').update(out.subarray(0, total - CHECKSUM_BYTES)).digest();
  out.set(digest, total - CHECKSUM_BYTES);
  return out;
}

/**
 * Validate framing, header and checksum and return the header, without decoding tensors.
 * Cheap enough for the edge to check an upload before storing it.
 */
export function readMStateHeader(bytes: Uint8Array): { header: MStateHeader; dataStart: number } {
  const fail = (why: string): never => {
    throw new StateFormatError('state_invalid', `not a valid .mstate file: ${why}`);
  };
  if (bytes.length < 16 + CHECKSUM_BYTES) fail(`${bytes.length} bytes is too short`);
  for (let i = 0; i < MSTATE_MAGIC.length; i++) if (bytes[i] !== MSTATE_MAGIC[i]) fail('bad magic bytes');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (!READABLE_VERSIONS.has(version)) fail(`format version ${version} is not supported (this build reads ${[...READABLE_VERSIONS].join(' and ')})`);
  const headerLength = view.getUint32(12, true);
  if (headerLength > MAX_HEADER_BYTES || 16 + headerLength > bytes.length - CHECKSUM_BYTES) fail('header length runs past the end (truncated?)');
  const body = bytes.subarray(0, bytes.length - CHECKSUM_BYTES);
  const expected = createHash('sha256').update(body).digest();
  const stored = bytes.subarray(bytes.length - CHECKSUM_BYTES);
  if (!expected.equals(stored)) fail('checksum mismatch (corrupt or truncated)');
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(16, 16 + headerLength)));
  } catch {
    fail('header is not valid UTF-8 JSON');
  }
  const parsed = MStateHeader.safeParse(json);
  if (!parsed.success) fail(`header: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const header = parsed.data!;
  if (version === 1 && isHybridLayout(header.layout)) fail('format version 1 cannot hold a hybrid layout');
  const dataStart = align(16 + headerLength);
  const dataLength = body.length - dataStart;
  for (const t of header.tensors) {
    const elements = t.shape.reduce((a, b) => a * b, 1);
    if (t.byte_length !== elements * DTYPE_BYTES[t.dtype]) fail(`tensor ${t.name}: byte_length does not match shape and dtype`);
    if (t.offset % ALIGN !== 0 || t.offset + t.byte_length > dataLength) fail(`tensor ${t.name}: data outside the file`);
  }
  return { header, dataStart };
}

/** Decode a whole `.mstate`, tensors as fp32. */
export function decodeMState(bytes: Uint8Array): { header: MStateHeader; content: MStateContent } {
  const { header, dataStart } = readMStateHeader(bytes);
  const tensors = header.tensors.map((t) => {
    const start = dataStart + t.offset;
    return { name: t.name, shape: t.shape, data: toFloat32(bytes.subarray(start, start + t.byte_length), t.dtype) };
  });
  return {
    header,
    content: {
      modelFingerprint: header.model_fingerprint,
      tokensAbsorbed: header.tokens_absorbed,
      parentVersion: header.parent_version,
      transcriptHash: header.transcript_hash,
      layout: header.layout,
      tensors,
      createdAt: header.created_at,
    },
  };
}

/** Refuse a state made for another model: states are meaningless outside the weights that made them. */
export function assertStateModel(header: MStateHeader, fingerprint: string, layout: StateLayout): void {
  if (header.model_fingerprint !== fingerprint) {
    throw new StateFormatError(
      'state_model_mismatch',
      `state belongs to model ${header.model_fingerprint.slice(0, 12)}…, this model is ${fingerprint.slice(0, 12)}…`,
    );
  }
  const l = header.layout;
  if (layoutKey(l) !== layoutKey(layout)) {
    const kind = (x: StateLayout) => (isHybridLayout(x) ? 'a hybrid' : 'a pure Mamba model');
    throw new StateFormatError(
      'state_model_mismatch',
      `state layout ${JSON.stringify(l)} (${kind(l)}) does not match the model's ${JSON.stringify(layout)} (${kind(layout)})`,
    );
  }
}

/** Bit patterns of Infinity and NaN: the exponent field all ones. */
const NON_FINITE = { F32: { bytes: 4, mask: 0x7f800000 }, F16: { bytes: 2, mask: 0x7c00 }, BF16: { bytes: 2, mask: 0x7f80 } } as const;

/**
 * A state that can be imported as it is: a valid file (readMStateHeader) of this model
 * (assertStateModel) holding exactly the tensors the layout has (stateTensorShapes: none
 * missing, none extra or twice, each of its shape, so an empty or transposed tensor, or two
 * swapped tensors of different shapes, is refused) and only finite values. What passes here
 * can be loaded by every engine and continued by every later turn; what fails is a 400
 * state_invalid before anything is stored, instead of a session whose every turn then fails.
 * Reads the tensors in place (no decoded copy): an upload may be hundreds of megabytes.
 */
export function assertStateImportable(bytes: Uint8Array, fingerprint: string, layout: StateLayout): MStateHeader {
  const { header, dataStart } = readMStateHeader(bytes);
  assertStateModel(header, fingerprint, layout);
  const fail = (why: string): never => {
    throw new StateFormatError('state_invalid', `not a usable state of this model: ${why}`);
  };
  const expected = stateTensorShapes(layout);
  const seen = new Set<string>();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const t of header.tensors) {
    const shape = expected.get(t.name);
    if (!shape) fail(`tensor "${t.name}" is not part of this model's state (it has ${[...expected.keys()].join(', ')})`);
    if (seen.has(t.name)) fail(`tensor "${t.name}" appears twice`);
    seen.add(t.name);
    if (t.shape.length !== shape!.length || t.shape.some((v, i) => v !== shape![i])) {
      fail(`tensor "${t.name}" has shape [${t.shape.join(', ')}], expected [${shape!.join(', ')}]`);
    }
    const { bytes: width, mask } = NON_FINITE[t.dtype];
    const start = dataStart + t.offset;
    for (let at = start; at < start + t.byte_length; at += width) {
      const bits = width === 4 ? view.getUint32(at, true) : view.getUint16(at, true);
      if ((bits & mask) === mask) fail(`tensor "${t.name}" holds a non-finite value (NaN or Infinity) at element ${(at - start) / width}`);
    }
  }
  for (const name of expected.keys()) if (!seen.has(name)) fail(`tensor "${name}" is missing`);
  return header;
}

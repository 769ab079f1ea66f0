// Writes a Hugging Face Mamba checkpoint as a GGUF file that llama.cpp loads (architecture
// "mamba"), so bench/vs-llama-cpp.ts can run the peer on exactly the weights our engine runs.
// Written from the GGUF format's description (header, key/values, tensor infos, aligned data)
// and llama.cpp's tensor names for Mamba; no code of theirs.
//
// Dtypes: F32 (everything as stored), or "pure" Q8_0 / Q4_0: every projection matrix
// (ssm_in, ssm_x, ssm_out and the embedding table, which a tied model's head reads) in the
// block format, 32 values a block with an f16 scale, the same tensors our int8/int4 builds
// quantize. Tensors whose rows are not whole blocks (ssm_dt, whose rows are time_step_rank
// long) are F16; conv, A, D, norms and biases stay F32, as in our builds.
import { open } from 'node:fs/promises';
import { EMBEDDINGS, LM_HEAD, NORM_F, layerTensorName, type Checkpoint, type LayerTensorName } from '../worker/model/checkpoint.ts';

export type GgufDtype = 'F32' | 'Q8_0' | 'Q4_0';

const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8 } as const;
type TensorType = keyof typeof GGML_TYPE;
/** llama.cpp's file_type codes (general.file_type). */
const FILE_TYPE: Record<GgufDtype, number> = { F32: 0, Q8_0: 7, Q4_0: 2 };
const ALIGNMENT = 32;
const QK = 32;

// ---- f16 ------------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half bits of `v`, rounded to nearest even. */
export function toHalf(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  const round = (value: number, shift: number) => {
    const half = value >>> shift;
    const rem = value & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return rem > mid || (rem === mid && (half & 1) === 1) ? half + 1 : half;
  };
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    return sign | round(mant, 14 - e);
  }
  return sign | round((e << 23) | mant, 13); // a carry out of the mantissa correctly bumps the exponent
}

export function fromHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// ---- block formats --------------------------------------------------------------------------

/** Bytes of `n` values (n a multiple of 32 for the block types). */
function typeBytes(type: TensorType, n: number): number {
  switch (type) {
    case 'F32':
      return 4 * n;
    case 'F16':
      return 2 * n;
    case 'Q8_0':
      return (n / QK) * (2 + QK);
    case 'Q4_0':
      return (n / QK) * (2 + QK / 2);
  }
}

/** Q8_0: per block of 32, d = max|x| / 127 (stored f16), q = round(x / d) as int8. */
export function encodeQ8_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array(typeBytes('Q8_0', x.length));
  const view = new DataView(out.buffer);
  for (let b = 0; b < x.length / QK; b++) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[b * QK + j]!));
    const d = amax / 127;
    const id = d ? 1 / d : 0;
    const at = b * (2 + QK);
    view.setUint16(at, toHalf(d), true);
    for (let j = 0; j < QK; j++) {
      const v = x[b * QK + j]! * id;
      view.setInt8(at + 2 + j, Math.sign(v) * Math.round(Math.abs(v))); // C's roundf: ties away from zero
    }
  }
  return out;
}

/**
 * Q4_0: per block of 32, d = m / -8 where m is the value of largest magnitude (stored f16);
 * q = clamp(trunc(x / d + 8.5), 0, 15); byte j holds q[j] in its low nibble and q[j + 16] in
 * its high one. Values decode as (q - 8) · d.
 */
export function encodeQ4_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array(typeBytes('Q4_0', x.length));
  const view = new DataView(out.buffer);
  for (let b = 0; b < x.length / QK; b++) {
    let m = 0;
    for (let j = 0; j < QK; j++) if (Math.abs(x[b * QK + j]!) > Math.abs(m)) m = x[b * QK + j]!;
    const d = m / -8;
    const id = d ? 1 / d : 0;
    const at = b * (2 + QK / 2);
    view.setUint16(at, toHalf(d), true);
    const q = (j: number) => Math.min(15, Math.trunc(x[b * QK + j]! * id + 8.5));
    for (let j = 0; j < QK / 2; j++) out[at + 2 + j] = q(j) | (q(j + QK / 2) << 4);
  }
  return out;
}

/** What a block-format tensor stands for (for tests and the logits check). */
export function decodeBlocks(type: 'Q8_0' | 'Q4_0', bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = type === 'Q8_0' ? 2 + QK : 2 + QK / 2;
  for (let b = 0; b < n / QK; b++) {
    const d = fromHalf(view.getUint16(b * size, true));
    for (let j = 0; j < QK; j++) {
      const q = type === 'Q8_0' ? view.getInt8(b * size + 2 + j) : ((bytes[b * size + 2 + (j % 16)]! >> (j < 16 ? 0 : 4)) & 0xf) - 8;
      out[b * QK + j] = q * d;
    }
  }
  return out;
}

function encode(type: TensorType, x: Float32Array): Uint8Array {
  switch (type) {
    case 'F32':
      return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    case 'F16': {
      const h = Uint16Array.from(x, toHalf);
      return new Uint8Array(h.buffer);
    }
    case 'Q8_0':
      return encodeQ8_0(x);
    case 'Q4_0':
      return encodeQ4_0(x);
  }
}

// ---- the file -------------------------------------------------------------------------------

type KvValue = { u32: number } | { f32: number } | { bool: boolean } | { str: string } | { strs: string[] } | { f32s: Float32Array } | { i32s: Int32Array };

class Bytes {
  private parts: Uint8Array[] = [];
  length = 0;
  private push(b: Uint8Array) {
    this.parts.push(b);
    this.length += b.length;
  }
  u32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    this.push(b);
  }
  u64(v: number) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    this.push(b);
  }
  str(s: string) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  raw(b: Uint8Array) {
    this.push(b);
  }
  kv(key: string, v: KvValue) {
    this.str(key);
    // Value types: 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array (element type, count, elements).
    if ('u32' in v) {
      this.u32(4);
      this.u32(v.u32);
    } else if ('f32' in v) {
      this.u32(6);
      this.raw(new Uint8Array(Float32Array.of(v.f32).buffer));
    } else if ('bool' in v) {
      this.u32(7);
      this.raw(Uint8Array.of(v.bool ? 1 : 0));
    } else if ('str' in v) {
      this.u32(8);
      this.str(v.str);
    } else if ('strs' in v) {
      this.u32(9);
      this.u32(8);
      this.u64(v.strs.length);
      for (const s of v.strs) this.str(s);
    } else {
      const [elem, arr] = 'f32s' in v ? [6, v.f32s] : [5, v.i32s];
      this.u32(9);
      this.u32(elem);
      this.u64(arr.length);
      this.raw(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
    }
  }
  concat(): Uint8Array {
    return Buffer.concat(this.parts);
  }
}

interface TensorPlan {
  name: string;
  /** ggml order: ne[0] is the contiguous axis (PyTorch's last). */
  ne: number[];
  type: TensorType;
  load: () => Promise<Float32Array>;
}

function plan(ckpt: Checkpoint, dtype: GgufDtype): TensorPlan[] {
  const c = ckpt.config;
  if (c.hybrid) throw new Error('gguf-mamba: hybrids have no llama.cpp architecture here');
  const d = c.hiddenSize;
  const D = c.intermediateSize;
  const N = c.stateSize;
  const R = c.timeStepRank;
  const V = ckpt.vocabRows;
  const matrix = (cols: number): TensorType => (dtype === 'F32' ? 'F32' : cols % QK === 0 ? dtype : 'F16');
  const out: TensorPlan[] = [{ name: 'token_embd.weight', ne: [d, V], type: matrix(d), load: () => ckpt.read(EMBEDDINGS) }];
  for (let i = 0; i < c.numLayers; i++) {
    const read = (n: LayerTensorName) => () => ckpt.read(layerTensorName(i, n));
    const p = `blk.${i}.`;
    out.push(
      { name: `${p}attn_norm.weight`, ne: [d], type: 'F32', load: read('norm.weight') },
      { name: `${p}ssm_in.weight`, ne: [d, 2 * D], type: matrix(d), load: read('mixer.in_proj.weight') },
      { name: `${p}ssm_conv1d.weight`, ne: [c.convKernel, D], type: 'F32', load: read('mixer.conv1d.weight') },
      { name: `${p}ssm_x.weight`, ne: [D, R + 2 * N], type: matrix(D), load: read('mixer.x_proj.weight') },
      { name: `${p}ssm_dt.weight`, ne: [R, D], type: matrix(R), load: read('mixer.dt_proj.weight') },
      { name: `${p}ssm_dt.bias`, ne: [D], type: 'F32', load: read('mixer.dt_proj.bias') },
      {
        name: `${p}ssm_a`,
        ne: [N, D],
        type: 'F32',
        load: async () => (await ckpt.read(layerTensorName(i, 'mixer.A_log'))).map((v) => -Math.exp(v)),
      },
      { name: `${p}ssm_d`, ne: [D], type: 'F32', load: read('mixer.D') },
      { name: `${p}ssm_out.weight`, ne: [D, d], type: matrix(D), load: read('mixer.out_proj.weight') },
    );
    const bias = (n: LayerTensorName, gguf: string, ne: number[]) => {
      if (ckpt.tensors.has(layerTensorName(i, n))) out.push({ name: `${p}${gguf}`, ne, type: 'F32', load: read(n) });
    };
    bias('mixer.conv1d.bias', 'ssm_conv1d.bias', [D]);
    bias('mixer.in_proj.bias', 'ssm_in.bias', [2 * D]);
    bias('mixer.out_proj.bias', 'ssm_out.bias', [d]);
  }
  out.push({ name: 'output_norm.weight', ne: [d], type: 'F32', load: () => ckpt.read(NORM_F) });
  if (ckpt.has.lmHead) out.push({ name: 'output.weight', ne: [d, V], type: matrix(d), load: () => ckpt.read(LM_HEAD) });
  return out;
}

/**
 * Write `ckpt` to `path` as GGUF in `dtype`. The vocabulary is placeholder tokens (the bench
 * feeds token ids, never text): a SentencePiece-style list with <unk>, <s>, </s> and the 256
 * byte tokens.
 */
export async function writeMambaGguf(ckpt: Checkpoint, path: string, dtype: GgufDtype): Promise<{ bytes: number }> {
  const c = ckpt.config;
  const tensors = plan(ckpt, dtype);
  const V = ckpt.vocabRows;
  const header = new Bytes();
  header.raw(Buffer.from('GGUF'));
  header.u32(3);
  header.u64(tensors.length);
  // llama.cpp's SentencePiece vocabulary looks up byte tokens (<0x0A> for the newline) at load.
  if (V < 3 + 256) throw new Error(`gguf-mamba: a vocabulary of ${V} rows has no room for the 256 byte tokens`);
  const tokens = Array.from({ length: V }, (_, i) =>
    i === 0 ? '<unk>' : i === 1 ? '<s>' : i === 2 ? '</s>' : i < 259 ? `<0x${(i - 3).toString(16).toUpperCase().padStart(2, '0')}>` : `<t${i}>`,
  );
  // Token types: 1 normal, 2 unknown, 3 control, 6 byte.
  const tokenType = Int32Array.from({ length: V }, (_, i) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1));
  const kvs: [string, KvValue][] = [
    ['general.architecture', { str: 'mamba' }],
    ['general.name', { str: 'mamba-serve bench model' }],
    ['general.file_type', { u32: FILE_TYPE[dtype] }],
    ['mamba.context_length', { u32: 1 << 20 }],
    ['mamba.embedding_length', { u32: c.hiddenSize }],
    ['mamba.feed_forward_length', { u32: 0 }],
    ['mamba.attention.head_count', { u32: 0 }],
    ['mamba.block_count', { u32: c.numLayers }],
    ['mamba.ssm.conv_kernel', { u32: c.convKernel }],
    ['mamba.ssm.inner_size', { u32: c.intermediateSize }],
    ['mamba.ssm.state_size', { u32: c.stateSize }],
    ['mamba.ssm.time_step_rank', { u32: c.timeStepRank }],
    ['mamba.attention.layer_norm_rms_epsilon', { f32: c.layerNormEpsilon }],
    ['tokenizer.ggml.model', { str: 'llama' }],
    ['tokenizer.ggml.tokens', { strs: tokens }],
    ['tokenizer.ggml.scores', { f32s: new Float32Array(V) }],
    ['tokenizer.ggml.token_type', { i32s: tokenType }],
    ['tokenizer.ggml.unknown_token_id', { u32: 0 }],
    ['tokenizer.ggml.bos_token_id', { u32: 1 }],
    ['tokenizer.ggml.eos_token_id', { u32: 2 }],
    ['tokenizer.ggml.add_bos_token', { bool: false }],
  ];
  header.u64(kvs.length);
  for (const [k, v] of kvs) header.kv(k, v);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    header.str(t.name);
    header.u32(t.ne.length);
    for (const n of t.ne) header.u64(n);
    header.u32(GGML_TYPE[t.type]);
    header.u64(offset);
    offsets.push(offset);
    offset += Math.ceil(typeBytes(t.type, t.ne.reduce((a, b) => a * b, 1)) / ALIGNMENT) * ALIGNMENT;
  }
  const head = header.concat();
  const dataStart = Math.ceil(head.length / ALIGNMENT) * ALIGNMENT;
  const fh = await open(path, 'w');
  try {
    await fh.write(head, 0, head.length, 0);
    for (const [i, t] of tensors.entries()) {
      const bytes = encode(t.type, await t.load());
      await fh.write(bytes, 0, bytes.length, dataStart + offsets[i]!);
    }
    await fh.truncate(dataStart + offset);
  } finally {
    await fh.close();
  }
  return { bytes: dataStart + offset };
}

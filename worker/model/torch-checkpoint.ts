// Reader of PyTorch's `torch.save` files (pytorch_model.bin of original state-spaces
// checkpoints): a zip archive holding `{archive}/data.pkl` (the pickled state_dict) and one
// uncompressed entry `{archive}/data/{key}` per storage.
//
// Pickle is a program, not data: unpickling with Python's pickle can run any function the
// file names. This is a restricted unpickler that understands only what a state_dict needs
// (containers, strings, numbers, collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// float storages loaded through persistent ids) and refuses every other global, so a
// hostile file can at worst be refused, never execute anything. It does not rebuild tensors:
// it yields each tensor's byte range in the zip, read later with positioned reads exactly
// like safetensors, so a multi-GB checkpoint never sits in the JS heap.
//
// The zip central directory is parsed here (with Zip64, which torch writes past 4 GB)
// rather than through a zip library, because what we need is the raw offset of each stored
// entry's data, which stream-oriented readers do not expose.
import type { FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { DTYPE_BYTES, type FloatDType } from '../../shared/dtype.ts';
import { ModelError } from './errors.ts';
import { openModelFile } from './model-files.ts';
import type { SafetensorsEntry } from './safetensors.ts';

export type TorchTensorEntry = SafetensorsEntry;

/** data.pkl of a state_dict is kilobytes to a few MB; refuse absurd sizes before reading. */
const MAX_PICKLE_BYTES = 64 * 1024 * 1024;
const MAX_STACK = 1 << 20;

// ---------------------------------------------------------------------------------------
// Zip central directory

interface ZipEntry {
  readonly name: string;
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localHeaderOffset: number;
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done === length ? buf : buf.subarray(0, done);
}

function u64(buf: Buffer, at: number): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('64-bit zip field too large');
  return Number(v);
}

async function readZipDirectory(fh: FileHandle, size: number, bad: (why: string) => never): Promise<ZipEntry[]> {
  // End of central directory: 22 bytes plus a comment of up to 65535 bytes, at the end.
  const tailLen = Math.min(size, 22 + 65535);
  const tail = await readAt(fh, size - tailLen, tailLen);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) bad('not a zip archive (no end-of-central-directory record; truncated, or a legacy non-zip torch file)');
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    // Zip64: a locator just before the EOCD points at the Zip64 EOCD record.
    const locAt = eocd - 20;
    if (locAt < 0 || tail.readUInt32LE(locAt) !== 0x07064b50) bad('Zip64 locator missing');
    const recOffset = u64(tail, locAt + 8);
    const rec = await readAt(fh, recOffset, 56);
    if (rec.length < 56 || rec.readUInt32LE(0) !== 0x06064b50) bad('Zip64 end-of-central-directory record missing');
    count = u64(rec, 32);
    cdSize = u64(rec, 40);
    cdOffset = u64(rec, 48);
  }
  if (cdOffset + cdSize > size || count > cdSize / 46) bad('central directory lies outside the file (truncated?)');
  const cd = await readAt(fh, cdOffset, cdSize);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== 0x02014b50) bad(`central directory entry ${i} is corrupt`);
    const method = cd.readUInt16LE(p + 10);
    let compressedSize = cd.readUInt32LE(p + 20);
    let uncompressedSize = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    let localHeaderOffset = cd.readUInt32LE(p + 42);
    const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
    // Zip64 extended information: the 64-bit values of the fields set to 0xffffffff, in order.
    let x = p + 46 + nameLen;
    const extraEnd = x + extraLen;
    while (x + 4 <= extraEnd) {
      const id = cd.readUInt16LE(x);
      const len = cd.readUInt16LE(x + 2);
      if (id === 0x0001) {
        let q = x + 4;
        if (uncompressedSize === 0xffffffff) (uncompressedSize = u64(cd, q)), (q += 8);
        if (compressedSize === 0xffffffff) (compressedSize = u64(cd, q)), (q += 8);
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = u64(cd, q);
      }
      x += 4 + len;
    }
    entries.push({ name, method, compressedSize, size: uncompressedSize, localHeaderOffset });
    p = extraEnd + commentLen;
  }
  return entries;
}

/** Absolute offset of an entry's data: after its local header, whose extra field may differ from the central one. */
async function dataOffset(fh: FileHandle, entry: ZipEntry, size: number, bad: (why: string) => never): Promise<number> {
  const h = await readAt(fh, entry.localHeaderOffset, 30);
  if (h.length < 30 || h.readUInt32LE(0) !== 0x04034b50) bad(`local header of ${entry.name} is corrupt`);
  const start = entry.localHeaderOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
  if (start + entry.size > size) bad(`${entry.name} ends past the end of the file (truncated?)`);
  return start;
}

// ---------------------------------------------------------------------------------------
// Restricted unpickler

class Tuple {
  constructor(readonly items: readonly PyValue[]) {}
}
class Dict {
  readonly entries = new Map<PyKey, PyValue>();
}
class Mark {}
const MARK = new Mark();
/** A global the file imports; only the ones in ALLOWED exist. */
class Global {
  constructor(
    readonly qualified: string,
    readonly call: ((args: readonly PyValue[]) => PyValue) | undefined,
    readonly storageDtype?: string,
  ) {}
}
class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: string,
    readonly numel: number,
  ) {}
}
class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {}
}
type PyKey = string | number | boolean | null;
type PyValue = PyKey | Uint8Array | PyValue[] | Tuple | Dict | Global | StorageRef | TensorRef | Mark;

class PickleError extends Error {}

const STORAGE_DTYPES: Record<string, string> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  // Known but not servable: named so the error says what the tensor is.
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

function intTuple(v: PyValue, what: string): number[] {
  if (!(v instanceof Tuple) || !v.items.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
    throw new PickleError(`${what} is not a tuple of whole numbers`);
  }
  return v.items as number[];
}

function rebuildTensor(args: readonly PyValue[]): PyValue {
  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  const [storage, offset] = args;
  if (!(storage instanceof StorageRef)) throw new PickleError('_rebuild_tensor_v2: first argument is not a storage');
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) throw new PickleError('_rebuild_tensor_v2: bad storage offset');
  return new TensorRef(storage, offset, intTuple(args[2]!, 'tensor size'), intTuple(args[3]!, 'tensor stride'));
}

const ALLOWED = new Map<string, Global>([
  ['collections OrderedDict', new Global('collections.OrderedDict', (args) => {
    if (args.length !== 0) throw new PickleError('OrderedDict called with arguments');
    return new Dict();
  })],
  ['torch._utils _rebuild_tensor_v2', new Global('torch._utils._rebuild_tensor_v2', rebuildTensor)],
  ['torch._utils _rebuild_parameter', new Global('torch._utils._rebuild_parameter', (args) => {
    if (!(args[0] instanceof TensorRef)) throw new PickleError('_rebuild_parameter of something that is not a tensor');
    return args[0];
  })],
  ...Object.entries(STORAGE_DTYPES).map(([name, dtype]) => [`torch ${name}`, new Global(`torch.${name}`, undefined, dtype)] as [string, Global]),
]);

/** Runs the pickle in `data` with only the globals above; returns the top-level object. */
export function unpickleStateDict(data: Uint8Array): PyValue {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const stack: PyValue[] = [];
  const memo = new Map<number, PyValue>();
  let p = 0;
  const need = (n: number) => {
    if (p + n > buf.length) throw new PickleError('pickle ends in the middle of an instruction (truncated)');
  };
  const pop = (): PyValue => {
    if (stack.length === 0) throw new PickleError('stack underflow');
    return stack.pop()!;
  };
  const popMark = (): PyValue[] => {
    const items: PyValue[] = [];
    for (;;) {
      const v = pop();
      if (v === MARK) return items.reverse();
      items.push(v);
    }
  };
  const push = (v: PyValue) => {
    if (stack.length >= MAX_STACK) throw new PickleError('stack too deep');
    stack.push(v);
  };
  const top = (): PyValue => {
    if (stack.length === 0) throw new PickleError('stack underflow');
    return stack[stack.length - 1]!;
  };
  const setItems = (target: PyValue, kv: PyValue[]) => {
    if (!(target instanceof Dict)) throw new PickleError('SETITEM on something that is not a dict');
    if (kv.length % 2) throw new PickleError('SETITEMS with an odd number of items');
    for (let i = 0; i < kv.length; i += 2) {
      const k = kv[i]!;
      if (!(typeof k === 'string' || typeof k === 'number' || typeof k === 'boolean' || k === null)) throw new PickleError('dict key is not a string or number');
      target.entries.set(k, kv[i + 1]!);
    }
  };
  const str = (n: number) => {
    need(n);
    const s = buf.toString('utf8', p, p + n);
    p += n;
    return s;
  };
  const bytes = (n: number) => {
    need(n);
    const b = Uint8Array.from(buf.subarray(p, p + n));
    p += n;
    return b;
  };
  const line = () => {
    const end = buf.indexOf(0x0a, p);
    if (end < 0) throw new PickleError('unterminated GLOBAL');
    const s = buf.toString('utf8', p, end);
    p = end + 1;
    return s;
  };
  const global = (module: string, name: string): Global => {
    const g = ALLOWED.get(`${module} ${name}`);
    if (!g) {
      throw new PickleError(
        `refuses to load global ${module}.${name}: only a plain state_dict of tensors is read (arbitrary pickled objects are never executed)`,
      );
    }
    return g;
  };

  for (;;) {
    need(1);
    const op = buf[p++]!;
    switch (op) {
      case 0x80: // PROTO
        need(1);
        if (buf[p]! > 5) throw new PickleError(`pickle protocol ${buf[p]} is not supported`);
        p += 1;
        break;
      case 0x95: // FRAME (protocol 4): a length hint only
        need(8);
        p += 8;
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) throw new PickleError(`pickle ends with ${stack.length} values on the stack`);
        return stack[0]!;
      case 0x28: // MARK
        push(MARK);
        break;
      case 0x7d: // EMPTY_DICT
        push(new Dict());
        break;
      case 0x5d: // EMPTY_LIST
        push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        push(new Tuple([]));
        break;
      case 0x74: // TUPLE
        push(new Tuple(popMark()));
        break;
      case 0x85: // TUPLE1
        push(new Tuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        push(new Tuple([pop(), b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        push(new Tuple([pop(), b, c]));
        break;
      }
      case 0x6c: // LIST
        push(popMark());
        break;
      case 0x61: { // APPEND
        const v = pop();
        const list = top();
        if (!Array.isArray(list)) throw new PickleError('APPEND to something that is not a list');
        list.push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        const list = top();
        if (!Array.isArray(list)) throw new PickleError('APPENDS to something that is not a list');
        list.push(...items);
        break;
      }
      case 0x64: { // DICT
        const d = new Dict();
        setItems(d, popMark());
        push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line();
        push(global(module, line()));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw new PickleError('STACK_GLOBAL needs two strings');
        push(global(module, name));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const fn = pop();
        if (!(fn instanceof Global) || !fn.call) throw new PickleError(`cannot call ${fn instanceof Global ? fn.qualified : 'a non-function'}`);
        if (!(args instanceof Tuple)) throw new PickleError('REDUCE arguments are not a tuple');
        push(fn.call(args.items));
        break;
      }
      case 0x62: { // BUILD: sets an object's state; state_dict's OrderedDict carries `_metadata`, ignored
        pop();
        if (!(top() instanceof Dict)) throw new PickleError('BUILD on something that is not a dict');
        break;
      }
      case 0x51: { // BINPERSID: ('storage', storage_type, key, location, numel)
        const pid = pop();
        if (!(pid instanceof Tuple) || pid.items[0] !== 'storage' || pid.items.length < 5) throw new PickleError('persistent id is not a storage');
        const [, type, key, , numel] = pid.items;
        if (!(type instanceof Global) || type.storageDtype === undefined) throw new PickleError('persistent id names no storage type');
        if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(key)) throw new PickleError('bad storage key');
        if (typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) throw new PickleError('bad storage size');
        push(new StorageRef(key, type.storageDtype, numel));
        break;
      }
      case 0x71: // BINPUT
        need(1);
        memo.set(buf[p++]!, top());
        break;
      case 0x72: // LONG_BINPUT
        need(4);
        memo.set(buf.readUInt32LE(p), top());
        p += 4;
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: { // LONG_BINGET
        const width = op === 0x68 ? 1 : 4;
        need(width);
        const idx = width === 1 ? buf[p]! : buf.readUInt32LE(p);
        p += width;
        if (!memo.has(idx)) throw new PickleError(`memo ${idx} is not set`);
        push(memo.get(idx)!);
        break;
      }
      case 0x4a: // BININT
        need(4);
        push(buf.readInt32LE(p));
        p += 4;
        break;
      case 0x4b: // BININT1
        need(1);
        push(buf[p++]!);
        break;
      case 0x4d: // BININT2
        need(2);
        push(buf.readUInt16LE(p));
        p += 2;
        break;
      case 0x8a: { // LONG1: little-endian two's complement of n bytes
        need(1);
        const n = buf[p++]!;
        need(n);
        if (n > 8) throw new PickleError('integer too large');
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(buf[p + i]!);
        if (n > 0 && buf[p + n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
        p += n;
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) throw new PickleError('integer too large');
        push(Number(v));
        break;
      }
      case 0x47: // BINFLOAT (big-endian double)
        need(8);
        push(buf.readDoubleBE(p));
        p += 8;
        break;
      case 0x58: // BINUNICODE
        need(4);
        p += 4;
        push(str(buf.readUInt32LE(p - 4)));
        break;
      case 0x8c: // SHORT_BINUNICODE
        need(1);
        push(str(buf[p++]!));
        break;
      case 0x55: // SHORT_BINSTRING
        need(1);
        push(str(buf[p++]!));
        break;
      case 0x54: // BINSTRING
        need(4);
        p += 4;
        push(str(buf.readInt32LE(p - 4)));
        break;
      case 0x43: // SHORT_BINBYTES
        need(1);
        push(bytes(buf[p++]!));
        break;
      case 0x42: // BINBYTES
        need(4);
        p += 4;
        push(bytes(buf.readUInt32LE(p - 4)));
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      default:
        throw new PickleError(`opcode 0x${op.toString(16).padStart(2, '0')} at byte ${p - 1} is not allowed in a state_dict`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// torch.save archive → tensor entries

function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  return strides;
}

function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  if (shape.length !== stride.length) return false;
  const want = contiguousStrides(shape);
  // A dimension of size 1 (or an empty tensor) may carry any stride.
  return shape.every((d, i) => d <= 1 || stride[i] === want[i]) || shape.some((d) => d === 0);
}

/**
 * Every tensor of the state_dict in a torch.save file, as byte ranges of the file. Any
 * tensor that cannot be served as stored (not F32/F16/BF16, not contiguous) is an error
 * naming it.
 */
export async function readTorchCheckpoint(file: string): Promise<TorchTensorEntry[]> {
  const name = basename(file);
  const bad = (why: string, cause?: unknown): never => {
    throw new ModelError('torch_checkpoint_invalid', `${name}: ${why}`, cause === undefined ? undefined : { cause });
  };
  const fh = await openModelFile(file);
  try {
    const { size } = await fh.stat();
    let entries: ZipEntry[];
    try {
      entries = await readZipDirectory(fh, size, bad);
    } catch (error) {
      if (error instanceof ModelError) throw error;
      return bad(`corrupt zip archive (${(error as Error).message})`, error);
    }
    const pkl = entries.filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
    if (pkl.length !== 1) bad(`expected one {archive}/data.pkl in the archive, found ${pkl.length}`);
    const pklEntry = pkl[0]!;
    const prefix = pklEntry.name.slice(0, -'data.pkl'.length);
    const byName = new Map(entries.map((e) => [e.name, e]));

    const byteorder = byName.get(`${prefix}byteorder`);
    if (byteorder) {
      const order = (await readAt(fh, await dataOffset(fh, byteorder, size, bad), Math.min(byteorder.size, 16))).toString('utf8').trim();
      if (order !== 'little') bad(`saved on a ${order}-endian machine; only little-endian checkpoints are supported`);
    }
    if (pklEntry.method !== 0) bad('data.pkl is compressed; torch.save stores entries uncompressed');
    if (pklEntry.size > MAX_PICKLE_BYTES) bad(`data.pkl is ${pklEntry.size} bytes, more than a state_dict needs`);
    const pickle = await readAt(fh, await dataOffset(fh, pklEntry, size, bad), pklEntry.size);

    let root: PyValue;
    try {
      root = unpickleStateDict(pickle);
    } catch (error) {
      if (error instanceof PickleError) bad(`data.pkl: ${error.message}`, error);
      throw error;
    }
    if (!(root instanceof Dict)) bad('data.pkl does not hold a dict of tensors (a state_dict)');

    const storages = new Map<string, { offset: number; size: number }>();
    const out: TorchTensorEntry[] = [];
    for (const [key, value] of (root as Dict).entries) {
      const tensorName = String(key);
      const where = `tensor "${tensorName}"`;
      if (!(value instanceof TensorRef)) bad(`${where} is not a tensor`);
      const t = value as TensorRef;
      const dtype = t.storage.dtype;
      if (!(dtype in DTYPE_BYTES)) {
        throw new ModelError('dtype_unsupported', `${name}: ${where}: dtype ${dtype} is not supported (F32, F16 and BF16 are)`);
      }
      if (!isContiguous(t.shape, t.stride)) {
        bad(`${where} is not contiguous (size [${t.shape.join(', ')}], stride [${t.stride.join(', ')}]); save it with .contiguous() or convert the checkpoint to safetensors`);
      }
      let storage = storages.get(t.storage.key);
      if (!storage) {
        const entry = byName.get(`${prefix}data/${t.storage.key}`);
        if (!entry) bad(`${where}: storage ${t.storage.key} is missing from the archive`);
        if (entry!.method !== 0) bad(`${where}: storage ${t.storage.key} is compressed`);
        storage = { offset: await dataOffset(fh, entry!, size, bad), size: entry!.size };
        storages.set(t.storage.key, storage);
      }
      const itemBytes = DTYPE_BYTES[dtype as FloatDType];
      const elements = t.shape.reduce((a, b) => a * b, 1);
      const byteLength = elements * itemBytes;
      const start = t.storageOffset * itemBytes;
      if (storage.size !== t.storage.numel * itemBytes || start + byteLength > storage.size) {
        bad(`${where}: elements [${t.storageOffset}, ${t.storageOffset + elements}) do not fit its storage of ${storage.size / itemBytes} elements (truncated?)`);
      }
      out.push({ name: tensorName, dtype: dtype as FloatDType, shape: t.shape, offset: storage.offset + start, byteLength, file });
    }
    return out;
  } finally {
    await fh.close();
  }
}

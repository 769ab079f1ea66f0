// Reader of the safetensors format (8-byte little-endian header length, a JSON header,
// then raw little-endian tensor data). Only the header is parsed up front; tensors are read
// one at a time with positioned reads, so a multi-GB file never sits in memory at once.
import { open } from 'node:fs/promises';
import { basename } from 'node:path';
import { DTYPE_BYTES, type FloatDType } from '../../shared/dtype.ts';
import { ModelError } from './errors.ts';
import { openModelFile } from './model-files.ts';

export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: FloatDType;
  readonly shape: readonly number[];
  /** Absolute byte offset in the file. */
  readonly offset: number;
  readonly byteLength: number;
  readonly file: string;
}

/** Headers larger than this are refused: real ones are kilobytes; a garbage length would allocate gigabytes. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

const KNOWN_UNSUPPORTED = new Set(['F64', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2', 'U16', 'U32', 'U64']);

export async function readSafetensorsHeader(file: string): Promise<{ entries: SafetensorsEntry[]; metadata: Record<string, string> }> {
  const fh = await openModelFile(file);
  try {
    const { size } = await fh.stat();
    const name = basename(file);
    if (size < 8) throw new ModelError('safetensors_invalid', `${name}: file is ${size} bytes, too short for a safetensors header`);
    const lenBuf = Buffer.alloc(8);
    await fh.read(lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen === 0n || headerLen > BigInt(MAX_HEADER_BYTES) || Number(headerLen) + 8 > size) {
      throw new ModelError(
        'safetensors_invalid',
        `${name}: header length ${headerLen} is impossible for a ${size}-byte file (corrupt or truncated)`,
      );
    }
    const headerBuf = Buffer.alloc(Number(headerLen));
    const { bytesRead } = await fh.read(headerBuf, 0, headerBuf.length, 8);
    if (bytesRead !== headerBuf.length) throw new ModelError('safetensors_invalid', `${name}: truncated header`);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch (cause) {
      throw new ModelError('safetensors_invalid', `${name}: header is not valid JSON (${(cause as Error).message})`, { cause });
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new ModelError('safetensors_invalid', `${name}: header is not a JSON object`);
    }
    const dataStart = 8 + Number(headerLen);
    const dataSize = size - dataStart;
    const entries: SafetensorsEntry[] = [];
    let metadata: Record<string, string> = {};
    for (const [tensorName, raw] of Object.entries(header as Record<string, unknown>)) {
      if (tensorName === '__metadata__') {
        metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      const where = `${name}: tensor "${tensorName}"`;
      const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof info !== 'object' || info === null) throw new ModelError('safetensors_invalid', `${where}: entry is not an object`);
      const { dtype, shape, data_offsets: offsets } = info;
      if (typeof dtype !== 'string') throw new ModelError('safetensors_invalid', `${where}: missing dtype`);
      if (!(dtype in DTYPE_BYTES)) {
        const why = KNOWN_UNSUPPORTED.has(dtype) ? 'not supported (F32, F16 and BF16 are)' : 'unknown';
        throw new ModelError('dtype_unsupported', `${where}: dtype ${dtype} is ${why}`);
      }
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        throw new ModelError('safetensors_invalid', `${where}: bad shape ${JSON.stringify(shape)}`);
      }
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
        throw new ModelError('safetensors_invalid', `${where}: bad data_offsets ${JSON.stringify(offsets)}`);
      }
      const [begin, end] = offsets as [number, number];
      const elements = (shape as number[]).reduce((a, b) => a * b, 1);
      const expected = elements * DTYPE_BYTES[dtype as FloatDType];
      if (end < begin || end - begin !== expected) {
        throw new ModelError(
          'safetensors_invalid',
          `${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, shape ${JSON.stringify(shape)} of ${dtype} needs ${expected}`,
        );
      }
      if (end > dataSize) {
        throw new ModelError('safetensors_invalid', `${where}: data ends at byte ${end} but the file has only ${dataSize} data bytes (truncated?)`);
      }
      entries.push({ name: tensorName, dtype: dtype as FloatDType, shape: shape as number[], offset: dataStart + begin, byteLength: end - begin, file });
    }
    return { entries, metadata };
  } finally {
    await fh.close();
  }
}

/** Read one tensor's raw bytes (still in its stored dtype). */
export async function readTensorBytes(entry: SafetensorsEntry): Promise<Uint8Array> {
  const fh = await open(entry.file, 'r');
  try {
    const out = new Uint8Array(entry.byteLength);
    let done = 0;
    while (done < out.length) {
      const { bytesRead } = await fh.read(out, done, out.length - done, entry.offset + done);
      if (bytesRead === 0) {
        throw new ModelError('safetensors_invalid', `${basename(entry.file)}: tensor "${entry.name}" is truncated`);
      }
      done += bytesRead;
    }
    return out;
  } finally {
    await fh.close();
  }
}

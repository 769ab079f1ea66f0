// Writer of the safetensors format: used to make test checkpoints and by conversions.
import { writeFile } from 'node:fs/promises';
import { DTYPE_BYTES, fromFloat32, type FloatDType } from '../../shared/dtype.ts';

export interface TensorToWrite {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
  readonly dtype?: FloatDType;
}

export function encodeSafetensors(tensors: readonly TensorToWrite[], metadata: Record<string, string> = {}): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const blobs: Uint8Array[] = [];
  for (const t of tensors) {
    const dtype = t.dtype ?? 'F32';
    const bytes = fromFloat32(t.data, dtype);
    if (bytes.length !== t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype]) {
      throw new Error(`safetensors: ${t.name} data does not match shape [${t.shape.join(', ')}]`);
    }
    header[t.name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    blobs.push(bytes);
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces to an 8-byte boundary, as the reference writer does.
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const b of blobs) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}

export async function writeSafetensors(path: string, tensors: readonly TensorToWrite[], metadata?: Record<string, string>): Promise<void> {
  await writeFile(path, encodeSafetensors(tensors, metadata));
}

// The f32 strips file: an f32 graph build's in_proj and out_proj weights, copied once into
// column strips for the native kernels (worker/native-cpu/src/mamba_cpu.h, QMatrix::strips).
//
// Why: the build stores a projection as ONNX MatMul takes it, Wᵀ [in, out], one row of Wᵀ after
// another (3–12 KB each for mamba-130m). A decode step that reads it in place takes a slice of
// several rows at a time, several streams a thread, and measured 11–16 GB/s where a plain read
// of the same memory ran 18–19 (host D; docs/cpu-engine.md, "f32"). In strips of 48 columns,
// each strip contiguous down all the rows, a thread reads one stream, strip after strip: 19–21.
// in_proj and out_proj are 95 % of a layer's projection bytes; x_proj and dt_proj stay in place.
//
// The file lives inside the build's directory (so a rebuilt build drops it, as it drops ONNX
// Runtime's packed-weights file), is written beside its final name and renamed into place whole,
// and is trusted when its size is the layout's. The engine then maps it instead of those
// projections' bytes in weights.bin: the weights are still held once (those bytes of the build
// are never read). The price is disk: the projections' bytes again (mamba-130m: 340 MB).
import { randomBytes } from 'node:crypto';
import { open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** Columns a strip holds: mamba_cpu.h's kStrip (3 AVX-512 vectors, 6 AVX2 ones). */
export const STRIP_COLUMNS = 48;
/** The file's name in the build's directory; the version changes with the layout. */
export const STRIPS_FILE = 'native-f32-strips-v1.bin';
/** Rows of Wᵀ copied at a time: bounds the memory the copy takes (rows × out floats). */
const CHUNK_ROWS = 256;
/** Each matrix starts on a page of its own. */
const ALIGN = 4096;

/** A strips file that could not be made (the engine then runs on ONNX Runtime, or refuses with ORT_NATIVE_KERNELS=on). */
export class NativeStripsError extends Error {
  readonly code = 'native_strips_failed';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NativeStripsError';
  }
}

/** [offset, length] in bytes. */
export type ByteRange = [number, number];

/** A projection's Wᵀ in weights.bin: `inputs` rows of `outputs` floats. */
export interface StripSource {
  readonly name: string;
  readonly range: ByteRange;
  readonly inputs: number;
  readonly outputs: number;
}

/** Bytes of one matrix in strips: whole strips (the last padded with zero columns) down all its rows. */
export const stripBytes = (s: Pick<StripSource, 'inputs' | 'outputs'>) => Math.ceil(s.outputs / STRIP_COLUMNS) * STRIP_COLUMNS * s.inputs * 4;

/** Where each matrix lies in the file, in the order given, and the file's size. */
export function stripsLayout(sources: readonly StripSource[]): { ranges: Map<string, ByteRange>; size: number } {
  const ranges = new Map<string, ByteRange>();
  let at = 0;
  for (const s of sources) {
    ranges.set(s.name, [at, stripBytes(s)]);
    at = Math.ceil((at + stripBytes(s)) / ALIGN) * ALIGN;
  }
  return { ranges, size: at };
}

/** Copy one matrix: CHUNK_ROWS rows of Wᵀ at a time, each into its place in every strip. */
async function writeStrips(from: Awaited<ReturnType<typeof open>>, to: Awaited<ReturnType<typeof open>>, source: StripSource, offset: number): Promise<void> {
  const { inputs: K, outputs: N } = source;
  if (source.range[1] !== K * N * 4) throw new NativeStripsError(`${source.name} holds ${source.range[1]} bytes, expected ${K * N * 4}`);
  const strips = Math.ceil(N / STRIP_COLUMNS);
  for (let k0 = 0; k0 < K; k0 += CHUNK_ROWS) {
    const rows = Math.min(CHUNK_ROWS, K - k0);
    const chunk = new Float32Array(rows * N);
    const { bytesRead } = await from.read(new Uint8Array(chunk.buffer), 0, chunk.byteLength, source.range[0] + k0 * N * 4);
    if (bytesRead !== chunk.byteLength) throw new NativeStripsError(`${source.name}: the weights file ended early`);
    const piece = new Float32Array(rows * STRIP_COLUMNS);
    for (let j = 0; j < strips; j++) {
      piece.fill(0);
      const c0 = j * STRIP_COLUMNS;
      const width = Math.min(STRIP_COLUMNS, N - c0);
      for (let r = 0; r < rows; r++) piece.set(chunk.subarray(r * N + c0, r * N + c0 + width), r * STRIP_COLUMNS);
      await to.write(new Uint8Array(piece.buffer), 0, piece.byteLength, offset + (j * K + k0) * STRIP_COLUMNS * 4);
    }
  }
}

/**
 * The strips file of the build in `buildDir` for these projections (made from `weightsPath`
 * when absent or not whole), and each one's range in it.
 */
export async function ensureF32Strips(buildDir: string, weightsPath: string, sources: readonly StripSource[]): Promise<{ path: string; ranges: Map<string, ByteRange>; made: boolean }> {
  const path = join(buildDir, STRIPS_FILE);
  const { ranges, size } = stripsLayout(sources);
  const present = await stat(path).catch(() => null);
  if (present?.size === size) return { path, ranges, made: false };
  // Its own name, even beside another engine loading in this process.
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const from = await open(weightsPath, 'r');
    try {
      const to = await open(tmp, 'w');
      try {
        await to.truncate(size);
        for (const s of sources) await writeStrips(from, to, s, ranges.get(s.name)![0]);
        await to.sync();
      } finally {
        await to.close();
      }
    } finally {
      await from.close();
    }
    // Whole or absent: another process making the same file renames the same bytes.
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    if (err instanceof NativeStripsError) throw err;
    throw new NativeStripsError(`cannot write ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return { path, ranges, made: true };
}

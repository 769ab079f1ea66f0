// The f32 strips file (native-strips.ts): its layout against Wᵀ element by element, made once
// and reused, a file of the wrong size made again, and a weights file too short refused.
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureF32Strips, STRIP_COLUMNS, STRIPS_FILE, stripBytes, stripsLayout, type StripSource } from './native-strips.ts';

let dir: string;
let weightsPath: string;
// Two matrices in one weights file, as a build lays them out: a 7 × 100 Wᵀ (two full strips
// and a part of one) after 16 bytes of something else, then a 5 × 48 one (one strip exactly).
const a = Float32Array.from({ length: 7 * 100 }, (_, i) => i + 0.5);
const b = Float32Array.from({ length: 5 * 48 }, (_, i) => -i);
const sources: StripSource[] = [
  { name: 'a', range: [16, a.byteLength], inputs: 7, outputs: 100 },
  { name: 'b', range: [16 + a.byteLength, b.byteLength], inputs: 5, outputs: 48 },
];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ms-strips-'));
  weightsPath = join(dir, 'weights.bin');
  const bytes = new Uint8Array(16 + a.byteLength + b.byteLength);
  bytes.set(new Uint8Array(a.buffer), 16);
  bytes.set(new Uint8Array(b.buffer), 16 + a.byteLength);
  await writeFile(weightsPath, bytes);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the f32 strips file', () => {
  it('lays each matrix out as strips of 48 columns down all its rows, zero past its columns, each on a page of its own', async () => {
    const { path, ranges, made } = await ensureF32Strips(dir, weightsPath, sources);
    expect(made).toBe(true);
    expect(path).toBe(join(dir, STRIPS_FILE));
    expect(ranges.get('a')).toEqual([0, 3 * STRIP_COLUMNS * 7 * 4]);
    expect(ranges.get('b')).toEqual([4096, stripBytes(sources[1]!)]);
    const file = new Float32Array((await readFile(path)).buffer.slice(0));
    const at = (m: string, strip: number, k: number, j: number, inputs: number) => file[ranges.get(m)![0] / 4 + (strip * inputs + k) * STRIP_COLUMNS + j]!;
    for (let k = 0; k < 7; k++)
      for (let n = 0; n < 3 * STRIP_COLUMNS; n++) expect(at('a', Math.floor(n / STRIP_COLUMNS), k, n % STRIP_COLUMNS, 7)).toBe(n < 100 ? a[k * 100 + n] : 0);
    for (let k = 0; k < 5; k++) for (let n = 0; n < 48; n++) expect(at('b', 0, k, n, 5)).toBe(b[k * 48 + n]);
    expect((await stat(path)).size).toBe(stripsLayout(sources).size);
  });

  it('is made once and reused; one of the wrong size is made again', async () => {
    const first = await stat(join(dir, STRIPS_FILE));
    const again = await ensureF32Strips(dir, weightsPath, sources);
    expect(again.made).toBe(false);
    expect((await stat(again.path)).mtimeMs).toBe(first.mtimeMs);
    await writeFile(again.path, 'cut short');
    expect((await ensureF32Strips(dir, weightsPath, sources)).made).toBe(true);
    expect((await stat(again.path)).size).toBe(stripsLayout(sources).size);
  });

  it('refuses a weights file that ends before a matrix does, and leaves no file behind', async () => {
    const other = await mkdtemp(join(tmpdir(), 'ms-strips-short-'));
    try {
      const short = join(other, 'weights.bin');
      await writeFile(short, new Uint8Array(100));
      await expect(ensureF32Strips(other, short, sources)).rejects.toMatchObject({ code: 'native_strips_failed', message: expect.stringMatching(/ended early/) });
      await expect(stat(join(other, STRIPS_FILE))).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(ensureF32Strips(other, short, [{ ...sources[0]!, range: [0, 12] }])).rejects.toMatchObject({ code: 'native_strips_failed', message: expect.stringMatching(/holds 12 bytes/) });
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });
});

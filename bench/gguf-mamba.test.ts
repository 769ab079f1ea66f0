// The GGUF writer of bench/vs-llama-cpp.ts: f16 and the Q8_0/Q4_0 block formats against plain
// arithmetic, and the file's header as the format describes it. (That llama.cpp computes our
// logits from the file is checked by the benchmark itself, which has llama.cpp.)
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../shared/rng.ts';
import { openCheckpoint } from '../worker/model/checkpoint.ts';
import { writeRandomCheckpoint } from '../worker/model/testing/random-checkpoint.ts';
import { decodeBlocks, encodeQ4_0, encodeQ8_0, fromHalf, toHalf, writeMambaGguf } from './gguf-mamba.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-gguf-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('f16', () => {
  it('rounds to nearest even and keeps the edge cases', () => {
    for (const v of [0, 1, -2, 0.5, 65504, 2 ** -24, 2 ** -14, 1 / 3]) expect(fromHalf(toHalf(v))).toBeCloseTo(v, 3);
    expect(toHalf(1 + 2 ** -11)).toBe(0x3c00); // a tie: stays even
    expect(toHalf(1 + 3 * 2 ** -11)).toBe(0x3c02); // a tie: rounds up to even
    expect(toHalf(1e6)).toBe(0x7c00);
    expect(toHalf(-0)).toBe(0x8000);
    expect(Number.isNaN(fromHalf(toHalf(NaN)))).toBe(true);
    expect(fromHalf(toHalf(2 ** -25))).toBe(0); // half of the smallest subnormal: ties to even (0)
  });
});

describe('block formats', () => {
  const rng = new Rng(5);
  const x = Float32Array.from({ length: 32 * 20 }, (_, i) => rng.normal() * (i % 32 === 7 ? 3 : 1));
  it.each([
    ['Q8_0', encodeQ8_0, 127, 34],
    ['Q4_0', encodeQ4_0, 8, 18],
  ] as const)('%s: 32-value blocks, each value within half a step of its f16 scale (or Q4_0\'s clamp at +7 steps)', (type, encode, steps, blockBytes) => {
    const bytes = encode(x);
    expect(bytes.length).toBe(20 * blockBytes);
    const back = decodeBlocks(type, bytes, x.length);
    for (let b = 0; b < 20; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
      const step = amax / steps;
      for (let j = 0; j < 32; j++) {
        const v = Math.abs(x[b * 32 + j]!);
        const limit = type === 'Q4_0' ? Math.max(step / 2, v - 7 * step) : step / 2;
        expect(Math.abs(back[b * 32 + j]! - x[b * 32 + j]!)).toBeLessThanOrEqual(limit + amax * 1e-3);
      }
    }
  });
});

describe('writeMambaGguf', () => {
  it('writes the header, the Mamba hyperparameters and every tensor, aligned', async () => {
    const dir = join(root, 'model');
    await writeRandomCheckpoint(dir, { seed: 4, hiddenSize: 32, numLayers: 2, vocabSize: 300 });
    const ckpt = await openCheckpoint(dir);
    const path = join(root, 'model.gguf');
    const { bytes } = await writeMambaGguf(ckpt, path, 'Q8_0');
    const file = await readFile(path);
    expect(file.length).toBe(bytes);
    expect(file.subarray(0, 4).toString()).toBe('GGUF');
    const view = new DataView(file.buffer, file.byteOffset);
    expect(view.getUint32(4, true)).toBe(3);
    expect(Number(view.getBigUint64(8, true))).toBe(1 + 2 * 10 + 1); // embeddings, 10 per layer (conv bias included), norm_f
    const text = file.toString('latin1');
    for (const key of ['mamba.ssm.inner_size', 'mamba.ssm.time_step_rank', 'blk.1.ssm_a', 'blk.0.ssm_conv1d.bias', 'output_norm.weight', '<0x0A>']) expect(text).toContain(key);
    expect(bytes % 32).toBe(0);
  });
});

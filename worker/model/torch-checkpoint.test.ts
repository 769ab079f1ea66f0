// Against files written by real PyTorch (testing/fixtures/make_torch_fixture.py).
import { cp, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../shared/dtype.ts';
import { ReferenceEngine } from '../engine/reference/reference-engine.ts';
import { EMBEDDINGS, LM_HEAD, openCheckpoint } from './checkpoint.ts';
import { ModelError } from './errors.ts';
import { writeSafetensors, type TensorToWrite } from './safetensors-writer.ts';
import { readTorchCheckpoint, unpickleStateDict } from './torch-checkpoint.ts';
import { readTensorBytes } from './safetensors.ts';

const FIX = join(import.meta.dirname, 'testing/fixtures');
let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'torch-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

// The fixture's formula (make_torch_fixture.py: values()).
const formula = (n: number, salt: number) => Float32Array.from({ length: n }, (_, i) => (((i * 7919 + salt * 104729) % 1000) - 500) / 512);
const SHAPES: [string, number[]][] = [
  ['backbone.embedding.weight', [24, 8]],
  ['backbone.layers.0.mixer.A_log', [16, 4]],
  ['backbone.layers.0.mixer.D', [16]],
  ['backbone.layers.0.mixer.in_proj.weight', [32, 8]],
  ['backbone.layers.0.mixer.conv1d.weight', [16, 1, 4]],
  ['backbone.layers.0.mixer.conv1d.bias', [16]],
  ['backbone.layers.0.mixer.x_proj.weight', [9, 16]],
  ['backbone.layers.0.mixer.dt_proj.weight', [16, 1]],
  ['backbone.layers.0.mixer.dt_proj.bias', [16]],
  ['backbone.layers.0.mixer.out_proj.weight', [8, 16]],
  ['backbone.layers.0.norm.weight', [8]],
  ['backbone.norm_f.weight', [8]],
];

async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ModelError);
    return `${(e as ModelError).code}: ${(e as Error).message}`;
  }
  throw new Error('expected a ModelError');
}

describe('readTorchCheckpoint', () => {
  it('lists every tensor of a torch.save state_dict with its bytes in the zip', async () => {
    const entries = await readTorchCheckpoint(join(FIX, 'torch-tiny/pytorch_model.bin'));
    expect(entries.map((e) => e.name)).toEqual([...SHAPES.map(([n]) => n), 'lm_head.weight']);
    for (const [i, [name, shape]] of SHAPES.entries()) {
      const e = entries.find((x) => x.name === name)!;
      expect(e.shape).toEqual(shape);
      expect(e.dtype).toBe('F32');
      const values = new Float32Array((await readTensorBytes(e)).slice().buffer);
      expect(values).toEqual(formula(values.length, i));
    }
    // Tied: lm_head is the embedding's storage, the same bytes.
    const emb = entries.find((e) => e.name === 'backbone.embedding.weight')!;
    const head = entries.find((e) => e.name === 'lm_head.weight')!;
    expect(head.offset).toBe(emb.offset);
  });

  it('finds views at their storage offsets', async () => {
    const entries = await readTorchCheckpoint(join(FIX, 'torch-odd/views.bin'));
    const read = async (name: string) => Array.from(new Float32Array((await readTensorBytes(entries.find((e) => e.name === name)!)).slice().buffer));
    expect(await read('whole')).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(await read('row1')).toEqual([4, 5, 6, 7]);
    expect(await read('row2')).toEqual([8, 9, 10, 11]);
  });

  it('refuses non-contiguous tensors and unsupported dtypes, naming the tensor', async () => {
    expect(await failure(readTorchCheckpoint(join(FIX, 'torch-odd/noncontiguous.bin')))).toMatch(
      /^torch_checkpoint_invalid: noncontiguous\.bin: tensor "transposed" is not contiguous \(size \[4, 3\], stride \[1, 4\]\)/,
    );
    expect(await failure(readTorchCheckpoint(join(FIX, 'torch-odd/ints.bin')))).toMatch(/^dtype_unsupported: ints\.bin: tensor "ints": dtype I64 is not supported/);
  });

  it('never runs a pickled call to anything but the state_dict globals', async () => {
    expect(await failure(readTorchCheckpoint(join(FIX, 'torch-odd/evil.bin')))).toMatch(
      /^torch_checkpoint_invalid: evil\.bin: data\.pkl: refuses to load global (posix|os)\.system/,
    );
  });

  it('refuses pickles that use disallowed opcodes or call non-functions', () => {
    const p = (...bytes: number[]) => Uint8Array.from(bytes);
    const text = (s: string) => [...Buffer.from(s, 'latin1')];
    // builtins.eval via GLOBAL
    expect(() => unpickleStateDict(p(0x80, 2, ...text('cbuiltins\neval\n'), 0x2e))).toThrow(/refuses to load global builtins\.eval/);
    // INST opcode ('i') creates arbitrary instances
    expect(() => unpickleStateDict(p(0x80, 2, 0x28, ...text('ios\nsystem\n'), 0x2e))).toThrow(/opcode 0x69/);
    // NEWOBJ
    expect(() => unpickleStateDict(p(0x80, 2, 0x81, 0x2e))).toThrow(/opcode 0x81/);
    // REDUCE on a storage type (a class, not an allowed function)
    expect(() => unpickleStateDict(p(0x80, 2, ...text('ctorch\nFloatStorage\n'), 0x29, 0x52, 0x2e))).toThrow(/cannot call torch\.FloatStorage/);
    // truncated
    expect(() => unpickleStateDict(p(0x80, 2, 0x58, 10, 0, 0, 0, 0x61))).toThrow(/truncated/);
    // a plain dict round-trips
    const d = unpickleStateDict(p(0x80, 2, 0x7d, 0x71, 0, 0x58, 1, 0, 0, 0, 0x61, 0x4b, 7, 0x73, 0x2e)) as { entries: Map<string, unknown> };
    expect(d.entries.get('a')).toBe(7);
  });

  it('reads Zip64 archives (sizes and offsets in Zip64 extras, directory found through the Zip64 record)', async () => {
    const plain = await readTorchCheckpoint(join(FIX, 'torch-tiny/pytorch_model.bin'));
    const file = join(FIX, 'torch-tiny-zip64/pytorch_model.bin');
    const z64 = await readTorchCheckpoint(file);
    const bytes = async (entries: typeof plain) => Promise.all(entries.map(async (e) => Buffer.from(await readTensorBytes(e)).toString('hex')));
    expect(z64.map((e) => [e.name, e.shape, e.dtype])).toEqual(plain.map((e) => [e.name, e.shape, e.dtype]));
    expect(await bytes(z64)).toEqual(await bytes(plain));
    // Mark the classic end record's fields as "see Zip64" so only the Zip64 record locates the directory.
    const buf = await readFile(file);
    const eocd = buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
    buf.writeUInt16LE(0xffff, eocd + 8);
    buf.writeUInt16LE(0xffff, eocd + 10);
    buf.writeUInt32LE(0xffffffff, eocd + 12);
    buf.writeUInt32LE(0xffffffff, eocd + 16);
    const forced = join(root, 'forced-zip64.bin');
    await writeFile(forced, buf);
    expect(await bytes(await readTorchCheckpoint(forced))).toEqual(await bytes(plain));
  });

  it('a truncated or corrupt archive is a clear error', async () => {
    const bin = await readFile(join(FIX, 'torch-tiny/pytorch_model.bin'));
    const cut = join(root, 'cut.bin');
    await writeFile(cut, bin);
    await truncate(cut, bin.length - 300);
    expect(await failure(readTorchCheckpoint(cut))).toMatch(/^torch_checkpoint_invalid: cut\.bin: /);
    const junk = join(root, 'junk.bin');
    await writeFile(junk, Buffer.from('not a zip at all'));
    expect(await failure(readTorchCheckpoint(junk))).toMatch(/^torch_checkpoint_invalid: junk\.bin: not a zip archive/);
    expect(await failure(readTorchCheckpoint(join(root, 'absent.bin')))).toMatch(/^model_not_found: /);
  });
});

describe('openCheckpoint on pytorch_model.bin', () => {
  it('is the same model as the same weights in safetensors (same fingerprint, same logits)', async () => {
    const st = join(root, 'st');
    await mkdir(st, { recursive: true });
    await cp(join(FIX, 'torch-tiny/config.json'), join(st, 'config.json'));
    const tensors: TensorToWrite[] = SHAPES.map(([name, shape], salt) => ({ name, shape, data: formula(shape.reduce((a, b) => a * b, 1), salt) }));
    await writeSafetensors(join(st, 'model.safetensors'), tensors);
    const [torch, safe] = await Promise.all([openCheckpoint(join(FIX, 'torch-tiny')), openCheckpoint(st)]);
    expect(torch.config.source).toBe('state-spaces');
    expect(torch.vocabRows).toBe(24);
    expect(torch.has.lmHead).toBe(false); // tied: lm_head dropped, the embedding serves
    expect(torch.tensors.has(LM_HEAD)).toBe(false);
    expect(await torch.fingerprint()).toBe(await safe.fingerprint());
    const run = async (dir: string) => {
      const e = await ReferenceEngine.load(await openCheckpoint(dir));
      return (await e.prefill(await e.newState(), Int32Array.from([1, 5, 19]), { allLogits: true })).data;
    };
    expect(await run(join(FIX, 'torch-tiny'))).toEqual(await run(st));
  });

  it.each([
    ['torch-tiny-bf16', 'BF16', (x: number) => bf16BitsToF32(f32ToBf16Bits(x))],
    ['torch-tiny-f16', 'F16', (x: number) => f16BitsToF32(f32ToF16Bits(x))],
  ] as const)('%s: reads %s storages as PyTorch rounded them', async (dir, dtype, round) => {
    const c = await openCheckpoint(join(FIX, dir));
    expect(c.dtype).toBe(dtype);
    const emb = await c.read(EMBEDDINGS);
    const want = formula(24 * 8, 0);
    for (let i = 0; i < want.length; i++) expect(emb[i]).toBe(Math.fround(round(want[i]!)));
  });

  it('prefers safetensors when both formats are present', async () => {
    const both = join(root, 'both');
    await cp(join(FIX, 'torch-tiny'), both, { recursive: true });
    await writeFile(join(both, 'model.safetensors'), Buffer.from([1, 2, 3]));
    expect(await failure(openCheckpoint(both))).toMatch(/^safetensors_invalid: model\.safetensors/);
  });
});

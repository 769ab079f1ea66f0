import { mkdtemp, readFile, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { f32ToBf16Bits, f32ToF16Bits, bf16BitsToF32, f16BitsToF32 } from '../../shared/dtype.ts';
import { EngineError } from '../engine/engine.ts';
import { ReferenceEngine } from '../engine/reference/reference-engine.ts';
import { EMBEDDINGS, LM_HEAD, layerTensorName, openCheckpoint } from './checkpoint.ts';
import { ModelError } from './errors.ts';
import { editConfig, openFailure as failure } from './testing/checkpoint-edits.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from './testing/random-checkpoint.ts';

let root: string;
let n = 0;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ckpt-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const SMALL: RandomCheckpointOptions = { hiddenSize: 16, numLayers: 2, stateSize: 4, vocabSize: 60, seed: 3 };
async function make(opts: RandomCheckpointOptions = {}): Promise<string> {
  const dir = join(root, `m${n++}`);
  await writeRandomCheckpoint(dir, { ...SMALL, ...opts });
  return dir;
}

async function logitsOf(dir: string, tokens = [1, 2, 3, 4]): Promise<Float32Array> {
  const engine = await ReferenceEngine.load(await openCheckpoint(dir));
  return (await engine.prefill(await engine.newState(), Int32Array.from(tokens), { allLogits: true })).data;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Rewrites a safetensors file's JSON header with `edit`, keeping the data bytes. */
async function editHeader(file: string, edit: (h: Record<string, any>) => void): Promise<void> {
  const buf = await readFile(file);
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + len).toString('utf8'));
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const out = Buffer.alloc(8 + json.length + buf.length - 8 - len);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  buf.copy(out, 8 + json.length, 8 + len);
  await writeFile(file, out);
}



describe('openCheckpoint: layouts users download', () => {
  it('HF naming, fp32, tied: config, sizes and tensors', async () => {
    const dir = await make();
    const c = await openCheckpoint(dir);
    expect(c.config).toMatchObject({ source: 'hf', hiddenSize: 16, intermediateSize: 32, stateSize: 4, convKernel: 4, timeStepRank: 1, numLayers: 2 });
    expect(c.vocabRows).toBe(64); // 60 padded to a multiple of 8
    expect(c.dtype).toBe('F32');
    expect(c.has).toEqual({ inProjBias: false, outProjBias: false, convBias: true, lmHead: false });
    expect(c.tensors.has(LM_HEAD)).toBe(false);
    // embeddings 64·16, norm_f 16, per layer: norm 16, A_log 32·4, D 32, conv 32·4 + 32, in 64·16, x (1+8)·32, dt 32·1 + 32, out 16·32
    const perLayer = 16 + 128 + 32 + 128 + 32 + 1024 + 288 + 32 + 32 + 512;
    expect(c.parameterCount).toBe(64 * 16 + 16 + 2 * perLayer);
    expect((await c.read(EMBEDDINGS)).length).toBe(64 * 16);
    await expect(c.read('backbone.nope')).rejects.toMatchObject({ code: 'tensor_missing' });
  });

  it('state-spaces naming and config (d_model, n_layer, ssm_cfg, unpadded vocab) computes the same logits as HF', async () => {
    const hf = await make({ seed: 9 });
    const ss = await make({ seed: 9, naming: 'state-spaces' });
    const c = await openCheckpoint(ss);
    expect(c.config.source).toBe('state-spaces');
    expect(c.config.vocabSize).toBe(60);
    expect(c.vocabRows).toBe(64);
    expect(c.tensors.has(EMBEDDINGS)).toBe(true); // backbone.embedding.weight under its canonical name
    expect(maxAbsDiff(await logitsOf(hf), await logitsOf(ss))).toBe(0);
  });

  it('sharded (model.safetensors.index.json) is the same model as a single file', async () => {
    const single = await make({ seed: 5 });
    const sharded = await make({ seed: 5, shards: 3 });
    const [a, b] = await Promise.all([openCheckpoint(single), openCheckpoint(sharded)]);
    expect(new Set([...b.tensors.values()].map((t) => t.file)).size).toBe(3);
    expect(await b.fingerprint()).toBe(await a.fingerprint());
  });

  it('untied lm_head is read and used; tied checkpoints ignore a stray lm_head', async () => {
    const untied = await make({ tied: false, seed: 6 });
    const c = await openCheckpoint(untied);
    expect(c.has.lmHead).toBe(true);
    expect(c.tensors.has(LM_HEAD)).toBe(true);
    const tied = await make({ tied: true, seed: 6 });
    expect(maxAbsDiff(await logitsOf(untied), await logitsOf(tied))).toBeGreaterThan(1e-3);
  });

  it('biases (use_bias) are found from the tensors present', async () => {
    const c = await openCheckpoint(await make({ bias: true, convBias: false }));
    expect(c.has).toMatchObject({ inProjBias: true, outProjBias: true, convBias: false });
  });

  it.each(['F16', 'BF16'] as const)('%s weights convert to fp32 exactly and stay close to the fp32 model', async (dtype) => {
    const f32 = await openCheckpoint(await make({ seed: 11 }));
    const dir = await make({ seed: 11, dtype });
    const low = await openCheckpoint(dir);
    expect(low.dtype).toBe(dtype);
    const name = layerTensorName(1, 'mixer.in_proj.weight');
    const [full, half] = await Promise.all([f32.read(name), low.read(name)]);
    const round = dtype === 'F16' ? (x: number) => f16BitsToF32(f32ToF16Bits(x)) : (x: number) => bf16BitsToF32(f32ToBf16Bits(x));
    for (let i = 0; i < full.length; i++) expect(half[i]).toBe(Math.fround(round(full[i]!)));
    const diff = maxAbsDiff(await logitsOf(f32.dir), await logitsOf(dir));
    expect(diff).toBeGreaterThan(0);
    expect(diff).toBeLessThan(dtype === 'F16' ? 0.05 : 0.5);
  });

  it('fingerprints differ between models and are stable for one', async () => {
    const a = await make({ seed: 1 });
    const b = await make({ seed: 2 });
    const fa = await (await openCheckpoint(a)).fingerprint();
    expect(fa).toMatch(/^[0-9a-f]{64}$/);
    expect(await (await openCheckpoint(a)).fingerprint()).toBe(fa);
    expect(await (await openCheckpoint(b)).fingerprint()).not.toBe(fa);
  });
});

describe('openCheckpoint: bad input is a ModelError naming the file, tensor or field', () => {
  it('missing directory, config.json or weights', async () => {
    expect(await failure(join(root, 'absent'))).toMatch(/^model_not_found: .*absent: model directory does not exist/);
    const noConfig = await make();
    await unlink(join(noConfig, 'config.json'));
    expect(await failure(noConfig)).toMatch(/^model_not_found: .*config\.json: cannot read/);
    const noWeights = await make();
    await unlink(join(noWeights, 'model.safetensors'));
    expect(await failure(noWeights)).toMatch(/^model_not_found: .*no model\.safetensors/);
  });

  it('a shard named by the index is missing', async () => {
    const dir = await make({ shards: 2 });
    await unlink(join(dir, 'model-00002-of-00002.safetensors'));
    expect(await failure(dir)).toMatch(/^model_not_found: .*model-00002-of-00002\.safetensors: cannot open/);
  });

  it('a missing tensor', async () => {
    const dir = await make();
    const name = layerTensorName(1, 'mixer.x_proj.weight');
    await editHeader(join(dir, 'model.safetensors'), (h) => delete h[name]);
    expect(await failure(dir)).toMatch(new RegExp(`^tensor_missing: .*"${name.replace(/\./g, '\\.')}" is missing`));
  });

  it('an untied model without lm_head', async () => {
    const dir = await make({ tied: false });
    await editHeader(join(dir, 'model.safetensors'), (h) => delete h[LM_HEAD]);
    expect(await failure(dir)).toMatch(/^tensor_missing: .*tie_word_embeddings is false but "lm_head\.weight" is missing/);
  });

  it('a bias in some layers only', async () => {
    const dir = await make({ bias: true });
    await editHeader(join(dir, 'model.safetensors'), (h) => delete h[layerTensorName(1, 'mixer.out_proj.bias')]);
    expect(await failure(dir)).toMatch(/^tensor_missing: .*backbone\.layers\.1\.mixer\.out_proj\.bias" is missing/);
  });

  it('a misshapen tensor (shape and byte length consistent, wrong for the config)', async () => {
    const dir = await make();
    const name = layerTensorName(0, 'mixer.A_log'); // [32, 4] stored; claim [16, 8]
    await editHeader(join(dir, 'model.safetensors'), (h) => (h[name].shape = [16, 8]));
    expect(await failure(dir)).toMatch(/^tensor_shape: .*model\.safetensors: tensor "backbone\.layers\.0\.mixer\.A_log" has shape \[16, 8\], expected \[32, 4\]/);
  });

  it('a config that does not match the weights', async () => {
    const dir = await make();
    await editConfig(dir, (c) => (c.state_size = 8));
    expect(await failure(dir)).toMatch(/^tensor_shape: .*A_log" has shape \[32, 4\], expected \[32, 8\] from config\.json/);
    const more = await make();
    await editConfig(more, (c) => (c.num_hidden_layers = 3));
    expect(await failure(more)).toMatch(/^tensor_missing: .*backbone\.layers\.2\.norm\.weight" is missing \(config has 3 layers\)/);
    const vocab = await make();
    await editConfig(vocab, (c) => (c.vocab_size = 100));
    expect(await failure(vocab)).toMatch(/^tensor_shape: .*has 64 rows but config vocab_size is 100/);
  });

  it('an unknown or unsupported dtype', async () => {
    const dir = await make();
    await editHeader(join(dir, 'model.safetensors'), (h) => (h[EMBEDDINGS].dtype = 'Q4_K'));
    expect(await failure(dir)).toMatch(/^dtype_unsupported: model\.safetensors: tensor "backbone\.embeddings\.weight": dtype Q4_K is unknown/);
    const f64 = await make();
    await editHeader(join(f64, 'model.safetensors'), (h) => (h[EMBEDDINGS].dtype = 'F64'));
    expect(await failure(f64)).toMatch(/^dtype_unsupported: .*dtype F64 is not supported/);
  });

  it('a corrupt header: garbage length, not JSON, not an object, bad offsets', async () => {
    const big = await make();
    const file = join(big, 'model.safetensors');
    const buf = await readFile(file);
    buf.writeBigUInt64LE(1n << 40n, 0);
    await writeFile(file, buf);
    expect(await failure(big)).toMatch(/^safetensors_invalid: model\.safetensors: header length \d+ is impossible/);

    const garbage = await make();
    const g = await readFile(join(garbage, 'model.safetensors'));
    g.write('#!', 8); // break the JSON
    await writeFile(join(garbage, 'model.safetensors'), g);
    expect(await failure(garbage)).toMatch(/^safetensors_invalid: model\.safetensors: header is not valid JSON/);

    const offsets = await make();
    await editHeader(join(offsets, 'model.safetensors'), (h) => (h[NORM_F_NAME].data_offsets = [0, 4]));
    expect(await failure(offsets)).toMatch(/^safetensors_invalid: .*"backbone\.norm_f\.weight": data_offsets \[0, 4\] hold 4 bytes/);

    const tiny = await make();
    await writeFile(join(tiny, 'model.safetensors'), Buffer.from([1, 2, 3]));
    expect(await failure(tiny)).toMatch(/^safetensors_invalid: model\.safetensors: file is 3 bytes/);
  });

  it('a truncated file', async () => {
    const dir = await make();
    const file = join(dir, 'model.safetensors');
    const size = (await readFile(file)).length;
    await truncate(file, size - 100);
    expect(await failure(dir)).toMatch(/^safetensors_invalid: .*data ends at byte \d+ but the file has only \d+ data bytes \(truncated\?\)/);
  });

  it('the same tensor in two shards', async () => {
    const dir = await make({ shards: 2 });
    await editHeader(join(dir, 'model-00002-of-00002.safetensors'), (h) => {
      const any = Object.keys(h).find((k) => k !== '__metadata__')!;
      h[EMBEDDINGS] = h[any];
    });
    expect(await failure(dir)).toMatch(/^safetensors_invalid: .*tensor "backbone\.embeddings\.weight" appears twice/);
  });

  it('an index whose shard names escape the directory', async () => {
    const dir = await make({ shards: 2 });
    const index = join(dir, 'model.safetensors.index.json');
    const j = JSON.parse(await readFile(index, 'utf8'));
    j.weight_map[EMBEDDINGS] = '../elsewhere.safetensors';
    await writeFile(index, JSON.stringify(j));
    expect(await failure(dir)).toMatch(/^safetensors_invalid: .*bad shard name "\.\.\/elsewhere\.safetensors"/);
  });

  it('a config that is not a Mamba config names the field', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ model_type: 'llama', hidden_size: 16 }, /model_type is "llama", expected "mamba"/],
      [{ model_type: 'mamba2', hidden_size: 16 }, /Mamba-2 is not supported/],
      [{ model_type: 'mamba', num_hidden_layers: 2, vocab_size: 60 }, /hidden_size: /],
      [{ model_type: 'mamba', hidden_size: -4, num_hidden_layers: 2, vocab_size: 60 }, /hidden_size: /],
      [{ model_type: 'mamba', hidden_size: 16, num_hidden_layers: 2, vocab_size: 60, time_step_rank: 'big' }, /time_step_rank/],
      [{ model_type: 'mamba', hidden_size: 16, num_hidden_layers: 2, vocab_size: 60, hidden_act: 'gelu' }, /hidden_act "gelu"/],
      [{ d_model: 16, n_layer: 2, vocab_size: 60, ssm_cfg: { layer: 'Mamba2' } }, /ssm_cfg\.layer "Mamba2"/],
      [{ d_model: 16, n_layer: 2, vocab_size: 60, attn_layer_idx: [1] }, /attention layers/],
      [{ architectures: ['GPT2LMHeadModel'] }, /not a Mamba config/],
    ];
    for (const [config, pattern] of cases) {
      const dir = await make();
      await writeFile(join(dir, 'config.json'), JSON.stringify(config));
      const f = await failure(dir);
      expect(f).toMatch(/^config_invalid: .*config\.json: /);
      expect(f).toMatch(pattern);
    }
    const notJson = await make();
    await writeFile(join(notJson, 'config.json'), '{"model_type": ');
    expect(await failure(notJson)).toMatch(/^config_invalid: .*config\.json: not valid JSON/);
  });

  it('a token id out of range is refused by the engine, naming the id and position', async () => {
    const engine = await ReferenceEngine.load(await openCheckpoint(await make()));
    const state = await engine.newState();
    await expect(engine.prefill(state, Int32Array.from([1, 64]))).rejects.toThrow(EngineError);
    await expect(engine.prefill(state, Int32Array.from([1, 64]))).rejects.toMatchObject({ code: 'token_out_of_range', message: expect.stringMatching(/token id 64 at position 1/) });
    await expect(engine.decode([{ state, token: -1 }])).rejects.toMatchObject({ code: 'token_out_of_range' });
    expect(state.tokensAbsorbed).toBe(0); // nothing was absorbed by the refused calls
  });
});

const NORM_F_NAME = 'backbone.norm_f.weight';

// The attention hybrid's config.json keys and tensors: every inconsistency fails at load with
// config_invalid naming the key (or the tensor and the layer_types entry that wants it), and
// pure Mamba models keep the fingerprint they had before hybrids existed.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from './checkpoint.ts';
import { layersOfType, stateFloats } from './mamba-config.ts';
import { editConfig, openFailure as failure } from './testing/checkpoint-edits.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from './testing/random-checkpoint.ts';

let root: string;
let n = 0;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'hybrid-config-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const HYBRID: RandomCheckpointOptions = {
  hiddenSize: 32,
  numLayers: 3,
  stateSize: 4,
  vocabSize: 60,
  seed: 3,
  hybrid: { attentionLayers: [1], window: 8, heads: 4, kvHeads: 2 },
};

async function make(opts: RandomCheckpointOptions = HYBRID): Promise<string> {
  const dir = join(root, `m${n++}`);
  await writeRandomCheckpoint(dir, opts);
  return dir;
}



describe('hybrid configs', () => {
  it('reads the layer layout, window, heads, head_dim default and RoPE', async () => {
    const ckpt = await openCheckpoint(await make());
    const h = ckpt.config.hybrid!;
    expect(h.layerTypes).toEqual(['mamba', 'sliding_attention', 'mamba']);
    expect(h).toMatchObject({ window: 8, numHeads: 4, numKvHeads: 2, headDim: 8, bias: false, ropeTheta: 10000 });
    expect(layersOfType(ckpt.config, 'mamba')).toEqual([0, 2]);
    // 2 Mamba layers x 64 channels x (d_conv 4 + d_state 4), and a k and a v ring of 8 x 2 x 8.
    expect(stateFloats(ckpt.config)).toEqual({ conv: 2 * 64 * 4, ssm: 2 * 64 * 4, attention: 2 * 8 * 2 * 8 });
    expect(ckpt.tensors.has('backbone.layers.1.mixer.q_proj.weight')).toBe(true);
  });

  it('treats layer_types of only "mamba" as a pure model, with the fingerprint it had', async () => {
    const pure = await make({ ...HYBRID, hybrid: undefined });
    const before = await (await openCheckpoint(pure)).fingerprint();
    await editConfig(pure, (c) => {
      c.layer_types = ['mamba', 'mamba', 'mamba'];
      c.sliding_window = 4;
    });
    const ckpt = await openCheckpoint(pure);
    expect(ckpt.config.hybrid).toBeUndefined();
    expect(await ckpt.fingerprint()).toBe(before);
  });

  it('pins the fingerprint of a committed pure checkpoint (states stored before hybrids keep loading)', async () => {
    const golden = join(import.meta.dirname, '..', 'engine', 'testing', 'golden', 'hf-f32-tied');
    expect(await (await openCheckpoint(golden)).fingerprint()).toBe('627b08c38dd30a5da26991bf894098c12c31806765a7c7062343ad6d4d3c3fd4');
  });

  it.each<[string, (c: Record<string, unknown>) => void, RegExp]>([
    ['layer_types of the wrong length', (c) => (c.layer_types = ['mamba', 'sliding_attention']), /layer_types: has 2 entries, but num_hidden_layers is 3/],
    ['an unknown layer type', (c) => (c.layer_types = ['mamba', 'full_attention', 'mamba']), /layer_types\[1\]: unknown layer type "full_attention"/],
    ['layer_types not an array', (c) => (c.layer_types = 'mamba'), /layer_types: must be an array/],
    ['a window of 0', (c) => (c.sliding_window = 0), /sliding_window: must be an integer >= 1 \(got 0\)/],
    ['no window', (c) => delete c.sliding_window, /sliding_window: must be an integer >= 1/],
    ['a fractional window', (c) => (c.sliding_window = 2.5), /sliding_window: /],
    ['H not divisible by KV', (c) => (c.num_key_value_heads = 3), /num_key_value_heads: num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)/],
    ['no heads', (c) => delete c.num_attention_heads, /num_attention_heads: must be an integer >= 1/],
    ['a negative head_dim', (c) => (c.head_dim = -8), /head_dim: must be an integer >= 1/],
    ['an odd head_dim with RoPE', (c) => (c.head_dim = 7), /head_dim: RoPE \(rope_theta\) needs an even head_dim/],
    ['a non-numeric rope_theta', (c) => (c.rope_theta = 'big'), /rope_theta: must be a positive number, or null/],
    ['a zero rope_theta', (c) => (c.rope_theta = 0), /rope_theta: /],
    ['a non-boolean attention_bias', (c) => (c.attention_bias = 'yes'), /attention_bias: must be true or false/],
  ])('%s is config_invalid naming the key', async (_, edit, pattern) => {
    const dir = await make();
    await editConfig(dir, edit);
    const f = await failure(dir);
    expect(f).toMatch(/^config_invalid: .*config\.json: /);
    expect(f).toMatch(pattern);
  });

  it('head_dim defaults to hidden_size / heads, and must then divide evenly', async () => {
    const dir = await make();
    await editConfig(dir, (c) => {
      delete c.head_dim;
      c.num_attention_heads = 3;
      c.num_key_value_heads = 3;
    });
    expect(await failure(dir)).toMatch(/^config_invalid: .*head_dim: absent, and hidden_size \(32\) is not a multiple of num_attention_heads \(3\)/);
  });

  it('missing attention weights are config_invalid naming the tensor and the layer_types entry', async () => {
    const dir = await make();
    // Declare layer 2 as attention too: its weights are Mamba's, so q_proj is missing.
    await editConfig(dir, (c) => (c.layer_types = ['mamba', 'sliding_attention', 'sliding_attention']));
    expect(await failure(dir)).toMatch(
      /^config_invalid: .*layer_types\[2\] is "sliding_attention" but tensor "backbone\.layers\.2\.mixer\.q_proj\.weight" is missing/,
    );
  });

  it('attention_bias true without biases, or biases with attention_bias false, is config_invalid', async () => {
    const noBias = await make();
    await editConfig(noBias, (c) => (c.attention_bias = true));
    expect(await failure(noBias)).toMatch(/^config_invalid: .*tensor "backbone\.layers\.1\.mixer\.q_proj\.bias" is missing/);
    const biased = await make({ ...HYBRID, hybrid: { ...HYBRID.hybrid!, bias: true } });
    await editConfig(biased, (c) => (c.attention_bias = false));
    expect(await failure(biased)).toMatch(/^config_invalid: .*attention_bias is false but tensor "backbone\.layers\.1\.mixer\.q_proj\.bias" is present/);
  });

  it('a misshapen attention weight is tensor_shape naming the tensor', async () => {
    const dir = await make();
    await editConfig(dir, (c) => (c.num_key_value_heads = 4));
    expect(await failure(dir)).toMatch(/^tensor_shape: .*"backbone\.layers\.1\.mixer\.k_proj\.weight" has shape \[16, 32\], expected \[32, 32\]/);
  });

  it('a layer declared Mamba that holds attention weights is tensor_missing naming the Mamba tensor', async () => {
    const dir = await make();
    await editConfig(dir, (c) => (c.layer_types = ['mamba', 'mamba', 'mamba']));
    expect(await failure(dir)).toMatch(/^tensor_missing: .*"backbone\.layers\.1\.mixer\.A_log" is missing/);
  });
});

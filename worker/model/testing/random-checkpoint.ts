// Random Mamba checkpoints in the exact layouts users download (HF or state-spaces naming,
// F32/F16/BF16, tied or untied head, single file or shards), so tests and benchmarks need no
// downloaded weights. Initialized like Mamba (A = -(1..N), dt in [1e-3, 1e-1], D = 1) with
// weights large enough that every part of the math moves the logits.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FloatDType } from '../../../shared/dtype.ts';
import { Rng } from '../../../shared/rng.ts';
import { encodeSafetensors, type TensorToWrite } from '../safetensors-writer.ts';

export interface RandomCheckpointOptions {
  hiddenSize?: number;
  numLayers?: number;
  stateSize?: number;
  convKernel?: number;
  expand?: number;
  timeStepRank?: number;
  vocabSize?: number;
  padVocabSizeMultiple?: number;
  dtype?: FloatDType;
  tied?: boolean;
  bias?: boolean;
  convBias?: boolean;
  naming?: 'hf' | 'state-spaces';
  shards?: number;
  seed?: number;
  /** Scale of the random projection weights (relative to 1/sqrt(fan_in)). */
  weightScale?: number;
  /** dt_proj.bias values, cycled over channels, instead of Mamba's init (to reach softplus' extremes). */
  dtBias?: readonly number[];
  /** An attention hybrid (HF naming only): these layers are sliding-window attention. */
  hybrid?: RandomHybridOptions;
}

export interface RandomHybridOptions {
  /** Indices of the "sliding_attention" layers. */
  attentionLayers: readonly number[];
  window: number;
  heads: number;
  kvHeads?: number;
  headDim?: number;
  bias?: boolean;
  /** null: no positional encoding. Default 10000. */
  ropeTheta?: number | null;
}

export interface RandomCheckpointInfo {
  readonly dir: string;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly vocabSize: number;
  readonly vocabRows: number;
}

export async function writeRandomCheckpoint(dir: string, options: RandomCheckpointOptions = {}): Promise<RandomCheckpointInfo> {
  const d = options.hiddenSize ?? 32;
  const layers = options.numLayers ?? 2;
  const N = options.stateSize ?? 8;
  const K = options.convKernel ?? 4;
  const expand = options.expand ?? 2;
  const D = Math.trunc(expand * d);
  const R = options.timeStepRank ?? Math.ceil(d / 16);
  const vocab = options.vocabSize ?? 300;
  const mult = options.padVocabSizeMultiple ?? 8;
  const vocabRows = Math.ceil(vocab / mult) * mult;
  const dtype = options.dtype ?? 'F32';
  const tied = options.tied ?? true;
  const bias = options.bias ?? false;
  const convBias = options.convBias ?? true;
  const naming = options.naming ?? 'hf';
  const scale = options.weightScale ?? 1;
  const rng = new Rng(options.seed ?? 1);

  const normal = (n: number, std: number) => Float32Array.from({ length: n }, () => rng.normal() * std);
  const uniform = (n: number, lo: number, hi: number) => Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.next());

  const tensors: TensorToWrite[] = [];
  const add = (name: string, shape: number[], data: Float32Array) => tensors.push({ name, shape, data, dtype });
  add(naming === 'hf' ? 'backbone.embeddings.weight' : 'backbone.embedding.weight', [vocabRows, d], normal(vocabRows * d, 1));
  const hybrid = options.hybrid;
  const H = hybrid?.heads ?? 1;
  const KV = hybrid?.kvHeads ?? H;
  const hd = hybrid?.headDim ?? Math.trunc(d / H);
  for (let i = 0; i < layers; i++) {
    const p = `backbone.layers.${i}.`;
    add(`${p}norm.weight`, [d], uniform(d, 0.5, 1.5));
    if (hybrid?.attentionLayers.includes(i)) {
      // Queries and keys large enough that softmax is far from uniform: the mask and the
      // positions visibly matter.
      add(`${p}mixer.q_proj.weight`, [H * hd, d], normal(H * hd * d, (2 * scale) / Math.sqrt(d)));
      add(`${p}mixer.k_proj.weight`, [KV * hd, d], normal(KV * hd * d, (2 * scale) / Math.sqrt(d)));
      add(`${p}mixer.v_proj.weight`, [KV * hd, d], normal(KV * hd * d, scale / Math.sqrt(d)));
      add(`${p}mixer.o_proj.weight`, [d, H * hd], normal(d * H * hd, scale / Math.sqrt(H * hd)));
      if (hybrid.bias) {
        add(`${p}mixer.q_proj.bias`, [H * hd], normal(H * hd, 0.1));
        add(`${p}mixer.k_proj.bias`, [KV * hd], normal(KV * hd, 0.1));
        add(`${p}mixer.v_proj.bias`, [KV * hd], normal(KV * hd, 0.1));
        add(`${p}mixer.o_proj.bias`, [d], normal(d, 0.1));
      }
      continue;
    }
    add(`${p}mixer.A_log`, [D, N], Float32Array.from({ length: D * N }, (_, k) => Math.log(1 + (k % N)) + 0.1 * rng.normal()));
    add(`${p}mixer.D`, [D], uniform(D, 0.5, 1.5));
    add(`${p}mixer.conv1d.weight`, [D, 1, K], normal(D * K, scale / Math.sqrt(K)));
    if (convBias) add(`${p}mixer.conv1d.bias`, [D], normal(D, 0.1));
    add(`${p}mixer.in_proj.weight`, [2 * D, d], normal(2 * D * d, scale / Math.sqrt(d)));
    if (bias) add(`${p}mixer.in_proj.bias`, [2 * D], normal(2 * D, 0.1));
    add(`${p}mixer.x_proj.weight`, [R + 2 * N, D], normal((R + 2 * N) * D, scale / Math.sqrt(D)));
    add(`${p}mixer.dt_proj.weight`, [D, R], normal(D * R, scale / Math.sqrt(R)));
    // dt = softplus(bias) lands in [1e-3, 1e-1] at init, as Mamba initializes it.
    add(
      `${p}mixer.dt_proj.bias`,
      [D],
      Float32Array.from({ length: D }, (_, ch) => {
        const dt = Math.exp(Math.log(1e-3) + rng.next() * (Math.log(1e-1) - Math.log(1e-3)));
        return options.dtBias ? options.dtBias[ch % options.dtBias.length]! : dt + Math.log(-Math.expm1(-dt));
      }),
    );
    add(`${p}mixer.out_proj.weight`, [d, D], normal(d * D, scale / Math.sqrt(D)));
    if (bias) add(`${p}mixer.out_proj.bias`, [d], normal(d, 0.1));
  }
  add('backbone.norm_f.weight', [d], uniform(d, 0.5, 1.5));
  if (!tied) add('lm_head.weight', [vocabRows, d], normal(vocabRows * d, 1 / Math.sqrt(d)));

  if (hybrid && naming !== 'hf') throw new Error('random checkpoint: a hybrid needs HF naming');
  await mkdir(dir, { recursive: true });
  const config =
    naming === 'hf'
      ? {
          architectures: ['MambaForCausalLM'],
          model_type: 'mamba',
          hidden_size: d,
          state_size: N,
          conv_kernel: K,
          expand,
          time_step_rank: R,
          num_hidden_layers: layers,
          vocab_size: vocabRows,
          layer_norm_epsilon: 1e-5,
          use_bias: bias,
          use_conv_bias: convBias,
          tie_word_embeddings: tied,
          residual_in_fp32: true,
          pad_vocab_size_multiple: mult,
          torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype],
          ...(hybrid
            ? {
                layer_types: Array.from({ length: layers }, (_, i) => (hybrid.attentionLayers.includes(i) ? 'sliding_attention' : 'mamba')),
                sliding_window: hybrid.window,
                num_attention_heads: H,
                num_key_value_heads: KV,
                head_dim: hd,
                attention_bias: hybrid.bias ?? false,
                rope_theta: hybrid.ropeTheta === undefined ? 10000 : hybrid.ropeTheta,
              }
            : {}),
        }
      : {
          d_model: d,
          n_layer: layers,
          vocab_size: vocab,
          ssm_cfg: { d_state: N, d_conv: K, expand, dt_rank: R, conv_bias: convBias, bias },
          rms_norm: true,
          residual_in_fp32: true,
          fused_add_norm: true,
          pad_vocab_size_multiple: mult,
          tie_embeddings: tied,
        };
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));

  const shards = options.shards ?? 1;
  if (shards <= 1) {
    await writeFile(join(dir, 'model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
  } else {
    const weightMap: Record<string, string> = {};
    const per = Math.ceil(tensors.length / shards);
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const part = tensors.slice(s * per, (s + 1) * per);
      for (const t of part) weightMap[t.name] = file;
      await writeFile(join(dir, file), encodeSafetensors(part, { format: 'pt' }));
    }
    await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
  }
  return { dir, hiddenSize: d, numLayers: layers, vocabSize: naming === 'hf' ? vocabRows : vocab, vocabRows };
}

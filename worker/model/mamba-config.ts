// Mamba model configuration, read from a checkpoint's config.json in either of the two
// layouts users download: Hugging Face `MambaConfig` (model_type "mamba") or the original
// state-spaces/mamba_ssm config (d_model, n_layer, ssm_cfg).
import { z } from 'zod';
import { ModelError } from './errors.ts';

/** The architecture as the runtime needs it; every size is resolved (no "auto"). */
export interface MambaConfig {
  /** Which layout config.json was in; decides tensor naming (embeddings vs embedding). */
  readonly source: 'hf' | 'state-spaces';
  readonly hiddenSize: number; // d_model
  readonly intermediateSize: number; // d_inner = expand * d_model
  readonly stateSize: number; // d_state (N)
  readonly convKernel: number; // d_conv (K)
  readonly timeStepRank: number; // dt_rank (R)
  readonly numLayers: number;
  /** Vocabulary of the config, before padding; the embedding may have more rows. */
  readonly vocabSize: number;
  readonly padVocabSizeMultiple: number;
  readonly layerNormEpsilon: number;
  /** As declared; the loader trusts the tensors present over these two flags. */
  readonly useBias: boolean;
  readonly useConvBias: boolean;
  readonly tieWordEmbeddings: boolean;
  readonly residualInFp32: boolean;
  readonly eosTokenId: number | undefined;
}

const positive = z.number().int().positive();

const HfMambaConfig = z.object({
  model_type: z.literal('mamba'),
  hidden_size: positive,
  state_size: positive.default(16),
  conv_kernel: positive.default(4),
  expand: z.number().positive().default(2),
  intermediate_size: positive.optional(),
  time_step_rank: z.union([positive, z.literal('auto')]).default('auto'),
  num_hidden_layers: positive,
  vocab_size: positive,
  layer_norm_epsilon: z.number().positive().default(1e-5),
  use_bias: z.boolean().default(false),
  use_conv_bias: z.boolean().default(true),
  tie_word_embeddings: z.boolean().default(true),
  residual_in_fp32: z.boolean().default(true),
  pad_vocab_size_multiple: positive.default(8),
  hidden_act: z.string().default('silu'),
  eos_token_id: z.number().int().nonnegative().nullable().optional(),
});

const StateSpacesConfig = z.object({
  d_model: positive,
  n_layer: positive,
  vocab_size: positive,
  d_intermediate: z.number().int().nonnegative().default(0),
  ssm_cfg: z
    .object({
      layer: z.string().default('Mamba1'),
      d_state: positive.default(16),
      d_conv: positive.default(4),
      expand: z.number().positive().default(2),
      dt_rank: z.union([positive, z.literal('auto')]).default('auto'),
      conv_bias: z.boolean().default(true),
      bias: z.boolean().default(false),
    })
    .default({ layer: 'Mamba1', d_state: 16, d_conv: 4, expand: 2, dt_rank: 'auto', conv_bias: true, bias: false }),
  attn_layer_idx: z.array(z.number().int()).default([]),
  rms_norm: z.boolean().default(true),
  residual_in_fp32: z.boolean().default(true),
  pad_vocab_size_multiple: positive.default(8),
  tie_embeddings: z.boolean().default(true),
  norm_epsilon: z.number().positive().default(1e-5),
});

function issuesText(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
}

/** Parse an already-JSON-decoded config.json. `file` is only used in error messages. */
export function parseMambaConfig(raw: unknown, file = 'config.json'): MambaConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ModelError('config_invalid', `${file}: expected a JSON object`);
  }
  const obj = raw as Record<string, unknown>;
  if ('model_type' in obj) {
    if (obj.model_type !== 'mamba') {
      const hint = obj.model_type === 'mamba2' ? ' (Mamba-2 is not supported yet)' : '';
      throw new ModelError('config_invalid', `${file}: model_type is "${String(obj.model_type)}", expected "mamba"${hint}`);
    }
    const parsed = HfMambaConfig.safeParse(obj);
    if (!parsed.success) throw new ModelError('config_invalid', `${file}: ${issuesText(parsed.error)}`);
    const c = parsed.data;
    if (c.hidden_act !== 'silu') {
      throw new ModelError('config_invalid', `${file}: hidden_act "${c.hidden_act}" is not supported (only "silu")`);
    }
    return {
      source: 'hf',
      hiddenSize: c.hidden_size,
      // HF computes int(expand * hidden_size) unless intermediate_size is given.
      intermediateSize: c.intermediate_size ?? Math.trunc(c.expand * c.hidden_size),
      stateSize: c.state_size,
      convKernel: c.conv_kernel,
      timeStepRank: c.time_step_rank === 'auto' ? Math.ceil(c.hidden_size / 16) : c.time_step_rank,
      numLayers: c.num_hidden_layers,
      vocabSize: c.vocab_size,
      padVocabSizeMultiple: c.pad_vocab_size_multiple,
      layerNormEpsilon: c.layer_norm_epsilon,
      useBias: c.use_bias,
      useConvBias: c.use_conv_bias,
      tieWordEmbeddings: c.tie_word_embeddings,
      residualInFp32: c.residual_in_fp32,
      eosTokenId: c.eos_token_id ?? undefined,
    };
  }
  if ('d_model' in obj && 'n_layer' in obj) {
    const parsed = StateSpacesConfig.safeParse(obj);
    if (!parsed.success) throw new ModelError('config_invalid', `${file}: ${issuesText(parsed.error)}`);
    const c = parsed.data;
    if (c.ssm_cfg.layer !== 'Mamba1') {
      throw new ModelError('config_invalid', `${file}: ssm_cfg.layer "${c.ssm_cfg.layer}" is not supported (only Mamba1)`);
    }
    if (c.attn_layer_idx.length > 0 || c.d_intermediate > 0) {
      throw new ModelError('config_invalid', `${file}: attention layers and MLP blocks (attn_layer_idx, d_intermediate) are not supported`);
    }
    if (!c.rms_norm) throw new ModelError('config_invalid', `${file}: rms_norm=false (LayerNorm) is not supported`);
    return {
      source: 'state-spaces',
      hiddenSize: c.d_model,
      intermediateSize: Math.trunc(c.ssm_cfg.expand * c.d_model),
      stateSize: c.ssm_cfg.d_state,
      convKernel: c.ssm_cfg.d_conv,
      timeStepRank: c.ssm_cfg.dt_rank === 'auto' ? Math.ceil(c.d_model / 16) : c.ssm_cfg.dt_rank,
      numLayers: c.n_layer,
      vocabSize: c.vocab_size,
      padVocabSizeMultiple: c.pad_vocab_size_multiple,
      layerNormEpsilon: c.norm_epsilon,
      useBias: c.ssm_cfg.bias,
      useConvBias: c.ssm_cfg.conv_bias,
      tieWordEmbeddings: c.tie_embeddings,
      residualInFp32: c.residual_in_fp32,
      eosTokenId: undefined,
    };
  }
  throw new ModelError(
    'config_invalid',
    `${file}: not a Mamba config (expected model_type "mamba", or d_model and n_layer of a state-spaces config)`,
  );
}

/** Floats of one session's recurrent state: conv and ssm state of every layer. */
export function stateFloats(c: MambaConfig): { conv: number; ssm: number } {
  return {
    conv: c.numLayers * c.intermediateSize * c.convKernel,
    ssm: c.numLayers * c.intermediateSize * c.stateSize,
  };
}

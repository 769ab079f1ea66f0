// Mamba model configuration, read from a checkpoint's config.json in either of the two
// layouts users download: Hugging Face `MambaConfig` (model_type "mamba") or the original
// state-spaces/mamba_ssm config (d_model, n_layer, ssm_cfg).
//
// The HF layout may also describe mamba-serve's attention hybrid (README "Hybrid models"):
// `layer_types` names each layer "mamba" or "sliding_attention", and the attention layers
// are sliding-window attention over the last `sliding_window` tokens with RoPE and grouped
// key/value heads. Every inconsistency there is `config_invalid` naming the key.
import { z } from 'zod';
import { ModelError } from './errors.ts';

export type LayerType = 'mamba' | 'sliding_attention';
export const LAYER_TYPES: readonly LayerType[] = ['mamba', 'sliding_attention'];

/** The attention layers of a hybrid; absent for a pure Mamba model. */
export interface HybridConfig {
  /** One entry per layer. */
  readonly layerTypes: readonly LayerType[];
  /** W: the token at position t attends to positions t-W < j <= t. */
  readonly window: number;
  readonly numHeads: number; // H
  readonly numKvHeads: number; // KV; query head h reads key/value head floor(h / (H / KV))
  readonly headDim: number; // hd
  readonly bias: boolean; // q/k/v/o projections carry biases
  /** RoPE base; null = no positional encoding. */
  readonly ropeTheta: number | null;
}

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
  /**
   * Present only for a hybrid. Kept out of pure models' configs entirely, so the model
   * fingerprint (a hash over this object) of every pure checkpoint stays what it was.
   */
  readonly hybrid?: HybridConfig;
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
  // The attention hybrid; checked by parseHybrid, which names the key at fault.
  layer_types: z.unknown().optional(),
  sliding_window: z.unknown().optional(),
  num_attention_heads: z.unknown().optional(),
  num_key_value_heads: z.unknown().optional(),
  head_dim: z.unknown().optional(),
  attention_bias: z.unknown().optional(),
  rope_theta: z.unknown().optional(),
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
    const hybrid = parseHybrid(c, file);
    return {
      ...(hybrid ? { hybrid } : {}),
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

const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;

/** The hybrid part of an HF config, or undefined when every layer is Mamba. */
function parseHybrid(c: z.infer<typeof HfMambaConfig>, file: string): HybridConfig | undefined {
  const bad = (key: string, why: string): never => {
    throw new ModelError('config_invalid', `${file}: ${key}: ${why}`);
  };
  if (c.layer_types === undefined || c.layer_types === null) return undefined;
  if (!Array.isArray(c.layer_types)) bad('layer_types', 'must be an array of "mamba" | "sliding_attention"');
  const types = c.layer_types as unknown[];
  if (types.length !== c.num_hidden_layers) {
    bad('layer_types', `has ${types.length} entries, but num_hidden_layers is ${c.num_hidden_layers}`);
  }
  types.forEach((t, i) => {
    if (!LAYER_TYPES.includes(t as LayerType)) {
      bad(`layer_types[${i}]`, `unknown layer type ${JSON.stringify(t)} (expected "mamba" or "sliding_attention")`);
    }
  });
  const layerTypes = types as LayerType[];
  if (!layerTypes.includes('sliding_attention')) return undefined;

  if (!isPositiveInt(c.sliding_window)) bad('sliding_window', `must be an integer >= 1 (got ${JSON.stringify(c.sliding_window)})`);
  if (!isPositiveInt(c.num_attention_heads)) {
    bad('num_attention_heads', `must be an integer >= 1 (got ${JSON.stringify(c.num_attention_heads)})`);
  }
  const H = c.num_attention_heads as number;
  const KV = c.num_key_value_heads ?? H;
  if (!isPositiveInt(KV)) bad('num_key_value_heads', `must be an integer >= 1 (got ${JSON.stringify(KV)})`);
  if (H % (KV as number) !== 0) bad('num_key_value_heads', `num_attention_heads (${H}) must be a multiple of num_key_value_heads (${KV})`);
  let headDim = c.head_dim;
  if (headDim === undefined || headDim === null) {
    if (c.hidden_size % H !== 0) bad('head_dim', `absent, and hidden_size (${c.hidden_size}) is not a multiple of num_attention_heads (${H})`);
    headDim = c.hidden_size / H;
  }
  if (!isPositiveInt(headDim)) bad('head_dim', `must be an integer >= 1 (got ${JSON.stringify(headDim)})`);
  const bias = c.attention_bias ?? false;
  if (typeof bias !== 'boolean') bad('attention_bias', `must be true or false (got ${JSON.stringify(bias)})`);
  const theta = c.rope_theta ?? null;
  if (theta !== null && !(typeof theta === 'number' && Number.isFinite(theta) && theta > 0)) {
    bad('rope_theta', `must be a positive number, or null for no positional encoding (got ${JSON.stringify(theta)})`);
  }
  if (theta !== null && (headDim as number) % 2 !== 0) bad('head_dim', `RoPE (rope_theta) needs an even head_dim (got ${headDim})`);
  return {
    layerTypes,
    window: c.sliding_window as number,
    numHeads: H,
    numKvHeads: KV as number,
    headDim: headDim as number,
    bias: bias as boolean,
    ropeTheta: theta as number | null,
  };
}

/** The type of every layer ("mamba" throughout for a pure model). */
export function layerTypes(c: MambaConfig): readonly LayerType[] {
  return c.hybrid?.layerTypes ?? Array.from({ length: c.numLayers }, () => 'mamba' as const);
}

/** Indices of the layers of one type, in order; a layer's slot in the state tensors is its rank here. */
export function layersOfType(c: MambaConfig, type: LayerType): number[] {
  return layerTypes(c).flatMap((t, i) => (t === type ? [i] : []));
}

/** Floats of one session's state: conv and ssm state of every Mamba layer, and the key and
 * value rings (W x KV x hd each) of every attention layer. Fixed by the config, never by the history. */
export function stateFloats(c: MambaConfig): { conv: number; ssm: number; attention: number } {
  const mamba = layersOfType(c, 'mamba').length;
  const h = c.hybrid;
  return {
    conv: mamba * c.intermediateSize * c.convKernel,
    ssm: mamba * c.intermediateSize * c.stateSize,
    attention: h ? 2 * layersOfType(c, 'sliding_attention').length * h.window * h.numKvHeads * h.headDim : 0,
  };
}

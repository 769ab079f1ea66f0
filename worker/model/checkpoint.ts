// A Mamba checkpoint directory as users download it: config.json plus model.safetensors,
// sharded safetensors (model.safetensors.index.json), or PyTorch's pytorch_model.bin (original
// state-spaces checkpoints), in HF or state-spaces tensor naming.
// Opening reads only headers and validates every tensor's presence, dtype and shape against
// the config; tensor data is read later, one tensor at a time.
import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { toFloat32, type FloatDType } from '../../shared/dtype.ts';
import { ModelError } from './errors.ts';
import { fileExists } from './model-files.ts';
import { layerTypes, parseMambaConfig, type MambaConfig } from './mamba-config.ts';
import { readSafetensorsHeader, readTensorBytes, type SafetensorsEntry } from './safetensors.ts';
import { readTorchCheckpoint } from './torch-checkpoint.ts';

export type TensorEntry = SafetensorsEntry;

/** Names of one layer's tensors, relative to `backbone.layers.{i}.` (HF naming). */
export const LAYER_TENSORS = [
  'norm.weight',
  'mixer.A_log',
  'mixer.D',
  'mixer.conv1d.weight',
  'mixer.conv1d.bias',
  'mixer.in_proj.weight',
  'mixer.in_proj.bias',
  'mixer.x_proj.weight',
  'mixer.dt_proj.weight',
  'mixer.dt_proj.bias',
  'mixer.out_proj.weight',
  'mixer.out_proj.bias',
] as const;
export type LayerTensorName = (typeof LAYER_TENSORS)[number];

/** Names of an attention layer's tensors (a hybrid's "sliding_attention" layers). */
export const ATTENTION_TENSORS = [
  'norm.weight',
  'mixer.q_proj.weight',
  'mixer.k_proj.weight',
  'mixer.v_proj.weight',
  'mixer.o_proj.weight',
  'mixer.q_proj.bias',
  'mixer.k_proj.bias',
  'mixer.v_proj.bias',
  'mixer.o_proj.bias',
] as const;
export type AttentionTensorName = (typeof ATTENTION_TENSORS)[number];

export const EMBEDDINGS = 'backbone.embeddings.weight';
export const NORM_F = 'backbone.norm_f.weight';
export const LM_HEAD = 'lm_head.weight';

export function layerTensorName(layer: number, name: LayerTensorName | AttentionTensorName): string {
  return `backbone.layers.${layer}.${name}`;
}

export interface Checkpoint {
  readonly dir: string;
  readonly config: MambaConfig;
  /** Rows of the embedding matrix: the vocabulary padded to pad_vocab_size_multiple. */
  readonly vocabRows: number;
  /** Which optional tensors exist (the tensors are trusted over the config's flags). */
  readonly has: { readonly inProjBias: boolean; readonly outProjBias: boolean; readonly convBias: boolean; readonly lmHead: boolean };
  /** The dtype the weights are stored in ('mixed' if they differ). */
  readonly dtype: FloatDType | 'mixed';
  readonly parameterCount: number;
  /** Canonical (HF) name → where its bytes are. lm_head is absent when tied. */
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** The tensor as fp32, converted from its stored dtype. */
  read(name: string): Promise<Float32Array>;
  /** sha256 over config, tensor layout and every tensor's bytes; identifies the model a state belongs to. */
  fingerprint(): Promise<string>;
}

/** Original state-spaces checkpoints name the embedding in the singular. */
function canonicalName(name: string): string {
  if (name === 'backbone.embedding.weight') return EMBEDDINGS;
  return name;
}

async function readJson(path: string, what: 'config_invalid' | 'safetensors_invalid'): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new ModelError('model_not_found', `${path}: cannot read (${(cause as Error).message})`, { cause });
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new ModelError(what, `${path}: not valid JSON (${(cause as Error).message})`, { cause });
  }
}

interface WeightFile {
  readonly path: string;
  readonly format: 'safetensors' | 'torch';
}

async function shardsOf(index: string, format: WeightFile['format']): Promise<WeightFile[]> {
  const raw = (await readJson(index, 'safetensors_invalid')) as { weight_map?: Record<string, string> };
  if (!raw || typeof raw.weight_map !== 'object' || raw.weight_map === null) {
    throw new ModelError('safetensors_invalid', `${index}: missing weight_map`);
  }
  const shards = [...new Set(Object.values(raw.weight_map))];
  for (const shard of shards) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
      throw new ModelError('safetensors_invalid', `${index}: bad shard name ${JSON.stringify(shard)}`);
    }
  }
  const dir = dirname(index);
  return shards.sort().map((s) => ({ path: join(dir, s), format }));
}

/** The weight files, safetensors preferred over PyTorch's pickle format when both exist. */
async function weightFiles(dir: string): Promise<WeightFile[]> {
  const index = join(dir, 'model.safetensors.index.json');
  if (await fileExists(index)) return shardsOf(index, 'safetensors');
  const single = join(dir, 'model.safetensors');
  if (await fileExists(single)) return [{ path: single, format: 'safetensors' }];
  // Original state-spaces checkpoints: torch.save's zip format, read by a restricted unpickler.
  const torchIndex = join(dir, 'pytorch_model.bin.index.json');
  if (await fileExists(torchIndex)) return shardsOf(torchIndex, 'torch');
  const torchSingle = join(dir, 'pytorch_model.bin');
  if (await fileExists(torchSingle)) return [{ path: torchSingle, format: 'torch' }];
  throw new ModelError('model_not_found', `${dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin`);
}

function expectedShapes(c: MambaConfig, vocabRows: number): Map<string, number[]> {
  const d = c.hiddenSize;
  const D = c.intermediateSize;
  const shapes = new Map<string, number[]>();
  shapes.set(EMBEDDINGS, [vocabRows, d]);
  shapes.set(NORM_F, [d]);
  shapes.set(LM_HEAD, [vocabRows, d]);
  const types = layerTypes(c);
  for (let i = 0; i < c.numLayers; i++) {
    if (types[i] === 'sliding_attention') {
      for (const [name, shape] of attentionShapes(c)) shapes.set(layerTensorName(i, name), shape);
      continue;
    }
    const per: Record<LayerTensorName, number[]> = {
      'norm.weight': [d],
      'mixer.A_log': [D, c.stateSize],
      'mixer.D': [D],
      'mixer.conv1d.weight': [D, 1, c.convKernel],
      'mixer.conv1d.bias': [D],
      'mixer.in_proj.weight': [2 * D, d],
      'mixer.in_proj.bias': [2 * D],
      'mixer.x_proj.weight': [c.timeStepRank + 2 * c.stateSize, D],
      'mixer.dt_proj.weight': [D, c.timeStepRank],
      'mixer.dt_proj.bias': [D],
      'mixer.out_proj.weight': [d, D],
      'mixer.out_proj.bias': [d],
    };
    for (const [name, shape] of Object.entries(per)) shapes.set(layerTensorName(i, name as LayerTensorName), shape);
  }
  return shapes;
}

/** An attention layer's tensors and shapes; the biases only when the config says attention_bias. */
function attentionShapes(c: MambaConfig): [AttentionTensorName, number[]][] {
  const h = c.hybrid!;
  const d = c.hiddenSize;
  const q = h.numHeads * h.headDim;
  const kv = h.numKvHeads * h.headDim;
  const shapes: [AttentionTensorName, number[]][] = [
    ['norm.weight', [d]],
    ['mixer.q_proj.weight', [q, d]],
    ['mixer.k_proj.weight', [kv, d]],
    ['mixer.v_proj.weight', [kv, d]],
    ['mixer.o_proj.weight', [d, q]],
  ];
  if (h.bias) {
    shapes.push(['mixer.q_proj.bias', [q]], ['mixer.k_proj.bias', [kv]], ['mixer.v_proj.bias', [kv]], ['mixer.o_proj.bias', [d]]);
  }
  return shapes;
}

/**
 * A hybrid's attention layers must hold exactly the tensors the config describes. A missing
 * one, or a bias the config does not declare, means config.json and the weights disagree:
 * computing anyway would give silently wrong logits, so it is `config_invalid` naming both.
 */
function checkAttentionTensors(dir: string, c: MambaConfig, tensors: ReadonlyMap<string, TensorEntry>): void {
  if (!c.hybrid) return;
  const types = layerTypes(c);
  for (let i = 0; i < c.numLayers; i++) {
    if (types[i] !== 'sliding_attention') continue;
    for (const [name] of attentionShapes(c)) {
      const full = layerTensorName(i, name);
      if (!tensors.has(full)) {
        throw new ModelError('config_invalid', `${dir}: layer_types[${i}] is "sliding_attention" but tensor "${full}" is missing`);
      }
    }
    if (!c.hybrid.bias) {
      for (const name of ['mixer.q_proj.bias', 'mixer.k_proj.bias', 'mixer.v_proj.bias', 'mixer.o_proj.bias'] as const) {
        const full = layerTensorName(i, name);
        if (tensors.has(full)) throw new ModelError('config_invalid', `${dir}: attention_bias is false but tensor "${full}" is present`);
      }
    }
    if (tensors.has(layerTensorName(i, 'mixer.A_log'))) {
      throw new ModelError('config_invalid', `${dir}: layer_types[${i}] is "sliding_attention" but the layer holds Mamba weights ("${layerTensorName(i, 'mixer.A_log')}")`);
    }
  }
}

const OPTIONAL = /(in_proj\.bias|out_proj\.bias|conv1d\.bias)$|^lm_head\.weight$/;

export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  if (!(await fileExists(dir))) throw new ModelError('model_not_found', `${dir}: model directory does not exist`);
  const configPath = join(dir, 'config.json');
  const config = parseMambaConfig(await readJson(configPath, 'config_invalid'), configPath);

  const tensors = new Map<string, TensorEntry>();
  for (const { path: file, format } of await weightFiles(dir)) {
    const entries = format === 'safetensors' ? (await readSafetensorsHeader(file)).entries : await readTorchCheckpoint(file);
    for (const entry of entries) {
      const name = canonicalName(entry.name);
      if (tensors.has(name)) throw new ModelError('safetensors_invalid', `${file}: tensor "${entry.name}" appears twice`);
      tensors.set(name, entry);
    }
  }

  const embeddings = tensors.get(EMBEDDINGS);
  if (!embeddings) {
    throw new ModelError('tensor_missing', `${dir}: tensor "${EMBEDDINGS}" (or "backbone.embedding.weight") is missing`);
  }
  const vocabRows = embeddings.shape[0] ?? 0;
  if (vocabRows < config.vocabSize) {
    throw new ModelError(
      'tensor_shape',
      `${embeddings.file}: "${embeddings.name}" has ${vocabRows} rows but config vocab_size is ${config.vocabSize}`,
    );
  }

  checkAttentionTensors(dir, config, tensors);
  const shapes = expectedShapes(config, vocabRows);
  for (const [name, shape] of shapes) {
    const entry = tensors.get(name);
    if (!entry) {
      if (OPTIONAL.test(name)) continue;
      throw new ModelError('tensor_missing', `${dir}: tensor "${name}" is missing (config has ${config.numLayers} layers)`);
    }
    if (entry.shape.length !== shape.length || entry.shape.some((v, k) => v !== shape[k])) {
      throw new ModelError(
        'tensor_shape',
        `${entry.file}: tensor "${entry.name}" has shape [${entry.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`,
      );
    }
  }
  const mambaLayers = layerTypes(config).flatMap((t, i) => (t === 'mamba' ? [i] : []));
  const first = mambaLayers[0] ?? 0;
  const has = {
    inProjBias: tensors.has(layerTensorName(first, 'mixer.in_proj.bias')),
    outProjBias: tensors.has(layerTensorName(first, 'mixer.out_proj.bias')),
    convBias: tensors.has(layerTensorName(first, 'mixer.conv1d.bias')),
    lmHead: tensors.has(LM_HEAD) && !config.tieWordEmbeddings,
  };
  // Optional tensors must be present in every Mamba layer or in none: a half-biased model is a broken file.
  for (const i of mambaLayers) {
    for (const [flag, name] of [
      [has.inProjBias, 'mixer.in_proj.bias'],
      [has.outProjBias, 'mixer.out_proj.bias'],
      [has.convBias, 'mixer.conv1d.bias'],
    ] as const) {
      if (tensors.has(layerTensorName(i, name)) !== flag) {
        throw new ModelError('tensor_missing', `${dir}: tensor "${layerTensorName(i, name)}" is ${flag ? 'missing' : 'unexpected'} (layer ${first} ${flag ? 'has' : 'lacks'} it)`);
      }
    }
  }
  if (!config.tieWordEmbeddings && !tensors.has(LM_HEAD)) {
    throw new ModelError('tensor_missing', `${dir}: tie_word_embeddings is false but "${LM_HEAD}" is missing`);
  }
  // Tensors the architecture does not use are dropped, except a tied lm_head (dropped too: the embedding serves).
  for (const name of [...tensors.keys()]) {
    if (!shapes.has(name) || (name === LM_HEAD && !has.lmHead)) tensors.delete(name);
  }

  const dtypes = new Set([...tensors.values()].map((t) => t.dtype));
  const dtype = dtypes.size === 1 ? [...dtypes][0]! : 'mixed';
  const parameterCount = [...tensors.values()].reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0);

  let fingerprintMemo: Promise<string> | undefined;
  return {
    dir,
    config,
    vocabRows,
    has,
    dtype,
    parameterCount,
    tensors,
    async read(name: string) {
      const entry = tensors.get(name);
      if (!entry) throw new ModelError('tensor_missing', `${dir}: tensor "${name}" is not in this checkpoint`);
      return toFloat32(await readTensorBytes(entry), entry.dtype);
    },
    fingerprint() {
      fingerprintMemo ??= computeFingerprint(config, tensors);
      return fingerprintMemo;
    },
  };
}

const HASH_CHUNK = 16 * 1024 * 1024;

async function computeFingerprint(config: MambaConfig, tensors: ReadonlyMap<string, TensorEntry>): Promise<string> {
  const hash = createHash('sha256');
  const names = [...tensors.keys()].sort();
  hash.update(JSON.stringify({ config: { ...config, source: undefined }, layout: names.map((n) => [n, tensors.get(n)!.dtype, tensors.get(n)!.shape]) }));
  const buf = Buffer.alloc(HASH_CHUNK);
  for (const name of names) {
    const entry = tensors.get(name)!;
    const fh = await open(entry.file, 'r');
    try {
      for (let done = 0; done < entry.byteLength; ) {
        const want = Math.min(HASH_CHUNK, entry.byteLength - done);
        const { bytesRead } = await fh.read(buf, 0, want, entry.offset + done);
        if (bytesRead === 0) throw new ModelError('safetensors_invalid', `${entry.file}: tensor "${entry.name}" is truncated`);
        hash.update(buf.subarray(0, bytesRead));
        done += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }
  return hash.digest('hex');
}

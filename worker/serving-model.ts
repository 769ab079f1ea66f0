// The model a worker serves: engine, tokenizer and chat template loaded from MODEL_DIR (a
// local directory or s3:// prefix), under the id clients name it by.
import { basename } from 'node:path';
import type { WorkerConfig } from '../shared/config.ts';
import type { Logger } from '../shared/logger.ts';
import type { RegisteredModel } from '../shared/model-registry.ts';
import { createEngine } from './engine/create-engine.ts';
import type { Engine } from './engine/engine.ts';
import { loadChatTemplate, type ChatTemplate } from './model/chat-template.ts';
import { hubOptionsOf } from './model/hub-options.ts';
import { parseHubId } from './model/hub-source.ts';
import { resolveModelDir } from './model/model-source.ts';
import { loadTokenizer, type Tokenizer } from './model/tokenizer.ts';

export interface ServingModel {
  readonly id: string;
  readonly dir: string;
  readonly engine: Engine;
  readonly tokenizer: Tokenizer;
  readonly template: ChatTemplate;
  /** What the worker registers for the edge (fingerprint and layout check state imports). */
  readonly registration: Omit<RegisteredModel, 'created'>;
}

/** `models/demo` → `demo`; `s3://bucket/models/mamba-130m/` → `mamba-130m`. */
export function defaultModelId(modelDir: string): string {
  // A Hub id's revision is not part of the name clients use: state-spaces/mamba-130m-hf@v1 → mamba-130m-hf.
  const hub = parseHubId(modelDir);
  const last = (hub ? hub.repo.slice(hub.repo.indexOf('/') + 1) : basename(modelDir.replace(/\/+$/, ''))) || 'model';
  return last.replace(/[^A-Za-z0-9._:/-]/g, '_').slice(0, 128);
}

export async function loadServingModel(
  config: Pick<
    WorkerConfig,
    | 'MODEL_DIR'
    | 'MODEL_ID'
    | 'MODEL_CACHE_DIR'
    | 'ENGINE'
    | 'ORT_EXECUTION_PROVIDER'
    | 'ORT_INTRA_OP_THREADS'
    | 'ORT_INTRA_OP_SPINNING'
    | 'ORT_INTRA_OP_SPIN_US'
    | 'WEIGHTS_DTYPE'
    | 'ORT_PREPACK_WEIGHTS'
    | 'ORT_PACKED_WEIGHTS_FILE'
    | 'ORT_NATIVE_KERNELS'
    | 'S3_ENDPOINT'
    | 'S3_REGION'
    | 'S3_FORCE_PATH_STYLE'
    | 'HF_ENDPOINT'
    | 'HF_TOKEN'
    | 'HF_HUB_OFFLINE'
    | 'HF_HUB_CACHE'
    | 'HF_HOME'
  >,
  /** Where the engine reports load-time work and degradations (the worker's logger). */
  log?: Pick<Logger, 'info' | 'warn'>,
): Promise<ServingModel> {
  const dir = await resolveModelDir(config.MODEL_DIR, config.MODEL_CACHE_DIR, {
    endpoint: config.S3_ENDPOINT,
    region: config.S3_REGION,
    forcePathStyle: config.S3_FORCE_PATH_STYLE,
  }, hubOptionsOf(config));
  const { engine, checkpoint } = await createEngine({
    modelDir: dir,
    engine: config.ENGINE,
    cacheDir: config.MODEL_CACHE_DIR,
    ortExecutionProvider: config.ORT_EXECUTION_PROVIDER,
    intraOpThreads: config.ORT_INTRA_OP_THREADS,
    intraOpSpinning: config.ORT_INTRA_OP_SPINNING,
    intraOpSpinMicros: config.ORT_INTRA_OP_SPIN_US,
    weightsDtype: config.WEIGHTS_DTYPE,
    prepackWeights: config.ORT_PREPACK_WEIGHTS,
    packedWeightsFile: config.ORT_PACKED_WEIGHTS_FILE,
    nativeKernels: config.ORT_NATIVE_KERNELS,
    ...(log ? { log } : {}),
  });
  const tokenizer = await loadTokenizer(dir, checkpoint.vocabRows);
  const template = await loadChatTemplate(dir, tokenizer);
  const id = config.MODEL_ID ?? defaultModelId(config.MODEL_DIR);
  return {
    id,
    dir,
    engine,
    tokenizer,
    template,
    registration: {
      id,
      fingerprint: engine.model.fingerprint,
      layout: engine.model.layout,
      state_bytes: engine.model.stateBytes,
      vocab_rows: engine.model.vocabRows,
      engine: engine.kind,
    },
  };
}

// Environment configuration of every process (edge, worker, local stack), validated with
// zod at start. README's configuration table documents exactly these variables; a bad
// value stops the process with an error that names the variable.
import { z } from 'zod';
import { DEFAULT_STORE_TIMEOUT_MS } from './state-store.ts';

export class ConfigError extends Error {
  readonly code = 'config_invalid';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** ORT_INTRA_OP_SPIN_US's default, also the ORT engine's when it is built without a config. */
export const DEFAULT_ORT_INTRA_OP_SPIN_US = 100;

const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

const bool = z
  .string()
  .trim()
  .toLowerCase()
  .pipe(z.enum(['1', '0', 'true', 'false', 'yes', 'no']))
  .transform((v) => v === '1' || v === 'true' || v === 'yes');

/** `file:PATH` or `s3://bucket/prefix`. */
export const StateStoreUrl = z
  .string()
  .trim()
  .transform((value, ctx) => {
    if (value.startsWith('file:')) {
      const path = value.slice('file:'.length);
      if (path.length === 0) {
        ctx.addIssue({ code: 'custom', message: 'file: needs a path, e.g. file:./data' });
        return z.NEVER;
      }
      return { kind: 'file' as const, path };
    }
    const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(value);
    if (m) {
      const prefix = (m[2] ?? '').replace(/\/+$/, '');
      return { kind: 's3' as const, bucket: m[1]!, prefix };
    }
    ctx.addIssue({ code: 'custom', message: 'must be file:PATH or s3://bucket[/prefix]' });
    return z.NEVER;
  });
export type StateStoreLocation = z.output<typeof StateStoreUrl>;

/** `key:tenant,key:tenant` — keys are opaque bearer tokens, tenants name the owner of sessions. */
export const ApiKeyList = z
  .string()
  .trim()
  .transform((value, ctx) => {
    const keys = new Map<string, string>();
    for (const entry of value.split(',').map((e) => e.trim()).filter(Boolean)) {
      const at = entry.lastIndexOf(':');
      const key = entry.slice(0, at);
      const tenant = entry.slice(at + 1);
      if (at <= 0 || !/^[A-Za-z0-9_-]{1,64}$/.test(tenant) || key.length < 8) {
        ctx.addIssue({
          code: 'custom',
          message: `entry "${entry.slice(0, 6)}…" must be key:tenant (key at least 8 characters, tenant [A-Za-z0-9_-]{1,64})`,
        });
        return z.NEVER;
      }
      keys.set(key, tenant);
    }
    return keys;
  });

const common = {
  REDIS_URL: z.string().trim().url().refine((u) => /^rediss?:\/\//.test(u), 'must start with redis:// or rediss://'),
  /** Kept apart from REDIS_URL so the secret can come from a secret store (ElastiCache AUTH token). */
  REDIS_PASSWORD: z.string().optional(),
  /** Prefix of every Redis key (BullMQ queues, leases, streams, heads). */
  REDIS_PREFIX: z.string().trim().regex(/^[A-Za-z0-9_-]{1,32}$/).default('ms'),
  STATE_STORE: StateStoreUrl.prefault('file:./data'),
  S3_ENDPOINT: z.string().trim().url().optional(),
  S3_FORCE_PATH_STYLE: bool.default(false),
  S3_REGION: z.string().trim().optional(),
  /**
   * Deadline of one request to the state store (uploads get a second more per 8 MiB): a store
   * that hangs answers 503 unavailable after this instead of holding every request as long.
   */
  STORE_TIMEOUT_MS: int(100, 600_000).default(DEFAULT_STORE_TIMEOUT_MS),
  MAX_QUEUE_DEPTH: int(1).default(256),
  TURN_TIMEOUT_MS: int(1000, 3_600_000).default(120_000),
  /** Output tokens a single turn may ask for. */
  MAX_TOKENS_PER_TURN: int(1, 1_000_000).default(4096),
  /** Input tokens a single turn may feed (the model's state does not grow; this bounds turn time). */
  MAX_INPUT_TOKENS_PER_TURN: int(1, 10_000_000).default(65_536),
  LOG_LEVEL: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  /** Session lease (one writer per session): expires this long after its holder stops renewing it. */
  LEASE_TTL_MS: int(1000, 600_000).default(30_000),
  /** A worker whose heartbeat is older than this counts as gone (readiness, 503 no_worker). */
  WORKER_STALE_MS: int(1000, 600_000).default(15_000),
  /** Attempts of a turn that fails transiently (store or Redis fault, worker crash), with backoff. */
  TURN_ATTEMPTS: int(1, 20).default(3),
  /** First retry delay; doubles each attempt. */
  TURN_BACKOFF_MS: int(0, 600_000).default(1000),
  /** How long a finished turn's result is kept: an Idempotency-Key replays it within this window. */
  TURN_RETENTION_S: int(60, 30 * 86_400).default(86_400),
  /**
   * Newest versions a session's manifest lists besides version 0; older entries move to
   * immutable manifest pages, so the manifest every turn rewrites stays the same size however
   * long the session. Chat prefix matching (and `fork`) looks only at these and version 0.
   */
  MANIFEST_RECENT_VERSIONS: int(16, 100_000).default(64),
  /** Tokens a cartridge's input may be (the worker refuses more: 400 input_too_long on the cartridge). */
  MAX_CARTRIDGE_TOKENS: int(1, 100_000_000).default(1_048_576),
  /** A cartridge build's deadline from when it is accepted, queue wait included (then it fails with turn_timeout). */
  CARTRIDGE_TIMEOUT_MS: int(10_000, 24 * 3_600_000).default(3_600_000),
};

export const EdgeConfigSchema = z.object({
  ...common,
  PORT: int(0, 65535).default(8787),
  HOST: z.string().trim().optional(),
  API_KEYS: ApiKeyList.optional(),
  /** Secrets Manager secret id holding API_KEYS' format (used by the Lambda edge). */
  API_KEYS_SECRET_ID: z.string().trim().optional(),
  MAX_REQUEST_BYTES: int(1024, 1 << 30).default(8 * 1024 * 1024),
  /** Largest `.mstate` PUT /v1/sessions/{id}/state accepts (states are fixed-size per model). */
  MAX_STATE_UPLOAD_BYTES: int(1024, 2 ** 31).default(256 * 1024 * 1024),
  /** Model of sessions created without one; when unset, the only model any worker has registered. */
  DEFAULT_MODEL: z.string().trim().regex(/^[A-Za-z0-9._:/-]{1,128}$/).optional(),
  /** Retry-After (seconds) sent with 429 queue_full and 503 no_worker. */
  RETRY_AFTER_S: int(1, 3600).default(2),
  /**
   * Queue DEFAULT_MODEL's turns while no worker is alive, instead of answering 503 no_worker:
   * a deployment that scales workers from zero starts one when turns wait (the queue metric),
   * so a turn must be queued to be served. Off locally, where nothing would start a worker.
   */
  QUEUE_WITHOUT_WORKERS: bool.default(false),
  /**
   * A streamed turn that has sent nothing for this long sends an SSE comment (`: keep-alive`),
   * so proxies do not close it as idle while it waits (a cold worker can take minutes). 0 = off.
   */
  SSE_KEEPALIVE_MS: int(0, 300_000).default(15_000),
  /** Serve the playground page at `/` (a client of this API in the browser). On locally; the AWS stack sets it from its `playground` context key. */
  PLAYGROUND: bool.default(true),
})
  // The edge queues for a model it has never seen a worker of, so it must be told which.
  .refine((c) => !c.QUEUE_WITHOUT_WORKERS || c.DEFAULT_MODEL !== undefined, {
    path: ['QUEUE_WITHOUT_WORKERS'],
    message: 'needs DEFAULT_MODEL: the model whose turns wait for a worker to start',
  });
export type EdgeConfig = z.output<typeof EdgeConfigSchema>;

export const WorkerConfigSchema = z.object({
  ...common,
  /** Local directory or s3://bucket/prefix of a Hugging Face Mamba checkpoint. */
  MODEL_DIR: z.string().trim().default('models/demo'),
  /** Name clients use in the `model` field; defaults to the model directory's last component. */
  MODEL_ID: z.string().trim().regex(/^[A-Za-z0-9._:/-]{1,128}$/).optional(),
  /** Where s3:// models are downloaded and ONNX graphs are built. */
  MODEL_CACHE_DIR: z.string().trim().default('.cache/mamba-serve'),
  /** Hugging Face Hub (MODEL_DIR=org/name[@revision]): as for Python's huggingface_hub. */
  HF_ENDPOINT: z.string().trim().url().default('https://huggingface.co'),
  HF_TOKEN: z.string().trim().min(1).optional(),
  HF_HUB_OFFLINE: bool.default(false),
  /** The Hub cache; default $HF_HOME/hub, else ~/.cache/huggingface/hub. */
  HF_HUB_CACHE: z.string().trim().min(1).optional(),
  HF_HOME: z.string().trim().min(1).optional(),
  /** `reference` is the slow plain-JS engine: for tests with tiny models, never for serving. */
  ENGINE: z.enum(['auto', 'ort', 'cuda', 'reference']).default('auto'),
  ORT_EXECUTION_PROVIDER: z.enum(['cpu', 'cuda']).default('cpu'),
  ORT_INTRA_OP_THREADS: int(0, 1024).default(0),
  /**
   * ONNX Runtime's own spin: its intra-op threads spin between ops and a long while after a run
   * (overrides ORT_INTRA_OP_SPIN_US). Off by default: on a small worker the spin left after a
   * run takes cores from the event loop and from neighbours (bench/ort-spinning.ts).
   */
  ORT_INTRA_OP_SPINNING: bool.default(false),
  /**
   * With ORT_INTRA_OP_SPINNING off: microseconds an idle intra-op thread spins waiting for the
   * next op of a run before it sleeps (0: it sleeps at once). A short spin keeps the hand-off
   * between a run's ops fast without the long spin ORT leaves behind after a run. 100 by
   * default (the ORT engine's own default too): end to end it served as much as no spin or more,
   * also beside a busy neighbour, where ORT's own spin lost (bench/ort-spinning.ts).
   */
  ORT_INTRA_OP_SPIN_US: int(0, 1_000_000).default(DEFAULT_ORT_INTRA_OP_SPIN_US),
  /**
   * Weights of the ORT engine's graph build: f32 (exact; the default), or int8 / int4 block-
   * quantized projections and LM head (ONNX Runtime's MatMulNBits; SSM parameters, norms, conv
   * and states stay fp32). Quantized weights exist on the ORT engine only.
   */
  WEIGHTS_DTYPE: z.enum(['f32', 'int8', 'int4']).default('f32'),
  /**
   * Whether ONNX Runtime packs the f32 projection weights into its GEMM layout (its default;
   * fastest decode), mapped from a file made once (ORT_PACKED_WEIGHTS_FILE) or packed in memory
   * at load. false: the MatMuls read the mapped weights file as it is, unpacked, at a measured
   * cost in decode speed (docs/cpu-engine.md, "Memory"). f32 only: the quantized kernels compute from their
   * packed layout. ONNX Runtime's graph only: the native kernels (ORT_NATIVE_KERNELS) read the build as it is.
   */
  ORT_PREPACK_WEIGHTS: bool.default(true),
  /**
   * f32 weights with ORT_PREPACK_WEIGHTS: map the packed weights from a file ONNX Runtime writes
   * once beside the graph build (per ORT version and CPU), instead of packing at every start:
   * no load peak of two copies, and the packed copy is page cache every worker on the host
   * shares (worker/engine/ort/packed-weights.ts). The file costs disk (f32 mamba-130m: 1.2 GB
   * beside the 517 MB build). Where ORT cannot make or read it, the worker packs at load and
   * logs a warning. Quantized builds always pack at load. ONNX Runtime's graph only: with the
   * native kernels running (ORT_NATIVE_KERNELS) no such file is made.
   */
  ORT_PACKED_WEIGHTS_FILE: bool.default(true),
  /**
   * Pure Mamba models, any WEIGHTS_DTYPE: prefill and decode on our own AVX-512 or AVX2
   * kernels (worker/engine/ort/native-kernels.ts, built by `npm run build:cpu`) instead of the ONNX
   * graph, with no ONNX Runtime session in the worker. auto: where the addon is built and the CPU
   * (x86-64 with AVX-512 VNNI or AVX2) and model allow it, else ONNX Runtime, saying why in the
   * log; on: the worker refuses to start where it cannot; off: never.
   */
  ORT_NATIVE_KERNELS: z.enum(['auto', 'on', 'off']).default('auto'),
  WORKER_CONCURRENCY: int(1, 1024).default(8),
  /** Bytes of hot session states kept in the worker's LRU cache. */
  STATE_CACHE_BYTES: int(0).default(1 << 30),
  /** Milliseconds a worker gives in-flight turns on SIGTERM before releasing them back to the queue. */
  SHUTDOWN_GRACE_MS: int(0, 3_600_000).default(30_000),
  /** BullMQ job lock: a worker that stops renewing it (crash, blocked event loop) has its turn retried after this. */
  QUEUE_LOCK_MS: int(1000, 600_000).default(30_000),
  /** Prefill is fed in chunks of this many tokens, with a batched decode step between chunks. */
  PREFILL_CHUNK_TOKENS: int(1, 1 << 20).default(256),
  /**
   * Bytes of stored prefix states (stateless chats' reusable history, shared/prefix-cache.ts)
   * each tenant may keep before the least recently used are evicted. 0 = no prefix cache.
   */
  PREFIX_CACHE_TENANT_BYTES: int(0).default(1 << 30),
  /** A stateless chat's state is stored for reuse only once it has absorbed this many tokens (shorter ones are cheaper to recompute). */
  PREFIX_CACHE_MIN_TOKENS: int(1).default(256),
  /** Names this worker in leases and the worker registry; must differ between live workers. Default: {hostname}-{pid}-{random}. */
  WORKER_ID: z.string().trim().regex(/^[A-Za-z0-9._-]{1,64}$/).optional(),
  /**
   * Tests only (the fault suite): `point=probability,…`, the worker kills itself with SIGKILL
   * at these named points of a turn (worker/fault-points.ts), e.g. `after-commit=0.1`.
   */
  FAULT_CRASH_POINTS: z
    .string()
    .trim()
    .regex(/^[a-z-]+=(0(\.\d+)?|1(\.0+)?)(,[a-z-]+=(0(\.\d+)?|1(\.0+)?))*$/, 'must be point=probability,… (probabilities from 0 to 1)')
    .optional(),
})
  // 'auto' picks ORT for quantized weights; naming another engine with them is a mistake to report at start.
  .refine((c) => c.WEIGHTS_DTYPE === 'f32' || c.ENGINE === 'auto' || c.ENGINE === 'ort', {
    path: ['WEIGHTS_DTYPE'],
    message: 'int8 and int4 weights run on the ort engine only (ENGINE=auto or ort)',
  })
  .refine((c) => c.ORT_PREPACK_WEIGHTS || c.WEIGHTS_DTYPE === 'f32', {
    path: ['ORT_PREPACK_WEIGHTS'],
    message: 'false is for f32 weights only: int8 and int4 matmuls compute from their packed layout (unpacked, decode ran 20x slower)',
  });
export type WorkerConfig = z.output<typeof WorkerConfigSchema>;

/** Parse `env` with `schema`; unknown variables are ignored, bad ones are one clear error. */
export function parseEnv<S extends z.ZodType>(schema: S, env: Record<string, string | undefined>): z.output<S> {
  // Empty strings count as unset, as in most shells' `VAR= cmd`.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const result = schema.safeParse(present);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    const name = issue.path.join('.') || '(environment)';
    const value = present[name as keyof typeof present];
    const shown = value === undefined || /KEY|PASSWORD|SECRET|TOKEN/.test(name) ? '' : ` (got "${String(value).slice(0, 80)}")`;
    return `  ${name}: ${issue.message}${shown}`;
  });
  throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
}

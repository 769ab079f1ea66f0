// Deployment configuration, read from CDK context (`cdk.json` or `npx cdk deploy -c key=value`)
// and validated with zod. Every key has a default that deploys, so `npx cdk deploy` with no
// context works; `-c` values arrive as strings, so numbers and booleans accept both forms.
// docs/deploy.md lists these keys; keep the two in step.
import { z } from 'zod';
import { SUPPORTED_GPU_FAMILIES, gpuInstanceShape, type GpuInstanceShape } from './gpu-instances.ts';

export class StackConfigError extends Error {
  readonly code = 'stack_config_invalid';
  constructor(message: string) {
    super(message);
    this.name = 'StackConfigError';
  }
}

const int = (min: number, max: number) =>
  z
    .union([z.number(), z.string().trim().regex(/^\d+$/, 'must be a whole number').transform(Number)])
    .pipe(z.number().int().min(min).max(max));

const bool = z.union([z.boolean(), z.enum(['true', 'false']).transform((v) => v === 'true')]);

/** CloudWatch Logs accepts only these retention periods. */
const LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653] as const;

/**
 * Step scaling (cdk/lib/queue-scaling.ts) has one step per worker count and Application Auto
 * Scaling allows at most 20 step adjustments per policy, hence the ceiling on maxWorkers.
 */
export const MAX_WORKERS_LIMIT = 20;

export const StackConfigSchema = z
  .object({
    /** AWS region to deploy to; the account comes from the CLI's credentials at deploy time. */
    region: z.string().trim().regex(/^[a-z]{2}(-gov)?-[a-z]+-\d$/, 'must be an AWS region such as us-east-1').default('us-east-1'),
    stackName: z.string().trim().regex(/^[A-Za-z][A-Za-z0-9-]{0,127}$/).default('MambaServe'),

    // --- model and workers ---
    /** The name clients put in `model`; also names the BullMQ turn queue and the metric dimension. */
    modelId: z.string().trim().regex(/^[A-Za-z0-9._:/-]{1,128}$/).default('demo'),
    /**
     * `s3://bucket/prefix` of a Hugging Face Mamba checkpoint. Default: `models/{modelId}` in the
     * stack's own bucket (upload there after the first deploy; see docs/deploy.md).
     */
    modelUri: z
      .string()
      .trim()
      .regex(/^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/.*)?$/, 'must be s3://bucket[/prefix]')
      .optional(),
    instanceType: z
      .string()
      .trim()
      .refine((t) => gpuInstanceShape(t) !== undefined, {
        message: `must be a known GPU size of ${SUPPORTED_GPU_FAMILIES.join(', ')} (e.g. g5.xlarge, g6.2xlarge)`,
      })
      .default('g5.xlarge'),
    minWorkers: int(0, MAX_WORKERS_LIMIT).default(0),
    maxWorkers: int(1, MAX_WORKERS_LIMIT).default(2),
    /** Turns one worker runs at once (its WORKER_CONCURRENCY); the queue metric divides by it. */
    turnsPerWorker: int(1, 1024).default(8),
    /** Minutes the queue must stay empty before the last worker is stopped (scale to zero). */
    scaleToZeroAfterMinutes: int(1, 1440).default(15),
    engine: z.enum(['auto', 'ort', 'cuda']).default('auto'),
    /** Root volume of a GPU instance: the CUDA image and the downloaded weights live here. */
    workerVolumeGiB: int(30, 16384).default(100),

    // --- Redis (BullMQ) ---
    redisEngine: z.enum(['valkey', 'redis']).default('valkey'),
    redisNodeType: z.string().trim().regex(/^cache\.[a-z0-9]+\.[a-z0-9]+$/).default('cache.t4g.small'),
    /** Read replicas in other AZs; 1 or more turns on Multi-AZ automatic failover. */
    redisReplicas: int(0, 5).default(1),
    redisPrefix: z.string().trim().regex(/^[A-Za-z0-9_-]{1,32}$/).default('ms'),

    // --- state bucket ---
    bucketEncryption: z.enum(['s3', 'kms']).default('s3'),
    /** Days a superseded session version (tagged when the head moves past it) is kept before it expires. */
    supersededVersionRetentionDays: int(1, 36500).default(30),
    /** Deny writes of `.mstate` objects that are not conditional (If-None-Match), see state-bucket.ts. */
    requireConditionalWrites: bool.default(false),
    /**
     * Days a prefix-cache state (stateless chats' reusable history) lives at most, counted from
     * when it was written; within that, each tenant's budget evicts the least recently used.
     */
    prefixCacheRetentionDays: int(1, 36500).default(7),
    /** PREFIX_CACHE_TENANT_BYTES of the workers, in MiB: stored prefix states per tenant (0 = no prefix cache). */
    prefixCacheTenantMiB: int(0, 1 << 24).default(1024),

    // --- network ---
    /** `nat`: one NAT gateway + S3 gateway endpoint. `endpoints`: no internet path at all (see network.ts). */
    egress: z.enum(['nat', 'endpoints']).default('nat'),
    maxAzs: int(2, 3).default(2),

    // --- edge ---
    edgeMemoryMiB: int(256, 10240).default(1024),
    /**
     * A turn's deadline, queue wait included. With workers at zero the first turn waits for a GPU
     * instance to start (5-10 minutes), inside the edge Lambda, whose timeout is this + 30 s and
     * at most 15 minutes: hence 840 s. docs/deploy.md weighs what a long deadline costs.
     */
    turnTimeoutSeconds: int(5, 840).default(840),
    /**
     * How long a finished turn's result is kept in Redis (TURN_RETENTION_S): the Idempotency-Key
     * window. Shorter than the local default of a day: results count against the Redis node's
     * memory, which runs with noeviction (full = no new turns).
     */
    turnRetentionSeconds: int(60, 30 * 86_400).default(3600),
    maxQueueDepth: int(1, 1_000_000).default(256),
    maxTokensPerTurn: int(1, 1_000_000).default(4096),
    maxInputTokensPerTurn: int(1, 10_000_000).default(65_536),
    logLevel: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
    /** Serve the playground page at the endpoint's `/` (PLAYGROUND); off in a deployment unless asked for. */
    playground: bool.default(false),

    // --- operations ---
    logRetentionDays: int(1, 3653)
      .refine((d) => (LOG_RETENTION_DAYS as readonly number[]).includes(d), `must be one of ${LOG_RETENTION_DAYS.join(', ')}`)
      .default(30),
    alarmEmail: z.string().trim().email().optional(),
    /** Alarm when the oldest waiting turn is older than this (a cold GPU start takes minutes). */
    queueAgeAlarmSeconds: int(60, 86_400).default(900),
  })
  .superRefine((c, ctx) => {
    if (c.minWorkers > c.maxWorkers) {
      ctx.addIssue({ code: 'custom', path: ['minWorkers'], message: `must not exceed maxWorkers (${c.maxWorkers})` });
    }
  });

export type StackConfigInput = z.input<typeof StackConfigSchema>;
export type StackConfig = z.output<typeof StackConfigSchema> & { readonly gpu: GpuInstanceShape };

export const STACK_CONFIG_KEYS = Object.keys(StackConfigSchema.shape) as (keyof StackConfigInput)[];

/**
 * Validate raw context values (unset keys are `undefined`); one error names every bad key
 * (the min/max cross-check runs once each key is valid on its own).
 */
export function parseStackConfig(raw: Record<string, unknown>): StackConfig {
  const present = Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined && v !== ''));
  const result = StackConfigSchema.safeParse(present);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `  ${i.path.join('.') || '(context)'}: ${i.message}`);
    throw new StackConfigError(`invalid CDK context:\n${lines.join('\n')}`);
  }
  // instanceType's refinement has checked the shape exists.
  return { ...result.data, gpu: gpuInstanceShape(result.data.instanceType)! };
}

/** Read every config key from a construct's context (CDK context is flat: `-c key=value`). */
export function readStackConfig(tryGetContext: (key: string) => unknown): StackConfig {
  return parseStackConfig(Object.fromEntries(STACK_CONFIG_KEYS.map((k) => [k, tryGetContext(k)])));
}

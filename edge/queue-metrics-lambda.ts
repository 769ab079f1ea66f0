// Lambda entry of the queue-metrics publisher: an EventBridge rule invokes it every minute
// (cdk/lib/queue-metrics-publisher.ts). It owns the environment and the AWS/Redis clients;
// the logic lives in ./queue-metrics.ts. Clients are created once per Lambda instance and
// reused by later invocations, so a warm publisher costs one Redis round trip per model.
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { z } from 'zod';
import { parseEnv } from '../shared/config.ts';
import { METRICS_NAMESPACE } from '../shared/queue-metric-names.ts';
import { RedisKeys } from '../shared/redis-keys.ts';
import { publishQueueMetrics, type MetricsSender, type PublishedQueueMetrics } from './queue-metrics.ts';

export const QueueMetricsEnvSchema = z
  .object({
    REDIS_URL: z.string().trim().url().refine((u) => /^rediss?:\/\//.test(u), 'must start with redis:// or rediss://'),
    /** For local runs; in AWS the password comes from REDIS_PASSWORD_SECRET_ARN. */
    REDIS_PASSWORD: z.string().optional(),
    /**
     * Secrets Manager secret holding the ElastiCache AUTH token. Read at cold start rather than
     * put in the function's environment, so the token is not visible in its configuration.
     */
    REDIS_PASSWORD_SECRET_ARN: z.string().trim().startsWith('arn:').optional(),
    REDIS_PREFIX: z.string().trim().regex(/^[A-Za-z0-9_-]{1,32}$/).default('ms'),
    /** Comma-separated model ids whose turn queues are measured. */
    MODEL_IDS: z
      .string()
      .transform((v) => v.split(',').map((m) => m.trim()).filter(Boolean))
      .pipe(z.array(z.string().regex(/^[A-Za-z0-9._:/-]{1,128}$/)).min(1, 'needs at least one model id')),
    METRICS_NAMESPACE: z.string().trim().min(1).max(255).default(METRICS_NAMESPACE),
    DEPLOYMENT: z.string().trim().min(1).max(255),
    TURNS_PER_WORKER: z.string().trim().regex(/^\d+$/).transform(Number).pipe(z.number().int().min(1)).default(8),
  })
  .refine((e) => !(e.REDIS_PASSWORD && e.REDIS_PASSWORD_SECRET_ARN), {
    message: 'set REDIS_PASSWORD or REDIS_PASSWORD_SECRET_ARN, not both',
    path: ['REDIS_PASSWORD_SECRET_ARN'],
  });
export type QueueMetricsEnv = z.output<typeof QueueMetricsEnvSchema>;

/** Some models' metrics could not be read or published; the others were. */
export class QueueMetricsPublishError extends Error {
  readonly code = 'queue_metrics_failed';
  constructor(
    readonly failures: ReadonlyArray<{ modelId: string; error: unknown }>,
    readonly published: readonly PublishedQueueMetrics[],
  ) {
    super(`queue metrics failed for ${failures.map((f) => `${f.modelId} (${errorMessage(f.error)})`).join(', ')}`);
    this.name = 'QueueMetricsPublishError';
  }
}

/** Redis refused the connection or the AUTH token. */
export class QueueMetricsConnectError extends Error {
  readonly code = 'queue_metrics_redis_unreachable';
  constructor(cause: Error) {
    super(`cannot connect to Redis: ${cause.message}`, { cause });
    this.name = 'QueueMetricsConnectError';
  }
}

/** Redis did not answer in time (the publisher runs every minute: a late run is a failed run). */
export class QueueMetricsTimeoutError extends Error {
  readonly code = 'queue_metrics_timeout';
  constructor(what: string, ms: number) {
    super(`${what} took longer than ${ms} ms`);
    this.name = 'QueueMetricsTimeoutError';
  }
}

/**
 * Well inside the function's timeout (cdk/lib/queue-metrics-publisher.ts) and the one-minute
 * schedule, so a hung Redis connection fails this run with a clear error instead of a Lambda timeout.
 */
export const DEFAULT_DEADLINE_MS = 20_000;

export interface QueueMetricsDeps {
  readonly cloudwatch: MetricsSender;
  readonly readSecret: (secretArn: string) => Promise<string>;
  readonly now?: () => number;
  /** Deadline for connecting and for each run; default DEFAULT_DEADLINE_MS. */
  readonly deadlineMs?: number;
}

export interface QueueMetricsJob {
  run(): Promise<PublishedQueueMetrics[]>;
  close(): Promise<void>;
}

export async function createQueueMetricsJob(
  rawEnv: Record<string, string | undefined>,
  deps: QueueMetricsDeps,
): Promise<QueueMetricsJob> {
  const env = parseEnv(QueueMetricsEnvSchema, rawEnv);
  const password = env.REDIS_PASSWORD_SECRET_ARN ? await deps.readSecret(env.REDIS_PASSWORD_SECRET_ARN) : env.REDIS_PASSWORD;
  // rediss:// turns on TLS (ElastiCache in-transit encryption). Short timeouts: a stuck
  // connection must fail this minute's run, not hang until the Lambda timeout.
  const deadlineMs = deps.deadlineMs ?? DEFAULT_DEADLINE_MS;
  const connection = new Redis(env.REDIS_URL, {
    ...(password === undefined ? {} : { password }),
    lazyConnect: true,
    connectTimeout: 5_000,
    commandTimeout: 5_000,
    maxRetriesPerRequest: 1,
  });
  // Connect before handing the connection to BullMQ: BullMQ waits for "ready" without limit,
  // and ioredis retries a rejected AUTH token forever, so a wrong token would hang every run.
  // ioredis reports the reason (WRONGPASS, ECONNREFUSED) as an "error" event and then rejects
  // connect() with a bare "Connection is closed"; keep the reason for the error we throw.
  let lastConnectionError: Error | undefined;
  connection.on('error', (error: Error) => {
    lastConnectionError = error;
  });
  try {
    await withDeadline(connection.connect(), deadlineMs, 'connecting to Redis');
  } catch (error) {
    connection.disconnect();
    if (error instanceof QueueMetricsTimeoutError || lastConnectionError === undefined) throw error;
    throw new QueueMetricsConnectError(lastConnectionError);
  }
  const keys = new RedisKeys(env.REDIS_PREFIX);
  const queues = env.MODEL_IDS.map((modelId) => ({
    modelId,
    queue: new Queue(keys.turnQueue(modelId), { connection, prefix: keys.bullPrefix }),
  }));

  return {
    async run() {
      return withDeadline(runOnce(), deadlineMs, 'publishing queue metrics');
    },
    async close() {
      await Promise.all(queues.map(({ queue }) => queue.close()));
      connection.disconnect();
    },
  };

  async function runOnce(): Promise<PublishedQueueMetrics[]> {
    const results = await Promise.allSettled(
      queues.map(({ modelId, queue }) =>
        publishQueueMetrics(
          queue,
          deps.cloudwatch,
          { namespace: env.METRICS_NAMESPACE, deployment: env.DEPLOYMENT, modelId, turnsPerWorker: env.TURNS_PER_WORKER },
          deps.now,
        ),
      ),
    );
    const published: PublishedQueueMetrics[] = [];
    const failures: { modelId: string; error: unknown }[] = [];
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') published.push(r.value);
      else failures.push({ modelId: queues[i]!.modelId, error: r.reason });
    });
    if (failures.length > 0) throw new QueueMetricsPublishError(failures, published);
    return published;
  }
}

async function withDeadline<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new QueueMetricsTimeoutError(what, ms)), ms);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function readSecretFromSecretsManager(secretArn: string): Promise<string> {
  const out = await new SecretsManagerClient({}).send(new GetSecretValueCommand({ SecretId: secretArn }));
  if (typeof out.SecretString !== 'string' || out.SecretString.length === 0) {
    throw new Error(`secret ${secretArn} has no string value`);
  }
  return out.SecretString;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

let job: Promise<QueueMetricsJob> | undefined;

/** EventBridge scheduled invocation. A thrown error counts in the function's Errors metric (alarmed). */
export async function handler(): Promise<{ published: PublishedQueueMetrics[] }> {
  job ??= createQueueMetricsJob(process.env, { cloudwatch: new CloudWatchClient({}), readSecret: readSecretFromSecretsManager });
  let current: QueueMetricsJob;
  try {
    current = await job;
  } catch (error) {
    job = undefined; // a bad secret read or config is retried on the next invocation
    throw error;
  }
  try {
    const published = await current.run();
    for (const p of published) console.log(JSON.stringify({ level: 'info', msg: 'queue metrics published', ...p }));
    return { published };
  } catch (error) {
    console.error(JSON.stringify({ level: 'error', msg: 'queue metrics failed', error: errorMessage(error) }));
    throw error;
  }
}

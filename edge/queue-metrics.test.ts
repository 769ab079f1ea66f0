// The queue-metrics publisher against a real redis-server (BullMQ's Lua scripts need one);
// only CloudWatch's `send` and the Secrets Manager read are replaced, at the AWS boundary.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { PutMetricDataCommand, type PutMetricDataCommandInput } from '@aws-sdk/client-cloudwatch';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../shared/config.ts';
import { QUEUE_METRIC_NAMES } from '../shared/queue-metric-names.ts';
import { RedisKeys } from '../shared/redis-keys.ts';
import {
  createQueueMetricsJob,
  QueueMetricsConnectError,
  QueueMetricsPublishError,
  QueueMetricsTimeoutError,
} from './queue-metrics-lambda.ts';
import { desiredWorkers, publishQueueMetrics } from './queue-metrics.ts';

const PASSWORD = 'test-auth-token-0123456789';
let redis: ChildProcess;
let port: number;
let redisUrl: string;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      const p = typeof address === 'object' && address ? address.port : 0;
      srv.close(() => resolve(p));
    });
  });
}

async function waitForRedis(url: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const client = new Redis(url, { password: PASSWORD, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {}); // refused until the server is up; connect() reports it
    try {
      await client.connect();
      await client.ping();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      client.disconnect();
    }
  }
}

beforeAll(async () => {
  port = await freePort();
  if (port === 6379) port = await freePort();
  redis = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--requirepass', PASSWORD], {
    stdio: 'ignore',
  });
  redisUrl = `redis://127.0.0.1:${port}`;
  await waitForRedis(redisUrl);
});

afterAll(() => {
  redis?.kill('SIGTERM');
});

/** Records what would have gone to CloudWatch. */
function recordingSender(fail?: (input: PutMetricDataCommandInput) => boolean) {
  const sent: PutMetricDataCommandInput[] = [];
  return {
    sent,
    async send(command: PutMetricDataCommand) {
      if (fail?.(command.input)) throw new Error('cloudwatch unavailable');
      sent.push(command.input);
      return {};
    },
  };
}

function valueOf(input: PutMetricDataCommandInput, name: string): number | undefined {
  return input.MetricData?.find((d) => d.MetricName === name)?.Value;
}

function dimensionsOf(input: PutMetricDataCommandInput): Record<string, string> {
  const first = input.MetricData?.[0];
  return Object.fromEntries((first?.Dimensions ?? []).map((d) => [d.Name, d.Value]));
}

describe('publishQueueMetrics', () => {
  it('publishes waiting, delayed, active, the oldest waiting age and the workers needed', async () => {
    const keys = new RedisKeys('qm1');
    const connection = { host: '127.0.0.1', port, password: PASSWORD, maxRetriesPerRequest: null };
    const queue = new Queue(keys.turnQueue('mamba/130m'), { connection, prefix: keys.bullPrefix });
    const worker = new Worker(keys.turnQueue('mamba/130m'), null, { connection, prefix: keys.bullPrefix, autorun: false });
    try {
      const now = 1_800_000_000_000;
      // One turn taken by a worker (active), then the backlog.
      await queue.add('turn', {}, { jobId: 'running', timestamp: now - 500_000 });
      const taken = await worker.getNextJob('lock-token');
      expect(taken?.id).toBe('running');
      await queue.add('turn', {}, { jobId: 'w1', timestamp: now - 90_000 });
      await queue.add('turn', {}, { jobId: 'w2', timestamp: now - 30_000 });
      await queue.add('turn', {}, { jobId: 'w3', timestamp: now - 10_000 });
      await queue.add('turn', {}, { jobId: 'p1', timestamp: now - 120_500, priority: 5 });
      await queue.add('turn', {}, { jobId: 'd1', delay: 60_000 });

      const cw = recordingSender();
      const result = await publishQueueMetrics(
        queue,
        cw,
        { namespace: 'MambaServe', deployment: 'TestStack', modelId: 'mamba/130m', turnsPerWorker: 4 },
        () => now,
      );

      expect(result).toMatchObject({ waiting: 4, delayed: 1, active: 1, oldestWaitingAgeMs: 120_500, desiredWorkers: 2 });
      expect(cw.sent).toHaveLength(1);
      const input = cw.sent[0]!;
      expect(input.Namespace).toBe('MambaServe');
      expect(dimensionsOf(input)).toEqual({ Deployment: 'TestStack', Model: 'mamba/130m' });
      expect(valueOf(input, QUEUE_METRIC_NAMES.waiting)).toBe(4);
      expect(valueOf(input, QUEUE_METRIC_NAMES.delayed)).toBe(1);
      expect(valueOf(input, QUEUE_METRIC_NAMES.active)).toBe(1);
      expect(valueOf(input, QUEUE_METRIC_NAMES.oldestWaitingAge)).toBe(120);
      expect(valueOf(input, QUEUE_METRIC_NAMES.desiredWorkers)).toBe(2);
      expect(input.MetricData?.every((d) => d.Timestamp?.getTime() === now)).toBe(true);
      expect(input.MetricData?.find((d) => d.MetricName === QUEUE_METRIC_NAMES.oldestWaitingAge)?.Unit).toBe('Seconds');
    } finally {
      await worker.close(true);
      await queue.close();
    }
  });

  it('publishes zeros for an empty queue, so workers can scale to zero', async () => {
    const keys = new RedisKeys('qm2');
    const queue = new Queue(keys.turnQueue('demo'), {
      connection: { host: '127.0.0.1', port, password: PASSWORD },
      prefix: keys.bullPrefix,
    });
    try {
      const cw = recordingSender();
      const result = await publishQueueMetrics(queue, cw, { namespace: 'N', deployment: 'D', modelId: 'demo', turnsPerWorker: 8 });
      expect(result).toMatchObject({ waiting: 0, delayed: 0, active: 0, oldestWaitingAgeMs: 0, desiredWorkers: 0 });
      expect(valueOf(cw.sent[0]!, QUEUE_METRIC_NAMES.desiredWorkers)).toBe(0);
      expect(valueOf(cw.sent[0]!, QUEUE_METRIC_NAMES.oldestWaitingAge)).toBe(0);
    } finally {
      await queue.close();
    }
  });

  it('rounds the workers needed up and rejects a non-positive turns-per-worker', () => {
    expect(desiredWorkers({ waiting: 1, delayed: 0, active: 0, oldestWaitingAgeMs: 0 }, 8)).toBe(1);
    expect(desiredWorkers({ waiting: 8, delayed: 0, active: 8, oldestWaitingAgeMs: 0 }, 8)).toBe(2);
    expect(desiredWorkers({ waiting: 8, delayed: 1, active: 8, oldestWaitingAgeMs: 0 }, 8)).toBe(3);
    expect(() => desiredWorkers({ waiting: 1, delayed: 0, active: 0, oldestWaitingAgeMs: 0 }, 0)).toThrow(RangeError);
  });
});

describe('queue-metrics Lambda job', () => {
  const baseEnv = () => ({
    REDIS_URL: redisUrl,
    REDIS_PREFIX: 'qm3',
    REDIS_PASSWORD_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:redis-auth-AbCdEf',
    MODEL_IDS: 'alpha, beta',
    METRICS_NAMESPACE: 'MambaServe',
    DEPLOYMENT: 'MambaServe',
    TURNS_PER_WORKER: '2',
  });

  it('reads the AUTH token from the secret and publishes one call per model queue', async () => {
    const keys = new RedisKeys('qm3');
    const producer = new Queue(keys.turnQueue('beta'), {
      connection: { host: '127.0.0.1', port, password: PASSWORD },
      prefix: keys.bullPrefix,
    });
    await producer.add('turn', {});
    await producer.add('turn', {});
    await producer.add('turn', {});
    await producer.close();

    const secretReads: string[] = [];
    const cw = recordingSender();
    const job = await createQueueMetricsJob(baseEnv(), {
      cloudwatch: cw,
      readSecret: async (arn) => {
        secretReads.push(arn);
        return PASSWORD;
      },
    });
    try {
      const published = await job.run();
      expect(secretReads).toEqual([baseEnv().REDIS_PASSWORD_SECRET_ARN]);
      expect(published.map((p) => [p.modelId, p.waiting, p.desiredWorkers])).toEqual([
        ['alpha', 0, 0],
        ['beta', 3, 2],
      ]);
      expect(cw.sent.map((i) => dimensionsOf(i)['Model'])).toEqual(['alpha', 'beta']);
    } finally {
      await job.close();
    }
  });

  it('reports which model failed and still publishes the others', async () => {
    const cw = recordingSender((input) => dimensionsOf(input)['Model'] === 'alpha');
    const job = await createQueueMetricsJob(baseEnv(), { cloudwatch: cw, readSecret: async () => PASSWORD });
    try {
      const error = await job.run().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(QueueMetricsPublishError);
      const failure = error as QueueMetricsPublishError;
      expect(failure.failures.map((f) => f.modelId)).toEqual(['alpha']);
      expect(failure.published.map((p) => p.modelId)).toEqual(['beta']);
      expect(cw.sent).toHaveLength(1);
    } finally {
      await job.close();
    }
  });

  it('fails fast when Redis rejects the AUTH token', async () => {
    const started = Date.now();
    await expect(
      createQueueMetricsJob(baseEnv(), { cloudwatch: recordingSender(), readSecret: async () => 'wrong-token', deadlineMs: 5_000 }),
    ).rejects.toThrow(QueueMetricsConnectError);
    await expect(
      createQueueMetricsJob(baseEnv(), { cloudwatch: recordingSender(), readSecret: async () => 'wrong-token', deadlineMs: 5_000 }),
    ).rejects.toThrow(/WRONGPASS/);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('gives up at the deadline when Redis accepts the connection but never answers', async () => {
    const silent = createServer(() => {}); // accepts TCP, never speaks RESP
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const address = silent.address();
    const silentPort = typeof address === 'object' && address ? address.port : 0;
    try {
      await expect(
        createQueueMetricsJob(
          { ...baseEnv(), REDIS_URL: `redis://127.0.0.1:${silentPort}` },
          { cloudwatch: recordingSender(), readSecret: async () => PASSWORD, deadlineMs: 300 },
        ),
      ).rejects.toBeInstanceOf(QueueMetricsTimeoutError);
    } finally {
      silent.close();
    }
  });

  it('names the bad variable when the environment is invalid', async () => {
    const deps = { cloudwatch: recordingSender(), readSecret: async () => PASSWORD };
    const { DEPLOYMENT: _omit, ...noDeployment } = baseEnv();
    await expect(createQueueMetricsJob(noDeployment, deps)).rejects.toThrow(/DEPLOYMENT/);
    await expect(createQueueMetricsJob({ ...baseEnv(), REDIS_PASSWORD: 'x' }, deps)).rejects.toBeInstanceOf(ConfigError);
    await expect(createQueueMetricsJob({ ...baseEnv(), MODEL_IDS: ' , ' }, deps)).rejects.toThrow(/MODEL_IDS/);
    await expect(createQueueMetricsJob({ ...baseEnv(), REDIS_URL: 'http://x' }, deps)).rejects.toThrow(/REDIS_URL/);
  });
});

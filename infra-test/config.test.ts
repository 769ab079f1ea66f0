// Deployment configuration (CDK context) and the contracts the stack shares with edge/:
// no synthesis here, so these run in milliseconds.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MAX_WORKERS_LIMIT, parseStackConfig, StackConfigError, STACK_CONFIG_KEYS } from '../cdk/lib/config.ts';
import { gpuInstanceShape } from '../cdk/lib/gpu-instances.ts';
import { queueMetric } from '../cdk/lib/queue-metric.ts';
import { QueueMetricsEnvSchema } from '../edge/queue-metrics-lambda.ts';
import { toMetricData } from '../edge/queue-metrics.ts';

describe('stack config', () => {
  it('deploys with no context at all', () => {
    const c = parseStackConfig({});
    expect(c).toMatchObject({
      region: 'us-east-1',
      stackName: 'MambaServe',
      modelId: 'demo',
      instanceType: 'g5.xlarge',
      minWorkers: 0,
      maxWorkers: 2,
      egress: 'nat',
      bucketEncryption: 's3',
      redisEngine: 'valkey',
      redisReplicas: 1,
      requireConditionalWrites: false,
      // Long enough for a turn to wait out a cold GPU start inside the edge Lambda (docs/deploy.md).
      turnTimeoutSeconds: 840,
      turnRetentionSeconds: 3600,
    });
    expect(c.modelUri).toBeUndefined();
    expect(c.gpu).toEqual({ gpus: 1, vcpus: 4, memoryGiB: 16, gpuMemoryGiB: 24, cudaArch: '86' });
  });

  it('accepts `-c key=value` strings for numbers and booleans', () => {
    const c = parseStackConfig({ minWorkers: '1', maxWorkers: '6', requireConditionalWrites: 'true', logRetentionDays: '90' });
    expect(c).toMatchObject({ minWorkers: 1, maxWorkers: 6, requireConditionalWrites: true, logRetentionDays: 90 });
    expect(parseStackConfig({ requireConditionalWrites: 'false' }).requireConditionalWrites).toBe(false);
  });

  it('names every bad key in one error', () => {
    let error: unknown;
    try {
      parseStackConfig({ instanceType: 'm5.large', logRetentionDays: '10', egress: 'vpn', redisReplicas: '9' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(StackConfigError);
    const message = (error as Error).message;
    for (const key of ['instanceType', 'logRetentionDays', 'egress', 'redisReplicas']) expect(message).toContain(key);
    expect(() => parseStackConfig({ minWorkers: '3', maxWorkers: '2' })).toThrow(/minWorkers: must not exceed maxWorkers \(2\)/);
  });

  it('rejects more workers than one step policy can address, and malformed values', () => {
    expect(() => parseStackConfig({ maxWorkers: String(MAX_WORKERS_LIMIT + 1) })).toThrow(/maxWorkers/);
    expect(() => parseStackConfig({ maxWorkers: '2.5' })).toThrow(/maxWorkers/);
    expect(() => parseStackConfig({ modelUri: 'https://huggingface.co/state-spaces/mamba-130m' })).toThrow(/modelUri/);
    expect(() => parseStackConfig({ alarmEmail: 'not-an-email' })).toThrow(/alarmEmail/);
    expect(() => parseStackConfig({ requireConditionalWrites: 'yes please' })).toThrow(/requireConditionalWrites/);
    expect(() => parseStackConfig({ region: 'moon-1' })).toThrow(/region/);
  });

  it('knows the GPUs of multi-GPU sizes, so workers and instances stay one per GPU', () => {
    expect(gpuInstanceShape('g6.12xlarge')).toMatchObject({ gpus: 4, memoryGiB: 192 });
    expect(gpuInstanceShape('g5.48xlarge')).toMatchObject({ gpus: 8 });
    expect(gpuInstanceShape('g6e.xlarge')).toMatchObject({ gpus: 1, gpuMemoryGiB: 48, cudaArch: '89' });
    expect(gpuInstanceShape('g4dn.xlarge')).toMatchObject({ cudaArch: '75' });
    expect(gpuInstanceShape('p9.huge')).toBeUndefined();
  });

  it('lists its keys for the docs, and docs/deploy.md documents exactly those', () => {
    expect(STACK_CONFIG_KEYS).toContain('scaleToZeroAfterMinutes');
    expect(STACK_CONFIG_KEYS).not.toContain('gpu');
    const table = readFileSync(new URL('../docs/deploy.md', import.meta.url), 'utf8').split('### Configuration (CDK context)')[1]!.split('\n### ')[0]!;
    const documented = [...table.matchAll(/^\| (`[A-Za-z]+`(?:, `[A-Za-z]+`)*) \|/gm)].flatMap((m) => [...m[1]!.matchAll(/`([A-Za-z]+)`/g)].map((k) => k[1]!));
    expect(documented.sort()).toEqual([...STACK_CONFIG_KEYS].sort());
  });
});

describe('contracts between the stack and the queue-metrics publisher', () => {
  it('the scaling alarm reads the metric the publisher writes: namespace, name and dimensions', () => {
    // Both sides take the names from shared/queue-metric-names.ts; this checks how each uses them.
    const namespace = QueueMetricsEnvSchema.parse({ REDIS_URL: 'redis://h:1', MODEL_IDS: 'm', DEPLOYMENT: 'd' }).METRICS_NAMESPACE;
    const published = toMetricData(
      { waiting: 3, delayed: 0, active: 1, oldestWaitingAgeMs: 5_000 },
      { namespace, deployment: 'd', modelId: 'm', turnsPerWorker: 8 },
      new Date(0),
    );
    const read = queueMetric('DesiredWorkers', 'd', 'm', 'Maximum');
    expect(read.namespace).toBe(namespace);
    const datum = published.find((d) => d.MetricName === read.metricName);
    expect(datum?.Value).toBe(1);
    expect(Object.fromEntries((datum?.Dimensions ?? []).map((d) => [d.Name, d.Value]))).toEqual(read.dimensions);
  });
});

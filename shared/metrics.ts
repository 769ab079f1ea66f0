// Cluster-wide metrics kept in one Redis hash, so every edge instance (a Lambda included,
// whose memory lives for one request) renders the same Prometheus text for all workers.
// Workers add to counters and histogram buckets with HINCRBYFLOAT (one pipeline per turn);
// /metrics reads the hash and adds live gauges (queue depth, workers).
import type { Redis } from 'ioredis';
import type { RedisKeys } from './redis-keys.ts';
import { RedisScript } from './redis-script.ts';

export interface MetricDefinition {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'histogram';
  readonly buckets?: readonly number[];
}

const SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const BYTES = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

export const METRICS = {
  turns: { name: 'mamba_turns_total', help: 'Turns finished, by model and outcome.', type: 'counter' },
  turnSeconds: { name: 'mamba_turn_seconds', help: 'Turn latency from enqueue to durable result.', type: 'histogram', buckets: SECONDS },
  ttftSeconds: { name: 'mamba_time_to_first_token_seconds', help: 'From enqueue to the first generated token.', type: 'histogram', buckets: SECONDS },
  queueWaitSeconds: { name: 'mamba_queue_wait_seconds', help: 'From enqueue to a worker starting the turn.', type: 'histogram', buckets: SECONDS },
  generatedTokens: { name: 'mamba_generated_tokens_total', help: 'Tokens generated (divide its rate by decode seconds for tokens/s).', type: 'counter' },
  prefillTokens: { name: 'mamba_prefill_tokens_total', help: 'Input tokens absorbed by prefill.', type: 'counter' },
  decodeSeconds: { name: 'mamba_decode_seconds_total', help: 'Wall time turns spent generating.', type: 'counter' },
  checkpointSeconds: { name: 'mamba_checkpoint_seconds', help: 'Export + durable write + head advance of one version.', type: 'histogram', buckets: SECONDS },
  checkpointBytes: { name: 'mamba_checkpoint_bytes', help: 'Size of stored state versions.', type: 'histogram', buckets: BYTES },
  stateLoads: { name: 'mamba_state_loads_total', help: 'Where a turn found its starting state (cache, store, empty).', type: 'counter' },
} as const satisfies Record<string, MetricDefinition>;

type Labels = Record<string, string>;

const labelText = (labels: Labels) => {
  const entries = Object.entries(labels);
  return entries.length === 0 ? '' : `{${entries.map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
};

/** Series of one family in exposition order: by name and labels, buckets by increasing `le`. */
function compareSeries(a: string, b: string): number {
  const le = (f: string) => {
    const m = /le="([^"]*)"/.exec(f);
    return m ? (m[1] === '+Inf' ? Infinity : Number(m[1])) : -Infinity;
  };
  const base = (f: string) => f.replace(/,?le="[^"]*"/, '');
  return base(a).localeCompare(base(b)) || le(a) - le(b);
}

/** KEYS: once-marker, metrics hash. ARGV: marker ttl s, field. → 1 if counted now, 0 if it had been. */
const countOnce = new RedisScript(
  'countTurnOutcomeOnce',
  2,
  `
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[2], 1)
  return 1
end
return 0
`,
);

/**
 * Count a turn's outcome in mamba_turns_total exactly once: a turn can be reported by the
 * attempt that committed it, by a retry that finds the commit after that attempt died, or by
 * the edge deciding it at its deadline; counting at each would count it twice, counting only at
 * the first would miss the turns whose first reporter crashed. `retentionS` bounds the marker.
 */
export async function countTurnOnce(redis: Redis, keys: RedisKeys, labels: { model: string; outcome: string }, turnId: string, retentionS: number): Promise<void> {
  const field = `${METRICS.turns.name}${labelText(labels)}`;
  await countOnce.run(redis, [keys.turnCounted(turnId), keys.metrics], [retentionS, field]);
}

/** A batch of metric updates sent in one round trip. */
export class MetricsBatch {
  private readonly updates = new Map<string, number>();

  inc(metric: MetricDefinition, labels: Labels, by = 1): this {
    const field = `${metric.name}${labelText(labels)}`;
    this.updates.set(field, (this.updates.get(field) ?? 0) + by);
    return this;
  }

  observe(metric: MetricDefinition, labels: Labels, value: number): this {
    for (const le of metric.buckets ?? []) if (value <= le) this.inc({ ...metric, name: `${metric.name}_bucket` }, { ...labels, le: String(le) });
    this.inc({ ...metric, name: `${metric.name}_bucket` }, { ...labels, le: '+Inf' });
    this.inc({ ...metric, name: `${metric.name}_sum` }, labels, value);
    this.inc({ ...metric, name: `${metric.name}_count` }, labels);
    return this;
  }

  async send(redis: Redis, keys: RedisKeys): Promise<void> {
    if (this.updates.size === 0) return;
    const pipeline = redis.pipeline();
    for (const [field, by] of this.updates) pipeline.hincrbyfloat(keys.metrics, field, by);
    await pipeline.exec();
  }
}

/** Prometheus text exposition of the stored series plus `gauges` (name → [labels, value][]). */
export async function renderMetrics(
  redis: Redis,
  keys: RedisKeys,
  gauges: ReadonlyArray<{ name: string; help: string; samples: ReadonlyArray<[Labels, number]> }>,
): Promise<string> {
  const stored = await redis.hgetall(keys.metrics);
  const lines: string[] = [];
  for (const metric of Object.values(METRICS) as MetricDefinition[]) {
    lines.push(`# HELP ${metric.name} ${metric.help}`, `# TYPE ${metric.name} ${metric.type}`);
    const series = Object.entries(stored)
      .filter(([field]) => field.startsWith(`${metric.name}{`) || field.startsWith(`${metric.name}_`) || field === metric.name)
      .sort(([a], [b]) => compareSeries(a, b));
    for (const [field, value] of series) lines.push(`${field} ${Number(value)}`);
  }
  for (const gauge of gauges) {
    lines.push(`# HELP ${gauge.name} ${gauge.help}`, `# TYPE ${gauge.name} gauge`);
    for (const [labels, value] of gauge.samples) lines.push(`${gauge.name}${labelText(labels)} ${value}`);
  }
  return lines.join('\n') + '\n';
}

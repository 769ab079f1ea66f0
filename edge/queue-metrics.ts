// The turn-queue metrics that GPU workers scale on. They are published by a small scheduled
// Lambda (edge/queue-metrics-lambda.ts) rather than by the workers themselves: with the
// minimum at zero workers nothing else runs to report that turns are waiting, so the queue
// would never scale out from zero. This module is the logic only (read BullMQ, compute,
// send one PutMetricData); the handler owns the environment and the clients.
import { PutMetricDataCommand, type MetricDatum } from '@aws-sdk/client-cloudwatch';
import type { Queue } from 'bullmq';
import { QUEUE_METRIC_DIMENSIONS, QUEUE_METRIC_NAMES } from '../shared/queue-metric-names.ts';

/**
 * Prioritized jobs sit in a sorted set ordered by priority, not age, so finding the oldest
 * means reading them; the edge's MAX_QUEUE_DEPTH keeps the set far below this cap. Beyond it
 * the age is a lower bound.
 */
const PRIORITIZED_AGE_SCAN = 1000;

export interface QueueSnapshot {
  readonly waiting: number;
  readonly delayed: number;
  readonly active: number;
  /** Milliseconds; 0 when nothing waits. */
  readonly oldestWaitingAgeMs: number;
}

export type QueueReader = Pick<Queue, 'getJobCounts' | 'getWaiting' | 'getPrioritized'>;

export async function readQueueSnapshot(queue: QueueReader, nowMs: number): Promise<QueueSnapshot> {
  const counts = await queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active');
  // getWaiting lists oldest first, so one job answers for the plain waiting list.
  const [oldestWaiting, prioritized] = await Promise.all([
    queue.getWaiting(0, 0),
    (counts['prioritized'] ?? 0) > 0 ? queue.getPrioritized(0, PRIORITIZED_AGE_SCAN - 1) : Promise.resolve([]),
  ]);
  let oldestTimestamp = Number.POSITIVE_INFINITY;
  for (const job of [...oldestWaiting, ...prioritized]) {
    if (job && Number.isFinite(job.timestamp)) oldestTimestamp = Math.min(oldestTimestamp, job.timestamp);
  }
  return {
    waiting: (counts['waiting'] ?? 0) + (counts['prioritized'] ?? 0),
    delayed: counts['delayed'] ?? 0,
    active: counts['active'] ?? 0,
    oldestWaitingAgeMs: Number.isFinite(oldestTimestamp) ? Math.max(0, nowMs - oldestTimestamp) : 0,
  };
}

/** Workers needed to run every queued and running turn at `turnsPerWorker` turns each. */
export function desiredWorkers(snapshot: QueueSnapshot, turnsPerWorker: number): number {
  if (!Number.isInteger(turnsPerWorker) || turnsPerWorker < 1) {
    throw new RangeError(`turnsPerWorker must be a positive integer, got ${turnsPerWorker}`);
  }
  return Math.ceil((snapshot.waiting + snapshot.delayed + snapshot.active) / turnsPerWorker);
}

export interface MetricTarget {
  readonly namespace: string;
  /** Tells stacks apart that share an account and region. */
  readonly deployment: string;
  readonly modelId: string;
  readonly turnsPerWorker: number;
}

export function toMetricData(snapshot: QueueSnapshot, target: MetricTarget, at: Date): MetricDatum[] {
  const dimensions = [
    { Name: QUEUE_METRIC_DIMENSIONS.deployment, Value: target.deployment },
    { Name: QUEUE_METRIC_DIMENSIONS.model, Value: target.modelId },
  ];
  const datum = (name: string, value: number, unit: 'Count' | 'Seconds'): MetricDatum => ({
    MetricName: name,
    Dimensions: dimensions,
    Timestamp: at,
    Value: value,
    Unit: unit,
    StorageResolution: 60,
  });
  return [
    datum(QUEUE_METRIC_NAMES.waiting, snapshot.waiting, 'Count'),
    datum(QUEUE_METRIC_NAMES.delayed, snapshot.delayed, 'Count'),
    datum(QUEUE_METRIC_NAMES.active, snapshot.active, 'Count'),
    datum(QUEUE_METRIC_NAMES.oldestWaitingAge, Math.floor(snapshot.oldestWaitingAgeMs / 1000), 'Seconds'),
    datum(QUEUE_METRIC_NAMES.desiredWorkers, desiredWorkers(snapshot, target.turnsPerWorker), 'Count'),
  ];
}

/** The one method of CloudWatchClient this module uses (the seam tests replace). */
export interface MetricsSender {
  send(command: PutMetricDataCommand): Promise<unknown>;
}

export interface PublishedQueueMetrics extends QueueSnapshot {
  readonly modelId: string;
  readonly desiredWorkers: number;
}

/** Read one model's queue and publish its metrics in a single PutMetricData call. */
export async function publishQueueMetrics(
  queue: QueueReader,
  cloudwatch: MetricsSender,
  target: MetricTarget,
  now: () => number = Date.now,
): Promise<PublishedQueueMetrics> {
  const nowMs = now();
  const snapshot = await readQueueSnapshot(queue, nowMs);
  await cloudwatch.send(
    new PutMetricDataCommand({ Namespace: target.namespace, MetricData: toMetricData(snapshot, target, new Date(nowMs)) }),
  );
  return { ...snapshot, modelId: target.modelId, desiredWorkers: desiredWorkers(snapshot, target.turnsPerWorker) };
}

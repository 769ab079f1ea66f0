// The CloudWatch names of the turn-queue metrics: written by the queue-metrics publisher
// (edge/queue-metrics.ts) and read by the stack's scaling policy and alarms (cdk/lib/). Both
// import them from here, so a renamed metric cannot leave the scaling alarm watching nothing.

/** Namespace of every metric mamba-serve publishes (the publisher's IAM grant is limited to it). */
export const METRICS_NAMESPACE = 'MambaServe';

export const QUEUE_METRIC_NAMES = {
  /** Turns ready to run that no worker has taken (BullMQ `waiting` + `prioritized`). */
  waiting: 'TurnsWaiting',
  /** Turns backing off before a retry (BullMQ `delayed`): they need a worker soon. */
  delayed: 'TurnsDelayed',
  /** Turns a worker is running. */
  active: 'TurnsActive',
  /** Age of the oldest turn still waiting for a worker; 0 when none waits. */
  oldestWaitingAge: 'OldestWaitingTurnAgeSeconds',
  /** ceil((waiting + delayed + active) / turnsPerWorker): the worker count the queue needs now. */
  desiredWorkers: 'DesiredWorkers',
} as const;
export type QueueMetricName = (typeof QUEUE_METRIC_NAMES)[keyof typeof QUEUE_METRIC_NAMES];

/** Dimensions of every queue metric: stacks sharing an account and region, and the model. */
export const QUEUE_METRIC_DIMENSIONS = { deployment: 'Deployment', model: 'Model' } as const;

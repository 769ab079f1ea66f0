// Names of the queue metrics published by edge/queue-metrics.ts, as the scaling policy and
// alarms see them. DESIGN.md lets cdk/ import only shared/ config types, so this mirrors
// QUEUE_METRIC_NAMES there; infra-test/config.test.ts fails if the two drift.
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import { Duration } from 'aws-cdk-lib';

export const METRICS_NAMESPACE = 'MambaServe';

export const QUEUE_METRIC = {
  waiting: 'TurnsWaiting',
  delayed: 'TurnsDelayed',
  active: 'TurnsActive',
  oldestWaitingAge: 'OldestWaitingTurnAgeSeconds',
  desiredWorkers: 'DesiredWorkers',
} as const;

export const QUEUE_METRIC_DIMENSION = { deployment: 'Deployment', model: 'Model' } as const;

export function queueMetric(
  name: (typeof QUEUE_METRIC)[keyof typeof QUEUE_METRIC],
  deployment: string,
  modelId: string,
  statistic: string,
): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: METRICS_NAMESPACE,
    metricName: name,
    dimensionsMap: { [QUEUE_METRIC_DIMENSION.deployment]: deployment, [QUEUE_METRIC_DIMENSION.model]: modelId },
    statistic,
    // The publisher writes one datapoint a minute.
    period: Duration.minutes(1),
  });
}

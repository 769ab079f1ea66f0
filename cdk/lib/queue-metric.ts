// The published turn-queue metrics as the scaling policy and alarms read them. Names and
// dimensions come from shared/queue-metric-names.ts, the module the publisher writes with.
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import { Duration } from 'aws-cdk-lib';
import { METRICS_NAMESPACE, QUEUE_METRIC_DIMENSIONS, type QueueMetricName } from '../../shared/queue-metric-names.ts';

export function queueMetric(name: QueueMetricName, deployment: string, modelId: string, statistic: string): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: METRICS_NAMESPACE,
    metricName: name,
    dimensionsMap: { [QUEUE_METRIC_DIMENSIONS.deployment]: deployment, [QUEUE_METRIC_DIMENSIONS.model]: modelId },
    statistic,
    // The publisher writes one datapoint a minute.
    period: Duration.minutes(1),
  });
}

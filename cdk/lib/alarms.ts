// Alarms that need a person, sent to one SNS topic (subscribe an email with context
// `alarmEmail`, or anything else after deploy). Each says what breaks for users:
// - turns wait too long (no worker comes up: capacity, image, weights, GPU quota);
// - the queue metric went stale (autoscaling is blind: workers neither start nor stop);
// - workers log errors or exit abnormally; the edge or the publisher throws;
// - Redis fills up (noeviction: BullMQ writes start failing, turns cannot be queued).
import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { METRICS_NAMESPACE, QUEUE_METRIC_NAMES } from '../../shared/queue-metric-names.ts';
import { queueMetric } from './queue-metric.ts';

/**
 * Worker log lines that count as errors: JSON lines whose `level` is "error" (or pino's 50).
 * The worker must log one JSON object per line for this to see anything.
 */
export const WORKER_ERROR_LOG_PATTERN = '{ ($.level = "error") || ($.level = 50) }';
export const WORKER_ERROR_METRIC = 'WorkerErrorLogs';

/** The topic every alarm (and the GPU instance group's scaling events) notifies. */
export function createAlarmTopic(scope: Construct, id: string, deployment: string, email: string | undefined): sns.Topic {
  const topic = new sns.Topic(scope, id, { displayName: `mamba-serve alarms (${deployment})`, enforceSSL: true });
  if (email) topic.addSubscription(new subscriptions.EmailSubscription(email));
  return topic;
}

export interface AlarmsProps {
  readonly topic: sns.ITopic;
  readonly deployment: string;
  readonly modelId: string;
  readonly queueAgeAlarmSeconds: number;
  readonly workerLogGroup: logs.ILogGroup;
  readonly cluster: ecs.ICluster;
  readonly edgeFunction: lambda.IFunction;
  readonly publisherFunction: lambda.IFunction;
  /** ElastiCache replication group id (its member clusters are `{id}-001`, `{id}-002`, …). */
  readonly redisReplicationGroupId: string;
}

export class Alarms extends Construct {
  constructor(scope: Construct, id: string, props: AlarmsProps) {
    super(scope, id);
    const notify = new cwActions.SnsAction(props.topic);
    const alarm = (name: string, p: cloudwatch.AlarmProps) => {
      const a = new cloudwatch.Alarm(this, name, p);
      a.addAlarmAction(notify);
      a.addOkAction(notify);
      return a;
    };

    alarm('QueueAge', {
      alarmDescription: `A turn has waited more than ${props.queueAgeAlarmSeconds} s for a worker`,
      metric: queueMetric(QUEUE_METRIC_NAMES.oldestWaitingAge, props.deployment, props.modelId, 'Maximum'),
      threshold: props.queueAgeAlarmSeconds,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 3,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    alarm('QueueMetricsStale', {
      alarmDescription: 'The turn-queue metric has not been published for 5 minutes: worker autoscaling is blind',
      metric: queueMetric(QUEUE_METRIC_NAMES.desiredWorkers, props.deployment, props.modelId, 'SampleCount'),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
      evaluationPeriods: 5,
      treatMissingData: cloudwatch.TreatMissingData.BREACHING,
    });

    const workerErrors = new logs.MetricFilter(this, 'WorkerErrorFilter', {
      logGroup: props.workerLogGroup,
      filterPattern: logs.FilterPattern.literal(WORKER_ERROR_LOG_PATTERN),
      metricNamespace: METRICS_NAMESPACE,
      metricName: WORKER_ERROR_METRIC,
      metricValue: '1',
      defaultValue: 0,
    });
    alarm('WorkerErrors', {
      alarmDescription: 'GPU workers logged errors in 3 of the last 5 minutes',
      metric: workerErrors.metric({ statistic: 'Sum', period: Duration.minutes(1) }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    // A worker container that exits non-zero (crash, OOM kill, SIGKILL after the grace period)
    // is reported as it happens; ECS publishes no metric for it.
    new events.Rule(this, 'WorkerExited', {
      description: 'mamba-serve: a GPU worker container stopped with a non-zero exit code',
      eventPattern: {
        source: ['aws.ecs'],
        detailType: ['ECS Task State Change'],
        detail: {
          clusterArn: [props.cluster.clusterArn],
          lastStatus: ['STOPPED'],
          containers: { exitCode: [{ 'anything-but': 0 }] },
        },
      },
      targets: [new targets.SnsTopic(props.topic)],
    });

    alarm('EdgeErrors', {
      alarmDescription: 'The edge Lambda threw (unhandled errors) in 3 of the last 5 minutes',
      metric: props.edgeFunction.metricErrors({ period: Duration.minutes(1) }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    alarm('QueueMetricsPublisherErrors', {
      alarmDescription: 'The queue-metrics publisher failed 3 runs in a row',
      metric: props.publisherFunction.metricErrors({ period: Duration.minutes(1) }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 3,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    alarm('RedisMemory', {
      alarmDescription: 'Redis memory above 80%: with noeviction, queueing turns fails when it is full',
      metric: new cloudwatch.Metric({
        namespace: 'AWS/ElastiCache',
        metricName: 'DatabaseMemoryUsagePercentage',
        dimensionsMap: { CacheClusterId: `${props.redisReplicationGroupId}-001` },
        statistic: 'Maximum',
        period: Duration.minutes(5),
      }),
      threshold: 80,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 2,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
  }
}

// The scheduled Lambda that publishes the turn-queue metrics (edge/queue-metrics-lambda.ts).
// It has to exist apart from the workers: scaling out from zero workers needs a "turns are
// waiting" signal while no worker runs. Once a minute matches CloudWatch's standard
// resolution and the scaling alarms' one-minute period.
import { Duration, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { METRICS_NAMESPACE } from '../../shared/queue-metric-names.ts';
import { NodeLambda } from './node-lambda.ts';
import type { Redis } from './redis.ts';

export interface QueueMetricsPublisherProps {
  readonly entry: string;
  readonly repoRoot: string;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly redis: Redis;
  readonly redisPrefix: string;
  readonly deployment: string;
  readonly modelIds: readonly string[];
  readonly turnsPerWorker: number;
  readonly logRetention: logs.RetentionDays;
}

export class QueueMetricsPublisher extends Construct {
  readonly lambda: NodeLambda;
  readonly securityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: QueueMetricsPublisherProps) {
    super(scope, id);
    this.securityGroup = new ec2.SecurityGroup(this, 'SecurityGroup', {
      vpc: props.vpc,
      description: 'mamba-serve queue-metrics publisher: no ingress; egress to Redis and HTTPS (CloudWatch, Secrets Manager)',
      allowAllOutbound: false,
    });
    this.securityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to AWS APIs (endpoints or NAT)');
    props.redis.allowFrom(this.securityGroup, 'queue-metrics publisher');

    this.lambda = new NodeLambda(this, 'Lambda', {
      entry: props.entry,
      repoRoot: props.repoRoot,
      description: 'mamba-serve: publish BullMQ turn-queue depth to CloudWatch for worker autoscaling',
      environment: {
        REDIS_URL: props.redis.url,
        REDIS_PASSWORD_SECRET_ARN: props.redis.authToken.secretArn,
        REDIS_PREFIX: props.redisPrefix,
        MODEL_IDS: props.modelIds.join(','),
        METRICS_NAMESPACE,
        DEPLOYMENT: props.deployment,
        TURNS_PER_WORKER: String(props.turnsPerWorker),
      },
      vpc: props.vpc,
      subnets: props.subnets,
      securityGroup: this.securityGroup,
      memoryMiB: 256,
      // The handler gives up after 20 s (DEFAULT_DEADLINE_MS); this leaves it room to report.
      timeout: Duration.seconds(40),
      logRetention: props.logRetention,
    });
    props.redis.authToken.grantRead(this.lambda.fn);

    // PutMetricData has no resource-level permissions; the namespace condition is the narrowing
    // IAM offers, so this function cannot write into any other namespace.
    this.lambda.fn.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['cloudwatch:PutMetricData'],
        resources: ['*'],
        conditions: { StringEquals: { 'cloudwatch:namespace': METRICS_NAMESPACE } },
      }),
    );
    Validations.of(this.lambda.fn.role!).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'cloudwatch:PutMetricData supports no resource ARNs; the statement is limited by the cloudwatch:namespace condition.',
    });

    new events.Rule(this, 'EveryMinute', {
      description: 'mamba-serve: publish turn-queue metrics',
      schedule: events.Schedule.rate(Duration.minutes(1)),
      // A retried run would publish a stale minute; the next scheduled run is the retry.
      targets: [new targets.LambdaFunction(this.lambda.fn, { retryAttempts: 0, maxEventAge: Duration.minutes(1) })],
    });
  }
}

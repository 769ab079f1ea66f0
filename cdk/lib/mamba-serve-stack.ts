// The whole deployment in one stack: network, state bucket, Redis, edge Lambda, GPU workers,
// the queue-metrics publisher that drives their scaling, alarms and outputs. One stack keeps
// `cdk deploy` / `cdk destroy` single commands; each part is its own construct file.
import path from 'node:path';
import { CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { QUEUE_METRIC_NAMES } from '../../shared/queue-metric-names.ts';
import { Alarms, createAlarmTopic } from './alarms.ts';
import type { StackConfig } from './config.ts';
import { EdgeFunction } from './edge-function.ts';
import { GpuWorkers } from './gpu-workers.ts';
import { Network } from './network.ts';
import { queueMetric } from './queue-metric.ts';
import { QueueMetricsPublisher } from './queue-metrics-publisher.ts';
import { QueueScaling } from './queue-scaling.ts';
import { Redis } from './redis.ts';
import { grantExternalModelRead, StateBucket } from './state-bucket.ts';

export interface MambaServeStackProps extends StackProps {
  readonly config: StackConfig;
  /** Repository root: package-lock.json, tsconfig.json and the worker's Docker build context. */
  readonly repoRoot: string;
  /** The edge Lambda's entry; default `edge/lambda.ts` (another entry only to try the stack out). */
  readonly edgeEntry?: string;
  /** The queue-metrics Lambda's entry; default `edge/queue-metrics-lambda.ts`. */
  readonly queueMetricsEntry?: string;
}

export class MambaServeStack extends Stack {
  readonly network: Network;
  readonly state: StateBucket;
  readonly redis: Redis;
  readonly edge: EdgeFunction;
  readonly workers: GpuWorkers;
  readonly publisher: QueueMetricsPublisher;
  readonly scaling: QueueScaling;

  constructor(scope: Construct, id: string, props: MambaServeStackProps) {
    super(scope, id, props);
    const c = props.config;
    const logRetention = c.logRetentionDays as logs.RetentionDays;
    // Tells the metrics of stacks apart that share an account and region.
    const deployment = this.stackName;

    this.state = new StateBucket(this, 'State', {
      encryption: c.bucketEncryption,
      supersededVersionRetentionDays: c.supersededVersionRetentionDays,
      prefixCacheRetentionDays: c.prefixCacheRetentionDays,
      requireConditionalWrites: c.requireConditionalWrites,
      logRetentionDays: c.logRetentionDays,
    });
    this.network = new Network(this, 'Network', { egress: c.egress, maxAzs: c.maxAzs, flowLogBucket: this.state.logBucket });
    const { vpc, appSubnets: subnets } = this.network;

    this.redis = new Redis(this, 'Redis', { vpc, subnets, engine: c.redisEngine, nodeType: c.redisNodeType, replicas: c.redisReplicas });

    this.edge = new EdgeFunction(this, 'Edge', {
      entry: props.edgeEntry ?? path.join(props.repoRoot, 'edge', 'lambda.ts'),
      repoRoot: props.repoRoot,
      vpc,
      subnets,
      redis: this.redis,
      state: this.state,
      redisPrefix: c.redisPrefix,
      defaultModel: c.modelId,
      memoryMiB: c.edgeMemoryMiB,
      turnTimeoutSeconds: c.turnTimeoutSeconds,
      turnRetentionSeconds: c.turnRetentionSeconds,
      maxQueueDepth: c.maxQueueDepth,
      maxTokensPerTurn: c.maxTokensPerTurn,
      maxInputTokensPerTurn: c.maxInputTokensPerTurn,
      logLevel: c.logLevel,
      playground: c.playground,
      logRetention,
    });

    this.publisher = new QueueMetricsPublisher(this, 'QueueMetrics', {
      entry: props.queueMetricsEntry ?? path.join(props.repoRoot, 'edge', 'queue-metrics-lambda.ts'),
      repoRoot: props.repoRoot,
      vpc,
      subnets,
      redis: this.redis,
      redisPrefix: c.redisPrefix,
      deployment,
      modelIds: [c.modelId],
      turnsPerWorker: c.turnsPerWorker,
      logRetention,
    });

    const topic = createAlarmTopic(this, 'AlarmTopic', deployment, c.alarmEmail);

    const modelDir = c.modelUri ?? this.state.modelUri(c.modelId);
    this.workers = new GpuWorkers(this, 'Workers', {
      repoRoot: props.repoRoot,
      vpc,
      subnets,
      redis: this.redis,
      state: this.state,
      redisPrefix: c.redisPrefix,
      instanceType: c.instanceType,
      gpu: c.gpu,
      minWorkers: c.minWorkers,
      maxWorkers: c.maxWorkers,
      volumeGiB: c.workerVolumeGiB,
      modelId: c.modelId,
      modelDir,
      engine: c.engine,
      turnsPerWorker: c.turnsPerWorker,
      turnTimeoutSeconds: c.turnTimeoutSeconds,
      turnRetentionSeconds: c.turnRetentionSeconds,
      maxQueueDepth: c.maxQueueDepth,
      maxTokensPerTurn: c.maxTokensPerTurn,
      maxInputTokensPerTurn: c.maxInputTokensPerTurn,
      prefixCacheTenantBytes: c.prefixCacheTenantMiB * 1024 * 1024,
      logLevel: c.logLevel,
      logRetention,
      notifications: topic,
    });
    const taskRole = this.workers.taskDefinition.taskRole;
    if (c.modelUri) grantExternalModelRead(taskRole, c.modelUri);
    else this.state.grantModelRead(taskRole, c.modelId);

    this.scaling = new QueueScaling(this, 'Scaling', {
      service: this.workers.service,
      desiredWorkers: queueMetric(QUEUE_METRIC_NAMES.desiredWorkers, deployment, c.modelId, 'Maximum'),
      minWorkers: c.minWorkers,
      maxWorkers: c.maxWorkers,
      scaleToZeroAfterMinutes: c.scaleToZeroAfterMinutes,
    });

    new Alarms(this, 'Alarms', {
      topic,
      deployment,
      modelId: c.modelId,
      queueAgeAlarmSeconds: c.queueAgeAlarmSeconds,
      workerLogGroup: this.workers.logGroup,
      cluster: this.workers.cluster,
      edgeFunction: this.edge.lambda.fn,
      publisherFunction: this.publisher.lambda.fn,
      redisReplicationGroupId: this.redis.replicationGroup.ref,
    });

    // --- outputs: what an operator needs right after `cdk deploy` ---
    new CfnOutput(this, 'EndpointUrl', {
      description: 'Base URL of the API (OpenAI-compatible under /v1)',
      value: this.edge.url.url,
    });
    new CfnOutput(this, 'StateBucketName', { description: 'S3 bucket of session states (and models/)', value: this.state.bucket.bucketName });
    new CfnOutput(this, 'ModelLocation', { description: 'MODEL_DIR the workers load at start', value: modelDir });
    if (!c.modelUri) {
      new CfnOutput(this, 'UploadModelCommand', {
        description: 'Upload a Hugging Face Mamba checkpoint directory for the workers',
        value: `aws s3 sync ./models/${c.modelId} ${modelDir}/`,
      });
    }
    new CfnOutput(this, 'ApiKeysSecretArn', {
      description: 'Secrets Manager secret of API keys: comma-separated key:tenant pairs',
      value: this.edge.apiKeys.secretArn,
    });
    new CfnOutput(this, 'CreateApiKeyCommand', {
      description: 'Replace the API keys with one new key for tenant "default" (append ",key:tenant" pairs for more)',
      value: `KEY=$(openssl rand -hex 24) && aws secretsmanager put-secret-value --region ${this.region} --secret-id ${this.edge.apiKeys.secretArn} --secret-string "$KEY:default" && echo "API key: $KEY"`,
    });
    new CfnOutput(this, 'AlarmTopicArn', { description: 'SNS topic of alarms: subscribe to it', value: topic.topicArn });
    new CfnOutput(this, 'WorkerLogGroup', { description: 'CloudWatch Logs of the GPU workers', value: this.workers.logGroup.logGroupName });
  }
}

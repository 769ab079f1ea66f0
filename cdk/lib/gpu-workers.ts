// GPU workers: ECS on EC2 with a GPU capacity provider. One worker container per GPU
// (`gpuCount: 1`): the worker batches every active turn on its GPU itself, so two containers
// on one GPU would only fight over its memory. ECS service auto scaling sets how many workers
// run (cdk/lib/queue-scaling.ts); the capacity provider's managed scaling then starts or stops
// instances to fit them, down to zero instances when zero workers are wanted.
//
// Why EC2 and not Fargate: Fargate has no GPUs. Why the ECS GPU-optimized AMI: it carries the
// NVIDIA driver and container toolkit that `gpuCount` needs; the AMI id is an SSM parameter
// resolved at deploy time, so synth stays offline.
import path from 'node:path';
import { Aws, Duration, RemovalPolicy, Size, Validations } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import type { z } from 'zod';
import type { WorkerConfigSchema } from '../../shared/config.ts';
import type { GpuInstanceShape } from './gpu-instances.ts';
import type { Redis } from './redis.ts';
import type { StateBucket } from './state-bucket.ts';

/** Only variables the worker's config schema knows; a typo is a compile error. */
export type WorkerEnvironment = Partial<Record<keyof z.input<typeof WorkerConfigSchema>, string>>;

/** Host directory kept across task restarts on an instance, so a restarted worker skips the weight download. */
const HOST_CACHE_DIR = '/var/lib/mamba-serve/cache';
const CONTAINER_CACHE_DIR = '/cache';

/**
 * ECS stops a container with SIGTERM, then SIGKILL after stopTimeout (120 s is ECS's ceiling).
 * The worker's own grace period is shorter, so it releases unfinished turns (they resume from
 * their last checkpoint on another worker) before it can be killed.
 */
const STOP_TIMEOUT = Duration.seconds(120);
const SHUTDOWN_GRACE_MS = 90_000;

export interface GpuWorkersProps {
  readonly repoRoot: string;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly redis: Redis;
  readonly state: StateBucket;
  readonly redisPrefix: string;
  readonly instanceType: string;
  readonly gpu: GpuInstanceShape;
  readonly minWorkers: number;
  readonly maxWorkers: number;
  readonly volumeGiB: number;
  readonly modelId: string;
  /** `MODEL_DIR`: s3://bucket/prefix of the checkpoint; read access is granted by the caller. */
  readonly modelDir: string;
  readonly engine: 'auto' | 'ort' | 'cuda';
  readonly turnsPerWorker: number;
  readonly turnTimeoutSeconds: number;
  /** TURN_RETENTION_S: how long a finished turn's result is kept; edge and workers must agree. */
  readonly turnRetentionSeconds: number;
  readonly maxQueueDepth: number;
  readonly maxTokensPerTurn: number;
  readonly maxInputTokensPerTurn: number;
  /** PREFIX_CACHE_TENANT_BYTES: stored prefix states per tenant (0 = no prefix cache). */
  readonly prefixCacheTenantBytes: number;
  readonly logLevel: string;
  readonly logRetention: logs.RetentionDays;
  /** Scaling events of the instance group are sent here. */
  readonly notifications: sns.ITopic;
}

export class GpuWorkers extends Construct {
  readonly cluster: ecs.Cluster;
  readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  readonly taskDefinition: ecs.Ec2TaskDefinition;
  readonly service: ecs.Ec2Service;
  readonly logGroup: logs.LogGroup;
  readonly taskSecurityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: GpuWorkersProps) {
    super(scope, id);

    this.cluster = new ecs.Cluster(this, 'Cluster', {
      vpc: props.vpc,
      // GPU and memory per task are what to watch on an expensive instance.
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });

    const instanceSecurityGroup = new ec2.SecurityGroup(this, 'InstanceSecurityGroup', {
      vpc: props.vpc,
      description: 'mamba-serve GPU instances: no ingress; HTTPS out for the ECS agent, ECR and logs',
      allowAllOutbound: false,
    });
    instanceSecurityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'ECS agent, ECR, CloudWatch Logs');

    const userData = ec2.UserData.forLinux();
    userData.addCommands(
      // Owned by the image's unprivileged user (uid 10001, worker/Dockerfile).
      `mkdir -p ${HOST_CACHE_DIR} && chown 10001:10001 ${HOST_CACHE_DIR}`,
      // Tasks use awsvpc networking; without this they could read the instance role's
      // credentials from IMDS. With it, a worker has only its task role.
      'echo ECS_AWSVPC_BLOCK_IMDS=true >> /etc/ecs/ecs.config',
      // The CUDA image is several GB: a restarted task reuses the pulled copy.
      'echo ECS_IMAGE_PULL_BEHAVIOR=prefer-cached >> /etc/ecs/ecs.config',
      'echo ECS_ENABLE_GPU_SUPPORT=true >> /etc/ecs/ecs.config',
    );

    const instanceRole = new iam.Role(this, 'InstanceRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'mamba-serve GPU instances: ECS container agent only (tasks have their own role)',
    });

    const launchTemplate = new ec2.LaunchTemplate(this, 'LaunchTemplate', {
      machineImage: ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.GPU),
      instanceType: new ec2.InstanceType(props.instanceType),
      userData,
      role: instanceRole,
      securityGroup: instanceSecurityGroup,
      requireImdsv2: true,
      // One hop: a container (one network hop further) cannot obtain an IMDSv2 token.
      httpPutResponseHopLimit: 1,
      detailedMonitoring: true,
      blockDevices: [
        {
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(props.volumeGiB, {
            encrypted: true,
            volumeType: ec2.EbsDeviceVolumeType.GP3,
            deleteOnTermination: true,
          }),
        },
      ],
    });

    const maxInstances = Math.ceil(props.maxWorkers / props.gpu.gpus);
    this.autoScalingGroup = new autoscaling.AutoScalingGroup(this, 'Instances', {
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      launchTemplate,
      // Zero instances while no worker is wanted; ECS managed scaling moves the desired count.
      minCapacity: 0,
      maxCapacity: maxInstances,
      // Required by managed termination protection: ECS, not the group, decides which
      // instance may go, so an instance running a worker is never terminated under it.
      newInstancesProtectedFromScaleIn: true,
      cooldown: Duration.minutes(5),
      notifications: [{ topic: props.notifications }],
    });

    const capacityProvider = new ecs.AsgCapacityProvider(this, 'CapacityProvider', {
      autoScalingGroup: this.autoScalingGroup,
      enableManagedScaling: true,
      enableManagedTerminationProtection: true,
      targetCapacityPercent: 100,
      machineImageType: ecs.MachineImageType.AMAZON_LINUX_2,
    });
    this.cluster.addAsgCapacityProvider(capacityProvider);
    // The statements CDK gives the ECS container agent (what the managed
    // AmazonEC2ContainerServiceforEC2Role policy would grant, narrowed to this cluster where IAM allows).
    Validations.of(instanceRole).acknowledge(
      {
        id: 'AwsSolutions-IAM5[Action::ecs:Submit*]',
        reason: 'ECS container agent: the Submit* family (state changes of tasks, containers, attachments) on this cluster only.',
      },
      {
        id: 'AwsSolutions-IAM5[Resource::*]',
        reason:
          'ECS container agent: ecs:Poll/StartTelemetrySession are conditioned on this cluster; ecr:GetAuthorizationToken, ecs:DiscoverPollEndpoint and the agent\'s own log calls have no resource-level permissions.',
      },
    );

    this.logGroup = new logs.LogGroup(this, 'Logs', { retention: props.logRetention, removalPolicy: RemovalPolicy.DESTROY });

    this.taskDefinition = new ecs.Ec2TaskDefinition(this, 'Task', {
      networkMode: ecs.NetworkMode.AWS_VPC,
      volumes: [{ name: 'model-cache', host: { sourcePath: HOST_CACHE_DIR } }],
    });

    const environment: WorkerEnvironment = {
      REDIS_URL: props.redis.url,
      REDIS_PREFIX: props.redisPrefix,
      STATE_STORE: props.state.stateStoreUrl,
      S3_REGION: Aws.REGION,
      MODEL_ID: props.modelId,
      MODEL_DIR: props.modelDir,
      MODEL_CACHE_DIR: CONTAINER_CACHE_DIR,
      ENGINE: props.engine,
      WORKER_CONCURRENCY: String(props.turnsPerWorker),
      SHUTDOWN_GRACE_MS: String(SHUTDOWN_GRACE_MS),
      TURN_TIMEOUT_MS: String(props.turnTimeoutSeconds * 1000),
      TURN_RETENTION_S: String(props.turnRetentionSeconds),
      MAX_QUEUE_DEPTH: String(props.maxQueueDepth),
      MAX_TOKENS_PER_TURN: String(props.maxTokensPerTurn),
      MAX_INPUT_TOKENS_PER_TURN: String(props.maxInputTokensPerTurn),
      PREFIX_CACHE_TENANT_BYTES: String(props.prefixCacheTenantBytes),
      LOG_LEVEL: props.logLevel,
      // No WORKER_ID: one task definition serves every task, so any value here would be shared;
      // the worker's default adds a random part to host and pid, unique per task.
    };

    // A quarter of the instance's memory per GPU stays with the OS, the ECS agent and the page
    // cache that serves weight reads.
    const memoryReservationMiB = Math.floor(((props.gpu.memoryGiB * 1024) / props.gpu.gpus) * 0.75);
    const container = this.taskDefinition.addContainer('worker', {
      image: ecs.ContainerImage.fromAsset(props.repoRoot, {
        file: path.join('worker', 'Dockerfile'),
        platform: Platform.LINUX_AMD64,
        // Compile the native engine for this instance family's GPU only (a faster build).
        buildArgs: { CUDA_ARCHS: props.gpu.cudaArch },
      }),
      gpuCount: 1,
      memoryReservationMiB,
      environment: environment as Record<string, string>,
      secrets: { REDIS_PASSWORD: ecs.Secret.fromSecretsManager(props.redis.authToken) },
      logging: ecs.LogDrivers.awsLogs({
        logGroup: this.logGroup,
        streamPrefix: 'worker',
        // Blocking mode would stall the worker's stdout writes (and so its event loop and its
        // BullMQ lock renewals) whenever CloudWatch Logs is slow; dropping a log line is better.
        mode: ecs.AwsLogDriverMode.NON_BLOCKING,
        maxBufferSize: Size.mebibytes(25),
      }),
      stopTimeout: STOP_TIMEOUT,
      // An init process forwards SIGTERM to node and reaps children (the engine's helpers).
      linuxParameters: new ecs.LinuxParameters(this, 'LinuxParameters', { initProcessEnabled: true }),
    });
    Validations.of(this.taskDefinition.obtainExecutionRole()).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'ecr:GetAuthorizationToken has no resource-level permissions; image pulls are limited to the CDK asset repository.',
    });
    container.addMountPoints({ containerPath: CONTAINER_CACHE_DIR, sourceVolume: 'model-cache', readOnly: false });
    Validations.of(this.taskDefinition).acknowledge({
      id: 'AwsSolutions-ECS2',
      reason:
        'The environment holds only non-secret configuration (endpoints, limits, model location); the one secret, REDIS_PASSWORD, is injected from Secrets Manager.',
    });

    // Sessions: read and write versions, tag superseded ones (the lifecycle rule's signal);
    // no delete (versions are immutable; deleting sessions is the edge's job), except of the
    // prefix cache's least recently used entries, which the worker that stores evicts.
    props.state.grantState(this.taskDefinition.taskRole, { delete: false, tagSuperseded: true, evictPrefixCache: true });

    this.taskSecurityGroup = new ec2.SecurityGroup(this, 'TaskSecurityGroup', {
      vpc: props.vpc,
      description: 'mamba-serve worker tasks: no ingress; egress to Redis and HTTPS (S3)',
      allowAllOutbound: false,
    });
    this.taskSecurityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to S3 (gateway endpoint or NAT)');
    props.redis.allowFrom(this.taskSecurityGroup, 'GPU worker tasks');

    this.service = new ecs.Ec2Service(this, 'Service', {
      cluster: this.cluster,
      taskDefinition: this.taskDefinition,
      desiredCount: props.minWorkers,
      capacityProviderStrategies: [{ capacityProvider: capacityProvider.capacityProviderName, weight: 1 }],
      vpcSubnets: props.subnets,
      securityGroups: [this.taskSecurityGroup],
      // A deployment stops old workers before starting new ones: no spare GPU instance is
      // launched for a rolling update. Queued turns wait; running ones resume from their last
      // checkpoint (DESIGN.md: nothing is acknowledged before it is durable).
      minHealthyPercent: 0,
      maxHealthyPercent: 100,
      circuitBreaker: { enable: true, rollback: true },
      // Fill multi-GPU instances before starting another one.
      placementStrategies: [ecs.PlacementStrategy.packedByMemory()],
    });
  }
}

// A deployment with every non-default switch flipped, synthesized once: no internet path
// (VPC endpoints), KMS, conditional writes enforced, a single Redis node, a model in another
// bucket, and a 4-GPU instance type. cdk-nag must pass here too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asList, identityStatements, references, type Statement } from './cfn.ts';
import { logicalIdOf, resourcesOfType, synthesize, type Synthesized } from './synth.ts';

let s: Synthesized;
beforeAll(() => {
  s = synthesize({
    stackName: 'MambaServeLocked',
    region: 'eu-west-1',
    egress: 'endpoints',
    bucketEncryption: 'kms',
    requireConditionalWrites: 'true',
    redisReplicas: '0',
    modelUri: 's3://team-models/mamba-2.8b/',
    instanceType: 'g6.12xlarge',
    minWorkers: '1',
    maxWorkers: '8',
    alarmEmail: 'oncall@example.com',
  } as never);
}, 240_000);
afterAll(() => s?.cleanup());

const props = (id: string) => s.json.Resources[id]!.Properties as Record<string, any>;

describe('egress through VPC endpoints only', () => {
  it('has no NAT or internet gateway, and no route to either', () => {
    expect(resourcesOfType(s.json, 'AWS::EC2::NatGateway')).toEqual([]);
    expect(resourcesOfType(s.json, 'AWS::EC2::InternetGateway')).toEqual([]);
    expect(resourcesOfType(s.json, 'AWS::EC2::Route')).toEqual([]);
  });

  it('has the endpoints the workers, Lambdas and ECS agent call', () => {
    const services = resourcesOfType(s.json, 'AWS::EC2::VPCEndpoint').map(([, p]) => JSON.stringify(p['ServiceName']));
    for (const name of ['ecr.api', 'ecr.dkr', 'logs', 'secretsmanager', 'monitoring', 'ecs-agent', 'ecs-telemetry', '.ecs"', '.s3"']) {
      expect(services.some((sn) => sn.includes(name)), name).toBe(true);
    }
    expect(services).toHaveLength(9);
  });
});

describe('state bucket with KMS and enforced conditional writes', () => {
  const bucketId = () => logicalIdOf(s.json, 'AWS::S3::Bucket', 'StateBucket');
  const keyId = () => logicalIdOf(s.json, 'AWS::KMS::Key', 'StateKey');

  it('encrypts with a rotating customer key and a bucket key', () => {
    const sse = props(bucketId())['BucketEncryption']['ServerSideEncryptionConfiguration'][0];
    expect(sse['ServerSideEncryptionByDefault']['SSEAlgorithm']).toBe('aws:kms');
    expect(references(sse['ServerSideEncryptionByDefault']['KMSMasterKeyID'], keyId())).toBe(true);
    expect(sse['BucketKeyEnabled']).toBe(true);
    expect(props(keyId())['EnableKeyRotation']).toBe(true);
  });

  it('refuses a state version PUT without If-None-Match', () => {
    const [, policy] = resourcesOfType(s.json, 'AWS::S3::BucketPolicy').find(([, p]) => references(p['Bucket'], bucketId()))!;
    const deny = (policy['PolicyDocument'] as { Statement: (Statement & { Sid?: string })[] }).Statement.find(
      (st) => st.Sid === 'DenyUnconditionalStateVersionWrites',
    )!;
    expect(deny).toMatchObject({ Effect: 'Deny', Action: 's3:PutObject', Condition: { Null: { 's3:if-none-match': 'true' } } });
    expect(JSON.stringify(deny.Resource)).toContain('/state/*.mstate');
  });

  it('lets the worker use the key for its states, and read the external model', () => {
    const worker = identityStatements(s.json.Resources as never).filter(({ policy }) => policy.startsWith('WorkersTaskTaskRoleDefaultPolicy'));
    const kms = worker.find(({ statement }) => references(statement.Resource, keyId()))!.statement;
    expect(asList(kms.Action).sort()).toEqual(['kms:Decrypt', 'kms:GenerateDataKey']);
    const modelRead = worker.find(({ statement }) => JSON.stringify(statement.Resource).includes(':s3:::team-models/mamba-2.8b/*'));
    expect(modelRead?.statement.Action).toBe('s3:GetObject');
    const container = props(logicalIdOf(s.json, 'AWS::ECS::TaskDefinition', 'WorkersTask'))['ContainerDefinitions'][0];
    const modelDir = (container['Environment'] as { Name: string; Value: unknown }[]).find((e) => e.Name === 'MODEL_DIR');
    expect(modelDir?.Value).toBe('s3://team-models/mamba-2.8b/');
  });
});

describe('sizes and counts', () => {
  it('runs one worker per GPU: 8 workers fit 2 four-GPU instances', () => {
    const asg = props(logicalIdOf(s.json, 'AWS::AutoScaling::AutoScalingGroup', 'WorkersInstances'));
    expect(asg['MaxSize']).toBe('2');
    const container = props(logicalIdOf(s.json, 'AWS::ECS::TaskDefinition', 'WorkersTask'))['ContainerDefinitions'][0];
    expect(container['ResourceRequirements']).toEqual([{ Type: 'GPU', Value: '1' }]);
    expect(container['MemoryReservation']).toBe(Math.floor(((192 * 1024) / 4) * 0.75));
  });

  it('steps through every worker count from 1 to 8 and keeps at least the minimum', () => {
    const [[, target]] = resourcesOfType(s.json, 'AWS::ApplicationAutoScaling::ScalableTarget') as [[string, Record<string, unknown>]];
    expect(target).toMatchObject({ MinCapacity: 1, MaxCapacity: 8 });
    const setCount = props(logicalIdOf(s.json, 'AWS::ApplicationAutoScaling::ScalingPolicy', 'ScalingSetWorkerCount'));
    const steps = setCount['StepScalingPolicyConfiguration']['StepAdjustments'] as Record<string, number>[];
    expect(steps.map((st) => st['ScalingAdjustment'])).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('runs a single Redis node without failover when asked to', () => {
    expect(props(logicalIdOf(s.json, 'AWS::ElastiCache::ReplicationGroup', 'RedisReplicationGroup'))).toMatchObject({
      NumCacheClusters: 1,
      AutomaticFailoverEnabled: false,
      MultiAZEnabled: false,
    });
  });

  it('subscribes the alarm email', () => {
    s.template.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'oncall@example.com' });
  });
});

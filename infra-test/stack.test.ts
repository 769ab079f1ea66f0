// The default deployment (`npx cdk deploy` with no context), synthesized once for this file.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Match } from 'aws-cdk-lib/assertions';
import type { IConstruct } from 'constructs';
import { Validations } from 'aws-cdk-lib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EdgeConfigSchema, parseEnv, WorkerConfigSchema } from '../shared/config.ts';
import { QueueMetricsEnvSchema } from '../edge/queue-metrics-lambda.ts';
import { PREFIX_CACHE_ROOT } from '../shared/prefix-cache-root.ts';
import { SUPERSEDED_TAG } from '../shared/superseded-tag.ts';
import { asList, identityStatements, references, render, type Statement } from './cfn.ts';
import { logicalIdOf, resourcesOfType, synthesize, type Synthesized } from './synth.ts';

let s: Synthesized;
beforeAll(() => {
  s = synthesize();
}, 240_000);
afterAll(() => s?.cleanup());

const props = (id: string) => s.json.Resources[id]!.Properties as Record<string, any>;
const stateBucketId = () => logicalIdOf(s.json, 'AWS::S3::Bucket', 'StateBucket');
const edgeFnId = () => logicalIdOf(s.json, 'AWS::Lambda::Function', 'EdgeLambdaFunction');
const publisherFnId = () => logicalIdOf(s.json, 'AWS::Lambda::Function', 'QueueMetricsLambdaFunction');
const env = (fnId: string) => props(fnId)['Environment']['Variables'] as Record<string, unknown>;
const workerContainer = () => props(logicalIdOf(s.json, 'AWS::ECS::TaskDefinition', 'WorkersTask'))['ContainerDefinitions'][0];
const workerEnv = () => Object.fromEntries((workerContainer()['Environment'] as { Name: string; Value: unknown }[]).map((e) => [e.Name, e.Value]));
const rendered = (variables: Record<string, unknown>) => Object.fromEntries(Object.entries(variables).map(([k, v]) => [k, render(v, s.json.Resources)]));
/** The edge's and the workers' configuration as each process would parse it. */
const edgeConfig = () => parseEnv(EdgeConfigSchema, rendered(env(edgeFnId())));
const workerConfig = () => parseEnv(WorkerConfigSchema, rendered(workerEnv()));

/** Variables every runtime (not our config) reads; allowed beside the config schema's. */
const RUNTIME_VARIABLES = new Set(['NODE_OPTIONS', 'AWS_REGION']);

describe('state bucket', () => {
  it('is encrypted, private, TLS-only and survives teardown', () => {
    const id = stateBucketId();
    const bucket = props(id);
    expect(bucket['BucketEncryption']['ServerSideEncryptionConfiguration'][0]['ServerSideEncryptionByDefault']).toEqual({
      SSEAlgorithm: 'AES256',
    });
    expect(bucket['PublicAccessBlockConfiguration']).toEqual({
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    expect(bucket['OwnershipControls']).toEqual({ Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] });
    expect(s.json.Resources[id]!.DeletionPolicy).toBe('Retain');

    const [, policy] = resourcesOfType(s.json, 'AWS::S3::BucketPolicy').find(([, p]) => references(p['Bucket'], id))!;
    const statements = (policy['PolicyDocument'] as { Statement: Statement[] }).Statement;
    const tlsDeny = statements.find((st) => st.Effect === 'Deny' && JSON.stringify(st.Condition) === '{"Bool":{"aws:SecureTransport":"false"}}');
    expect(tlsDeny?.Action).toBe('s3:*');
    expect(tlsDeny?.Principal).toEqual({ AWS: '*' });
    expect(asList(tlsDeny?.Resource as unknown[])).toHaveLength(2); // the bucket and every object
    // Private: the bucket policy allows nobody; access comes only from the roles' grants.
    expect(statements.filter((st) => st.Effect === 'Allow')).toEqual([]);
  });

  it('expires only superseded versions under state/, never a session head for its age', () => {
    const rules = props(stateBucketId())['LifecycleConfiguration']['Rules'] as Record<string, any>[];
    const expiring = rules.filter((r) => r['ExpirationInDays'] !== undefined);
    expect(expiring).toEqual([
      {
        Id: 'expire-superseded-session-versions',
        Prefix: 'state/',
        TagFilters: [{ Key: 'mamba-serve:superseded', Value: 'true' }],
        ExpirationInDays: 30,
        Status: 'Enabled',
      },
      // The prefix cache, a cache: bounded by age here and by each tenant's budget in the workers.
      { Id: 'expire-prefix-cache', Prefix: `state/${PREFIX_CACHE_ROOT}/`, ExpirationInDays: 7, Status: 'Enabled' },
    ]);
    expect(rules.some((r) => r['AbortIncompleteMultipartUpload']?.['DaysAfterInitiation'] === 1)).toBe(true);
  });

  it('expires by the tag the state store writes: one constant, shared/superseded-tag.ts', () => {
    const rules = props(stateBucketId())['LifecycleConfiguration']['Rules'] as Record<string, any>[];
    const rule = rules.find((r) => r['Id'] === 'expire-superseded-session-versions');
    expect(rule?.['TagFilters']).toEqual([{ Key: SUPERSEDED_TAG.key, Value: SUPERSEDED_TAG.value }]);
  });

  it('logs access into a separate, equally locked-down bucket', () => {
    const logging = props(stateBucketId())['LoggingConfiguration'];
    const logBucketId = logicalIdOf(s.json, 'AWS::S3::Bucket', 'StateLogs');
    expect(references(logging['DestinationBucketName'], logBucketId)).toBe(true);
    expect(props(logBucketId)['PublicAccessBlockConfiguration']['RestrictPublicBuckets']).toBe(true);
  });
});

describe('edge Lambda', () => {
  it('streams responses through a Function URL', () => {
    const [[, url]] = resourcesOfType(s.json, 'AWS::Lambda::Url') as [[string, Record<string, unknown>]];
    expect(url['InvokeMode']).toBe('RESPONSE_STREAM');
    expect(url['AuthType']).toBe('NONE'); // the app authenticates API keys itself
    expect(references(url['TargetFunctionArn'], edgeFnId())).toBe(true);
  });

  it('bundles edge/lambda.ts and runs it in the VPC on the newest Node runtime, outliving a turn', () => {
    const fn = props(edgeFnId());
    expect(fn['Handler']).toBe('index.handler');
    expect(fn['Runtime']).toBe('nodejs24.x');
    expect(fn['VpcConfig']['SubnetIds']).toHaveLength(2);
    expect(fn['Timeout']).toBeGreaterThan(Number(env(edgeFnId())['TURN_TIMEOUT_MS']) / 1000);
    // The asset's source map names the files esbuild bundled.
    const assetDir = path.join(s.outdir, `asset.${(fn['Code']['S3Key'] as string).replace(/\.zip$/, '')}`);
    const sources = (JSON.parse(readFileSync(path.join(assetDir, 'index.mjs.map'), 'utf8')) as { sources: string[] }).sources;
    expect(sources.some((src) => /(^|\/)edge\/lambda\.ts$/.test(src))).toBe(true);
  });

  it('sets only edge config variables, valid by the edge schema, with no literal secret', () => {
    const variables = env(edgeFnId());
    const known = new Set(Object.keys(EdgeConfigSchema.shape));
    expect(Object.keys(variables).filter((k) => !known.has(k) && !RUNTIME_VARIABLES.has(k))).toEqual([]);
    // The AUTH token is a deploy-time reference to Secrets Manager, not a value in the template.
    expect(JSON.stringify(variables['REDIS_PASSWORD'])).toMatch(/^\{"Fn::Join":\["",\["\{\{resolve:secretsmanager:"/);
    expect(variables['API_KEYS']).toBeUndefined();
    const redisSecretId = logicalIdOf(s.json, 'AWS::SecretsManager::Secret', 'RedisAuthToken');
    expect(references(variables['REDIS_PASSWORD'], redisSecretId)).toBe(true);

    const parsed = edgeConfig();
    expect(parsed.REDIS_URL).toBe('rediss://placeholder:6380');
    expect(parsed.STATE_STORE).toEqual({ kind: 's3', bucket: 'placeholder', prefix: 'state' });
    expect(parsed.DEFAULT_MODEL).toBe('demo');
  });

  it('takes request bodies Lambda can carry: JSON as is, a state upload base64-encoded', () => {
    const parsed = edgeConfig();
    const lambdaPayload = 6 * 1024 * 1024;
    expect(parsed.MAX_REQUEST_BYTES).toBeLessThan(lambdaPayload);
    // A binary body is base64 in the event (4/3 of its size); leave room for headers and the envelope.
    expect(Math.ceil(parsed.MAX_STATE_UPLOAD_BYTES / 3) * 4).toBeLessThan(lambdaPayload - 256 * 1024);
    // ...and still holds a mamba-130m-sized fp32 state with its header.
    expect(parsed.MAX_STATE_UPLOAD_BYTES).toBeGreaterThan(24 * 1536 * (16 + 4) * 4 + 64 * 1024);
  });

  it('queues turns for the workers\' model while none runs, and waits long enough for one to start', () => {
    const parsed = edgeConfig();
    expect(parsed.QUEUE_WITHOUT_WORKERS).toBe(true);
    expect(parsed.DEFAULT_MODEL).toBe(workerConfig().MODEL_ID);
    expect(parsed.DEFAULT_MODEL).toBe(env(publisherFnId())['MODEL_IDS']);
    // A cold GPU start takes 5-10 minutes; the Lambda must outlive the turn and stay within 15.
    expect(parsed.TURN_TIMEOUT_MS).toBeGreaterThanOrEqual(12 * 60_000);
    const timeout = props(edgeFnId())['Timeout'] as number;
    expect(timeout * 1000).toBeGreaterThan(parsed.TURN_TIMEOUT_MS + 5_000);
    expect(timeout).toBeLessThanOrEqual(900);
  });
});

describe('queue-metrics publisher', () => {
  it('runs every minute inside the VPC and measures the model the workers serve', () => {
    const [, rule] = resourcesOfType(s.json, 'AWS::Events::Rule').find(([, r]) => r['ScheduleExpression'])!;
    expect(rule['ScheduleExpression']).toBe('rate(1 minute)');
    expect(references((rule['Targets'] as unknown[])[0], publisherFnId())).toBe(true);
    expect(props(publisherFnId())['VpcConfig']).toBeDefined();

    const variables = env(publisherFnId());
    const parsed = parseEnv(QueueMetricsEnvSchema, Object.fromEntries(Object.entries(variables).map(([k, v]) => [k, render(v, s.json.Resources)])));
    expect(parsed).toMatchObject({ MODEL_IDS: ['demo'], DEPLOYMENT: 'MambaServe', METRICS_NAMESPACE: 'MambaServe', TURNS_PER_WORKER: 8 });
    const known = new Set(Object.keys(QueueMetricsEnvSchema.shape));
    expect(Object.keys(variables).filter((k) => !known.has(k) && !RUNTIME_VARIABLES.has(k))).toEqual([]);
    // The token is read at run time from the secret, never placed in the environment.
    expect(variables['REDIS_PASSWORD']).toBeUndefined();
    expect(references(variables['REDIS_PASSWORD_SECRET_ARN'], logicalIdOf(s.json, 'AWS::SecretsManager::Secret', 'RedisAuthToken'))).toBe(true);
  });
});

describe('GPU workers', () => {
  it('asks for one GPU per worker container, on the ECS GPU-optimized AMI', () => {
    const task = props(logicalIdOf(s.json, 'AWS::ECS::TaskDefinition', 'WorkersTask'));
    expect(task['RequiresCompatibilities']).toEqual(['EC2']);
    expect(task['NetworkMode']).toBe('awsvpc');
    expect(workerContainer()['ResourceRequirements']).toEqual([{ Type: 'GPU', Value: '1' }]);

    const launchTemplate = props(logicalIdOf(s.json, 'AWS::EC2::LaunchTemplate', 'WorkersLaunchTemplate'))['LaunchTemplateData'];
    expect(launchTemplate['InstanceType']).toBe('g5.xlarge');
    expect(launchTemplate['MetadataOptions']).toEqual({ HttpPutResponseHopLimit: 1, HttpTokens: 'required' });
    expect(launchTemplate['BlockDeviceMappings'][0]['Ebs']).toMatchObject({ Encrypted: true, VolumeSize: 100 });
    const amiParameter = (launchTemplate['ImageId'] as { Ref: string }).Ref;
    s.template.hasParameter(amiParameter, {
      Type: 'AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>',
      Default: '/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id',
    });
  });

  it('builds the worker image from worker/Dockerfile for the instance family\'s GPU', () => {
    const assets = JSON.parse(readFileSync(path.join(s.outdir, `${s.stack.artifactId}.assets.json`), 'utf8')) as {
      dockerImages: Record<string, { source: { dockerFile?: string; dockerBuildArgs?: Record<string, string>; platform?: string } }>;
    };
    const images = Object.values(assets.dockerImages).map((i) => i.source);
    expect(images).toEqual([
      expect.objectContaining({ dockerFile: 'worker/Dockerfile', dockerBuildArgs: { CUDA_ARCHS: '86' }, platform: 'linux/amd64' }),
    ]);
  });

  it('sets only worker config variables, valid by the worker schema; the Redis token is an ECS secret', () => {
    const container = workerContainer();
    const variables = workerEnv();
    const known = new Set(Object.keys(WorkerConfigSchema.shape));
    expect(Object.keys(variables).filter((k) => !known.has(k) && !RUNTIME_VARIABLES.has(k))).toEqual([]);
    expect(variables['REDIS_PASSWORD']).toBeUndefined();
    expect(container['Secrets']).toEqual([
      { Name: 'REDIS_PASSWORD', ValueFrom: { Ref: logicalIdOf(s.json, 'AWS::SecretsManager::Secret', 'RedisAuthToken') } },
    ]);
    const parsed = workerConfig();
    expect(parsed).toMatchObject({ MODEL_ID: 'demo', MODEL_DIR: 's3://placeholder/models/demo', WORKER_CONCURRENCY: 8 });
    // The worker must let go of its turns before ECS kills it.
    expect(parsed.SHUTDOWN_GRACE_MS).toBeLessThan(container['StopTimeout'] * 1000);
    // One task definition serves every task: a WORKER_ID here would name them all alike (the
    // worker's default is unique per process).
    expect(variables['WORKER_ID']).toBeUndefined();
  });

  it('agrees with the edge on every variable both read (deadlines, retention, leases, liveness, limits)', () => {
    const edge = edgeConfig() as Record<string, unknown>;
    const worker = workerConfig() as Record<string, unknown>;
    const shared = Object.keys(EdgeConfigSchema.shape).filter((k) => k in WorkerConfigSchema.shape && k !== 'REDIS_PASSWORD');
    expect(shared).toEqual(expect.arrayContaining(['TURN_RETENTION_S', 'TURN_ATTEMPTS', 'LEASE_TTL_MS', 'WORKER_STALE_MS', 'TURN_TIMEOUT_MS']));
    for (const key of shared) expect(worker[key], key).toEqual(edge[key]);
    // Results live in Redis (noeviction) for the Idempotency-Key window: an hour, not the local day.
    expect(edge['TURN_RETENTION_S']).toBe(3600);
  });

  it('starts instances from zero and never terminates one that runs a worker', () => {
    const asg = props(logicalIdOf(s.json, 'AWS::AutoScaling::AutoScalingGroup', 'WorkersInstances'));
    expect(asg['MinSize']).toBe('0');
    expect(asg['MaxSize']).toBe('2');
    expect(asg['NewInstancesProtectedFromScaleIn']).toBe(true);
    s.template.hasResourceProperties('AWS::ECS::CapacityProvider', {
      AutoScalingGroupProvider: Match.objectLike({
        ManagedScaling: Match.objectLike({ Status: 'ENABLED', TargetCapacity: 100 }),
        ManagedTerminationProtection: 'ENABLED',
      }),
    });
    s.template.hasResourceProperties('AWS::ECS::Service', { DesiredCount: 0 });
  });
});

describe('Redis', () => {
  it('is node-based ElastiCache with noeviction, TLS, an AUTH token and failover', () => {
    const group = props(logicalIdOf(s.json, 'AWS::ElastiCache::ReplicationGroup', 'RedisReplicationGroup'));
    expect(group).toMatchObject({
      Engine: 'valkey',
      TransitEncryptionEnabled: true,
      TransitEncryptionMode: 'required',
      AtRestEncryptionEnabled: true,
      NumCacheClusters: 2,
      AutomaticFailoverEnabled: true,
      MultiAZEnabled: true,
    });
    expect(JSON.stringify(group['AuthToken'])).toContain('{{resolve:secretsmanager:');
    const parameters = props(logicalIdOf(s.json, 'AWS::ElastiCache::ParameterGroup', 'RedisParameters'));
    expect(parameters['Properties']).toEqual({ 'maxmemory-policy': 'noeviction' });
    expect(references(group['CacheParameterGroupName'], logicalIdOf(s.json, 'AWS::ElastiCache::ParameterGroup', 'RedisParameters'))).toBe(true);
    expect(resourcesOfType(s.json, 'AWS::ElastiCache::ServerlessCache')).toEqual([]);
  });

  it('admits only the edge, publisher and worker security groups, never an address range', () => {
    const redisSg = logicalIdOf(s.json, 'AWS::EC2::SecurityGroup', 'RedisSecurityGroup');
    expect(props(redisSg)['SecurityGroupIngress']).toBeUndefined();
    const ingress = resourcesOfType(s.json, 'AWS::EC2::SecurityGroupIngress')
      .map(([, p]) => p)
      .filter((p) => references(p['GroupId'], redisSg));
    expect(ingress.every((p) => p['CidrIp'] === undefined && p['CidrIpv6'] === undefined && p['SourcePrefixListId'] === undefined)).toBe(true);
    const sources = ingress.map((p) => (p['SourceSecurityGroupId'] as { 'Fn::GetAtt': [string] })['Fn::GetAtt'][0]).sort();
    expect(sources).toEqual(
      [
        logicalIdOf(s.json, 'AWS::EC2::SecurityGroup', 'EdgeSecurityGroup'),
        logicalIdOf(s.json, 'AWS::EC2::SecurityGroup', 'QueueMetricsSecurityGroup'),
        logicalIdOf(s.json, 'AWS::EC2::SecurityGroup', 'WorkersTaskSecurityGroup'),
      ].sort(),
    );
    expect(ingress.every((p) => p['FromPort'] === 6380 && p['ToPort'] === 6380)).toBe(true);
  });

  it('leaves no security group in the stack open to the internet', () => {
    const inline = resourcesOfType(s.json, 'AWS::EC2::SecurityGroup').flatMap(([, p]) => asList(p['SecurityGroupIngress'] as Record<string, unknown>[]));
    const separate = resourcesOfType(s.json, 'AWS::EC2::SecurityGroupIngress').map(([, p]) => p);
    const open = [...inline, ...separate].filter((r) => r['CidrIp'] === '0.0.0.0/0' || r['CidrIpv6'] === '::/0');
    expect(open).toEqual([]);
  });
});

describe('worker autoscaling', () => {
  const scalingAlarms = () =>
    resourcesOfType(s.json, 'AWS::CloudWatch::Alarm').filter(([, a]) =>
      asList(a['AlarmActions'] as unknown[]).some((action) =>
        resourcesOfType(s.json, 'AWS::ApplicationAutoScaling::ScalingPolicy').some(([policyId]) => references(action, policyId)),
      ),
    );

  it('drives the ECS service from the DesiredWorkers metric the publisher writes', () => {
    const [[targetId, target]] = resourcesOfType(s.json, 'AWS::ApplicationAutoScaling::ScalableTarget') as [[string, Record<string, any>]];
    expect(target).toMatchObject({ ServiceNamespace: 'ecs', ScalableDimension: 'ecs:service:DesiredCount', MinCapacity: 0, MaxCapacity: 2 });
    expect(references(target['ResourceId'], logicalIdOf(s.json, 'AWS::ECS::Service', 'WorkersService'))).toBe(true);

    const policies = resourcesOfType(s.json, 'AWS::ApplicationAutoScaling::ScalingPolicy');
    expect(policies).toHaveLength(2);
    for (const [, policy] of policies) {
      expect(policy['PolicyType']).toBe('StepScaling');
      expect((policy['StepScalingPolicyConfiguration'] as Record<string, unknown>)['AdjustmentType']).toBe('ExactCapacity');
      expect(policy['ScalingTargetId']).toEqual({ Ref: targetId });
    }

    const alarms = scalingAlarms();
    expect(alarms).toHaveLength(2);
    const publisher = env(publisherFnId());
    for (const [, alarm] of alarms) {
      expect(alarm).toMatchObject({ Namespace: publisher['METRICS_NAMESPACE'], MetricName: 'DesiredWorkers', Statistic: 'Maximum', Period: 60 });
      expect(alarm['Dimensions']).toEqual([
        { Name: 'Deployment', Value: publisher['DEPLOYMENT'] },
        { Name: 'Model', Value: publisher['MODEL_IDS'] },
      ]);
    }
  });

  /** What Application Auto Scaling would set for a DesiredWorkers value, read from the template. */
  function capacityFor(desired: number, minutesAtThatValue: number): number | 'unchanged' {
    for (const [, alarm] of scalingAlarms()) {
      const threshold = alarm['Threshold'] as number;
      const breaching = alarm['ComparisonOperator'] === 'GreaterThanOrEqualToThreshold' ? desired >= threshold : desired <= threshold;
      if (!breaching || minutesAtThatValue < (alarm['EvaluationPeriods'] as number)) continue;
      const [policyId] = resourcesOfType(s.json, 'AWS::ApplicationAutoScaling::ScalingPolicy').find(([id]) =>
        asList(alarm['AlarmActions'] as unknown[]).some((a) => references(a, id)),
      )!;
      const steps = props(policyId)['StepScalingPolicyConfiguration']['StepAdjustments'] as Record<string, number>[];
      const delta = desired - threshold;
      const step = steps.find(
        (st) => (st['MetricIntervalLowerBound'] ?? -Infinity) <= delta && delta < (st['MetricIntervalUpperBound'] ?? Infinity),
      ) ?? steps.find((st) => st['MetricIntervalUpperBound'] === 0 && delta === 0);
      if (!step) throw new Error(`no step covers DesiredWorkers=${desired}`);
      return step['ScalingAdjustment']!;
    }
    return 'unchanged';
  }

  it('sets the worker count the queue needs within a minute, capped by the maximum', () => {
    expect(capacityFor(1, 1)).toBe(1);
    expect(capacityFor(2, 1)).toBe(2);
    expect(capacityFor(7, 1)).toBe(2); // maxWorkers
  });

  it('scales to zero only after the queue has been empty for scaleToZeroAfterMinutes', () => {
    expect(capacityFor(0, 14)).toBe('unchanged');
    expect(capacityFor(0, 15)).toBe(0);
  });
});

describe('IAM', () => {
  const statements = () => identityStatements(s.json.Resources as never);

  it('grants on the state bucket only explicit actions, never a wildcard', () => {
    const onBucket = statements().filter(({ statement }) => statement.Effect === 'Allow' && references(statement.Resource, stateBucketId()));
    expect(onBucket.length).toBeGreaterThanOrEqual(4); // edge and worker: objects + list
    for (const { statement } of onBucket) {
      for (const action of asList(statement.Action)) expect(action).not.toContain('*');
    }
    // Listing is confined to the prefixes each role works in.
    for (const { statement } of onBucket.filter(({ statement }) => asList(statement.Action).includes('s3:ListBucket'))) {
      expect(statement.Condition?.['StringLike']?.['s3:prefix']).toBeDefined();
    }
  });

  it('lets both tag superseded versions (turns and imports advance heads), and only the edge delete sessions', () => {
    const actionsOf = (fragment: string) =>
      new Set(
        statements()
          .filter(({ policy }) => policy.startsWith(fragment))
          .flatMap(({ statement }) => asList(statement.Action)),
      );
    const edge = actionsOf('EdgeLambdaFunctionServiceRoleDefaultPolicy');
    const worker = actionsOf('WorkersTaskTaskRoleDefaultPolicy');
    expect(edge.has('s3:DeleteObject')).toBe(true);
    expect(edge.has('s3:PutObjectTagging')).toBe(true);
    expect(worker.has('s3:PutObjectTagging')).toBe(true);
    // The worker deletes only prefix-cache entries it evicts, never a session's version.
    const workerDeletes = statements()
      .filter(({ policy, statement }) => policy.startsWith('WorkersTaskTaskRoleDefaultPolicy') && asList(statement.Action).includes('s3:DeleteObject'))
      .flatMap(({ statement }) => asList(statement.Resource as unknown[]).map((r) => JSON.stringify(r)));
    expect(workerDeletes).toHaveLength(1);
    expect(workerDeletes[0]).toContain(`/state/${PREFIX_CACHE_ROOT}/*`);
  });

  it('has no Allow of every action of a service anywhere', () => {
    const broad = statements()
      .filter(({ statement }) => statement.Effect === 'Allow')
      .flatMap(({ statement }) => asList(statement.Action))
      .filter((a) => a === '*' || a.endsWith(':*'));
    expect(broad).toEqual([]);
  });
});

describe('operations', () => {
  it('alarms on queue age, stale metrics, worker errors and Redis memory, to one topic', () => {
    const alarmNames = resourcesOfType(s.json, 'AWS::CloudWatch::Alarm').map(([id]) => id);
    for (const name of ['AlarmsQueueAge', 'AlarmsQueueMetricsStale', 'AlarmsWorkerErrors', 'AlarmsEdgeErrors', 'AlarmsRedisMemory']) {
      expect(alarmNames.some((id) => id.startsWith(name))).toBe(true);
    }
    s.template.hasResourceProperties('AWS::Logs::MetricFilter', {
      FilterPattern: '{ ($.level = "error") || ($.level = 50) }',
      LogGroupName: { Ref: logicalIdOf(s.json, 'AWS::Logs::LogGroup', 'WorkersLogs') },
    });
  });

  it('outputs the endpoint, the bucket and how to create an API key', () => {
    const outputs = s.template.toJSON()['Outputs'] as Record<string, { Value: unknown }>;
    expect(references(outputs['EndpointUrl']!.Value, logicalIdOf(s.json, 'AWS::Lambda::Url', 'EdgeLambdaFunctionFunctionUrl'))).toBe(true);
    expect(outputs['StateBucketName']!.Value).toEqual({ Ref: stateBucketId() });
    expect(JSON.stringify(outputs['CreateApiKeyCommand']!.Value)).toContain('aws secretsmanager put-secret-value');
    expect(outputs['UploadModelCommand']).toBeDefined();
  });
});

describe('cdk-nag', () => {
  it('passes AwsSolutions (synth throws otherwise), each acknowledgment with a reason', () => {
    const acknowledged: [string, string, string][] = [];
    for (const node of s.app.node.findAll() as IConstruct[]) {
      for (const entry of node.node.metadata) {
        if (entry.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
        for (const [rule, reason] of Object.entries(entry.data as Record<string, string>)) acknowledged.push([node.node.path, rule, reason]);
      }
    }
    for (const [, rule, reason] of acknowledged) {
      expect(reason.length, rule).toBeGreaterThanOrEqual(40);
    }
    // A new acknowledgment is a decision: it shows up here for review.
    expect(acknowledged.map(([p, rule]) => `${p} ${rule}`).sort()).toMatchSnapshot();
  });
});

it('matches the template snapshot (asset hashes masked)', () => {
  const masked = JSON.parse(JSON.stringify(s.json).replace(/[0-9a-f]{64}/g, '<asset-hash>'));
  expect(masked).toMatchSnapshot();
});

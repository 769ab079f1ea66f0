// The edge (Hono app, `edge/lambda.ts` exporting `handler = streamHandle(app)`) on Lambda.
//
// Front door: a Lambda Function URL with invoke mode RESPONSE_STREAM, not API Gateway.
// - SSE token streams need response streaming; a Function URL streams natively, for as long
//   as the function's timeout (up to 15 minutes), with no gateway integration timeout and no
//   per-request gateway charge on top of Lambda's.
// - Auth is the app's own (bearer API keys from Secrets Manager, mapped to tenants), so
//   API Gateway's authorizers and usage plans would duplicate it. What a Function URL lacks
//   (custom domain, WAF, edge caching) is added by putting CloudFront in front of it, which
//   keeps streaming; docs/deploy.md says so.
// The function runs inside the VPC because it must reach Redis; it reaches S3 through the
// gateway endpoint and Secrets Manager through the NAT or its interface endpoint.
//
// Redis AUTH token: EdgeConfig has only REDIS_PASSWORD (an env var), so CloudFormation resolves
// the Secrets Manager reference into the function's environment at deploy time. The template
// holds only the reference; the value sits in the function configuration (encrypted at rest,
// readable by whoever may call lambda:GetFunctionConfiguration), and a new token needs a
// redeploy. The worker gets the same token as an ECS secret (never in its task definition), and
// the metrics publisher reads it from Secrets Manager at cold start.
import { Aws, Duration, SecretValue, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as logs from 'aws-cdk-lib/aws-logs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import type { z } from 'zod';
import type { EdgeConfigSchema } from '../../shared/config.ts';
import { NodeLambda } from './node-lambda.ts';
import type { Redis } from './redis.ts';
import type { StateBucket } from './state-bucket.ts';

/** Only variables the edge's config schema knows; a typo is a compile error. */
export type EdgeEnvironment = Partial<Record<keyof z.input<typeof EdgeConfigSchema>, string>>;

/** Lambda's limit on an invocation's request payload: the Function URL event, envelope and body. */
export const LAMBDA_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024;

/**
 * JSON bodies arrive in the event as they are. The edge's own limit sits below Lambda's so an
 * oversized body gets the app's 413, not Lambda's bare error.
 */
export const LAMBDA_MAX_REQUEST_BYTES = 5 * 1024 * 1024;

/**
 * A state upload is one request body, and a Function URL passes any body that is not text or
 * JSON base64-encoded: an `.mstate` costs 4/3 of its size in the payload. 4 MiB encodes to
 * 5.33 MiB and leaves the rest for headers and the event envelope. That holds the fp32 state of
 * a mamba-130m-sized model (24 layers × 1536 channels × (16 + 4) floats = 2.9 MB); larger
 * states cannot be imported through the Lambda edge (docs/deploy.md).
 */
export const LAMBDA_MAX_STATE_UPLOAD_BYTES = 4 * 1024 * 1024;

/**
 * The API-keys secret starts as "," — an empty `key:tenant` list (ApiKeyList parses it to no
 * keys), so every request is 401 until an operator adds a key. Secrets Manager rejects an empty
 * string, and a generated value could not have the `key:tenant` shape.
 */
export const EMPTY_API_KEY_LIST = ',';

export interface EdgeFunctionProps {
  readonly entry: string;
  readonly repoRoot: string;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly redis: Redis;
  readonly state: StateBucket;
  readonly redisPrefix: string;
  readonly defaultModel: string;
  readonly memoryMiB: number;
  readonly turnTimeoutSeconds: number;
  /** TURN_RETENTION_S: the Idempotency-Key window; edge and workers must agree. */
  readonly turnRetentionSeconds: number;
  readonly maxQueueDepth: number;
  readonly maxTokensPerTurn: number;
  readonly maxInputTokensPerTurn: number;
  readonly logLevel: string;
  /** PLAYGROUND: serve the playground page at `/`. */
  readonly playground: boolean;
  readonly logRetention: logs.RetentionDays;
}

export class EdgeFunction extends Construct {
  readonly securityGroup: ec2.SecurityGroup;
  readonly apiKeys: secretsmanager.Secret;
  readonly lambda: NodeLambda;
  readonly url: lambda.FunctionUrl;

  constructor(scope: Construct, id: string, props: EdgeFunctionProps) {
    super(scope, id);
    this.securityGroup = new ec2.SecurityGroup(this, 'SecurityGroup', {
      vpc: props.vpc,
      description: 'mamba-serve edge Lambda: no ingress; egress to Redis and HTTPS (S3, Secrets Manager)',
      allowAllOutbound: false,
    });
    this.securityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to AWS APIs (endpoints or NAT)');
    props.redis.allowFrom(this.securityGroup, 'edge Lambda');

    this.apiKeys = new secretsmanager.Secret(this, 'ApiKeys', {
      description: 'mamba-serve API keys: comma-separated key:tenant pairs (API_KEYS format)',
      // Not a secret: the empty list. Real keys are put by the operator (stack output).
      secretStringValue: SecretValue.unsafePlainText(EMPTY_API_KEY_LIST),
    });
    Validations.of(this.apiKeys).acknowledge({
      id: 'AwsSolutions-SMG4',
      reason:
        'API keys are issued to tenants by an operator; rotating one means adding a new key:tenant pair, handing it over, then removing the old one, which no rotation Lambda can do.',
    });

    const environment: EdgeEnvironment = {
      REDIS_URL: props.redis.url,
      REDIS_PASSWORD: props.redis.authToken.secretValue.unsafeUnwrap(),
      REDIS_PREFIX: props.redisPrefix,
      STATE_STORE: props.state.stateStoreUrl,
      S3_REGION: Aws.REGION,
      API_KEYS_SECRET_ID: this.apiKeys.secretArn,
      DEFAULT_MODEL: props.defaultModel,
      // Workers scale from zero on the queue metric, so a turn must be queued (not refused
      // with 503) while none runs; it waits up to TURN_TIMEOUT_MS for one to start.
      QUEUE_WITHOUT_WORKERS: 'true',
      MAX_QUEUE_DEPTH: String(props.maxQueueDepth),
      TURN_TIMEOUT_MS: String(props.turnTimeoutSeconds * 1000),
      TURN_RETENTION_S: String(props.turnRetentionSeconds),
      MAX_TOKENS_PER_TURN: String(props.maxTokensPerTurn),
      MAX_INPUT_TOKENS_PER_TURN: String(props.maxInputTokensPerTurn),
      MAX_REQUEST_BYTES: String(LAMBDA_MAX_REQUEST_BYTES),
      MAX_STATE_UPLOAD_BYTES: String(LAMBDA_MAX_STATE_UPLOAD_BYTES),
      LOG_LEVEL: props.logLevel,
      PLAYGROUND: String(props.playground),
    };

    this.lambda = new NodeLambda(this, 'Lambda', {
      entry: props.entry,
      repoRoot: props.repoRoot,
      description: 'mamba-serve edge: HTTP API, auth, enqueue turns, stream tokens (SSE)',
      environment: environment as Record<string, string>,
      vpc: props.vpc,
      subnets: props.subnets,
      securityGroup: this.securityGroup,
      memoryMiB: props.memoryMiB,
      // A turn may stream until its own timeout, queue wait for a cold worker included; a
      // little more lets the edge send the error event itself. A client disconnect does not
      // end a streaming invocation, so this is also the cost ceiling of an abandoned stream.
      timeout: Duration.seconds(Math.min(900, props.turnTimeoutSeconds + 30)),
      logRetention: props.logRetention,
    });

    this.url = this.lambda.fn.addFunctionUrl({
      authType: lambda.FunctionUrlAuthType.NONE,
      invokeMode: lambda.InvokeMode.RESPONSE_STREAM,
    });

    this.apiKeys.grantRead(this.lambda.fn);
    // Sessions: read heads and versions, fork (copy), import and delete. An import advances the
    // head like a turn does, so the edge tags the replaced version superseded too.
    props.state.grantState(this.lambda.fn, { delete: true, tagSuperseded: true });
  }
}

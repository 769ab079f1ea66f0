// One way to turn a TypeScript entry of this repo into a Lambda function: bundled by the
// local esbuild (a devDependency) at synth time, never in Docker, so `cdk synth` works offline
// and in CI without a Docker engine. Used by the edge and the queue-metrics publisher.
import path from 'node:path';
import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

export interface NodeLambdaProps {
  /** Absolute path of the TypeScript entry file. */
  readonly entry: string;
  /** Absolute path of the repository root (package-lock.json, tsconfig.json). */
  readonly repoRoot: string;
  readonly description: string;
  readonly environment: Record<string, string>;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly securityGroup: ec2.ISecurityGroup;
  readonly memoryMiB: number;
  readonly timeout: Duration;
  readonly logRetention: logs.RetentionDays;
}

/**
 * The esbuild options both Lambdas share, exported so `npm run build:edge` bundles the same way
 * for inspection.
 */
export const BUNDLING: nodejs.BundlingOptions = {
  forceDockerBundling: false,
  // ESM because the app is ESM (top-level await, import.meta). CommonJS dependencies (ioredis,
  // bullmq's msgpackr) call require() on Node built-ins, which an ESM bundle lacks: define it.
  format: nodejs.OutputFormat.ESM,
  mainFields: ['module', 'main'],
  banner: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
  minify: true,
  sourceMap: true,
  // Bundle the AWS SDK too: the runtime's copy lags and changes under us; ours is the one tested.
  bundleAwsSDK: true,
  // Optional native accelerator of msgpackr (bullmq); its pure-JS fallback is used when absent.
  externalModules: ['msgpackr-extract'],
};

export class NodeLambda extends Construct {
  readonly fn: nodejs.NodejsFunction;
  readonly logGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: NodeLambdaProps) {
    super(scope, id);
    this.logGroup = new logs.LogGroup(this, 'Logs', {
      retention: props.logRetention,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.fn = new nodejs.NodejsFunction(this, 'Function', {
      entry: props.entry,
      handler: 'handler',
      projectRoot: props.repoRoot,
      depsLockFilePath: path.join(props.repoRoot, 'package-lock.json'),
      bundling: { ...BUNDLING, tsconfig: path.join(props.repoRoot, 'tsconfig.json') },
      // The newest Node runtime (cdk-nag L1); the code targets Node 20 and runs unchanged on it.
      runtime: lambda.Runtime.NODEJS_24_X,
      // Pure JavaScript bundles, so Graviton: ~20% cheaper per GB-second than x86.
      architecture: lambda.Architecture.ARM_64,
      description: props.description,
      environment: { NODE_OPTIONS: '--enable-source-maps', ...props.environment },
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      securityGroups: [props.securityGroup],
      memorySize: props.memoryMiB,
      timeout: props.timeout,
      logGroup: this.logGroup,
    });
    const role = this.fn.role!;
    Validations.of(role).acknowledge(
      {
        id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
        reason: 'AWS-maintained minimal policy: write this function\'s own CloudWatch log streams.',
      },
      {
        id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
        reason: 'AWS-maintained minimal policy: create and delete the ENIs a function in a VPC needs.',
      },
    );
  }
}

// Redis for BullMQ, session leases, token streams and head caches: node-based ElastiCache
// (Valkey by default, Redis OSS by choice). Not ElastiCache Serverless: BullMQ needs
// `maxmemory-policy noeviction` (an evicted job or lock key silently loses a turn), and
// Serverless neither lets you set it nor runs outside cluster mode.
//
// Access: in-transit encryption (clients use rediss://) with an AUTH token generated into
// Secrets Manager; a security group that admits only the security groups handed to
// `allowFrom` (edge Lambda, queue-metrics Lambda, worker tasks), never a CIDR.
import { Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as elasticache from 'aws-cdk-lib/aws-elasticache';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

export interface RedisProps {
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly engine: 'valkey' | 'redis';
  readonly nodeType: string;
  /** Replicas beyond the primary; 1+ enables Multi-AZ automatic failover. */
  readonly replicas: number;
}

const ENGINES = {
  valkey: { version: '8.0', family: 'valkey8' },
  redis: { version: '7.1', family: 'redis7' },
} as const;

/** Not 6379: a non-default port turns away the internet's blind scans (and cdk-nag's AEC5). */
export const REDIS_PORT = 6380;

export class Redis extends Construct {
  readonly securityGroup: ec2.SecurityGroup;
  readonly authToken: secretsmanager.Secret;
  readonly replicationGroup: elasticache.CfnReplicationGroup;

  constructor(scope: Construct, id: string, props: RedisProps) {
    super(scope, id);
    const engine = ENGINES[props.engine];

    this.securityGroup = new ec2.SecurityGroup(this, 'SecurityGroup', {
      vpc: props.vpc,
      description: 'mamba-serve Redis: ingress only from the edge, metrics publisher and worker security groups',
      allowAllOutbound: false,
    });

    // ElastiCache AUTH tokens: 16-128 printable characters without @ " /; alphanumerics avoid
    // any quoting problem in URLs and shells.
    this.authToken = new secretsmanager.Secret(this, 'AuthToken', {
      description: 'mamba-serve ElastiCache AUTH token (REDIS_PASSWORD)',
      generateSecretString: { passwordLength: 64, excludePunctuation: true },
    });
    Validations.of(this.authToken).acknowledge({
      id: 'AwsSolutions-SMG4',
      reason:
        'ElastiCache applies a new AUTH token only through a ModifyReplicationGroup ROTATE/SET sequence that a generic Secrets Manager rotation cannot drive; rotate by changing the secret and redeploying (docs/deploy.md).',
    });

    const parameters = new elasticache.CfnParameterGroup(this, 'Parameters', {
      cacheParameterGroupFamily: engine.family,
      description: 'mamba-serve: BullMQ requires noeviction',
      properties: { 'maxmemory-policy': 'noeviction' },
    });

    const subnetGroup = new elasticache.CfnSubnetGroup(this, 'Subnets', {
      description: 'mamba-serve Redis subnets',
      subnetIds: props.vpc.selectSubnets(props.subnets).subnetIds,
    });

    const multiAz = props.replicas > 0;
    this.replicationGroup = new elasticache.CfnReplicationGroup(this, 'ReplicationGroup', {
      replicationGroupDescription: 'mamba-serve queues, leases and token streams',
      engine: props.engine,
      engineVersion: engine.version,
      cacheNodeType: props.nodeType,
      numCacheClusters: 1 + props.replicas,
      automaticFailoverEnabled: multiAz,
      multiAzEnabled: multiAz,
      cacheParameterGroupName: parameters.ref,
      cacheSubnetGroupName: subnetGroup.ref,
      securityGroupIds: [this.securityGroup.securityGroupId],
      port: REDIS_PORT,
      transitEncryptionEnabled: true,
      transitEncryptionMode: 'required',
      atRestEncryptionEnabled: true,
      authToken: this.authToken.secretValue.unsafeUnwrap(),
      autoMinorVersionUpgrade: true,
      // Queued turns are short-lived and states are durable in S3; a daily snapshot is cheap
      // insurance for leases and heads across a total node loss.
      snapshotRetentionLimit: 1,
    });
    if (!multiAz) {
      Validations.of(this.replicationGroup).acknowledge({
        id: 'AwsSolutions-AEC4',
        reason: 'redisReplicas=0 was chosen explicitly in the deployment context to save cost; there is no failover.',
      });
    }
  }

  /** `REDIS_URL`: TLS, primary endpoint (writes go to the primary; failover moves the name). */
  get url(): string {
    return `rediss://${this.replicationGroup.attrPrimaryEndPointAddress}:${this.replicationGroup.attrPrimaryEndPointPort}`;
  }

  /** Admit `peer` to the Redis port, and let `peer` reach it (both sides of the rule). */
  allowFrom(peer: ec2.SecurityGroup, description: string): void {
    this.securityGroup.addIngressRule(peer, ec2.Port.tcp(REDIS_PORT), description);
    peer.addEgressRule(this.securityGroup, ec2.Port.tcp(REDIS_PORT), `to Redis: ${description}`);
  }
}

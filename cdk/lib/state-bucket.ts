// The S3 bucket of session states (and, by default, model weights), plus the log bucket that
// receives its access logs and the VPC's flow logs.
//
// Layout (DESIGN.md): `state/tenants/{tenant}/sessions/{session}/v{version}.mstate` plus a small
// manifest per session and immutable manifest pages of its older version entries
// (README, "Store layout"); `models/{modelId}/` holds Hugging Face checkpoints the workers read.
//
// Retention of old versions. Each version is its own key, so S3's noncurrent-version rules do
// not apply (those act on overwritten versions of *one* key), and an age-based rule on the
// prefix would delete a session's newest version merely because the session sat idle. A
// lifecycle rule cannot express "all but the newest key under a prefix". So the rule is
// tag-based: after the head of a session advances, whoever advanced it (a worker after a turn,
// the edge after a state import) tags the version it replaced `mamba-serve:superseded=true`,
// and the rule expires tagged objects once they are older than `supersededVersionRetentionDays`
// (counted from when the version was written, as S3 counts age from creation). A head version
// is never tagged and never expires. Until something is tagged, nothing expires: the failure
// mode is keeping too much, never losing a head.
//
// The prefix cache (stateless chats' reusable states, shared/prefix-cache.ts) lives under
// `state/prefix-cache/`: a cache, bounded per tenant by the workers' LRU eviction, and here by
// age as well (`prefixCacheRetentionDays`), so entries the eviction never saw (an index lost
// with Redis) cannot pile up. Losing one costs a recomputation, never data.
import { Aws, Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct, type IConstruct } from 'constructs';
import { PREFIX_CACHE_ROOT } from '../../shared/prefix-cache-root.ts';
import { SUPERSEDED_TAG } from '../../shared/superseded-tag.ts';

export const STATE_PREFIX = 'state';
export const MODELS_PREFIX = 'models';
export const PREFIX_CACHE_PREFIX = `${STATE_PREFIX}/${PREFIX_CACHE_ROOT}`;

export interface StateBucketProps {
  readonly encryption: 's3' | 'kms';
  readonly supersededVersionRetentionDays: number;
  readonly prefixCacheRetentionDays: number;
  /** Deny `.mstate` writes without If-None-Match (versions are immutable; see the policy below). */
  readonly requireConditionalWrites: boolean;
  readonly logRetentionDays: number;
}

export class StateBucket extends Construct {
  readonly bucket: s3.Bucket;
  readonly logBucket: s3.Bucket;
  readonly key: kms.Key | undefined;

  constructor(scope: Construct, id: string, props: StateBucketProps) {
    super(scope, id);

    // Access-log delivery supports SSE-S3 only. Retained on teardown like the state bucket, since
    // CloudFormation cannot delete a non-empty bucket and a failed delete would stall `cdk destroy`.
    this.logBucket = new s3.Bucket(this, 'Logs', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      lifecycleRules: [{ id: 'expire-logs', expiration: Duration.days(props.logRetentionDays) }],
      removalPolicy: RemovalPolicy.RETAIN,
    });
    Validations.of(this.logBucket).acknowledge({
      id: 'AwsSolutions-S1',
      reason: 'This is the access-log bucket itself; logging it into itself would loop.',
    });

    this.key =
      props.encryption === 'kms'
        ? new kms.Key(this, 'Key', { description: 'mamba-serve session states', enableKeyRotation: true, removalPolicy: RemovalPolicy.RETAIN })
        : undefined;

    this.bucket = new s3.Bucket(this, 'Bucket', {
      ...(this.key
        ? // A bucket key cuts KMS requests (one per checkpoint otherwise) by caching a data key.
          { encryption: s3.BucketEncryption.KMS, encryptionKey: this.key, bucketKeyEnabled: true }
        : { encryption: s3.BucketEncryption.S3_MANAGED }),
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      // Not versioned: every state version is already its own immutable key, and the per-session
      // manifest is rewritten every turn, so S3 versioning would only pile up manifest copies and
      // keep deleted sessions' data that a tenant asked to delete.
      versioned: false,
      serverAccessLogsBucket: this.logBucket,
      serverAccessLogsPrefix: 'state-bucket/',
      lifecycleRules: [
        {
          id: 'expire-superseded-session-versions',
          prefix: `${STATE_PREFIX}/`,
          tagFilters: { [SUPERSEDED_TAG.key]: SUPERSEDED_TAG.value },
          expiration: Duration.days(props.supersededVersionRetentionDays),
        },
        {
          id: 'expire-prefix-cache',
          prefix: `${PREFIX_CACHE_PREFIX}/`,
          expiration: Duration.days(props.prefixCacheRetentionDays),
        },
        { id: 'abort-incomplete-multipart-uploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
      ],
      // Tenants' sessions must survive a `cdk destroy`; docs/deploy.md says how to delete them.
      removalPolicy: RemovalPolicy.RETAIN,
    });

    if (props.requireConditionalWrites) {
      // S3 enforces what DESIGN.md promises: a version is never overwritten. A PUT of a `.mstate`
      // key must carry If-None-Match (`*`), so a retried or racing writer gets 412 instead of
      // replacing a published version. Off by default: it rejects any writer that does not send
      // the header, and multipart parts are authorized as s3:PutObject without it, so states
      // must be written with single PUTs (a Mamba state is a few MB to tens of MB).
      this.bucket.addToResourcePolicy(
        new iam.PolicyStatement({
          sid: 'DenyUnconditionalStateVersionWrites',
          effect: iam.Effect.DENY,
          principals: [new iam.AnyPrincipal()],
          actions: ['s3:PutObject'],
          resources: [this.bucket.arnForObjects(`${STATE_PREFIX}/*.mstate`)],
          conditions: { Null: { 's3:if-none-match': 'true' } },
        }),
      );
    }
  }

  /** `STATE_STORE` value for edge and worker (shared/config.ts StateStoreUrl). */
  get stateStoreUrl(): string {
    return `s3://${this.bucket.bucketName}/${STATE_PREFIX}`;
  }

  /** `MODEL_DIR` of a model kept in this bucket. */
  modelUri(modelId: string): string {
    return `s3://${this.bucket.bucketName}/${MODELS_PREFIX}/${modelId}`;
  }

  /**
   * Least privilege, spelled out: CDK's grantRead/grantReadWrite use wildcard actions
   * (`s3:GetObject*`, `s3:List*`, `s3:DeleteObject*`), which would also allow ACL and retention calls.
   */
  grantState(
    grantee: iam.IGrantable,
    access: { readonly delete: boolean; readonly tagSuperseded: boolean; readonly evictPrefixCache?: boolean },
  ): void {
    const actions = ['s3:GetObject', 's3:PutObject', 's3:AbortMultipartUpload'];
    if (access.delete) actions.push('s3:DeleteObject');
    if (access.tagSuperseded) actions.push('s3:PutObjectTagging');
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({ actions, resources: [this.bucket.arnForObjects(`${STATE_PREFIX}/*`)] }),
    );
    this.grantList(grantee, STATE_PREFIX);
    this.acknowledgePrefixWildcard(grantee, STATE_PREFIX, 'its sessions');
    if (access.evictPrefixCache && !access.delete) {
      // Evicting a tenant's least recently used prefix states (shared/prefix-cache.ts): deletes
      // confined to the cache, never a session's versions.
      grantee.grantPrincipal.addToPrincipalPolicy(
        new iam.PolicyStatement({ actions: ['s3:DeleteObject'], resources: [this.bucket.arnForObjects(`${PREFIX_CACHE_PREFIX}/*`)] }),
      );
      this.acknowledgePrefixWildcard(grantee, PREFIX_CACHE_PREFIX, 'the prefix cache entries it evicts');
    }
    if (this.key) {
      // GenerateDataKey for writes, Decrypt for reads (and for multipart completion).
      this.key.grant(grantee, 'kms:Decrypt', 'kms:GenerateDataKey');
    }
  }

  /** Read access to `models/{modelId}/` of this bucket. */
  grantModelRead(grantee: iam.IGrantable, modelId: string): void {
    const prefix = `${MODELS_PREFIX}/${modelId}`;
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({ actions: ['s3:GetObject'], resources: [this.bucket.arnForObjects(`${prefix}/*`)] }),
    );
    this.grantList(grantee, prefix);
    this.acknowledgePrefixWildcard(grantee, prefix, 'the model checkpoint files');
    if (this.key) this.key.grant(grantee, 'kms:Decrypt');
  }

  /**
   * cdk-nag flags every `prefix/*` object resource as a wildcard. The object keys under a
   * prefix are created at run time (tenants, sessions, versions), so a prefix is the narrowest
   * grant there is; the actions stay an explicit list.
   */
  private acknowledgePrefixWildcard(grantee: iam.IGrantable, prefix: string, what: string): void {
    const bucketId = Stack.of(this).getLogicalId(this.bucket.node.defaultChild as s3.CfnBucket);
    Validations.of(grantee.grantPrincipal as unknown as IConstruct).acknowledge({
      id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${prefix}/*]`,
      reason: `Object keys under ${prefix}/ are created at run time; the prefix is the narrowest resource that covers ${what}, with an explicit action list.`,
    });
  }

  private grantList(grantee: iam.IGrantable, prefix: string): void {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['s3:ListBucket'],
        resources: [this.bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${prefix}/*`, prefix] } },
      }),
    );
  }
}

/** Read access to a model kept outside the stack (context `modelUri` = s3://bucket/prefix). */
export function grantExternalModelRead(grantee: iam.IGrantable, modelUri: string): void {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(modelUri);
  if (!m) throw new Error(`not an s3:// URI: ${modelUri}`);
  const bucket = m[1]!;
  const prefix = m[2]!.replace(/\/+$/, '');
  const partition = Aws.PARTITION;
  const objects = prefix ? `${prefix}/*` : '*';
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({ actions: ['s3:GetObject'], resources: [`arn:${partition}:s3:::${bucket}/${objects}`] }),
  );
  Validations.of(grantee.grantPrincipal as unknown as IConstruct).acknowledge({
    id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::${bucket}/${objects}]`,
    reason: 'Read-only access to the files of the model checkpoint under the configured modelUri prefix.',
  });
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['s3:ListBucket'],
      resources: [`arn:${partition}:s3:::${bucket}`],
      conditions: { StringLike: { 's3:prefix': prefix ? [`${prefix}/*`, prefix] : ['*'] } },
    }),
  );
}

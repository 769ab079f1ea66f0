// The state store on S3 or an S3-compatible server (MinIO, R2, moto in tests). Conditional
// writes carry the store's guarantees: If-None-Match: * makes versions immutable, If-Match on
// the manifest's ETag makes the head advance compare-and-swap. A server that answers
// 501 NotImplemented to them is used without (logged once): the session lease in Redis then
// is the only guard against two writers.
//
// Every request has a deadline (STORE_TIMEOUT_MS; uploads get a second more per 8 MiB): a
// frozen server makes it fail with StoreUnavailableError, and the request is aborted.
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  PutObjectTaggingCommand,
  S3Client,
  S3ServiceException,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import {
  assertSafeKey,
  DEFAULT_STORE_TIMEOUT_MS,
  StorePreconditionError,
  StoreUnavailableError,
  withDeadline,
  type ListedPage,
  type StateStore,
  type StoredObject,
} from './state-store.ts';
import { SUPERSEDED_TAG } from './superseded-tag.ts';

export interface S3StateStoreOptions {
  readonly bucket: string;
  /** Key prefix without trailing slash ('' for the bucket root). */
  readonly prefix: string;
  readonly endpoint?: string;
  readonly forcePathStyle?: boolean;
  readonly region?: string;
  /** Explicit credentials (tests against a local server); otherwise the SDK's default chain. */
  readonly credentials?: { accessKeyId: string; secretAccessKey: string };
  readonly log?: (message: string) => void;
  /** Keys per ListObjectsV2 page (S3's maximum is 1000; tests page with fewer). */
  readonly listPageSize?: number;
  /** Deadline of one request, ms (STORE_TIMEOUT_MS). */
  readonly timeoutMs?: number;
}

/** Upload throughput every store is assumed to sustain: an upload's deadline grows by a second per this many bytes. */
const UPLOAD_BYTES_PER_S = 8 * 1024 * 1024;

export class S3StateStore implements StateStore {
  readonly description: string;
  private readonly client: S3Client;
  private conditionalWrites = true;

  constructor(private readonly options: S3StateStoreOptions) {
    const config: S3ClientConfig = {
      region: options.region ?? process.env['AWS_REGION'] ?? 'us-east-1',
      forcePathStyle: options.forcePathStyle ?? false,
      // Newer SDKs add CRC trailers to every upload by default; several S3-compatible servers
      // reject those. Checksums only where the API requires them; .mstate has its own SHA-256.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    };
    if (options.endpoint) config.endpoint = options.endpoint;
    if (options.credentials) config.credentials = options.credentials;
    this.client = new S3Client(config);
    this.description = `s3://${options.bucket}/${options.prefix}${options.endpoint ? ` at ${options.endpoint}` : ''}`;
  }

  /** One request under its deadline; the SDK's own retries happen inside it. */
  private request<T>(what: string, run: (abortSignal: AbortSignal) => Promise<T>, uploadBytes = 0): Promise<T> {
    const ms = (this.options.timeoutMs ?? DEFAULT_STORE_TIMEOUT_MS) + Math.ceil((1000 * uploadBytes) / UPLOAD_BYTES_PER_S);
    return withDeadline(ms, what, run);
  }

  private fullKey(key: string): string {
    assertSafeKey(key);
    return this.options.prefix ? `${this.options.prefix}/${key}` : key;
  }

  async get(key: string): Promise<StoredObject | null> {
    try {
      return await this.request(`get ${key}`, async (abortSignal) => {
        const out = await this.client.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: this.fullKey(key) }), { abortSignal });
        // The body is read under the same deadline: a server can freeze halfway through it.
        const bytes = await out.Body!.transformToByteArray();
        return { bytes, etag: out.ETag ?? '' };
      });
    } catch (e) {
      if (e instanceof S3ServiceException && (e.name === 'NoSuchKey' || e.$metadata.httpStatusCode === 404)) return null;
      throw this.wrap(e, `get ${key}`);
    }
  }

  putIfAbsent(key: string, bytes: Uint8Array): Promise<string> {
    return this.put(key, bytes, { IfNoneMatch: '*' });
  }

  putIfMatch(key: string, bytes: Uint8Array, etag: string): Promise<string> {
    return this.put(key, bytes, { IfMatch: etag });
  }

  private async put(key: string, bytes: Uint8Array, condition: { IfNoneMatch?: string; IfMatch?: string }): Promise<string> {
    const send = (cond: typeof condition) =>
      this.request(
        `put ${key}`,
        (abortSignal) =>
          this.client.send(
            new PutObjectCommand({ Bucket: this.options.bucket, Key: this.fullKey(key), Body: bytes, ContentLength: bytes.byteLength, ...cond }),
            { abortSignal },
          ),
        bytes.byteLength,
      );
    try {
      const out = await send(this.conditionalWrites ? condition : {});
      return out.ETag ?? '';
    } catch (e) {
      if (e instanceof S3ServiceException) {
        const status = e.$metadata.httpStatusCode;
        // 409 ConditionalRequestConflict: a concurrent conditional write to the same key.
        // 404 on If-Match: the object to replace is gone, which fails the precondition too.
        if (status === 412 || status === 409 || e.name === 'PreconditionFailed' || (condition.IfMatch && status === 404)) {
          throw new StorePreconditionError(key, `${key}: ${condition.IfNoneMatch ? 'already exists' : 'changed since it was read'}`);
        }
        if (status === 501 || e.name === 'NotImplemented') {
          this.conditionalWrites = false;
          this.options.log?.(`state store ${this.description} does not support conditional writes; relying on Redis leases alone`);
          const out = await send({}).catch((err: unknown) => {
            throw this.wrap(err, `put ${key}`);
          });
          return out.ETag ?? '';
        }
      }
      throw this.wrap(e, `put ${key}`);
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += 1000) {
      const chunk = keys.slice(i, i + 1000).map((k) => ({ Key: this.fullKey(k) }));
      try {
        const out = await this.request('delete', (abortSignal) =>
          this.client.send(new DeleteObjectsCommand({ Bucket: this.options.bucket, Delete: { Objects: chunk, Quiet: true } }), { abortSignal }),
        );
        if (out.Errors && out.Errors.length > 0) {
          throw new StoreUnavailableError(`delete: ${out.Errors.length} objects failed (${out.Errors[0]?.Code}: ${out.Errors[0]?.Message})`);
        }
      } catch (e) {
        throw this.wrap(e, 'delete');
      }
    }
  }

  async list(prefix: string): Promise<string[]> {
    const full = this.fullKey(prefix.replace(/\/$/, '')) + '/';
    const strip = this.options.prefix ? this.options.prefix.length + 1 : 0;
    const keys: string[] = [];
    let token: string | undefined;
    do {
      let out;
      try {
        const continuation = token;
        out = await this.request(`list ${prefix}`, (abortSignal) =>
          this.client.send(
            new ListObjectsV2Command({
              Bucket: this.options.bucket,
              Prefix: full,
              MaxKeys: this.options.listPageSize ?? 1000,
              ...(continuation ? { ContinuationToken: continuation } : {}),
            }),
            { abortSignal },
          ),
        );
      } catch (e) {
        throw this.wrap(e, `list ${prefix}`);
      }
      for (const o of out.Contents ?? []) if (o.Key) keys.push(o.Key.slice(strip));
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
    return keys;
  }

  async listPage(prefix: string, options: { startAfter?: string | undefined; limit: number }): Promise<ListedPage> {
    const full = this.fullKey(prefix.replace(/\/$/, '')) + '/';
    const strip = this.options.prefix ? this.options.prefix.length + 1 : 0;
    let out;
    try {
      out = await this.request(`list ${prefix}`, (abortSignal) =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.options.bucket,
            Prefix: full,
            // Only the level asked for: deeper keys fold into CommonPrefixes, which are not listed.
            Delimiter: '/',
            MaxKeys: Math.min(options.limit, 1000),
            ...(options.startAfter !== undefined ? { StartAfter: this.fullKey(options.startAfter) } : {}),
          }),
          { abortSignal },
        ),
      );
    } catch (e) {
      throw this.wrap(e, `list ${prefix}`);
    }
    const objects = (out.Contents ?? []).filter((o) => o.Key).map((o) => ({ key: o.Key!.slice(strip), bytes: o.Size ?? 0 }));
    return { objects, hasMore: out.IsTruncated === true };
  }

  async markSuperseded(key: string): Promise<void> {
    try {
      await this.request(`tag ${key}`, (abortSignal) =>
        this.client.send(
          new PutObjectTaggingCommand({
            Bucket: this.options.bucket,
            Key: this.fullKey(key),
            Tagging: { TagSet: [{ Key: SUPERSEDED_TAG.key, Value: SUPERSEDED_TAG.value }] },
          }),
          { abortSignal },
        ),
      );
    } catch (e) {
      throw this.wrap(e, `tag ${key}`);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  private wrap(e: unknown, what: string): Error {
    if (e instanceof StoreUnavailableError || e instanceof StorePreconditionError) return e;
    const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return new StoreUnavailableError(`state store ${what}: ${message}`, { cause: e });
  }
}

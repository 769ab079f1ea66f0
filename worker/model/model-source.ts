// Where a model comes from: a local directory, a Hugging Face Hub id (`org/name[@revision]`,
// fetched into the standard Hub cache: hub-source.ts), or an s3://bucket/prefix that is
// mirrored into a local cache (MODEL_CACHE_DIR) first, because the loader reads tensors with
// positioned reads and ONNX Runtime maps weight files from disk. Downloads that take longer
// than a couple of seconds show their progress (shared/progress.ts).
//
// Files already cached with the same size and ETag are not fetched again, so a restarted
// worker starts without re-downloading gigabytes. Each file is written to a temporary name
// and renamed into place, so a crash mid-download never leaves a truncated file under the
// real name (two workers sharing a cache at most download the same file twice).
import { GetObjectCommand, ListObjectsV2Command, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { startProgress, type Progress, type ProgressSink } from '../../shared/progress.ts';
import { ModelError } from './errors.ts';
import { fileExists } from './model-files.ts';
import { parseHubId, resolveHubModel, type HubOptions } from './hub-source.ts';

export interface S3SourceOptions {
  readonly endpoint?: string | undefined;
  readonly region?: string | undefined;
  readonly forcePathStyle?: boolean | undefined;
  readonly credentials?: S3ClientConfig['credentials'];
  /** A client to use instead of one built from the options above. */
  readonly client?: S3Client;
  /** Download progress (file, bytes done, bytes in all); default: a progress bar on stderr. */
  readonly onProgress?: (file: string, done: number, total: number) => void;
}

/** The files of a model directory we fetch; anything else under the prefix is left alone. */
const MODEL_FILE = /^(config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|generation_config\.json|model\.safetensors\.index\.json|[A-Za-z0-9._-]+\.safetensors|pytorch_model\.bin)$/;
const MANIFEST = '.mamba-serve-source.json';

interface CachedFile {
  size: number;
  etag: string;
}
type Manifest = { source: string; files: Record<string, CachedFile> };

/** Where a model location points, decided without touching the network. */
export async function modelLocationKind(location: string): Promise<'s3' | 'local' | 'hub'> {
  if (location.startsWith('s3://')) return 's3';
  // A local directory wins over a Hub id of the same spelling ("models/demo" is both).
  if (await fileExists(location)) return 'local';
  return parseHubId(location) ? 'hub' : 'local';
}

/** Per-file download progress on `sink` (the worker's and the CLI's stderr). */
export function downloadProgress(what: string, sink?: ProgressSink): (file: string, done: number, total: number) => void {
  let current: { file: string; progress: Progress } | undefined;
  return (file, done, total) => {
    if (current?.file !== file) {
      current?.progress.finish();
      current = { file, progress: startProgress({ label: `downloading ${what}: ${file}`, total, ...(sink ? { sink } : {}) }) };
    }
    current.progress.update(done);
    if (done >= total) current.progress.finish();
  };
}

export function parseS3Url(location: string): { bucket: string; prefix: string } | undefined {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(location);
  if (!m) return undefined;
  return { bucket: m[1]!, prefix: (m[2] ?? '').replace(/\/+$/, '') };
}

/**
 * A local directory holding the model at `location`: `location` itself when it is a path,
 * else the s3:// prefix mirrored under `cacheDir`.
 */
export async function resolveModelDir(location: string, cacheDir: string, s3Options: S3SourceOptions = {}, hubOptions: HubOptions = {}): Promise<string> {
  const kind = await modelLocationKind(location);
  if (kind === 'hub') return resolveHubModel(parseHubId(location)!, { onProgress: downloadProgress(location), ...hubOptions });
  if (kind === 'local') return location;
  const parsed = parseS3Url(location);
  if (!parsed) throw new ModelError('model_not_found', `${location}: not a valid s3://bucket/prefix`);
  const { bucket, prefix } = parsed;
  const segments = prefix === '' ? [] : prefix.split('/');
  if (segments.some((s) => s === '' || s === '.' || s === '..')) {
    throw new ModelError('model_not_found', `${location}: the prefix must not contain empty, "." or ".." segments`);
  }
  const dir = resolve(cacheDir, 'models', bucket, ...segments);
  const client = s3Options.client ?? new S3Client(clientConfig(s3Options));
  try {
    const remote = await listModelFiles(client, bucket, prefix, location);
    if (!remote.has('config.json')) {
      throw new ModelError('model_not_found', `${location}: no config.json under this prefix (found ${remote.size} model files)`);
    }
    await mkdir(dir, { recursive: true });
    const manifest = await readManifest(dir, location);
    // Files of an older version of the model that the prefix no longer has would confuse the
    // loader (model.safetensors beside a new sharded index): remove them.
    for (const name of Object.keys(manifest.files)) {
      if (!remote.has(name)) {
        await rm(join(dir, name), { force: true });
        delete manifest.files[name];
      }
    }
    for (const [name, want] of remote) {
      const have = manifest.files[name];
      if (have && have.etag === want.etag && have.size === want.size && (await sizeOf(join(dir, name))) === want.size) continue;
      await download(client, bucket, prefix === '' ? name : `${prefix}/${name}`, join(dir, name), want.size, location, s3Options.onProgress ?? downloadProgress(location));
      manifest.files[name] = want;
      await writeManifest(dir, manifest);
    }
    await writeManifest(dir, manifest);
    return dir;
  } finally {
    if (!s3Options.client) client.destroy();
  }
}

function clientConfig(o: S3SourceOptions): S3ClientConfig {
  const config: S3ClientConfig = { region: o.region ?? process.env.AWS_REGION ?? 'us-east-1' };
  if (o.endpoint) config.endpoint = o.endpoint;
  if (o.forcePathStyle) config.forcePathStyle = true;
  if (o.credentials) config.credentials = o.credentials;
  return config;
}

function s3Failure(location: string, what: string, cause: unknown): ModelError {
  const e = cause as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  if (e?.name === 'NoSuchBucket' || e?.$metadata?.httpStatusCode === 404) {
    return new ModelError('model_not_found', `${location}: ${what}: ${e.name ?? 'not found'}`, { cause });
  }
  return new ModelError('model_download_failed', `${location}: ${what}: ${e?.name ?? 'Error'}: ${e?.message ?? String(cause)}`, { cause });
}

async function listModelFiles(client: S3Client, bucket: string, prefix: string, location: string): Promise<Map<string, CachedFile>> {
  const files = new Map<string, CachedFile>();
  const keyPrefix = prefix === '' ? '' : `${prefix}/`;
  let token: string | undefined;
  do {
    let page;
    try {
      page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: keyPrefix, Delimiter: '/', ContinuationToken: token }));
    } catch (cause) {
      throw s3Failure(location, 'listing the prefix failed', cause);
    }
    for (const obj of page.Contents ?? []) {
      const name = (obj.Key ?? '').slice(keyPrefix.length);
      if (MODEL_FILE.test(name)) files.set(name, { size: obj.Size ?? 0, etag: obj.ETag ?? '' });
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return files;
}

async function download(
  client: S3Client,
  bucket: string,
  key: string,
  path: string,
  size: number,
  location: string,
  onProgress: (file: string, done: number, total: number) => void,
): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    let body;
    try {
      body = (await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body;
    } catch (cause) {
      throw s3Failure(location, `fetching ${key} failed`, cause);
    }
    if (!(body instanceof Readable)) throw new ModelError('model_download_failed', `${location}: ${key}: the response has no body stream`);
    let done = 0;
    const name = key.slice(key.lastIndexOf('/') + 1);
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        onProgress(name, (done += chunk.length), size);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(body, counter, createWriteStream(tmp));
    } catch (cause) {
      throw s3Failure(location, `downloading ${key} failed`, cause);
    }
    const got = await sizeOf(tmp);
    if (got !== size) {
      throw new ModelError('model_download_failed', `${location}: ${key}: received ${got} bytes, the listing says ${size} (changed or truncated; retry)`);
    }
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}

async function readManifest(dir: string, source: string): Promise<Manifest> {
  try {
    const m = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as Manifest;
    if (m && m.source === source && typeof m.files === 'object' && m.files !== null) return m;
  } catch {
    // absent or unreadable: start over (every file is checked against S3 anyway)
  }
  return { source, files: {} };
}

async function writeManifest(dir: string, manifest: Manifest): Promise<void> {
  const tmp = join(dir, `${MANIFEST}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  await writeFile(tmp, JSON.stringify(manifest, null, 2));
  await rename(tmp, join(dir, MANIFEST));
}

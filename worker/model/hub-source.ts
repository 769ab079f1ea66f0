// Models by Hugging Face Hub id (`org/name`, optionally `@revision`): the model's files are
// fetched into the standard Hub cache (`$HF_HUB_CACHE`, or `$HF_HOME/hub`, or
// ~/.cache/huggingface/hub), laid out exactly as Python's `huggingface_hub` lays it out, so a
// cache either of them filled serves the other:
//
//   models--{org}--{name}/refs/{revision}                 the commit the revision resolved to
//   models--{org}--{name}/blobs/{etag}                    file contents (sha256 for LFS files, git oid else)
//   models--{org}--{name}/snapshots/{commit}/{path}  ->  ../../blobs/{etag}   (relative symlinks)
//
// The Hub API calls (what a revision resolves to, the file list with sizes and hashes) go
// through the official `@huggingface/hub` library. The bytes are moved here, because the
// library's download restarts from zero after an interruption and checks nothing: a partial
// blob (`{etag}.incomplete`) is resumed with a Range request, and every blob is verified
// against the hash the Hub lists for it (sha256 of an LFS file, the git blob sha1 of a small
// one) before it is renamed into place, so the cache never holds a corrupt file under a real
// name. HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE mean what they mean to huggingface_hub.
import { getRepoFolderName, listFiles, modelInfo } from '@huggingface/hub';
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, open, readFile, readlink, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { ModelError } from './errors.ts';

export interface HubOptions {
  /** HF_ENDPOINT: the Hub (or a mirror) to ask. */
  readonly endpoint?: string | undefined;
  /** HF_TOKEN: for gated and private models. */
  readonly token?: string | undefined;
  /** HF_HUB_OFFLINE: use the cache only, never the network. */
  readonly offline?: boolean | undefined;
  /** The cache root (HF_HUB_CACHE); default $HF_HOME/hub, else ~/.cache/huggingface/hub. */
  readonly cacheDir?: string | undefined;
  /** Called as bytes arrive (file name, bytes of it done, its size). */
  readonly onProgress?: ((file: string, done: number, total: number) => void) | undefined;
  /** Called once per file fetched (not for files already cached). */
  readonly onFile?: ((file: string, size: number) => void) | undefined;
  /** Instead of the global fetch (tests inject faults). */
  readonly fetch?: typeof fetch;
}

export interface HubRef {
  readonly repo: string;
  readonly revision: string;
}

const DEFAULT_ENDPOINT = 'https://huggingface.co';
const COMMIT = /^[0-9a-f]{40}$/;
/** What a model directory needs (the loader reads nothing else); weights chosen below. */
const SUPPORT_FILE = /^(config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|generation_config\.json)$/;
const SAFETENSORS = /^(model\.safetensors\.index\.json|[A-Za-z0-9._-]+\.safetensors)$/;
const TORCH = /^(pytorch_model\.bin\.index\.json|pytorch_model(-\d+-of-\d+)?\.bin)$/;

/** `org/name` or `org/name@revision`, as the Hub names repositories; undefined for anything else. */
export function parseHubId(location: string): HubRef | undefined {
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]{0,95})\/([A-Za-z0-9][A-Za-z0-9._-]{0,95})(?:@([A-Za-z0-9._/-]{1,255}))?$/.exec(location);
  if (!m || m[1]!.includes('..') || m[2]!.includes('..') || m[2]!.endsWith('.git')) return undefined;
  return { repo: `${m[1]}/${m[2]}`, revision: m[3] ?? 'main' };
}

/** HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. */
export function defaultHubCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  const home = env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface');
  return join(home, 'hub');
}

interface RemoteFile {
  readonly path: string;
  readonly size: number;
  /** The blob's name in the cache: sha256 for LFS files, git oid else. */
  readonly etag: string;
  readonly verify: 'sha256' | 'git-sha1';
}

/** The snapshot directory of `ref`, fetching what the cache lacks. */
export async function resolveHubModel(ref: HubRef, options: HubOptions = {}): Promise<string> {
  const cache = options.cacheDir ?? defaultHubCache();
  const storage = join(cache, getRepoFolderName({ type: 'model', name: ref.repo }));
  const where = `${ref.repo}@${ref.revision}`;
  if (options.offline) {
    const dir = await cachedSnapshot(storage, ref.revision);
    if (!dir) {
      throw new ModelError('model_not_found', `${where}: not in the Hub cache (${cache}) and HF_HUB_OFFLINE is set`);
    }
    return dir;
  }
  const endpoint = (options.endpoint ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
  const common: HubCall = { hubUrl: endpoint, ...(options.token ? { accessToken: options.token } : {}), ...(options.fetch ? { fetch: options.fetch } : {}) };
  let commit: string;
  let files: RemoteFile[];
  try {
    commit = COMMIT.test(ref.revision)
      ? ref.revision
      : ((await modelInfo({ name: ref.repo, revision: ref.revision, additionalFields: ['sha'], ...common })) as { sha?: string }).sha ?? '';
    if (!COMMIT.test(commit)) throw new Error(`the Hub gave no commit for revision ${ref.revision}`);
    files = await modelFiles(ref.repo, commit, common, where);
  } catch (cause) {
    if (cause instanceof ModelError) throw cause;
    // Offline in fact though not by setting: a cached snapshot of this revision still serves.
    const cached = await cachedSnapshot(storage, ref.revision);
    if (cached) return cached;
    throw hubError(where, endpoint, cause);
  }
  const snapshot = join(storage, 'snapshots', commit);
  for (const file of files) {
    const blob = join(storage, 'blobs', file.etag);
    if (!(await isWholeBlob(blob, file.size))) {
      options.onFile?.(file.path, file.size);
      await fetchBlob(`${endpoint}/${ref.repo}/resolve/${commit}/${file.path.split('/').map(encodeURIComponent).join('/')}`, blob, file, options, where);
    }
    await linkInto(snapshot, file.path, blob);
  }
  if (!COMMIT.test(ref.revision)) {
    await mkdir(join(storage, 'refs'), { recursive: true });
    await writeFile(join(storage, 'refs', ref.revision), commit);
  }
  return snapshot;
}

/** The files a model directory needs, with the hashes the Hub lists for them. */
interface HubCall {
  readonly hubUrl: string;
  readonly accessToken?: string;
  readonly fetch?: typeof fetch;
}

async function modelFiles(repo: string, commit: string, common: HubCall, where: string): Promise<RemoteFile[]> {
  const all: RemoteFile[] = [];
  for await (const entry of listFiles({ ...common, repo: { type: 'model', name: repo }, revision: commit, recursive: false, expand: false })) {
    if (entry.type !== 'file') continue;
    const lfs = entry.lfs as { oid: string; size: number } | undefined;
    if (lfs) all.push({ path: entry.path, size: lfs.size, etag: lfs.oid, verify: 'sha256' });
    else if (entry.oid) all.push({ path: entry.path, size: entry.size, etag: entry.oid, verify: 'git-sha1' });
  }
  const names = all.map((f) => f.path);
  if (!names.includes('config.json')) throw new ModelError('model_not_found', `${where}: the repository has no config.json`);
  // Safetensors when there are any (as the loader prefers them); pickles only for the original state-spaces checkpoints.
  const weights = names.some((n) => SAFETENSORS.test(n)) ? SAFETENSORS : TORCH;
  const wanted = all.filter((f) => SUPPORT_FILE.test(f.path) || weights.test(f.path));
  if (!wanted.some((f) => weights.test(f.path))) throw new ModelError('model_not_found', `${where}: the repository has no safetensors or pytorch_model.bin weights`);
  return wanted;
}

async function cachedSnapshot(storage: string, revision: string): Promise<string | undefined> {
  let commit = revision;
  if (!COMMIT.test(revision)) {
    try {
      commit = (await readFile(join(storage, 'refs', revision), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }
  const dir = join(storage, 'snapshots', commit);
  return existsSync(join(dir, 'config.json')) ? dir : undefined;
}

async function isWholeBlob(path: string, size: number): Promise<boolean> {
  try {
    return (await stat(path)).size === size;
  } catch {
    return false;
  }
}

/** Point snapshots/{commit}/{path} at the blob with a relative symlink, as huggingface_hub does. */
async function linkInto(snapshot: string, path: string, blob: string): Promise<void> {
  const link = join(snapshot, path);
  await mkdir(dirname(link), { recursive: true });
  const target = relative(dirname(link), blob);
  try {
    if ((await readlink(link)) === target) return;
    await rm(link, { force: true });
  } catch {
    // absent (or a plain file someone put there: replaced below)
    await rm(link, { force: true });
  }
  await symlink(target, link);
}

function newHasher(file: RemoteFile): Hash {
  const h = createHash(file.verify === 'sha256' ? 'sha256' : 'sha1');
  if (file.verify === 'git-sha1') h.update(`blob ${file.size}\0`);
  return h;
}

/**
 * Fetch one file into `blob`: into `{blob}.incomplete`, resuming what an earlier attempt left
 * there, hashing as it goes; renamed into place only when the size and hash are what the Hub
 * listed. A hash mismatch discards the partial file (it cannot be trusted to resume).
 */
async function fetchBlob(url: string, blob: string, file: RemoteFile, options: HubOptions, where: string): Promise<void> {
  await mkdir(dirname(blob), { recursive: true });
  const partial = `${blob}.incomplete`;
  let have = 0;
  try {
    have = (await stat(partial)).size;
  } catch {
    have = 0;
  }
  if (have > file.size) {
    await rm(partial, { force: true });
    have = 0;
  }
  const headers: Record<string, string> = {};
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  if (have > 0) headers.range = `bytes=${have}-`;
  let res: Response;
  try {
    res = await (options.fetch ?? fetch)(url, { headers, redirect: 'follow' });
  } catch (cause) {
    throw hubError(where, url, cause);
  }
  if (res.status === 416 && have === file.size) {
    // Everything was already there; only the check and the rename were missing.
    return finishBlob(partial, blob, file, await hashOf(partial, file, have), have, where);
  }
  if (!res.ok) {
    const hint = res.status === 401 || res.status === 403 ? ' (a gated or private model needs HF_TOKEN)' : '';
    throw new ModelError('model_download_failed', `${where}: ${file.path}: the Hub answered ${res.status} ${res.statusText}${hint}`);
  }
  // 206: the server continues where the partial file ends; 200: it ignored the range, start over.
  const resuming = res.status === 206 && have > 0;
  const hash = resuming ? await hashOf(partial, file, have) : newHasher(file);
  let done = resuming ? have : 0;
  const sink = await open(partial, resuming ? 'a' : 'w');
  try {
    const reader = res.body!.getReader();
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      await sink.write(value);
      hash.update(value);
      done += value.byteLength;
      options.onProgress?.(file.path, done, file.size);
    }
  } catch (cause) {
    throw new ModelError('model_download_failed', `${where}: ${file.path}: the download broke off at ${done} of ${file.size} bytes (${(cause as Error).message}); run again to resume`, { cause });
  } finally {
    await sink.close();
  }
  return finishBlob(partial, blob, file, hash, done, where);
}

/** A hasher that has already seen the first `bytes` of `path`. */
async function hashOf(path: string, file: RemoteFile, bytes: number): Promise<Hash> {
  const hash = newHasher(file);
  if (bytes > 0) for await (const chunk of createReadStream(path, { end: bytes - 1 })) hash.update(chunk as Buffer);
  return hash;
}

async function finishBlob(partial: string, blob: string, file: RemoteFile, hash: Hash, size: number, where: string): Promise<void> {
  if (size !== file.size) {
    throw new ModelError('model_download_failed', `${where}: ${file.path}: got ${size} bytes, the Hub lists ${file.size}; run again to resume`);
  }
  const digest = hash.digest('hex');
  if (digest !== file.etag) {
    await rm(partial, { force: true });
    throw new ModelError('model_download_failed', `${where}: ${file.path}: ${file.verify === 'sha256' ? 'sha256' : 'git hash'} ${digest.slice(0, 12)}… does not match the Hub's ${file.etag.slice(0, 12)}… (discarded; run again)`);
  }
  await rename(partial, blob);
}

function hubError(where: string, endpoint: string, cause: unknown): ModelError {
  const message = (cause as Error)?.message ?? String(cause);
  const status = (cause as { statusCode?: number })?.statusCode;
  if (status === 404) return new ModelError('model_not_found', `${where}: no such model or revision on ${endpoint}`, { cause });
  if (status === 401 || status === 403) {
    return new ModelError('model_not_found', `${where}: ${endpoint} refused access (${status}); a gated or private model needs HF_TOKEN`, { cause });
  }
  return new ModelError('model_download_failed', `${where}: cannot reach ${endpoint} (${message}); set HF_HUB_OFFLINE=1 to use only the cache`, { cause });
}

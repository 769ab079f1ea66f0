// The state store on a local filesystem (the local stack, single-host deployments).
// Durability as S3 gives it: an object is written to a temp file, fsynced, then published
// atomically — link() for create-if-absent (fails if the name exists, never overwrites) and
// rename() for replace — and the directory is fsynced, so a crash leaves the old object or
// the new one, never a torn one.
import { createHash, randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, readFile, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { assertSafeKey, StorePreconditionError, type ListedObject, type ListedPage, type StateStore, type StoredObject } from './state-store.ts';

/** A replace holds the object's lock file this long at most; older lock files are a crashed writer's. */
const STALE_LOCK_MS = 10_000;
const LOCK_WAIT_MS = 5_000;

const etagOf = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex').slice(0, 32);

export class FsStateStore implements StateStore {
  readonly root: string;
  readonly description: string;

  constructor(root: string) {
    this.root = resolve(root);
    this.description = `file:${this.root}`;
  }

  private path(key: string): string {
    assertSafeKey(key);
    return join(this.root, ...key.split('/'));
  }

  async get(key: string): Promise<StoredObject | null> {
    try {
      const bytes = new Uint8Array(await readFile(this.path(key)));
      return { bytes, etag: etagOf(bytes) };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async putIfAbsent(key: string, bytes: Uint8Array): Promise<string> {
    const path = this.path(key);
    const tmp = await this.writeTemp(path, bytes);
    try {
      await link(tmp, path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new StorePreconditionError(key, `${key} already exists`);
      throw e;
    } finally {
      await unlink(tmp).catch(() => {});
    }
    await fsyncDir(dirname(path));
    return etagOf(bytes);
  }

  async putIfMatch(key: string, bytes: Uint8Array, etag: string): Promise<string> {
    const path = this.path(key);
    const release = await this.lock(path);
    try {
      const current = await this.get(key);
      if (!current || current.etag !== etag) throw new StorePreconditionError(key, `${key} changed since it was read`);
      const tmp = await this.writeTemp(path, bytes);
      await rename(tmp, path);
      await fsyncDir(dirname(path));
      return etagOf(bytes);
    } finally {
      await release();
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    const dirs = new Set<string>();
    for (const key of keys) {
      const path = this.path(key);
      await unlink(path).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
      dirs.add(dirname(path));
    }
    // Empty session directories go too, so a deleted session leaves nothing behind.
    for (const dir of dirs) {
      for (let d = dir; d.startsWith(this.root + sep) && d !== this.root; d = dirname(d)) {
        if (!(await rmdir(d).then(() => true, () => false))) break;
      }
    }
  }

  async list(prefix: string): Promise<string[]> {
    const dir = this.path(prefix.replace(/\/$/, ''));
    const out: string[] = [];
    const walk = async (d: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(d, { withFileTypes: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      for (const entry of entries) {
        const p = join(d, entry.name);
        if (entry.isDirectory()) await walk(p);
        else if (!entry.name.startsWith('.')) out.push(relative(this.root, p).split(sep).join('/'));
      }
    };
    await walk(dir);
    return out;
  }

  async listPage(prefix: string, options: { startAfter?: string | undefined; limit: number }): Promise<ListedPage> {
    const dirKey = prefix.replace(/\/$/, '');
    let entries;
    try {
      entries = await readdir(this.path(dirKey), { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { objects: [], hasMore: false };
      throw e;
    }
    // Byte order, as S3 lists keys (the names are ASCII).
    const keys = entries
      .filter((d) => d.isFile() && !d.name.startsWith('.'))
      .map((d) => `${dirKey}/${d.name}`)
      .filter((k) => options.startAfter === undefined || k > options.startAfter)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const page = keys.slice(0, options.limit);
    const objects: ListedObject[] = [];
    for (const key of page) {
      // A file removed between readdir and stat (a concurrent delete) is simply not listed.
      const size = await stat(this.path(key)).then((s) => s.size, () => undefined);
      if (size !== undefined) objects.push({ key, bytes: size });
    }
    return { objects, hasMore: keys.length > options.limit };
  }

  async markSuperseded(): Promise<void> {}

  async close(): Promise<void> {}

  /** Write `bytes` to a hidden temp file beside `path` and fsync it. */
  private async writeTemp(path: string, bytes: Uint8Array): Promise<string> {
    await mkdir(dirname(path), { recursive: true });
    const tmp = join(dirname(path), `.${randomBytes(8).toString('hex')}.tmp`);
    const fh = await open(tmp, 'wx');
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } catch (e) {
      await fh.close();
      await unlink(tmp).catch(() => {});
      throw e;
    }
    await fh.close();
    return tmp;
  }

  /** An O_EXCL lock file: makes read-compare-rename one step against other processes. */
  private async lock(path: string): Promise<() => Promise<void>> {
    await mkdir(dirname(path), { recursive: true });
    const lockPath = join(dirname(path), `.${basename(path)}.lock`);
    const started = Date.now();
    for (;;) {
      try {
        const fh = await open(lockPath, 'wx');
        await fh.close();
        return () => rm(lockPath, { force: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const age = await stat(lockPath).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > STALE_LOCK_MS) {
        await rm(lockPath, { force: true });
        continue;
      }
      if (Date.now() - started > LOCK_WAIT_MS) throw new StorePreconditionError(path, `${path} is locked by another writer`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

// One contract, both stores: the filesystem and S3 (a real moto server) must agree on
// conditional writes, listing with paging, deletion and the commit protocol built on them.
import { mkdtemp, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectTaggingCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMotoServer, type MotoServer } from '../test-support/moto-server.ts';
import { SessionStore, FencedOutError, SessionExistsError, CommitConflictError } from './session-store.ts';
import { FsStateStore } from './state-store-fs.ts';
import { S3StateStore } from './state-store-s3.ts';
import { DeadlineStateStore } from './state-store-deadline.ts';
import { StorePreconditionError, StoreUnavailableError, type StateStore } from './state-store.ts';
import { SUPERSEDED_TAG } from './superseded-tag.ts';
import { EMPTY_TRANSCRIPT_ROOT, extendTranscript } from './transcript-hash.ts';

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

let moto: MotoServer;
let fsRoot: string;
let bucketCounter = 0;

beforeAll(async () => {
  moto = await startMotoServer();
  fsRoot = await mkdtemp(join(tmpdir(), 'ms-store-'));
});
afterAll(async () => {
  await moto?.stop();
  await rm(fsRoot, { recursive: true, force: true });
});

const stores: Array<[string, () => Promise<StateStore>]> = [
  ['fs', async () => new FsStateStore(await mkdtemp(join(fsRoot, 's-')))],
  [
    's3',
    async () => {
      const bucket = `bucket-${++bucketCounter}`;
      await moto.createBucket(bucket);
      return new S3StateStore({ bucket, prefix: 'pre/fix', endpoint: moto.endpoint, forcePathStyle: true, credentials: moto.credentials, listPageSize: 7 });
    },
  ],
];

describe.each(stores)('%s state store', (_name, make) => {
  it('creates only when absent and replaces only on a matching ETag', async () => {
    const store = await make();
    expect(await store.get('a/b.json')).toBeNull();
    const e1 = await store.putIfAbsent('a/b.json', bytes('one'));
    await expect(store.putIfAbsent('a/b.json', bytes('two'))).rejects.toBeInstanceOf(StorePreconditionError);
    expect(text((await store.get('a/b.json'))!.bytes)).toBe('one');
    const got = await store.get('a/b.json');
    expect(got!.etag).toBe(e1);
    const e2 = await store.putIfMatch('a/b.json', bytes('three'), e1);
    expect(e2).not.toBe(e1);
    await expect(store.putIfMatch('a/b.json', bytes('four'), e1)).rejects.toBeInstanceOf(StorePreconditionError);
    await expect(store.putIfMatch('a/missing.json', bytes('x'), e1)).rejects.toBeInstanceOf(StorePreconditionError);
    expect(text((await store.get('a/b.json'))!.bytes)).toBe('three');
    await store.close();
  });

  it('lists every key under a prefix across pages and deletes them', async () => {
    const store = await make();
    // 30 keys over pages of 7 (the S3 store is configured so): paging must be followed.
    const keys = Array.from({ length: 30 }, (_, i) => `t/s/k${i}`);
    await Promise.all(keys.map((k) => store.putIfAbsent(k, bytes(k))));
    await store.putIfAbsent('t/other/x', bytes('x'));
    const listed = await store.list('t/s/');
    expect(listed.sort()).toEqual([...keys].sort());
    await store.delete(listed);
    expect(await store.list('t/s/')).toEqual([]);
    expect(await store.list('t/')).toEqual(['t/other/x']);
    await store.delete(['t/never-existed']);
    await store.close();
  });

  it('lists one level of a prefix in key order, a page at a time, with sizes', async () => {
    const store = await make();
    const names = ['b', 'a', 'c-1', 'c-0', 'd'];
    for (const n of names) await store.putIfAbsent(`t/idx/${n}`, bytes(n.repeat(3)));
    await store.putIfAbsent('t/idx/deeper/x', bytes('not this level'));
    const first = await store.listPage('t/idx/', { limit: 2 });
    expect(first).toEqual({ objects: [{ key: 't/idx/a', bytes: 3 }, { key: 't/idx/b', bytes: 3 }], hasMore: true });
    const rest = await store.listPage('t/idx/', { startAfter: 't/idx/b', limit: 10 });
    expect(rest.objects.map((o) => o.key)).toEqual(['t/idx/c-0', 't/idx/c-1', 't/idx/d']);
    expect(rest.hasMore).toBe(false);
    expect(await store.listPage('t/none/', { limit: 5 })).toEqual({ objects: [], hasMore: false });
    await store.close();
  });

  it('refuses keys that could escape its root', async () => {
    const store = await make();
    await expect(store.get('../etc/passwd')).rejects.toThrow(/unsafe key/);
    await expect(store.putIfAbsent('a//b', bytes('x'))).rejects.toThrow(/unsafe key/);
    await store.close();
  });

  it('commits versions with fencing and never moves the head to a missing or foreign file', async () => {
    const objects = await make();
    const sessions = new SessionStore(objects);
    await sessions.create({ tenant: 't1', session: 's1', model: 'm', metadata: { a: 'b' }, transcriptRoot: EMPTY_TRANSCRIPT_ROOT });
    await expect(
      sessions.create({ tenant: 't1', session: 's1', model: 'm', metadata: {}, transcriptRoot: EMPTY_TRANSCRIPT_ROOT }),
    ).rejects.toBeInstanceOf(SessionExistsError);

    const h1 = extendTranscript(EMPTY_TRANSCRIPT_ROOT, { role: 'user', content: 'hi' });
    const c1 = await sessions.commitVersion({
      tenant: 't1', session: 's1', fence: 3, state: bytes('state-1'),
      version: { parent: 0, tokens_absorbed: 5, transcript_hash: h1, origin: 'turn', turn_id: 'turn-a' },
    });
    expect(c1.entry.version).toBe(1);
    expect(c1.manifest.head).toBe(1);
    expect(text((await sessions.readState('t1', 's1', 1))!)).toBe('state-1');

    // A writer holding an older lease is refused, and nothing changes.
    await expect(
      sessions.commitVersion({ tenant: 't1', session: 's1', fence: 2, state: bytes('stale'), version: { parent: 1, tokens_absorbed: 9, transcript_hash: h1, origin: 'turn' } }),
    ).rejects.toBeInstanceOf(FencedOutError);
    expect((await sessions.read('t1', 's1'))!.manifest.head).toBe(1);
    expect(await sessions.readState('t1', 's1', 2)).toBeNull();

    // A crashed commit left v2's file without a manifest entry: the next commit skips the
    // number (never overwriting or deleting the stray file) and takes v3.
    await objects.putIfAbsent(SessionStore.versionKey('t1', 's1', 2), bytes('orphan'));
    const c2 = await sessions.commitVersion({
      tenant: 't1', session: 's1', fence: 4, state: bytes('state-3'),
      version: { parent: 1, tokens_absorbed: 7, transcript_hash: h1, origin: 'turn' },
    });
    expect(c2.entry.version).toBe(3);
    expect(text((await sessions.readState('t1', 's1', 3))!)).toBe('state-3');
    expect(text((await sessions.readState('t1', 's1', 2))!)).toBe('orphan');

    // A precondition re-checked at commit time aborts without writing.
    await expect(
      sessions.commitVersion({
        tenant: 't1', session: 's1', fence: 4, state: bytes('x'),
        version: { parent: 1, tokens_absorbed: 7, transcript_hash: h1, origin: 'turn' },
        precondition: (m) => { if (m.head !== 1) throw new CommitConflictError('head moved'); },
      }),
    ).rejects.toThrow(/head moved/);
    const after = (await sessions.read('t1', 's1'))!.manifest;
    expect(after.head).toBe(3);
    expect(after.versions.map((v) => v.version)).toEqual([0, 1, 3]);
    expect(after.versions[1]!.turn_id).toBe('turn-a');

    expect(await sessions.delete('t1', 's1')).toBe(3);
    expect(await sessions.read('t1', 's1')).toBeNull();
    expect(await objects.list(SessionStore.sessionPrefix('t1', 's1'))).toEqual([]);
    await objects.close();
  });

  it('a session created over leftovers of a half-deleted one starts clean', async () => {
    const objects = await make();
    const sessions = new SessionStore(objects);
    await objects.putIfAbsent(SessionStore.versionKey('t1', 'again', 1), bytes('old'));
    await sessions.create({ tenant: 't1', session: 'again', model: 'm', metadata: {}, transcriptRoot: EMPTY_TRANSCRIPT_ROOT });
    expect(await sessions.readState('t1', 'again', 1)).toBeNull();
    await objects.close();
  });
});

describe('s3 state store retention', () => {
  it('tags a replaced version with the tag the deployment expires (shared/superseded-tag.ts)', async () => {
    await moto.createBucket('tagging');
    const store = new S3StateStore({ bucket: 'tagging', prefix: 'p', endpoint: moto.endpoint, forcePathStyle: true, credentials: moto.credentials });
    await store.putIfAbsent('t/s/v1.mstate', bytes('one'));
    await store.markSuperseded('t/s/v1.mstate');
    const client = new S3Client({ endpoint: moto.endpoint, forcePathStyle: true, region: 'us-east-1', credentials: moto.credentials });
    const { TagSet } = await client.send(new GetObjectTaggingCommand({ Bucket: 'tagging', Key: 'p/t/s/v1.mstate' }));
    expect(TagSet).toEqual([{ Key: SUPERSEDED_TAG.key, Value: SUPERSEDED_TAG.value }]);
    client.destroy();
    await store.close();
  });
});

describe('fs state store durability', () => {
  it('leaves no temp or lock files behind', async () => {
    const root = await mkdtemp(join(fsRoot, 'clean-'));
    const store = new FsStateStore(root);
    const e = await store.putIfAbsent('x/y', bytes('1'));
    await store.putIfMatch('x/y', bytes('2'), e);
    await expect(store.putIfAbsent('x/y', bytes('3'))).rejects.toBeInstanceOf(StorePreconditionError);
    expect(await readdir(join(root, 'x'))).toEqual(['y']);
  });

  it('breaks a stale lock left by a crashed writer', async () => {
    const root = await mkdtemp(join(fsRoot, 'lock-'));
    const store = new FsStateStore(root);
    const e = await store.putIfAbsent('x/y', bytes('1'));
    await mkdir(join(root, 'x'), { recursive: true });
    await writeFile(join(root, 'x', '.y.lock'), '');
    const { utimes } = await import('node:fs/promises');
    const old = new Date(Date.now() - 60_000);
    await utimes(join(root, 'x', '.y.lock'), old, old);
    await store.putIfMatch('x/y', bytes('2'), e);
    expect(text((await store.get('x/y'))!.bytes)).toBe('2');
  });
});

describe('deadlines: a store that hangs fails fast instead of holding its callers', () => {
  it('s3: every call to a frozen server (SIGSTOP) fails with StoreUnavailableError at its deadline, and works again after', async () => {
    const bucket = `bucket-${++bucketCounter}`;
    await moto.createBucket(bucket);
    const store = new S3StateStore({ bucket, prefix: 'p', endpoint: moto.endpoint, forcePathStyle: true, credentials: moto.credentials, timeoutMs: 400 });
    const etag = await store.putIfAbsent('a/b', bytes('one'));
    moto.freeze();
    try {
      for (const call of [
        () => store.get('a/b'),
        () => store.putIfAbsent('a/c', bytes('x')),
        () => store.putIfMatch('a/b', bytes('two'), etag),
        () => store.list('a/'),
        () => store.listPage('a/', { limit: 10 }),
        () => store.delete(['a/c']),
      ]) {
        const t0 = Date.now();
        const err = await call().then(() => undefined, (e: unknown) => e);
        expect(err).toBeInstanceOf(StoreUnavailableError);
        expect((err as Error).message).toMatch(/no answer within 4\d\d ms/);
        expect(Date.now() - t0).toBeLessThan(2_000);
      }
    } finally {
      moto.thaw();
    }
    // What reached the frozen server before the deadline may still have been applied: the
    // caller could not know (the commit protocol settles such writes by reading again).
    const after = await store.get('a/b');
    expect(['one', 'two']).toContain(text(after!.bytes));
    await store.close();
  }, 30_000);

  it('fs (through DeadlineStateStore): a call that never returns fails at its deadline', async () => {
    const never = new Promise<never>(() => {});
    const hung: StateStore = {
      description: 'hung',
      get: () => never,
      putIfAbsent: () => never,
      putIfMatch: () => never,
      delete: () => never,
      list: () => never,
      listPage: () => never,
      markSuperseded: () => never,
      close: async () => {},
    };
    const store = new DeadlineStateStore(hung, 100);
    const t0 = Date.now();
    await expect(store.get('k')).rejects.toThrow(/state store get k: no answer within 100 ms/);
    await expect(store.putIfMatch('k', bytes('x'), 'e')).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(Date.now() - t0).toBeLessThan(1_000);
  });
});

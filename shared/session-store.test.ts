// A long session on the filesystem store, driven through the session store directly: the
// manifest a commit rewrites stays the same size however many versions the session has, and
// every version stays listed and addressable through the manifest pages.
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManifestPage, VERSIONS_PER_PAGE, type ManifestVersion } from './session-manifest.ts';
import { SessionStore } from './session-store.ts';
import { FsStateStore } from './state-store-fs.ts';
import { EMPTY_TRANSCRIPT_ROOT, extendTranscript } from './transcript-hash.ts';

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);
// tmpfs where there is one: thousands of fsynced commits, and fsync is not what is tested here.
const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(base, 'ms-session-store-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const RECENT = 16;
const TURNS = 3000;

async function longSession(objects: FsStateStore, sessions: SessionStore, session: string, turns: number, onCommit?: (manifestBytes: number) => void) {
  await sessions.create({ tenant: 't', session, model: 'm', metadata: {}, transcriptRoot: EMPTY_TRANSCRIPT_ROOT });
  let hash = EMPTY_TRANSCRIPT_ROOT;
  for (let i = 1; i <= turns; i++) {
    hash = extendTranscript(hash, { role: 'user', content: `turn ${i}` });
    // A crashed commit now and then leaves a version number unused: pages cover number ranges, not counts.
    if (i % 97 === 0) await objects.putIfAbsent(SessionStore.versionKey('t', session, (await sessions.read('t', session))!.manifest.next_version), bytes('orphan'));
    await sessions.commitVersion({
      tenant: 't',
      session,
      fence: 1,
      state: bytes(`state ${i}`),
      version: { parent: i - 1, tokens_absorbed: i * 10, transcript_hash: hash, origin: 'turn', turn_id: `turn-${i}` },
    });
    onCommit?.((await objects.get(SessionStore.manifestKey('t', session)))!.bytes.byteLength);
  }
}

describe('a session with thousands of versions', () => {
  it('rewrites a bounded manifest per commit and keeps every version listed and addressable', async () => {
    const objects = new FsStateStore(await mkdtemp(join(root, 'long-')));
    const sessions = new SessionStore(objects, { recentVersions: RECENT });
    const sizes: number[] = [];
    await longSession(objects, sessions, 'long', TURNS, (n) => sizes.push(n));

    const { manifest } = (await sessions.read('t', 'long'))!;
    const entryBytes = Math.max(...manifest.versions.map((v) => JSON.stringify(v).length + 1));
    // Version 0, the newest RECENT, and at most one page's worth not yet moved out.
    const bound = 2048 + (1 + RECENT + VERSIONS_PER_PAGE) * entryBytes;
    expect(Math.max(...sizes)).toBeLessThanOrEqual(bound);
    expect(manifest.versions.length).toBeLessThanOrEqual(1 + RECENT + VERSIONS_PER_PAGE);
    // Constant cost: the last third of the commits wrote no more than the first third (but
    // for entries a few digits longer: larger version numbers, token counts and turn ids).
    const third = Math.floor(TURNS / 3);
    expect(Math.max(...sizes.slice(-third))).toBeLessThanOrEqual(1.1 * Math.max(...sizes.slice(0, third)));
    expect(manifest.versions[0]!.version).toBe(0);
    expect(manifest.paged_below % VERSIONS_PER_PAGE).toBe(0);
    expect(manifest.paged_below).toBeGreaterThan(TURNS - RECENT - 2 * VERSIONS_PER_PAGE);

    // Every version ever committed, in order, exactly once: the listing pages through the
    // manifest pages and then the manifest, both ways.
    const all: ManifestVersion[] = [];
    for (let after: number | undefined; ; ) {
      const page = await sessions.listVersions('t', 'long', manifest, { limit: 100, order: 'asc', ...(after === undefined ? {} : { after }) });
      all.push(...page.data);
      if (!page.hasMore) break;
      after = page.data.at(-1)!.version;
    }
    expect(all).toHaveLength(TURNS + 1);
    expect(all.length).toBe(manifest.versions.length + manifest.paged_versions);
    expect(all.map((v) => v.turn_id ?? null)).toEqual([null, ...Array.from({ length: TURNS }, (_, i) => `turn-${i + 1}`)]);
    expect(all.every((v, i) => i === 0 || v.version > all[i - 1]!.version)).toBe(true);
    const newest = await sessions.listVersions('t', 'long', manifest, { limit: 5, order: 'desc' });
    expect(newest.data.map((v) => v.version)).toEqual(all.slice(-5).reverse().map((v) => v.version));
    const older = await sessions.listVersions('t', 'long', manifest, { limit: 3, order: 'desc', after: all[150]!.version });
    expect(older.data).toEqual(all.slice(147, 150).reverse());
    expect((await sessions.listVersions('t', 'long', manifest, { limit: 2, order: 'desc', after: 1 })).data.map((v) => v.version)).toEqual([0]);

    // An old version is found in its page, and its state is still there to export or fork.
    const old = all[5]!;
    expect(old.version).toBeLessThan(manifest.paged_below);
    expect(manifest.versions.some((v) => v.version === old.version)).toBe(false);
    expect(await sessions.findVersion('t', 'long', manifest, old.version)).toEqual(old);
    expect(text((await sessions.readState('t', 'long', old.version))!)).toBe('state 5');
    // A number a crashed commit used is no version: not in the manifest, not in any page.
    const skipped = all.findIndex((v, i) => i > 0 && v.version !== all[i - 1]!.version + 1);
    expect(await sessions.findVersion('t', 'long', manifest, all[skipped]!.version - 1)).toBeUndefined();
    expect(await sessions.findVersion('t', 'long', manifest, manifest.next_version)).toBeUndefined();

    // Pages are immutable objects of their own, and go with the session.
    const keys = await objects.list(SessionStore.sessionPrefix('t', 'long'));
    const pages = keys.filter((k) => /manifest-page-\d+\.json$/.test(k));
    expect(pages).toHaveLength(manifest.paged_below / VERSIONS_PER_PAGE);
    const page0 = ManifestPage.parse(JSON.parse(text((await objects.get(SessionStore.manifestPageKey('t', 'long', 0)))!.bytes)));
    expect(page0.versions[0]!.version).toBe(1);
    expect(await sessions.delete('t', 'long')).toBe(TURNS + Math.floor(TURNS / 97));
    expect(await objects.list(SessionStore.sessionPrefix('t', 'long'))).toEqual([]);
  }, 240_000);

  it('shrinks a manifest written before pages existed a few pages per commit, and a repeated page write is harmless', async () => {
    const objects = new FsStateStore(await mkdtemp(join(root, 'legacy-')));
    // Written by a store that kept every version in the manifest.
    await longSession(objects, new SessionStore(objects, { recentVersions: 100_000 }), 'legacy', 400);
    const before = (await sessions(objects).read('t', 'legacy'))!.manifest;
    expect(before.versions).toHaveLength(401);
    expect(before.paged_below).toBe(0);

    // A page some earlier commit wrote before losing its manifest replace: the same content.
    const store = sessions(objects);
    await objects.putIfAbsent(
      SessionStore.manifestPageKey('t', 'legacy', 0),
      bytes(JSON.stringify({ format: 1, session: 'legacy', incarnation: before.incarnation, first: 0, end: VERSIONS_PER_PAGE, versions: before.versions.slice(1, VERSIONS_PER_PAGE) })),
    );
    const commit = async (i: number) =>
      store.commitVersion({
        tenant: 't',
        session: 'legacy',
        fence: 1,
        state: bytes(`more ${i}`),
        version: { parent: null, tokens_absorbed: 1, transcript_hash: EMPTY_TRANSCRIPT_ROOT, origin: 'import' },
      });
    const first = await commit(1);
    expect(first.manifest.paged_below).toBe(SessionStore.MAX_PAGES_PER_COMMIT * VERSIONS_PER_PAGE);
    for (let i = 2; i <= 4; i++) await commit(i);
    const after = (await store.read('t', 'legacy'))!.manifest;
    expect(after.versions.length).toBeLessThanOrEqual(1 + RECENT + VERSIONS_PER_PAGE);
    const listed = await store.listVersions('t', 'legacy', after, { limit: 1000, order: 'asc' });
    expect(listed.data.map((v) => v.version)).toEqual([...before.versions.map((v) => v.version), ...[1, 2, 3, 4].map((i) => before.next_version + i - 1)]);
  }, 120_000);
});

function sessions(objects: FsStateStore): SessionStore {
  return new SessionStore(objects, { recentVersions: RECENT });
}

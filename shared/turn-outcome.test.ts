// The commit protocol's one decision: a session turn's outcome is its commit or its refusal,
// whichever replaces the manifest first, on both stores (the filesystem and S3 through a real
// moto server). Slow and in-doubt writes are injected by wrapping the real store (a delay or
// a lost answer is not something a healthy server does on demand).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMotoServer, type MotoServer } from '../test-support/moto-server.ts';
import { buildItemsFile } from './conversation-items.ts';
import { FencedOutError, SessionStore, TurnSettledError, type CommitArgs, type TurnOutcome } from './session-store.ts';
import { DeadlineStateStore } from './state-store-deadline.ts';
import { FsStateStore } from './state-store-fs.ts';
import { S3StateStore } from './state-store-s3.ts';
import { StoreUnavailableError, type StateStore } from './state-store.ts';
import { EMPTY_TRANSCRIPT_ROOT } from './transcript-hash.ts';
import { committedResult } from './turn-outcome.ts';

const bytes = (s: string) => new TextEncoder().encode(s);
let moto: MotoServer;
let fsRoot: string;
let buckets = 0;

beforeAll(async () => {
  moto = await startMotoServer();
  fsRoot = await mkdtemp(join(tmpdir(), 'ms-outcome-'));
});
afterAll(async () => {
  await moto?.stop();
  await rm(fsRoot, { recursive: true, force: true });
});

/** A store whose manifest replaces wait `delay()` ms before they are sent (a slow network path). */
function slowManifest(inner: StateStore, delay: () => number): StateStore {
  return Object.assign(Object.create(inner) as StateStore, {
    putIfMatch: async (key: string, b: Uint8Array, etag: string) => {
      if (key.endsWith('manifest.json')) await new Promise((r) => setTimeout(r, delay()));
      return inner.putIfMatch(key, b, etag);
    },
  });
}

const stores: Array<[string, () => Promise<StateStore>]> = [
  ['fs', async () => new FsStateStore(await mkdtemp(join(fsRoot, 's-')))],
  [
    's3',
    async () => {
      const bucket = `outcome-${++buckets}`;
      await moto.createBucket(bucket);
      return new S3StateStore({ bucket, prefix: 'p', endpoint: moto.endpoint, forcePathStyle: true, credentials: moto.credentials });
    },
  ],
];

async function newSession(sessions: SessionStore, session: string): Promise<string> {
  return (await sessions.create({ tenant: 't', session, model: 'm', metadata: {}, transcriptRoot: EMPTY_TRANSCRIPT_ROOT })).manifest.incarnation;
}

function commitOf(session: string, incarnation: string, turnId: string, extra: Partial<CommitArgs> = {}): CommitArgs {
  return {
    tenant: 't',
    session,
    fence: 5,
    state: bytes(`state of ${turnId}`),
    turn: { id: turnId, incarnation },
    version: { parent: 0, tokens_absorbed: 3, transcript_hash: EMPTY_TRANSCRIPT_ROOT, origin: 'turn' },
    items: buildItemsFile({
      session,
      turnId,
      messages: [{ role: 'user', content: 'hi' }],
      instructions: null,
      reply: { text: 'hello', complete: true },
      result: { finish_reason: 'stop', usage: { input_tokens: 2, output_tokens: 1, cached_tokens: 0, tokens_absorbed: 3 } },
    }),
    ...extra,
  };
}

async function settledBy(p: Promise<unknown>): Promise<TurnOutcome> {
  try {
    await p;
  } catch (e) {
    if (e instanceof TurnSettledError) return e.outcome;
    throw e;
  }
  throw new Error('expected the commit to be refused');
}

const REFUSE = { code: 'turn_timeout', message: 'too late' };

describe.each(stores)('%s: one outcome per turn', (_name, make) => {
  it('a committed turn is never refused, a refused one never commits, and neither happens twice', async () => {
    const sessions = new SessionStore(await make());
    const inc = await newSession(sessions, 's1');
    const first = await sessions.commitVersion(commitOf('s1', inc, 'turn-a'));
    expect(first.entry).toMatchObject({ version: 1, turn_id: 'turn-a' });
    // Settling a committed turn finds the commit; committing it again is refused with it.
    expect(await sessions.settleTurn('t', 's1', { id: 'turn-a', incarnation: inc }, REFUSE)).toMatchObject({ state: 'committed', entry: { version: 1 } });
    expect(await settledBy(sessions.commitVersion(commitOf('s1', inc, 'turn-a')))).toMatchObject({ state: 'committed', entry: { version: 1 } });

    const refused = await sessions.settleTurn('t', 's1', { id: 'turn-b', incarnation: inc }, REFUSE);
    expect(refused).toMatchObject({ state: 'refused', refusal: { turn_id: 'turn-b', code: 'turn_timeout' } });
    expect(await settledBy(sessions.commitVersion(commitOf('s1', inc, 'turn-b')))).toMatchObject({ state: 'refused' });
    // Settling again answers the first decision (a later reporter says what the first said).
    expect(await sessions.settleTurn('t', 's1', { id: 'turn-b', incarnation: inc }, { code: 'turn_failed', message: 'x' })).toMatchObject({ refusal: { code: 'turn_timeout' } });
    const m = (await sessions.read('t', 's1'))!.manifest;
    expect(m.head).toBe(1);
    expect(m.versions.map((v) => v.turn_id ?? null)).toEqual([null, 'turn-a']);
    expect(await sessions.findTurn('t', 's1', { id: 'turn-b' })).toMatchObject({ state: 'refused' });
    expect(await sessions.findTurn('t', 's1', { id: 'turn-c' })).toBeUndefined();
  });

  it('the deadline is decided by the commit: past it, the turn is refused in the same compare-and-swap', async () => {
    const sessions = new SessionStore(await make());
    const inc = await newSession(sessions, 's2');
    const late = commitOf('s2', inc, 'late', { turn: { id: 'late', incarnation: inc, deadlineMs: Date.now() - 1 } });
    expect(await settledBy(sessions.commitVersion(late))).toMatchObject({ state: 'refused', refusal: { code: 'turn_timeout' } });
    expect((await sessions.read('t', 's2'))!.manifest.head).toBe(0);
  });

  it('a turn of a session deleted (and created again) since it was accepted can never commit', async () => {
    const sessions = new SessionStore(await make());
    const old = await newSession(sessions, 's3');
    await sessions.delete('t', 's3');
    const again = await newSession(sessions, 's3');
    expect(again).not.toBe(old);
    expect(await settledBy(sessions.commitVersion(commitOf('s3', old, 'queued-before-delete')))).toEqual({ state: 'gone' });
    expect(await sessions.settleTurn('t', 's3', { id: 'queued-before-delete', incarnation: old }, REFUSE)).toEqual({ state: 'gone' });
    expect((await sessions.read('t', 's3'))!.manifest.head).toBe(0);
  });

  it('a newer lease recorded in the store fences out an older attempt that is still running', async () => {
    const sessions = new SessionStore(await make());
    const inc = await newSession(sessions, 's4');
    await sessions.claimFence('t', 's4', 9);
    await expect(sessions.commitVersion(commitOf('s4', inc, 'zombie', { fence: 5 }))).rejects.toBeInstanceOf(FencedOutError);
    await expect(sessions.claimFence('t', 's4', 7)).rejects.toBeInstanceOf(FencedOutError);
    expect((await sessions.commitVersion(commitOf('s4', inc, 'current', { fence: 9 }))).entry.version).toBe(1);
  });

  it("a committed turn's answer is read back whole from the store (what a retry reports after Redis lost it)", async () => {
    const objects = await make();
    const sessions = new SessionStore(objects);
    const inc = await newSession(sessions, 's5');
    const { entry } = await sessions.commitVersion(commitOf('s5', inc, 'turn-r'));
    expect(await committedResult(sessions, { tenant: 't', session: 's5', turnId: 'turn-r' }, entry)).toEqual({
      turn_id: 'turn-r',
      session: 's5',
      version: 1,
      base_version: 0,
      output: 'hello',
      finish_reason: 'stop',
      usage: { input_tokens: 2, output_tokens: 1, cached_tokens: 0, tokens_absorbed: 3 },
    });
  });

  it('a slow commit and a refusal racing: exactly one wins, and both sides report the winner', async () => {
    const objects = await make();
    for (let round = 0; round < 12; round++) {
      const session = `race-${round}`;
      const sessions = new SessionStore(objects);
      const inc = await newSession(sessions, session);
      const slow = new SessionStore(slowManifest(objects, () => Math.random() * 40));
      const [committer, refuser] = await Promise.all([
        slow.commitVersion(commitOf(session, inc, 'raced')).then(
          (c): TurnOutcome => ({ state: 'committed', entry: c.entry }),
          (e: unknown) => {
            if (e instanceof TurnSettledError) return e.outcome;
            throw e;
          },
        ),
        new Promise((r) => setTimeout(r, Math.random() * 40)).then(() => sessions.settleTurn('t', session, { id: 'raced', incarnation: inc }, REFUSE)),
      ]);
      expect(committer.state).toBe(refuser.state);
      const m = (await sessions.read('t', session))!.manifest;
      const committed = m.versions.some((v) => v.turn_id === 'raced');
      const refused = m.refused_turns.some((r) => r.turn_id === 'raced');
      expect(committed !== refused).toBe(true);
      expect(committed).toBe(committer.state === 'committed');
    }
  });
});

describe('an in-doubt commit (its answer lost past the store deadline)', () => {
  it('is settled by reading again: the commit that landed after its caller gave up is found, never refused', async () => {
    const objects = new FsStateStore(await mkdtemp(join(fsRoot, 'doubt-')));
    const sessions = new SessionStore(objects);
    const inc = await newSession(sessions, 'd1');
    // The manifest replace takes 300 ms; the caller's deadline is 100 ms: it hears "unavailable",
    // though the write lands.
    const slow = new SessionStore(new DeadlineStateStore(slowManifest(objects, () => 300), 100));
    await expect(slow.commitVersion(commitOf('d1', inc, 'doubt'))).rejects.toBeInstanceOf(StoreUnavailableError);
    await new Promise((r) => setTimeout(r, 400));
    expect(await sessions.settleTurn('t', 'd1', { id: 'doubt', incarnation: inc }, REFUSE)).toMatchObject({ state: 'committed', entry: { version: 1 } });
  });
});

import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useRedisServer } from '../test-support/redis.ts';
import { RedisKeys } from './redis-keys.ts';
import { isLease, SessionLeases, type SessionLease } from './session-lease.ts';
import { readTurnStream, TurnStreamWriter } from './turn-stream.ts';

const server = useRedisServer();
let redis: Redis;
const keys = new RedisKeys('t');

beforeAll(() => {
  redis = new Redis(server().url, { maxRetriesPerRequest: 1 });
});
afterAll(() => redis.disconnect());

describe('session lease', () => {
  it('admits one holder at a time with growing fencing tokens', async () => {
    const leases = new SessionLeases(redis, keys, 5_000);
    const a = await leases.tryAcquire('ten', 's', 'worker-a');
    expect(isLease(a)).toBe(true);
    const b = await leases.tryAcquire('ten', 's', 'worker-b');
    expect(b).toEqual({ held: `${(a as SessionLease).fence}:worker-a` });
    expect(await leases.release(a as SessionLease)).toBe(true);
    const c = (await leases.tryAcquire('ten', 's', 'worker-b')) as SessionLease;
    expect(c.fence).toBeGreaterThan((a as SessionLease).fence);
    // A stale holder can neither renew nor release its successor's lease.
    expect(await leases.renew(a as SessionLease)).toBe(false);
    expect(await leases.release(a as SessionLease)).toBe(false);
    expect(await leases.renew(c)).toBe(true);
    await leases.release(c);
  });

  it('expires when not renewed, and a fence floor lifts a reset counter', async () => {
    const leases = new SessionLeases(redis, keys, 1_000);
    const a = (await leases.tryAcquire('ten', 'x', 'a')) as SessionLease;
    await new Promise((r) => setTimeout(r, 1_100));
    const b = (await leases.tryAcquire('ten', 'x', 'b', 41)) as SessionLease;
    expect(b.fence).toBe(42);
    expect(a.fence).toBeLessThan(b.fence);
    await leases.release(b);
  });

  it('keepAlive holds the lease past its TTL and reports a lost one', async () => {
    const leases = new SessionLeases(redis, keys, 1_000);
    const a = (await leases.tryAcquire('ten', 'k', 'a')) as SessionLease;
    let lost = '';
    const stop = leases.keepAlive(a, (why) => (lost = why));
    await new Promise((r) => setTimeout(r, 1_500));
    expect(await redis.get(keys.sessionLease('ten', 'k'))).toBe(a.token);
    await redis.del(keys.sessionLease('ten', 'k'));
    await new Promise((r) => setTimeout(r, 500));
    expect(lost).toBe('lease expired');
    stop();
  });

  it('turn slot: one turn at a time, idempotent for the same turn id', async () => {
    const leases = new SessionLeases(redis, keys, 1_000);
    expect(await leases.claimTurn('ten', 's', 'turn1', 10_000)).toEqual({ claimed: true });
    expect(await leases.claimTurn('ten', 's', 'turn1', 10_000)).toEqual({ claimed: true });
    expect(await leases.claimTurn('ten', 's', 'turn2', 10_000)).toEqual({ claimed: false, holder: 'turn1' });
    await leases.releaseTurn('ten', 's', 'turn2'); // not the holder: no effect
    expect(await leases.claimTurn('ten', 's', 'turn2', 10_000)).toEqual({ claimed: false, holder: 'turn1' });
    await leases.releaseTurn('ten', 's', 'turn1');
    expect(await leases.claimTurn('ten', 's', 'turn2', 10_000)).toEqual({ claimed: true });
  });
});

describe('turn stream', () => {
  const writerOf = (turn: string, attempt: string) => new TurnStreamWriter(redis, { stream: keys.turnStream(turn), owner: keys.turnStreamOwner(turn) }, 60_000, attempt);

  it('delivers every event in order, resumes after an id, and stops at done', async () => {
    const key = keys.turnStream('turn-x');
    const writer = writerOf('turn-x', 'a1');
    const reading = (async () => {
      const got = [];
      for await (const e of readTurnStream(redis, key, { deadlineMs: Date.now() + 10_000 })) got.push(e);
      return got;
    })();
    expect(await writer.claim()).toEqual({ text: '', ids: [], earlier: false });
    for (const text of ['a', 'b', 'c']) expect(await writer.token(text, [text.charCodeAt(0)])).toBe(true);
    await writer.append({
      type: 'done',
      result: {
        turn_id: 'turn-x', session: 's', version: 1, base_version: 0, output: 'abc', finish_reason: 'length',
        usage: { input_tokens: 1, output_tokens: 3, cached_tokens: 0, tokens_absorbed: 4 },
      },
    });
    await writer.token('after done', []);
    const got = await reading;
    expect(got.map((e) => e.event.type)).toEqual(['start', 'token', 'token', 'token', 'done']);
    const resumed = [];
    for await (const e of readTurnStream(redis, key, { fromId: got[1]!.id, deadlineMs: Date.now() + 5_000 })) resumed.push(e.event);
    expect(resumed.map((e) => (e.type === 'token' ? e.text : e.type))).toEqual(['b', 'c', 'done']);
    expect(await redis.pttl(key)).toBeGreaterThan(50_000);
  });

  it('one writer at a time: a later attempt takes over what was streamed, the earlier one can append nothing more', async () => {
    const first = writerOf('turn-y', 'first');
    await first.claim();
    expect(await first.token('Hel', [72, 101, 108])).toBe(true);
    expect(await first.token('lo', [108, 111])).toBe(true);
    const second = writerOf('turn-y', 'second');
    // The reply so far and its token ids, to be continued, not started over.
    expect(await second.claim()).toEqual({ text: 'Hello', ids: [72, 101, 108, 108, 111], earlier: true });
    expect(await first.token(' interleaved', [32])).toBe(false);
    expect(await second.token(', world', [44])).toBe(true);
    const texts: string[] = [];
    for await (const { event } of readTurnStream(redis, keys.turnStream('turn-y'), { deadlineMs: Date.now() + 300 })) if (event.type === 'token') texts.push(event.text);
    expect(texts.join('')).toBe('Hello, world');
  });

  it('returns at the deadline when nothing arrives', async () => {
    const t0 = Date.now();
    const got = [];
    for await (const e of readTurnStream(redis, keys.turnStream('silent'), { deadlineMs: Date.now() + 300 })) got.push(e);
    expect(got).toEqual([]);
    expect(Date.now() - t0).toBeLessThan(2_000);
  });
});

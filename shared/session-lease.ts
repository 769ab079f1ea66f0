// One writer per session: a lease in Redis with a fencing token. The token comes from a
// per-session counter that only grows, and every commit records it in the session's manifest,
// where a smaller token is refused (session-store.ts): a holder that stalled past its lease
// cannot advance the head behind the next holder's back.
//
// Also the session's "turn slot": the edge claims it when it accepts a turn, so a second
// concurrent turn on the session answers 409 at once instead of queueing unseen.
import type { Redis } from 'ioredis';
import { RedisScript } from './redis-script.ts';
import type { RedisKeys } from './redis-keys.ts';

/**
 * How far a session's fence is lifted above the store's when Redis has no counter for it (its
 * first lease, or Redis lost its data): past every fence handed out before a loss to a holder
 * that may still be running (fewer than this many leases between two writes of a session's
 * manifest), so no two holders ever share a fence. 2^20 leaves room for 2^33 such lifts below 2^53.
 */
export const FENCE_GAP_AFTER_REDIS_LOSS = 2 ** 20;

/** KEYS: lease, fence counter. ARGV: owner, ttl ms, fence floor. → {1, fence, fresh} or {0, holder}. */
const acquireSessionLease = new RedisScript(
  'acquireSessionLease',
  2,
  `
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
local fence = redis.call('INCR', KEYS[2])
local fresh = 0
if fence == 1 then fresh = 1 end
local floor = tonumber(ARGV[3])
if fence <= floor then
  fence = floor + 1
  redis.call('SET', KEYS[2], fence)
end
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, fence, fresh}
`,
);

/** KEYS: lease. ARGV: token, ttl ms. → 1 if still ours and extended. */
const renewSessionLease = new RedisScript(
  'renewSessionLease',
  1,
  `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`,
);

/** KEYS: key. ARGV: expected value. → 1 if it held the value and was deleted. */
const deleteIfValue = new RedisScript(
  'deleteIfValue',
  1,
  `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`,
);

/** KEYS: slot. ARGV: turn id, ttl ms. → {1, turn} claimed (or already ours), {0, holder} busy. */
const claimSessionTurn = new RedisScript(
  'claimSessionTurn',
  1,
  `
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {0, holder} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
`,
);

export interface SessionLease {
  readonly tenant: string;
  readonly session: string;
  readonly fence: number;
  /** The value stored in Redis: "{fence}:{owner}". */
  readonly token: string;
  /** Redis had no fence counter for the session before this lease (see FENCE_GAP_AFTER_REDIS_LOSS). */
  readonly fresh: boolean;
}

export class SessionLeases {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    readonly ttlMs: number,
  ) {}

  /** The lease, or null with who holds it. `fenceFloor`: the token must exceed this (the manifest's). */
  async tryAcquire(tenant: string, session: string, owner: string, fenceFloor = 0): Promise<SessionLease | { held: string }> {
    const out = (await acquireSessionLease.run(
      this.redis,
      [this.keys.sessionLease(tenant, session), this.keys.sessionFence(tenant, session)],
      [owner, this.ttlMs, fenceFloor],
    )) as [number, string | number, number?];
    if (out[0] === 0) return { held: String(out[1]) };
    const fence = Number(out[1]);
    return { tenant, session, fence, token: `${fence}:${owner}`, fresh: out[2] === 1 };
  }

  async renew(lease: SessionLease): Promise<boolean> {
    return (await renewSessionLease.run(this.redis, [this.keys.sessionLease(lease.tenant, lease.session)], [lease.token, this.ttlMs])) === 1;
  }

  async release(lease: SessionLease): Promise<boolean> {
    return (await deleteIfValue.run(this.redis, [this.keys.sessionLease(lease.tenant, lease.session)], [lease.token])) === 1;
  }

  /**
   * Renew every third of the TTL until stopped; `onLost` runs once if a renewal finds the
   * lease gone (expired and maybe taken), so the holder can stop before it writes.
   */
  keepAlive(lease: SessionLease, onLost: (why: string) => void): () => void {
    let stopped = false;
    const timer = setInterval(() => {
      this.renew(lease).then(
        (ok) => {
          if (!ok && !stopped) {
            stopped = true;
            clearInterval(timer);
            onLost('lease expired');
          }
        },
        () => {}, // a Redis blip: the next renewal tries again before the TTL runs out
      );
    }, Math.max(100, Math.floor(this.ttlMs / 3)));
    timer.unref();
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }

  /** Claim the session for `turnId` (idempotent for the same turn). */
  async claimTurn(tenant: string, session: string, turnId: string, ttlMs: number): Promise<{ claimed: true } | { claimed: false; holder: string }> {
    const out = (await claimSessionTurn.run(this.redis, [this.keys.sessionTurn(tenant, session)], [turnId, Math.max(1, Math.ceil(ttlMs))])) as [
      number,
      string,
    ];
    return out[0] === 1 ? { claimed: true } : { claimed: false, holder: out[1] };
  }

  async releaseTurn(tenant: string, session: string, turnId: string): Promise<void> {
    await deleteIfValue.run(this.redis, [this.keys.sessionTurn(tenant, session)], [turnId]);
  }
}

export function isLease(value: SessionLease | { held: string }): value is SessionLease {
  return 'fence' in value;
}

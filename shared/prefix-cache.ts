// The durable prefix cache: states of stateless chats, stored at message boundaries and found
// again by content, so a client that resends a conversation (as OpenAI clients do, with no
// session) is fed only what no stored state holds, across restarts and workers.
//
//   {prefix}/prefix-cache/tenants/{tenant}/{model fingerprint, 32 hex}-{transcript hash}.mstate
//
// The address is the transcript hash chain of the messages the state absorbed
// (shared/transcript-hash.ts): the same messages on the same model are the same state, so an
// entry is immutable (written create-if-absent) and any worker can use any other's. The tenant
// is part of the key and of the index: no tenant can hit another's prefix, even for equal text.
//
// Each tenant has a byte budget (PREFIX_CACHE_TENANT_BYTES). The index that enforces it lives in
// Redis (an LRU sorted set, sizes and their total, updated by one script per change); the store
// stays the truth: after Redis lost the index (a restart with a fresh Redis), the first lookup
// of the tenant rebuilds it from a listing of the tenant's entries. Eviction deletes the least
// recently used entries beyond the budget. On S3 a lifecycle rule on `prefix-cache/` also expires
// entries by age (cdk/lib/state-bucket.ts), which bounds what a lost index could leave behind.
import type { Redis } from 'ioredis';
import { PREFIX_CACHE_ROOT } from './prefix-cache-root.ts';
import { RedisScript } from './redis-script.ts';
import type { RedisKeys } from './redis-keys.ts';
import { StorePreconditionError, type StateStore } from './state-store.ts';

/**
 * KEYS: lru, sizes, total. ARGV: now ms, budget bytes, mode ('touch' or 'keep'), then (member,
 * bytes) pairs. Adds the entries (`keep`: an entry already indexed keeps its last-use time, for a
 * rebuild), then evicts least recently used entries until the total fits the budget.
 * → the evicted members (their objects are the caller's to delete).
 */
const addPrefixCacheEntries = new RedisScript(
  'addPrefixCacheEntries',
  3,
  `
local now = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local keep = ARGV[3] == 'keep'
for i = 4, #ARGV, 2 do
  local member, size = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HSETNX', KEYS[2], member, size) == 1 then
    redis.call('INCRBY', KEYS[3], size)
  end
  if keep then redis.call('ZADD', KEYS[1], 'NX', now, member) else redis.call('ZADD', KEYS[1], now, member) end
end
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
local evicted = {}
while total > budget do
  local oldest = redis.call('ZPOPMIN', KEYS[1])
  if #oldest == 0 then break end
  local size = tonumber(redis.call('HGET', KEYS[2], oldest[1]) or '0')
  redis.call('HDEL', KEYS[2], oldest[1])
  total = redis.call('DECRBY', KEYS[3], size)
  table.insert(evicted, oldest[1])
end
return evicted
`,
);

/** KEYS: lru, sizes, total. ARGV: member. Forget an entry whose object is gone (expired, or evicted by another). */
const removePrefixCacheEntry = new RedisScript(
  'removePrefixCacheEntry',
  3,
  `
redis.call('ZREM', KEYS[1], ARGV[1])
local size = redis.call('HGET', KEYS[2], ARGV[1])
if size then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('DECRBY', KEYS[3], size)
end
return 1
`,
);

export interface PrefixHit {
  /** Index into the candidates: how many messages the state has absorbed. */
  readonly messages: number;
  readonly hash: string;
  readonly bytes: Uint8Array;
}

export interface PrefixCacheOptions {
  /** Bytes of stored prefix states per tenant before the least recently used are evicted; 0 = off. */
  readonly tenantBytes: number;
  /** Keys per listing page of an index rebuild (S3 lists at most 1000). */
  readonly listPageSize?: number;
}

/** Entries of a rebuild sent to Redis per script call. */
const REBUILD_BATCH = 500;

export class PrefixCache {
  constructor(
    private readonly objects: StateStore,
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    readonly options: PrefixCacheOptions,
  ) {}

  get enabled(): boolean {
    return this.options.tenantBytes > 0;
  }

  static tenantPrefix(tenant: string): string {
    return `${PREFIX_CACHE_ROOT}/tenants/${tenant}/`;
  }

  /** The entry's name in the index and the last part of its key. */
  static member(fingerprint: string, transcriptHash: string): string {
    return `${fingerprint.slice(0, 32)}-${transcriptHash}`;
  }

  static key(tenant: string, member: string): string {
    return `${PrefixCache.tenantPrefix(tenant)}${member}.mstate`;
  }

  private indexKeys(tenant: string): string[] {
    return [this.keys.prefixLru(tenant), this.keys.prefixSizes(tenant), this.keys.prefixTotal(tenant)];
  }

  /**
   * The stored state of the longest of `candidates` (transcript hashes; candidates[k] = after k
   * messages; index 0, the root, is never looked up), or undefined; only prefixes of more than
   * `longerThan` messages are of interest. Found through the index, read from the store; an entry
   * the index lists but the store no longer has is forgotten.
   */
  async lookup(tenant: string, fingerprint: string, candidates: readonly string[], options: { longerThan?: number } = {}): Promise<PrefixHit | undefined> {
    const from = Math.max(1, (options.longerThan ?? 0) + 1);
    if (!this.enabled || candidates.length <= from) return undefined;
    await this.ensureIndexed(tenant);
    const members = candidates.map((h) => PrefixCache.member(fingerprint, h));
    const scores = (await this.redis.zmscore(this.keys.prefixLru(tenant), ...members.slice(1))) as Array<string | null>;
    for (let k = candidates.length - 1; k >= from; k--) {
      if (scores[k - 1] === null) continue;
      const member = members[k]!;
      const obj = await this.objects.get(PrefixCache.key(tenant, member));
      if (!obj) {
        await removePrefixCacheEntry.run(this.redis, this.indexKeys(tenant), [member]);
        continue;
      }
      await this.redis.zadd(this.keys.prefixLru(tenant), 'XX', Date.now(), member);
      return { messages: k, hash: candidates[k]!, bytes: obj.bytes };
    }
    return undefined;
  }

  /** Store a state (create-if-absent: the same address is the same state), then evict beyond the budget. */
  async store(tenant: string, fingerprint: string, transcriptHash: string, bytes: Uint8Array): Promise<void> {
    if (!this.enabled) return;
    const member = PrefixCache.member(fingerprint, transcriptHash);
    try {
      await this.objects.putIfAbsent(PrefixCache.key(tenant, member), bytes);
    } catch (e) {
      if (!(e instanceof StorePreconditionError)) throw e;
    }
    await this.ensureIndexed(tenant);
    await this.add(tenant, 'touch', [[member, bytes.byteLength]]);
  }

  /** Bytes the tenant's entries take, as the index counts them. */
  async tenantBytes(tenant: string): Promise<number> {
    return Number((await this.redis.get(this.keys.prefixTotal(tenant))) ?? 0);
  }

  private async add(tenant: string, mode: 'touch' | 'keep', entries: ReadonlyArray<readonly [string, number]>): Promise<void> {
    const evicted = (await addPrefixCacheEntries.run(this.redis, this.indexKeys(tenant), [
      Date.now(),
      this.options.tenantBytes,
      mode,
      ...entries.flatMap(([m, b]) => [m, b]),
    ])) as string[];
    if (evicted.length > 0) await this.objects.delete(evicted.map((m) => PrefixCache.key(tenant, m)));
  }

  /**
   * Rebuild the tenant's index from the store when Redis does not have it (first use, or Redis
   * lost its data). Rebuilt entries keep any last-use time a concurrent use gave them; the others
   * get now. Two workers rebuilding at once add the same entries, which is harmless.
   */
  private async ensureIndexed(tenant: string): Promise<void> {
    const marker = this.keys.prefixIndexed(tenant);
    if (await this.redis.exists(marker)) return;
    let startAfter: string | undefined;
    for (;;) {
      const page = await this.objects.listPage(PrefixCache.tenantPrefix(tenant), { startAfter, limit: this.options.listPageSize ?? 1000 });
      const entries = page.objects
        .filter((o) => o.key.endsWith('.mstate'))
        .map((o) => [o.key.slice(PrefixCache.tenantPrefix(tenant).length, -'.mstate'.length), o.bytes] as const);
      for (let i = 0; i < entries.length; i += REBUILD_BATCH) await this.add(tenant, 'keep', entries.slice(i, i + REBUILD_BATCH));
      if (!page.hasMore || page.objects.length === 0) break;
      startAfter = page.objects.at(-1)!.key;
    }
    await this.redis.set(marker, '1');
  }
}

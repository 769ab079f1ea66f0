// The prefix cache against a real Redis and the filesystem store: longest stored prefix wins,
// tenants never share entries, the byte budget evicts the least recently used (and deletes their
// objects), an entry gone from the store is forgotten, and a lost index is rebuilt from the store.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { useRedisServer } from '../test-support/redis.ts';
import { PrefixCache } from './prefix-cache.ts';
import { RedisKeys } from './redis-keys.ts';
import { FsStateStore } from './state-store-fs.ts';
import { EMPTY_TRANSCRIPT_ROOT, transcriptPrefixHashes } from './transcript-hash.ts';

const server = useRedisServer();
let redis: Redis;
let root: string;
let store: FsStateStore;
const FP = 'ab'.repeat(32);
const keys = new RedisKeys('pc');

beforeAll(async () => {
  redis = new Redis(server().url);
  root = await mkdtemp(join(tmpdir(), 'ms-prefix-'));
  store = new FsStateStore(root);
});
afterAll(async () => {
  redis?.disconnect();
  await rm(root, { recursive: true, force: true });
});

const chain = (...contents: string[]) => transcriptPrefixHashes(EMPTY_TRANSCRIPT_ROOT, contents.map((content) => ({ role: 'user' as const, content })));
const state = (label: string) => new TextEncoder().encode(label.padEnd(100, '.'));
const text = (b: Uint8Array) => new TextDecoder().decode(b).replace(/\.+$/, '');

it('finds the longest stored prefix, for its tenant only', async () => {
  const cache = new PrefixCache(store, redis, keys, { tenantBytes: 10_000 });
  const h = chain('a', 'b', 'c', 'd');
  await cache.store('t1', FP, h[1]!, state('after a'));
  await cache.store('t1', FP, h[3]!, state('after abc'));
  const hit = await cache.lookup('t1', FP, h);
  expect(hit).toMatchObject({ messages: 3, hash: h[3] });
  expect(text(hit!.bytes)).toBe('after abc');
  expect((await cache.lookup('t1', FP, h.slice(0, 3)))?.messages).toBe(1);
  expect(await cache.lookup('t1', FP, chain('x', 'b'))).toBeUndefined();
  // Another tenant, another model: nothing.
  expect(await cache.lookup('t2', FP, h)).toBeUndefined();
  expect(await cache.lookup('t1', 'cd'.repeat(32), h)).toBeUndefined();
  expect(await cache.tenantBytes('t1')).toBe(200);
});

it('evicts the least recently used beyond the budget, and their objects', async () => {
  const cache = new PrefixCache(store, redis, keys, { tenantBytes: 250 });
  const [a, b, c] = [chain('1'), chain('2'), chain('3')];
  await cache.store('lru', FP, a[1]!, state('a'));
  await new Promise((r) => setTimeout(r, 2));
  await cache.store('lru', FP, b[1]!, state('b'));
  await new Promise((r) => setTimeout(r, 2));
  expect(await cache.lookup('lru', FP, a)).toBeDefined(); // a is now the most recently used
  await new Promise((r) => setTimeout(r, 2));
  await cache.store('lru', FP, c[1]!, state('c'));
  expect(await cache.lookup('lru', FP, b)).toBeUndefined();
  expect(await cache.lookup('lru', FP, a)).toBeDefined();
  expect(await cache.lookup('lru', FP, c)).toBeDefined();
  expect(await cache.tenantBytes('lru')).toBe(200);
  const files = (await store.listPage(PrefixCache.tenantPrefix('lru'), { limit: 10 })).objects.map((o) => o.key);
  expect(files).toHaveLength(2);
  expect(files).not.toContain(PrefixCache.key('lru', PrefixCache.member(FP, b[1]!)));
});

it('forgets an entry whose object is gone, and rebuilds a lost index from the store', async () => {
  const cache = new PrefixCache(store, redis, keys, { tenantBytes: 10_000, listPageSize: 2 });
  const h = chain('p', 'q', 'r');
  for (const k of [1, 2, 3]) await cache.store('gone', FP, h[k]!, state(`k${k}`));
  // Expired under the store's lifecycle rule: the lookup falls back to a shorter prefix.
  await store.delete([PrefixCache.key('gone', PrefixCache.member(FP, h[3]!))]);
  expect((await cache.lookup('gone', FP, h))?.messages).toBe(2);
  expect(await cache.tenantBytes('gone')).toBe(200);
  // Redis loses everything: the next lookup lists the store again (pages of 2) and finds both.
  await redis.flushall();
  expect((await cache.lookup('gone', FP, h))?.messages).toBe(2);
  expect(await cache.tenantBytes('gone')).toBe(200);
  expect((await cache.lookup('gone', FP, h.slice(0, 2)))?.messages).toBe(1);
});

it('is off with a zero budget', async () => {
  const cache = new PrefixCache(store, redis, keys, { tenantBytes: 0 });
  const h = chain('z');
  await cache.store('off', FP, h[1]!, state('z'));
  expect(await cache.lookup('off', FP, h)).toBeUndefined();
  expect((await store.listPage(PrefixCache.tenantPrefix('off'), { limit: 10 })).objects).toEqual([]);
});

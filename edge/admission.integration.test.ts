// Admission limits against a real Redis and queue: no live worker → 503, a full queue →
// 429, both with Retry-After; a turn nobody finishes in time → 504. The "stuck worker" is a
// registry heartbeat with no consumer behind it: a worker that is alive but not taking jobs.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelRegistry } from '../shared/model-registry.ts';
import { RedisKeys } from '../shared/redis-keys.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';

const redisServer = useRedisServer();
let model: TinyModel;
let serving: TestServing;
let redis: Redis;

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({
    redisUrl: redisServer().url,
    modelDir: model.dir,
    workers: 0,
    env: { MAX_QUEUE_DEPTH: '1', TURN_TIMEOUT_MS: '1500', RETRY_AFTER_S: '3', WORKER_STALE_MS: '2000' },
  });
  redis = new Redis(redisServer().url);
  redis.on('error', () => {});
});
afterAll(async () => {
  redis?.disconnect();
  await serving?.stop();
  await model?.remove();
});

const post = (path: string, body: unknown) =>
  fetch(`${serving.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

describe('admission', () => {
  it('503 no_worker, 429 queue_full, 504 turn_timeout', async () => {
    const registry = new ModelRegistry(redis, new RedisKeys(serving.env['REDIS_PREFIX']!), 2000);
    const registration = { id: 'tiny', fingerprint: 'a'.repeat(64), layout: { num_layers: 2, intermediate_size: 64, state_size: 8, conv_kernel: 4 }, state_bytes: 1, vocab_rows: 304, engine: 'reference' };
    await registry.heartbeat(registration, 'stuck-worker');
    for (const id of ['s1', 's2']) expect((await post('/v1/sessions', { id })).status).toBe(201);

    // The stuck worker's heartbeat is fresh: the first turn is queued and times out.
    const first = post('/v1/sessions/s1/turns', { input: 'hi' });
    await new Promise((r) => setTimeout(r, 300));
    const second = await post('/v1/sessions/s2/turns', { input: 'hi' });
    expect(second.status).toBe(429);
    expect(second.headers.get('retry-after')).toBe('3');
    expect(((await second.json()) as { error: { code: string } }).error.code).toBe('queue_full');
    const timedOut = await first;
    expect(timedOut.status).toBe(504);
    expect(((await timedOut.json()) as { error: { code: string } }).error.code).toBe('turn_timeout');

    // Once its heartbeat is stale, no worker serves the model.
    await redis.zadd(new RedisKeys(serving.env['REDIS_PREFIX']!).workers('tiny'), Date.now() - 60_000, 'stuck-worker');
    const none = await post('/v1/sessions/s2/turns', { input: 'hi' });
    expect(none.status).toBe(503);
    expect(none.headers.get('retry-after')).toBe('3');
    expect(((await none.json()) as { error: { code: string } }).error.code).toBe('no_worker');
    expect((await fetch(`${serving.url}/readyz`)).status).toBe(503);
    // A chat naming a new session creates nothing when no worker could answer it.
    const chat = await fetch(`${serving.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-session-id': 'never-made' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(chat.status).toBe(503);
    expect((await fetch(`${serving.url}/v1/sessions/never-made`)).status).toBe(404);
  });

  it('Redis down: turns answer 503 promptly, readiness fails, stored sessions stay readable', async () => {
    await redisServer().stop();
    const t0 = Date.now();
    const turn = await post('/v1/sessions/s1/turns', { input: 'hi' });
    expect(turn.status).toBe(503);
    expect(((await turn.json()) as { error: { code: string } }).error.code).toBe('unavailable');
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect((await fetch(`${serving.url}/readyz`)).status).toBe(503);
    expect((await fetch(`${serving.url}/v1/sessions/s1`)).status).toBe(200);
  });
});

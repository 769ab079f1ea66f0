// The edge's side of the commit protocol, placed exactly: a real Redis, queue and store, and
// a "stuck" worker (a registry heartbeat with nobody taking jobs), so the turn sits queued
// while the test plays the worker's part on the store at the chosen moment.
//   - A turn saved just before its deadline is answered with its result, not 504.
//   - A turn answered 504 can no longer be saved: the commit that comes later is refused.
//   - A retry (same Idempotency-Key, same messages) of a chat whose job Redis has lost is
//     answered from the store, not 409 conversation_diverged.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatCompletionRequest } from '../shared/api-schemas.ts';
import { buildItemsFile } from '../shared/conversation-items.ts';
import { ModelRegistry } from '../shared/model-registry.ts';
import { RedisKeys } from '../shared/redis-keys.ts';
import { TurnSettledError, type CommitArgs } from '../shared/session-store.ts';
import { EMPTY_TRANSCRIPT_ROOT, extendTranscript } from '../shared/transcript-hash.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { LOCAL_TENANT } from './deps.ts';
import { requestFingerprint } from './idempotency.ts';
import { turnIdFor } from './turn-service.ts';

const redisServer = useRedisServer();
let model: TinyModel;
let serving: TestServing;
let redis: Redis;
let keys: RedisKeys;

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({ redisUrl: redisServer().url, modelDir: model.dir, workers: 0, env: { TURN_TIMEOUT_MS: '1500', WORKER_STALE_MS: '60000' } });
  redis = new Redis(redisServer().url);
  keys = new RedisKeys(serving.env['REDIS_PREFIX']!);
  const registration = { id: 'tiny', fingerprint: 'a'.repeat(64), layout: { num_layers: 2, intermediate_size: 64, state_size: 8, conv_kernel: 4 }, state_bytes: 1, vocab_rows: 304, engine: 'reference' };
  await new ModelRegistry(redis, keys, 60_000).heartbeat(registration, 'stuck-worker');
});
afterAll(async () => {
  redis?.disconnect();
  await serving?.stop();
  await model?.remove();
});

const sessions = () => serving.edge.deps.sessions;
const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${serving.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

/** What a worker would commit for turn `turnId` on `session`: a version with its reply. */
async function commitAsWorker(session: string, turnId: string, input: string, reply: string, deadlineMs?: number, requestSha256?: string): Promise<CommitArgs> {
  const { manifest } = (await sessions().read(LOCAL_TENANT, session))!;
  const transcript = extendTranscript(extendTranscript(EMPTY_TRANSCRIPT_ROOT, { role: 'user', content: input }), { role: 'assistant', content: reply });
  const args: CommitArgs = {
    tenant: LOCAL_TENANT,
    session,
    fence: manifest.fence + 1,
    state: new Uint8Array([1, 2, 3]),
    turn: { id: turnId, incarnation: manifest.incarnation, ...(deadlineMs !== undefined ? { deadlineMs } : {}) },
    version: { parent: 0, tokens_absorbed: 9, transcript_hash: transcript, origin: 'turn' },
    items: buildItemsFile({
      session,
      turnId,
      messages: [{ role: 'user', content: input }],
      instructions: null,
      reply: { text: reply, complete: true },
      result: { finish_reason: 'stop', usage: { input_tokens: 5, output_tokens: 2, cached_tokens: 0, tokens_absorbed: 9 }, ...(requestSha256 ? { request_sha256: requestSha256 } : {}) },
    }),
  };
  return args;
}

describe('a turn outcome decided by the store', () => {
  it('saved just before the deadline: answered with its result, not 504', async () => {
    expect((await post('/v1/sessions', { id: 'late-save' })).status).toBe(201);
    const turnId = turnIdFor(LOCAL_TENANT, 'late-save', 'k-late');
    const answer = post('/v1/sessions/late-save/turns', { input: 'hello', max_tokens: 4 }, { 'idempotency-key': 'k-late' });
    await new Promise((r) => setTimeout(r, 500));
    // The (slow) worker's commit lands before the deadline; its `done` never reaches Redis.
    await sessions().commitVersion(await commitAsWorker('late-save', turnId, 'hello', 'hi there', Date.now() + 60_000));
    const res = await answer;
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ turn_id: turnId, version: 1, output: 'hi there', finish_reason: 'stop' });
    // The same key again: the same answer.
    const again = await post('/v1/sessions/late-save/turns', { input: 'hello', max_tokens: 4 }, { 'idempotency-key': 'k-late' });
    expect(await again.json()).toMatchObject({ version: 1, output: 'hi there' });
  });

  it('answered 504: the turn is refused in the store, so a commit that comes later cannot happen', async () => {
    expect((await post('/v1/sessions', { id: 'timed-out' })).status).toBe(201);
    const turnId = turnIdFor(LOCAL_TENANT, 'timed-out', 'k-504');
    const res = await post('/v1/sessions/timed-out/turns', { input: 'hello', max_tokens: 4 }, { 'idempotency-key': 'k-504' });
    expect(res.status).toBe(504);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('turn_timeout');
    // The worker's commit, arriving late (and with no deadline of its own to check), is refused.
    const late = await sessions().commitVersion(await commitAsWorker('timed-out', turnId, 'hello', 'too late')).then(() => undefined, (e: unknown) => e);
    expect(late).toBeInstanceOf(TurnSettledError);
    expect((late as TurnSettledError).outcome).toMatchObject({ state: 'refused', refusal: { code: 'turn_timeout' } });
    expect((await sessions().read(LOCAL_TENANT, 'timed-out'))!.manifest.head).toBe(0);
    // Nothing runs now: the session is not left busy.
    expect(await redis.get(keys.sessionTurn(LOCAL_TENANT, 'timed-out'))).toBeNull();
  });

  it('a chat retried with the same key and messages after Redis lost its job: the stored answer, not 409', async () => {
    const messages = [{ role: 'user', content: 'remember this' }];
    const created = await post('/v1/sessions', { id: 'chat-replay' });
    expect(created.status).toBe(201);
    const turnId = turnIdFor(LOCAL_TENANT, 'chat-replay', 'k-chat');
    // The turn ran and was saved; then Redis lost everything about it (its job, its stream).
    const fingerprint = requestFingerprint('chat', ChatCompletionRequest.parse({ messages, max_tokens: 4 }), { session: 'chat-replay', fork: false, append: false, cartridge: null });
    await sessions().commitVersion(await commitAsWorker('chat-replay', turnId, 'remember this', 'I will.', undefined, fingerprint));
    const res = await post('/v1/chat/completions', { messages, max_tokens: 4 }, { 'x-session-id': 'chat-replay', 'idempotency-key': 'k-chat' });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id: `chatcmpl-${turnId}`, choices: [{ message: { content: 'I will.' } }], session_version: 1 });
    // Another body under the key is still refused.
    const other = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'something else' }] }, { 'x-session-id': 'chat-replay', 'idempotency-key': 'k-chat' });
    expect(other.status).toBe(422);
    expect(((await other.json()) as { error: { code: string } }).error.code).toBe('idempotency_key_reused');
  });
});

// End to end, as a user runs it: the local stack (its own redis-server, a worker process, the
// edge process) started by the same code as `npm start`, driven by the official `openai`
// client. Then the faults: a worker killed between turns, killed mid-turn, and stopped with
// SIGTERM mid-turn — the session never loses a version or gains a torn one.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionInfo, VersionList } from '../shared/api-schemas.ts';
import { decodeMState } from '../shared/mstate.ts';
import { turnIdFor } from '../edge/turn-service.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { startLocalStack, type LocalStack } from './local-stack.ts';
import { testStackEnv } from './test-stack-env.ts';

let model: TinyModel;
let dataDir: string;
let stack: LocalStack;
let client: OpenAI;

beforeAll(async () => {
  model = await writeTinyModel();
  dataDir = await mkdtemp(join(tmpdir(), 'ms-e2e-'));
  stack = await startLocalStack({
    env: testStackEnv(dataDir, {
      MODEL_DIR: model.dir,
      MODEL_ID: 'tiny',
      // Fast fault recovery for the tests: a dead worker's turn is retried within seconds.
      QUEUE_LOCK_MS: '2000',
      LEASE_TTL_MS: '2000',
      WORKER_STALE_MS: '3000',
      SHUTDOWN_GRACE_MS: '0',
      LOG_LEVEL: 'warn',
    }),
    readyTimeoutMs: 180_000,
  });
  client = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: 'not-needed-locally', maxRetries: 0 });
}, 240_000);

afterAll(async () => {
  await stack?.stop();
  await model?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

async function get<T>(path: string, schema: { parse(v: unknown): T }): Promise<T> {
  const res = await fetch(`${stack.url}${path}`);
  expect(res.status).toBe(200);
  return schema.parse(await res.json());
}

/** Extra body fields the OpenAI client passes through as given. */
type WithSession = OpenAI.Chat.ChatCompletionCreateParamsNonStreaming & { session_id?: string };

describe('the official OpenAI client against the local stack', () => {
  it('chat, session by header, prefix reuse reported as cached tokens', async () => {
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Say something.' },
    ];
    const first = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, temperature: 0 }, { headers: { 'X-Session-Id': 'e2e-header' } });
    expect(first.object).toBe('chat.completion');
    expect(first.choices[0]!.finish_reason).toMatch(/stop|length/);
    expect(first.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
    const reply = first.choices[0]!.message.content ?? '';

    const second = await client.chat.completions.create({
      model: 'tiny',
      messages: [...messages, { role: 'assistant', content: reply }, { role: 'user', content: 'More.' }],
      max_tokens: 8,
      temperature: 0,
      session_id: 'e2e-header',
    } as WithSession);
    const info = await get('/v1/sessions/e2e-header', SessionInfo);
    expect(info.version).toBe(2);
    expect(second.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(0);
    expect(second.usage!.prompt_tokens).toBeGreaterThan(second.usage!.prompt_tokens_details!.cached_tokens!);
  });

  it('streams chunks with usage and ends with [DONE]', async () => {
    const stream = await client.chat.completions.create(
      { model: 'tiny', messages: [{ role: 'user', content: 'Stream to me.' }], max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } },
      { headers: { 'X-Session-Id': 'e2e-stream' } },
    );
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(finish).toMatch(/stop|length/);
    expect(usage!.completion_tokens).toBeGreaterThan(0);
    const state = await fetch(`${stack.url}/v1/sessions/e2e-stream/state`);
    expect(state.status).toBe(200);
    const absorbed = decodeMState(new Uint8Array(await state.arrayBuffer())).header.tokens_absorbed;
    expect(absorbed).toBe((await get('/v1/sessions/e2e-stream', SessionInfo)).tokens_absorbed);
    // Prompt and reply, plus the template's reply suffix that closes the assistant message.
    expect(absorbed).toBeGreaterThanOrEqual(usage!.total_tokens);
    expect(text.length).toBeGreaterThan(0);
  });

  it('a clear error object for a conversation that does not extend the session', async () => {
    await expect(
      client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Something else entirely.' }], max_tokens: 2 }, { headers: { 'X-Session-Id': 'e2e-header' } }),
    ).rejects.toMatchObject({ status: 409, error: { code: 'conversation_diverged' } });
  });
});

describe('worker faults', () => {
  const chat = (session: string, content: string, maxTokens: number) =>
    client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 0 }, { headers: { 'X-Session-Id': session } });

  async function withRedis<T>(fn: (r: Redis) => Promise<T>): Promise<T> {
    const redis = new Redis(stack.redisUrl);
    try {
      return await fn(redis);
    } finally {
      redis.disconnect();
    }
  }

  async function attemptsOf(turnId: string): Promise<Set<number>> {
    const entries = await withRedis((r) => r.xrange(`ms:stream:${turnId}`, '-', '+'));
    return new Set(entries.map(([, fields]) => JSON.parse(fields[1]!).attempt as number));
  }

  async function tensors(session: string, version: number) {
    const res = await fetch(`${stack.url}/v1/sessions/${session}/state?version=${version}`);
    return decodeMState(new Uint8Array(await res.arrayBuffer())).content.tensors.map((t) => Buffer.from(t.data.buffer));
  }

  it('killed between turns: the next turn on a new worker equals a worker that never stopped', async () => {
    const history = (reply: string) => [
      { role: 'user' as const, content: 'first' },
      { role: 'assistant' as const, content: reply },
      { role: 'user' as const, content: 'second' },
    ];
    const a1 = await chat('steady', 'first', 6);
    const a2 = await client.chat.completions.create({ model: 'tiny', messages: history(a1.choices[0]!.message.content!), max_tokens: 6, temperature: 0 }, { headers: { 'X-Session-Id': 'steady' } });
    const b1 = await chat('killed', 'first', 6);
    await stack.worker.kill();
    stack.worker = await stack.startWorker();
    const b2 = await client.chat.completions.create({ model: 'tiny', messages: history(b1.choices[0]!.message.content!), max_tokens: 6, temperature: 0 }, { headers: { 'X-Session-Id': 'killed' } });
    expect(b2.choices[0]!.message.content).toBe(a2.choices[0]!.message.content);
    expect(await tensors('killed', 2)).toEqual(await tensors('steady', 2));
  }, 120_000);

  it('killed mid-turn: the session stays at its last version and the turn is retried to the same reply', async () => {
    const control = await chat('control', 'tell me a long story', 600);
    const stream = await client.chat.completions.create(
      { model: 'tiny', messages: [{ role: 'user', content: 'tell me a long story' }], max_tokens: 600, temperature: 0, stream: true },
      { headers: { 'X-Session-Id': 'crash' } },
    );
    let text = '';
    let killed = false;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      if (!killed && text.length > 0) {
        killed = true;
        await stack.worker.kill();
        // Nothing was committed by the dead attempt.
        expect((await get('/v1/sessions/crash/versions', VersionList)).head).toBe(0);
        stack.worker = await stack.startWorker();
      }
    }
    expect(killed).toBe(true);
    expect(text).toBe(control.choices[0]!.message.content);
    const versions = await get('/v1/sessions/crash/versions', VersionList);
    expect(versions.data.map((v) => [v.version, v.parent])).toEqual([
      [0, null],
      [1, 0],
    ]);
    expect(await tensors('crash', 1)).toEqual(await tensors('control', 1));
  }, 120_000);

  it('SIGTERM mid-turn: the turn goes back to the queue and another worker finishes it', async () => {
    const spare = await stack.startWorker();
    const control = await chat('control-2', 'another long story', 2000);
    const turnId = turnIdFor('local', 'sigterm', 'sigterm-1');
    const pending = client.chat.completions.create(
      { model: 'tiny', messages: [{ role: 'user', content: 'another long story' }], max_tokens: 2000, temperature: 0 },
      { headers: { 'X-Session-Id': 'sigterm', 'Idempotency-Key': 'sigterm-1' } },
    );
    while ((await attemptsOf(turnId)).size === 0) await new Promise((r) => setTimeout(r, 20));
    // SIGTERM the worker holding the session's lease ("{fence}:{worker id}"): it releases the
    // turn (grace 0) and the other worker finishes it.
    const holder = await withRedis((r) => r.get('ms:lease:local:sigterm'));
    const holderId = holder!.slice(holder!.indexOf(':') + 1);
    if (holderId === spare.ready.id) await spare.stop(30_000);
    else {
      expect(holderId).toBe(stack.worker.ready.id);
      await stack.worker.stop(30_000);
      stack.worker = spare;
    }
    const done = await pending;
    expect(done.choices[0]!.message.content).toBe(control.choices[0]!.message.content);
    expect((await attemptsOf(turnId)).size).toBeGreaterThan(1);
    expect((await get('/v1/sessions/sigterm/versions', VersionList)).head).toBe(1);
  }, 120_000);
});

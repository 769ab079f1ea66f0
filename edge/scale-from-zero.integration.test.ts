// Scaling from zero workers, against a real Redis, queue and workers: with QUEUE_WITHOUT_WORKERS
// the edge queues DEFAULT_MODEL's turns while no worker is alive (the queue metric then asks for
// one) and they complete once a worker starts; without it, the edge answers 503 at once and
// queues nothing.
import type { PutMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorResponse } from '../shared/api-schemas.ts';
import { encodeMState } from '../shared/mstate.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { publishQueueMetrics } from './queue-metrics.ts';

const redis = useRedisServer();
let model: TinyModel;

beforeAll(async () => {
  model = await writeTinyModel();
});
afterAll(async () => {
  await model?.remove();
});

interface Reply {
  status: number;
  json: any;
  headers: Headers;
}

function client(serving: TestServing) {
  return async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> => {
    const raw = body instanceof Uint8Array;
    const res = await fetch(`${serving.url}${path}`, {
      method,
      headers: { 'content-type': raw ? 'application/octet-stream' : 'application/json', ...headers },
      body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
  };
}

function expectError(r: Reply, status: number, code: string): void {
  expect(r.status, JSON.stringify(r.json)).toBe(status);
  expect(ErrorResponse.parse(r.json).error.code).toBe(code);
}

async function waitFor(check: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A well-formed state of some model: the edge must know the session model's fingerprint to judge it. */
const someState = () =>
  encodeMState({
    modelFingerprint: 'f'.repeat(64),
    tokensAbsorbed: 3,
    parentVersion: null,
    transcriptHash: null,
    layout: { num_layers: 2, intermediate_size: 64, state_size: 8, conv_kernel: 4 },
    tensors: [{ name: 'conv_state', shape: [1], data: new Float32Array(1) }],
  });

describe('QUEUE_WITHOUT_WORKERS', () => {
  it('queues turns while no worker has ever run, and serves them once one starts; again after scaling to zero', async () => {
    const serving = await startTestServing({
      redisUrl: redis().url,
      modelDir: model.dir,
      workers: 0,
      env: { QUEUE_WITHOUT_WORKERS: 'true', DEFAULT_MODEL: 'tiny', MAX_QUEUE_DEPTH: '3', TURN_TIMEOUT_MS: '60000', RETRY_AFTER_S: '3' },
    });
    const call = client(serving);
    const depth = () => serving.edge.deps.queues.depth('tiny');
    try {
      // Ready (it accepts turns), and truthful about the workers: none, and nothing known of the model but its name.
      const ready = await call('GET', '/readyz');
      expect(ready.status).toBe(200);
      expect(ready.json).toEqual({ ok: true, workers: { tiny: 0 }, queue_without_workers: ['tiny'] });
      expect((await call('GET', '/v1/models')).json.data).toEqual([
        { id: 'tiny', object: 'model', created: 0, owned_by: 'mamba-serve', state_bytes: null, layer_types: null, sliding_window: null, workers: 0 },
      ]);
      expectError(await call('POST', '/v1/sessions', { model: 'other' }), 404, 'model_not_found');

      // A session needs only the model's name; an import needs its fingerprint, which only a worker can tell.
      const created = await call('POST', '/v1/sessions', { id: 'cold' });
      expect(created.status, JSON.stringify(created.json)).toBe(201);
      expect(created.json).toMatchObject({ id: 'cold', model: 'tiny', version: 0 });
      const imported = await call('PUT', '/v1/sessions/cold/state', someState());
      expectError(imported, 503, 'no_worker');
      expect(imported.headers.get('retry-after')).toBe('3');
      expect(imported.json.error.message).toMatch(/fingerprint is unknown.*a queued turn starts one/);

      // Turns, a system prompt and a chat naming a new session all wait in the queue.
      const turn = call('POST', '/v1/sessions/cold/turns', { input: 'hello', max_tokens: 3, temperature: 0 });
      const withSystem = call('POST', '/v1/sessions', { id: 'cold-sys', system: 'Be brief.' });
      const chat = call('POST', '/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, { 'x-session-id': 'cold-chat' });
      await waitFor(async () => (await depth()) === 3, 'three queued turns');

      // What the queue-metrics publisher reports from them: one worker wanted.
      const sent: PutMetricDataCommand[] = [];
      const published = await publishQueueMetrics(
        serving.edge.deps.queues.of('tiny'),
        { send: async (command: PutMetricDataCommand) => sent.push(command) },
        { namespace: 'MambaServe', deployment: 'test', modelId: 'tiny', turnsPerWorker: 4 },
      );
      expect(published).toMatchObject({ waiting: 3, desiredWorkers: 1 });
      expect(sent).toHaveLength(1);

      // The queue-depth limit still holds.
      const full = await call('POST', '/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
      expectError(full, 429, 'queue_full');
      expect(full.headers.get('retry-after')).toBe('3');

      // A worker starts (in AWS, the scaling policy's doing): every waiting request completes.
      const first = await serving.addWorker();
      const answered = await turn;
      expect(answered.status, JSON.stringify(answered.json)).toBe(200);
      expect(answered.json).toMatchObject({ session_id: 'cold', version: 1 });
      const sys = await withSystem;
      expect(sys.status, JSON.stringify(sys.json)).toBe(201);
      expect(sys.json).toMatchObject({ id: 'cold-sys', version: 1 });
      const chatted = await chat;
      expect(chatted.status, JSON.stringify(chatted.json)).toBe(200);
      expect(chatted.json).toMatchObject({ object: 'chat.completion', session_id: 'cold-chat', session_version: 1 });
      // The worker has registered the model: an import is now judged by its fingerprint.
      expectError(await call('PUT', '/v1/sessions/cold/state', someState()), 400, 'state_model_mismatch');
      expect((await call('GET', '/v1/models')).json.data).toEqual([expect.objectContaining({ id: 'tiny', workers: 1, state_bytes: expect.any(Number) })]);

      // Scaled back to zero: the next turn waits for the next worker instead of failing.
      await first.stop(0);
      expect((await call('GET', '/readyz')).json).toMatchObject({ ok: true, workers: { tiny: 0 } });
      const later = call('POST', '/v1/sessions/cold/turns', { input: 'again', max_tokens: 3, temperature: 0 });
      await waitFor(async () => (await depth()) === 1, 'the turn queued after scale-in');
      await serving.addWorker();
      const resumed = await later;
      expect(resumed.status, JSON.stringify(resumed.json)).toBe(200);
      expect(resumed.json).toMatchObject({ session_id: 'cold', version: 2 });
    } finally {
      await serving.stop();
    }
  });

  it('off (the default): no live worker answers 503 at once and nothing is queued or created', async () => {
    const serving = await startTestServing({ redisUrl: redis().url, modelDir: model.dir, workers: 1, env: { DEFAULT_MODEL: 'tiny', RETRY_AFTER_S: '3' } });
    const call = client(serving);
    try {
      // A worker ran and stopped: the model is registered, no worker is alive.
      await serving.workers[0]!.stop(0);
      expect((await call('POST', '/v1/sessions', { id: 'warm' })).status).toBe(201);
      const turn = await call('POST', '/v1/sessions/warm/turns', { input: 'hello', max_tokens: 3 });
      expectError(turn, 503, 'no_worker');
      expect(turn.headers.get('retry-after')).toBe('3');
      expect(await serving.edge.deps.queues.depth('tiny')).toBe(0);
      expectError(await call('POST', '/v1/sessions', { id: 'warm-sys', system: 'Be brief.' }), 503, 'no_worker');
      expectError(await call('GET', '/v1/sessions/warm-sys'), 404, 'session_not_found');
      const chat = await call('POST', '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] }, { 'x-session-id': 'warm-chat' });
      expectError(chat, 503, 'no_worker');
      expectError(await call('GET', '/v1/sessions/warm-chat'), 404, 'session_not_found');
      expectError(await call('GET', '/readyz'), 503, 'no_worker');
      expect(await serving.edge.deps.queues.depth('tiny')).toBe(0);
    } finally {
      await serving.stop();
    }
  });
});

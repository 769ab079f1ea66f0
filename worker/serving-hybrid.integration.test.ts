// A hybrid model (Mamba layers + a sliding-window attention layer) served exactly like a
// Mamba one, through real components: HTTP edge, BullMQ on a real Redis, a worker on the ORT
// engine, states in a real S3-speaking server (moto). Sessions, turns across a worker
// restart, fork, export/import, the OpenAI chat endpoint with prefix reuse, and concurrent
// turns batched together; the state never grows with the session.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelList, SessionCreated, SessionInfo, TurnResponse } from '../shared/api-schemas.ts';
import { decodeMState, readMStateHeader } from '../shared/mstate.ts';
import { startMotoServer, type MotoServer } from '../test-support/moto-server.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { createEngine } from './engine/create-engine.ts';

const redis = useRedisServer();
let moto: MotoServer;
let model: TinyModel;
let pureModel: TinyModel;
let serving: TestServing;
let cacheDir: string;
const saved = { id: process.env['AWS_ACCESS_KEY_ID'], secret: process.env['AWS_SECRET_ACCESS_KEY'] };
const W = 8;

beforeAll(async () => {
  moto = await startMotoServer();
  await moto.createBucket('states');
  process.env['AWS_ACCESS_KEY_ID'] = moto.credentials.accessKeyId;
  process.env['AWS_SECRET_ACCESS_KEY'] = moto.credentials.secretAccessKey;
  cacheDir = await mkdtemp(join(tmpdir(), 'ms-hybrid-cache-'));
  model = await writeTinyModel({ numLayers: 3, hybrid: { attentionLayers: [1], window: W, heads: 4, kvHeads: 2 } });
  pureModel = await writeTinyModel({ numLayers: 3 });
  serving = await startTestServing({
    redisUrl: redis().url,
    modelDir: model.dir,
    env: {
      ENGINE: 'ort',
      ORT_INTRA_OP_THREADS: '1',
      MODEL_CACHE_DIR: cacheDir,
      STATE_STORE: 's3://states/hybrid',
      S3_ENDPOINT: moto.endpoint,
      S3_FORCE_PATH_STYLE: 'true',
      S3_REGION: 'us-east-1',
      WORKER_CONCURRENCY: '4',
    },
  });
});
afterAll(async () => {
  await serving?.stop();
  await model?.remove();
  await pureModel?.remove();
  await moto?.stop();
  if (cacheDir) await rm(cacheDir, { recursive: true, force: true });
  process.env['AWS_ACCESS_KEY_ID'] = saved.id;
  process.env['AWS_SECRET_ACCESS_KEY'] = saved.secret;
  if (saved.id === undefined) delete process.env['AWS_ACCESS_KEY_ID'];
  if (saved.secret === undefined) delete process.env['AWS_SECRET_ACCESS_KEY'];
});

async function call(method: string, path: string, body?: unknown, raw?: Uint8Array): Promise<{ status: number; json: any }> {
  const res = await fetch(`${serving.url}${path}`, {
    method,
    headers: raw ? { 'content-type': 'application/octet-stream' } : body === undefined ? {} : { 'content-type': 'application/json' },
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined };
}

const newSession = async (body: Record<string, unknown> = {}) => SessionCreated.parse((await call('POST', '/v1/sessions', body)).json).id;

async function turn(session: string, input: string, maxTokens = 6): Promise<TurnResponse> {
  const r = await call('POST', `/v1/sessions/${session}/turns`, { input, max_tokens: maxTokens, temperature: 0 });
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return TurnResponse.parse(r.json);
}

async function exportState(session: string, version?: number): Promise<Uint8Array> {
  const res = await fetch(`${serving.url}/v1/sessions/${session}/state${version === undefined ? '' : `?version=${version}`}`);
  expect(res.status).toBe(200);
  return new Uint8Array(await res.arrayBuffer());
}

describe('a hybrid model, served', () => {
  it('/v1/models shows its layer layout, window and state bytes', async () => {
    const models = ModelList.parse((await call('GET', '/v1/models')).json);
    expect(models.data).toHaveLength(1);
    // 2 Mamba layers x d_inner 64 x (d_conv 4 + d_state 8) and a k and a v ring of W x 2 KV heads x hd 8, fp32.
    expect(models.data[0]).toMatchObject({
      id: 'tiny',
      layer_types: ['mamba', 'sliding_attention', 'mamba'],
      sliding_window: W,
      state_bytes: 4 * (2 * 64 * (4 + 8) + 2 * W * 2 * 8),
    });
  });

  it('runs turns whose stored state stays one size, across a worker restart, exactly as without one', async () => {
    const steady = await newSession();
    const restarted = await newSession();
    const inputs = ['the first message, long enough to wrap the window', 'a second', 'and a third one'];
    const a: TurnResponse[] = [];
    for (const input of inputs) a.push(await turn(steady, input));
    await turn(restarted, inputs[0]!);
    // Replace the only worker: its hot states die with it; the next turns read S3.
    const old = serving.workers.shift()!;
    await old.stop(0);
    await serving.addWorker({ WORKER_ID: 'w-restarted' });
    const b2 = await turn(restarted, inputs[1]!);
    const b3 = await turn(restarted, inputs[2]!);
    expect([b2.output, b3.output]).toEqual([a[1]!.output, a[2]!.output]);
    expect(b3.usage).toEqual(a[2]!.usage);
    expect(a[2]!.usage.tokens_absorbed).toBeGreaterThan(3 * W);

    const sizes = await Promise.all([1, 2, 3].map(async (v) => (await exportState(steady, v)).length));
    expect(new Set(sizes).size).toBe(1);
    const x = decodeMState(await exportState(steady, 3)).content;
    const y = decodeMState(await exportState(restarted, 3)).content;
    expect(x.tensors.map((t) => t.name)).toEqual(['conv_state', 'ssm_state', 'attn_k', 'attn_v']);
    expect(y.tokensAbsorbed).toBe(x.tokensAbsorbed);
    for (let i = 0; i < x.tensors.length; i++) expect(Buffer.from(y.tensors[i]!.data.buffer).equals(Buffer.from(x.tensors[i]!.data.buffer))).toBe(true);
    const info = SessionInfo.parse((await call('GET', `/v1/sessions/${steady}`)).json);
    expect(info.state_bytes).toBe(sizes[0]);
  });

  it('forks and imports continue exactly where the source was', async () => {
    const source = await newSession();
    await turn(source, 'a fact to keep: the code is 4812');
    const second = await turn(source, 'what was it?');

    const fork = await call('POST', `/v1/sessions/${source}/fork`, { version: 1, id: 'hybrid-fork' });
    expect(fork.status, JSON.stringify(fork.json)).toBe(201);
    expect((await turn('hybrid-fork', 'what was it?')).output).toBe(second.output);

    const bytes = await exportState(source, 1);
    expect(readMStateHeader(bytes).header.layout).toMatchObject({ layer_types: ['mamba', 'sliding_attention', 'mamba'], sliding_window: W });
    const target = await newSession();
    const put = await call('PUT', `/v1/sessions/${target}/state`, undefined, bytes);
    expect(put.status, JSON.stringify(put.json)).toBe(201);
    const resumed = await turn(target, 'what was it?');
    expect(resumed.output).toBe(second.output);
    expect(resumed.usage.cached_tokens).toBe(readMStateHeader(bytes).header.tokens_absorbed);

    // Bytes of the other kind of model are refused, and the session keeps its head.
    const { engine } = await createEngine({ modelDir: pureModel.dir, engine: 'reference' });
    const pure = await engine.newState();
    await engine.prefill(pure, Int32Array.of(72, 105));
    const foreign = await engine.exportState(pure, { parentVersion: null, transcriptHash: null });
    await engine.close();
    const refused = await call('PUT', `/v1/sessions/${target}/state`, undefined, foreign);
    expect(refused.status).toBe(400);
    expect(refused.json.error.code).toBe('state_model_mismatch');
    expect(SessionInfo.parse((await call('GET', `/v1/sessions/${target}`)).json).version).toBe(2);
  });

  it('chat completions through the openai client reuse the stored prefix', async () => {
    const client = new OpenAI({ baseURL: `${serving.url}/v1`, apiKey: 'local', maxRetries: 0 });
    const history: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Name a colour, any colour at all.' },
    ];
    const first = await client.chat.completions.create({ model: 'tiny', messages: history, max_tokens: 5, temperature: 0 }, { headers: { 'X-Session-Id': 'hybrid-chat' } });
    expect(first.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const reply = first.choices[0]!.message.content ?? '';
    const next = await client.chat.completions.create(
      { model: 'tiny', messages: [...history, { role: 'assistant', content: reply }, { role: 'user', content: 'Another.' }], max_tokens: 5, temperature: 0 },
      { headers: { 'X-Session-Id': 'hybrid-chat' } },
    );
    const v1 = (await call('GET', '/v1/sessions/hybrid-chat/versions')).json.data.find((v: { version: number }) => v.version === 1);
    expect(next.usage?.prompt_tokens_details?.cached_tokens).toBe(v1.tokens_absorbed);
    expect(v1.tokens_absorbed).toBeGreaterThan(W);
  });

  it('a chat without a session reuses the stored prefix of its history (the prefix cache)', async () => {
    const client = new OpenAI({ baseURL: `${serving.url}/v1`, apiKey: 'local', maxRetries: 0 });
    const history: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You keep notes. '.repeat(20) },
      { role: 'user', content: `Here is a long note to keep: ${'the window only sees the last few tokens. '.repeat(8)}` },
    ];
    const first = await client.chat.completions.create({ model: 'tiny', messages: history, max_tokens: 4, temperature: 0 });
    expect(first.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const again = await client.chat.completions.create({ model: 'tiny', messages: history, max_tokens: 4, temperature: 0 });
    // The stored state after the history is reused: only the generation prompt is fed again.
    expect(again.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThan(4 * W);
    expect(again.choices[0]!.message.content).toBe(first.choices[0]!.message.content);
  });

  it('concurrent turns on one worker are batched and each is what it would be alone', async () => {
    const inputs = ['alpha', 'a much longer second input than the others', 'c', 'delta delta delta'];
    const alone: string[] = [];
    for (const input of inputs) alone.push((await turn(await newSession(), input, 12)).output);
    const sessions = await Promise.all(inputs.map(() => newSession()));
    const together = await Promise.all(sessions.map((s, i) => turn(s, inputs[i]!, 12)));
    expect(together.map((t) => t.output)).toEqual(alone);
  });
});

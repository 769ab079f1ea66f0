// The vertical slice through real components: HTTP edge → BullMQ → worker (tiny model) →
// durable versions in the store; a worker restarted between turns continues exactly.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionCreated, SessionInfo, TurnResponse, VersionList } from '../shared/api-schemas.ts';
import { decodeMState } from '../shared/mstate.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { createEngine } from './engine/create-engine.ts';

const redis = useRedisServer();
let model: TinyModel;
let serving: TestServing;

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({ redisUrl: redis().url, modelDir: model.dir });
});
afterAll(async () => {
  await serving?.stop();
  await model?.remove();
});

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(`${serving.url}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
}

async function turn(session: string, input: string): Promise<TurnResponse> {
  const r = await call('POST', `/v1/sessions/${session}/turns`, { input, max_tokens: 6, temperature: 0 });
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return TurnResponse.parse(r.json);
}

async function stateTensors(session: string, version: number) {
  const res = await fetch(`${serving.url}/v1/sessions/${session}/state?version=${version}`);
  expect(res.status).toBe(200);
  return new Uint8Array(await res.arrayBuffer());
}

describe('a session end to end', () => {
  it('creates, runs turns that advance durable versions, and reports them', async () => {
    const created = await call('POST', '/v1/sessions', { metadata: { user: 'u1' } });
    expect(created.status).toBe(201);
    const s = SessionCreated.parse(created.json);
    expect(s.version).toBe(0);
    expect(s.model).toBe('tiny');

    const t1 = await turn(s.id, 'hello');
    expect(t1.version).toBe(1);
    expect(t1.usage.output_tokens).toBeGreaterThan(0);
    expect(t1.usage.cached_tokens).toBe(0);
    expect(t1.usage.input_tokens).toBeGreaterThan(5);
    const t2 = await turn(s.id, 'again');
    expect(t2.version).toBe(2);
    expect(t2.usage.cached_tokens).toBe(t1.usage.tokens_absorbed);

    const info = SessionInfo.parse((await call('GET', `/v1/sessions/${s.id}`)).json);
    expect(info).toMatchObject({ version: 2, tokens_absorbed: t2.usage.tokens_absorbed, metadata: { user: 'u1' }, versions: 3 });
    expect(info.state_bytes).toBeGreaterThan(0);
    const versions = VersionList.parse((await call('GET', `/v1/sessions/${s.id}/versions`)).json);
    expect(versions.data.map((v) => [v.version, v.parent, v.origin])).toEqual([
      [0, null, 'created'],
      [1, 0, 'turn'],
      [2, 1, 'turn'],
    ]);
  });

  it('a worker restarted between turns continues exactly like one that never stopped', async () => {
    const mk = async () => SessionCreated.parse((await call('POST', '/v1/sessions', {})).json).id;
    const steady = await mk();
    const restarted = await mk();
    await turn(steady, 'the first message');
    const a2 = await turn(steady, 'and a second one');

    await turn(restarted, 'the first message');
    // Replace the only worker: its hot states die with it; the next turn reads the store.
    const old = serving.workers.shift()!;
    await old.stop(0);
    await serving.addWorker({ WORKER_ID: 'w-restarted' });
    const b2 = await turn(restarted, 'and a second one');

    expect(b2.output).toBe(a2.output);
    expect(b2.usage).toEqual(a2.usage);
    const x = decodeMState(await stateTensors(steady, 2)).content;
    const y = decodeMState(await stateTensors(restarted, 2)).content;
    expect(y.tokensAbsorbed).toBe(x.tokensAbsorbed);
    for (let i = 0; i < x.tensors.length; i++) expect(Buffer.from(y.tensors[i]!.data.buffer).equals(Buffer.from(x.tensors[i]!.data.buffer))).toBe(true);

    // And the next-token logits from the two stored states are identical.
    const { engine } = await createEngine({ modelDir: model.dir, engine: 'reference' });
    const next = async (bytes: Uint8Array) => {
      const { state } = await engine.importState(bytes);
      return (await engine.decode([{ state, token: 65 }])).data;
    };
    expect(Array.from(await next(await stateTensors(restarted, 2)))).toEqual(Array.from(await next(await stateTensors(steady, 2))));
    await engine.close();
  });
});

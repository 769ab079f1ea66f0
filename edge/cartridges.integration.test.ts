// State cartridges through the real stack (edge on loopback, a worker with a tiny model, a real
// Redis, the filesystem store): a build as a queued job with progress (GET and the events
// stream), list/get/delete, tenants apart, export and import as .mstate, and sessions, chats
// (with a session and without) and conversations started from one — each answering exactly as
// if the documents had been re-read, while feeding none of them again.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorResponse, SessionCreated, SessionInfo, TurnResponse } from '../shared/api-schemas.ts';
import { CartridgeStore } from '../shared/cartridge-store.ts';
import { newCartridgeId } from '../shared/cartridge-record.ts';
import { Cartridge, CartridgeList } from '../shared/cartridges-api.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';

const redis = useRedisServer();
let model: TinyModel;
let serving: TestServing;
const KEY_A = 'key-alpha-0001';
const KEY_B = 'key-bravo-0002';

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({ redisUrl: redis().url, modelDir: model.dir, env: { API_KEYS: `${KEY_A}:alpha,${KEY_B}:bravo`, MAX_CARTRIDGE_TOKENS: '12000' } });
});
afterAll(async () => {
  await serving?.stop();
  await model?.remove();
});

async function call(method: string, path: string, body?: unknown, key = KEY_A, headers: Record<string, string> = {}) {
  const res = await fetch(`${serving.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...headers },
    body: body === undefined ? undefined : body instanceof Uint8Array ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? (JSON.parse(text) as any) : undefined };
}

function expectError(r: { status: number; json: unknown }, status: number, code: string) {
  expect(r.status, JSON.stringify(r.json)).toBe(status);
  expect(ErrorResponse.parse(r.json).error.code).toBe(code);
}

/** The build's events until `done`. */
async function events(id: string, key = KEY_A): Promise<Array<{ event: string; data: Cartridge }>> {
  const res = await fetch(`${serving.url}/v1/cartridges/${id}/events`, { headers: { authorization: `Bearer ${key}` } });
  expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
  return (await res.text())
    .split('\n\n')
    .filter((b) => b && !b.startsWith(':'))
    .map((b) => ({ event: /^event: (.*)$/m.exec(b)![1]!, data: Cartridge.parse(JSON.parse(/^data: (.*)$/m.exec(b)![1]!)) }));
}

// Byte-level tiny model: about a token a character. Over 4096 tokens, so the build reports progress more than once.
const documents = [
  { title: 'Lockers', text: `The locker code is 4812. ${'Lockers are checked every evening by the caretaker. '.repeat(60)}` },
  { title: 'Pets', text: `The dog is called Biscuit. ${'Biscuit likes long walks along the river in the morning. '.repeat(60)}` },
];
const asMessages = documents.map((d) => ({ role: 'system' as const, content: `${d.title}\n\n${d.text}` }));
const question = 'What is the locker code?';
const greedy = { max_tokens: 6, temperature: 0 };

describe('cartridges', () => {
  let ready: Cartridge;

  it('builds from documents as a queued job, with progress by GET and by the events stream', async () => {
    const created = await call('POST', '/v1/cartridges', { name: 'handbook', documents, metadata: { team: 'ops' } });
    expect(created.status, JSON.stringify(created.json)).toBe(202);
    const c = Cartridge.parse(created.json);
    expect(c).toMatchObject({ object: 'cartridge', name: 'handbook', model: 'tiny', status: 'queued', source: { kind: 'documents', items: 2 }, metadata: { team: 'ops' } });
    expect(created.headers.get('location')).toBe(`/v1/cartridges/${c.id}`);

    const stream = await events(c.id);
    const done = stream.at(-1)!;
    expect(done.event).toBe('done');
    expect(done.data.status).toBe('ready');
    const total = done.data.progress.tokens_total!;
    expect(total).toBeGreaterThan(4096);
    expect(done.data.progress.tokens_absorbed).toBe(total);
    expect(done.data.state_bytes).toBeGreaterThan(0);
    const absorbed = stream.filter((e) => e.event === 'progress').map((e) => e.data.progress.tokens_absorbed);
    expect(absorbed).toEqual([...absorbed].sort((a, b) => a - b));

    ready = Cartridge.parse((await call('GET', `/v1/cartridges/${c.id}`)).json);
    expect(ready).toEqual(done.data);
  });

  it('starts a session from the cartridge: one state load, and the same answers as re-reading the documents', async () => {
    const fromCartridge = await call('POST', '/v1/sessions', { cartridge: ready.id });
    expect(fromCartridge.status, JSON.stringify(fromCartridge.json)).toBe(201);
    const s = SessionCreated.parse(fromCartridge.json);
    expect(s).toMatchObject({ version: 1, tokens_absorbed: ready.progress.tokens_total });
    const info = SessionInfo.parse((await call('GET', `/v1/sessions/${s.id}`)).json);
    expect(info.cartridge).toBe(ready.id);

    const turn = TurnResponse.parse((await call('POST', `/v1/sessions/${s.id}/turns`, { input: question, ...greedy })).json);
    expect(turn.usage.cached_tokens).toBe(ready.progress.tokens_total);
    expect(turn.timings!.state_source).toBe('cache'); // a copy of the state the build left hot

    // The long way: a fresh session reads the documents, then the question.
    const plain = SessionCreated.parse((await call('POST', '/v1/sessions', {})).json);
    const reread = TurnResponse.parse((await call('POST', `/v1/sessions/${plain.id}/turns`, { input: [...asMessages, { role: 'user', content: question }], ...greedy })).json);
    expect(reread.usage.input_tokens).toBeGreaterThan(ready.progress.tokens_total!);
    expect(turn.output).toBe(reread.output);
    expect(turn.usage.tokens_absorbed).toBe(reread.usage.tokens_absorbed);
  });

  it('starts chats from it (a new session, and stateless) and conversations', async () => {
    const ai = new OpenAI({ baseURL: `${serving.url}/v1`, apiKey: KEY_A, maxRetries: 0 });
    const messages = [{ role: 'user' as const, content: question }];
    const onSession = await ai.chat.completions.create({ model: 'tiny', messages, ...greedy }, { headers: { 'X-Session-Id': 'chat-from-cart', 'X-Cartridge-Id': ready.id } });
    expect(onSession.usage!.prompt_tokens_details!.cached_tokens).toBe(ready.progress.tokens_total);
    // The chat's next request resends its own conversation only: the cartridge is the session's root.
    const next = await ai.chat.completions.create(
      { model: 'tiny', messages: [...messages, { role: 'assistant', content: onSession.choices[0]!.message.content! }, { role: 'user', content: 'And the dog?' }], ...greedy },
      { headers: { 'X-Session-Id': 'chat-from-cart', 'X-Cartridge-Id': ready.id } },
    );
    expect((next as unknown as { session_version: number }).session_version).toBe(3);

    const stateless = await ai.chat.completions.create({ model: 'tiny', messages, ...greedy, cartridge: ready.id } as never);
    expect(stateless.usage!.prompt_tokens_details!.cached_tokens).toBe(ready.progress.tokens_total);
    expect(stateless.choices[0]!.message.content).toBe(onSession.choices[0]!.message.content);

    const conversation = await ai.conversations.create({ cartridge: ready.id } as never);
    const reply = await ai.responses.create({ model: 'tiny', input: question, conversation: conversation.id, max_output_tokens: 6, temperature: 0 });
    expect(reply.usage!.input_tokens_details.cached_tokens).toBe(ready.progress.tokens_total);
    // A new chain of responses from the cartridge, continued as any chain is.
    const first = await ai.responses.create({ model: 'tiny', input: question, max_output_tokens: 6, temperature: 0, cartridge: ready.id } as never);
    expect(first.usage!.input_tokens_details.cached_tokens).toBe(ready.progress.tokens_total);
    expect(first.output_text).toBe(reply.output_text);
    const second = await ai.responses.create({ model: 'tiny', input: 'And the dog?', previous_response_id: first.id, max_output_tokens: 6, temperature: 0 });
    expect(second.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(first.usage!.input_tokens);
    await expect(ai.responses.create({ model: 'tiny', input: 'x', previous_response_id: first.id, cartridge: ready.id } as never)).rejects.toMatchObject({ status: 400 });

    // A session that exists and did not start from the cartridge is not silently changed.
    await ai.chat.completions.create({ model: 'tiny', messages, max_tokens: 1 }, { headers: { 'X-Session-Id': 'plain-chat' } });
    const mismatch = await call('POST', '/v1/chat/completions', { model: 'tiny', messages, cartridge: ready.id }, KEY_A, { 'X-Session-Id': 'plain-chat' });
    expectError(mismatch, 409, 'cartridge_mismatch');
  });

  it('lists, exports, imports and deletes, per tenant', async () => {
    const list = CartridgeList.parse((await call('GET', '/v1/cartridges')).json);
    expect(list.data[0]!.id).toBe(ready.id);
    expect(CartridgeList.parse((await call('GET', '/v1/cartridges', undefined, KEY_B)).json).data).toEqual([]);
    expectError(await call('GET', `/v1/cartridges/${ready.id}`, undefined, KEY_B), 404, 'cartridge_not_found');
    expectError(await call('POST', '/v1/sessions', { cartridge: ready.id }, KEY_B), 404, 'cartridge_not_found');

    const exported = await fetch(`${serving.url}/v1/cartridges/${ready.id}/state`, { headers: { authorization: `Bearer ${KEY_A}` } });
    expect(exported.status).toBe(200);
    const bytes = new Uint8Array(await exported.arrayBuffer());
    expect(bytes.byteLength).toBe(ready.state_bytes);
    // Another tenant imports it as its own cartridge and starts from it.
    const imported = await call('POST', '/v1/cartridges/import?name=copy', bytes, KEY_B);
    expect(imported.status, JSON.stringify(imported.json)).toBe(201);
    const copy = Cartridge.parse(imported.json);
    expect(copy).toMatchObject({ status: 'ready', name: 'copy', source: { kind: 'import', items: 0 }, progress: { tokens_absorbed: ready.progress.tokens_total } });
    const fromCopy = await call('POST', '/v1/sessions', { cartridge: copy.id }, KEY_B);
    expect(fromCopy.status).toBe(201);
    expectError(await call('POST', '/v1/cartridges/import', bytes.slice(0, 100), KEY_B), 400, 'state_invalid');

    // Deleted: gone for new starts; sessions started from it keep their own copy.
    const started = SessionCreated.parse((await call('POST', '/v1/sessions', { cartridge: ready.id })).json);
    expect((await call('DELETE', `/v1/cartridges/${ready.id}`)).json).toEqual({ id: ready.id, object: 'cartridge.deleted', deleted: true });
    expectError(await call('GET', `/v1/cartridges/${ready.id}`), 404, 'cartridge_not_found');
    expectError(await call('POST', '/v1/sessions', { cartridge: ready.id }), 404, 'cartridge_not_found');
    expect((await call('POST', `/v1/sessions/${started.id}/turns`, { input: question, ...greedy })).status).toBe(200);
  });

  it('refuses bad input, too long an input, and starting from one not ready', async () => {
    expectError(await call('POST', '/v1/cartridges', { text: 'a', documents }), 400, 'invalid_request');
    expectError(await call('POST', '/v1/cartridges', {}), 400, 'invalid_request');
    expectError(await call('POST', '/v1/sessions', { cartridge: 'cart_nope' }), 400, 'invalid_request');
    expectError(await call('GET', '/v1/cartridges/cart_0000000000000000000000'), 404, 'cartridge_not_found');

    // Over MAX_CARTRIDGE_TOKENS (12000 here): the build fails with the limit's code, and nothing starts from it.
    const big = Cartridge.parse((await call('POST', '/v1/cartridges', { text: 'x'.repeat(13_000) })).json);
    const done = (await events(big.id)).at(-1)!;
    expect(done.data).toMatchObject({ status: 'failed', error: { code: 'input_too_long' } });
    const failed = await call('POST', '/v1/sessions', { cartridge: big.id });
    expectError(failed, 409, 'cartridge_failed');
    expect(failed.headers.get('x-should-retry')).toBe('false');

    // Still building: 409 that says to retry later.
    const store = new CartridgeStore(serving.edge.deps.sessions.objects);
    const id = newCartridgeId();
    const now = new Date().toISOString();
    await store.create(
      { format: 1, id, tenant: 'alpha', name: null, model: 'tiny', status: 'building', created_at: now, ready_at: null, metadata: {}, source: { kind: 'text', items: 1 }, tokens_total: 100, tokens_absorbed: 0, state_bytes: null, transcript_hash: null, error: null },
      null,
    );
    const building = await call('POST', '/v1/sessions', { cartridge: id });
    expectError(building, 409, 'cartridge_not_ready');
    expect(building.headers.get('x-should-retry')).toBe('true');
    expect(building.headers.get('retry-after')).toBe('5');
  });

  it('queues an accepted build again when the queue has lost it (Redis lost its data)', async () => {
    // What a restart with an empty Redis leaves: the record and the input in the store, no job.
    const store = new CartridgeStore(serving.edge.deps.sessions.objects);
    const id = newCartridgeId();
    const now = new Date().toISOString();
    await store.create(
      { format: 1, id, tenant: 'alpha', name: 'orphan', model: 'tiny', status: 'queued', created_at: now, ready_at: null, metadata: {}, source: { kind: 'text', items: 1 }, tokens_total: null, tokens_absorbed: 0, state_bytes: null, transcript_hash: null, error: null },
      { format: 1, messages: asMessages },
    );
    const done = (await events(id)).at(-1)!;
    expect(done.data).toMatchObject({ status: 'ready', name: 'orphan' });
    expect(done.data.progress.tokens_absorbed).toBeGreaterThan(4096);
  });
});

// The HTTP API against real components (edge on loopback, Redis, a worker with a tiny model,
// the filesystem store): auth and tenants, every kind of bad input with the right 4xx and
// nothing written, concurrency on one session, idempotency, chat prefix reuse and forks,
// state export/import, SSE.
import { request } from 'node:http';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorResponse, ModelList, SessionCreated, SessionInfo, SessionList, TurnResponse, VersionList } from '../shared/api-schemas.ts';
import { encodeMState, readMStateHeader } from '../shared/mstate.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';

const redis = useRedisServer();
let model: TinyModel;
let serving: TestServing;
const KEY_A = 'key-alpha-0001';
const KEY_B = 'key-bravo-0002';
const KEY_C = 'key-charlie-0003';

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({
    redisUrl: redis().url,
    modelDir: model.dir,
    env: { API_KEYS: `${KEY_A}:alpha,${KEY_B}:bravo,${KEY_C}:charlie`, MAX_REQUEST_BYTES: '65536', MAX_TOKENS_PER_TURN: '2000', MAX_STATE_UPLOAD_BYTES: '1048576' },
  });
});
afterAll(async () => {
  await serving?.stop();
  await model?.remove();
});

interface Reply {
  status: number;
  json: any;
  headers: Headers;
}

async function call(method: string, path: string, body?: unknown, opts: { key?: string | null; headers?: Record<string, string>; raw?: string | Uint8Array } = {}): Promise<Reply> {
  const headers: Record<string, string> = { ...opts.headers };
  const key = opts.key === undefined ? KEY_A : opts.key;
  if (key) headers['authorization'] = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] ??= 'application/json';
  const res = await fetch(`${serving.url}${path}`, { method, headers, body: opts.raw ?? (body === undefined ? undefined : JSON.stringify(body)) });
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = text;
  }
  return { status: res.status, json, headers: res.headers };
}

function statusOfOversizedUpload(path: string, bytes: number): Promise<{ status: number; code: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${serving.url}${path}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/octet-stream', 'content-length': String(bytes) },
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: JSON.parse(body).error.code }));
    });
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EPIPE' && e.code !== 'ECONNRESET') reject(e);
    });
    req.write(new Uint8Array(64 * 1024));
  });
}

function expectError(r: Reply, status: number, code: string) {
  expect(r.status, JSON.stringify(r.json)).toBe(status);
  expect(ErrorResponse.parse(r.json).error.code).toBe(code);
}

async function newSession(body: unknown = {}, key = KEY_A): Promise<SessionCreated> {
  const r = await call('POST', '/v1/sessions', body, { key });
  expect(r.status, JSON.stringify(r.json)).toBe(201);
  return SessionCreated.parse(r.json);
}

async function versions(id: string): Promise<VersionList> {
  return VersionList.parse((await call('GET', `/v1/sessions/${id}/versions`)).json);
}

describe('auth and tenants', () => {
  it('needs a valid key on /v1, not on health', async () => {
    expectError(await call('GET', '/v1/models', undefined, { key: null }), 401, 'unauthorized');
    const bad = await call('GET', '/v1/models', undefined, { key: 'not-a-key-at-all' });
    expectError(bad, 401, 'unauthorized');
    expect(bad.headers.get('www-authenticate')).toBe('Bearer');
    expect((await call('GET', '/healthz', undefined, { key: null })).status).toBe(200);
    expect((await call('GET', '/readyz', undefined, { key: null })).json).toMatchObject({ ok: true });
    const models = await call('GET', '/v1/models');
    expect(models.json.data).toEqual([
      expect.objectContaining({ id: 'tiny', object: 'model', workers: 1, layer_types: ['mamba', 'mamba'], sliding_window: null }),
    ]);
    expect(ModelList.parse(models.json).data[0]!.state_bytes).toBeGreaterThan(0);
  });

  it('serves Prometheus metrics without auth', async () => {
    const s = await newSession();
    await call('POST', `/v1/sessions/${s.id}/turns`, { input: 'count me', max_tokens: 2 });
    const res = await fetch(`${serving.url}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    expect(text).toMatch(/^mamba_turns_total\{model="tiny",outcome="ok"\} [1-9]/m);
    expect(text).toMatch(/^mamba_checkpoint_bytes_bucket\{model="tiny",le="\+Inf"\} [1-9]/m);
    expect(text).toMatch(/^mamba_time_to_first_token_seconds_count\{model="tiny"\} [1-9]/m);
    expect(text).toMatch(/^mamba_queue_depth\{model="tiny",state="waiting"\} 0$/m);
    expect(text).toMatch(/^mamba_workers\{model="tiny"\} 1$/m);
  });

  it("another tenant's session is not found, and the same id can exist in both", async () => {
    const s = await newSession({ id: 'shared-name' });
    expectError(await call('GET', `/v1/sessions/${s.id}`, undefined, { key: KEY_B }), 404, 'session_not_found');
    expectError(await call('POST', `/v1/sessions/${s.id}/turns`, { input: 'x' }, { key: KEY_B }), 404, 'session_not_found');
    expectError(await call('DELETE', `/v1/sessions/${s.id}`, undefined, { key: KEY_B }), 404, 'session_not_found');
    expectError(await call('GET', `/v1/sessions/${s.id}/state`, undefined, { key: KEY_B }), 404, 'session_not_found');
    await newSession({ id: 'shared-name' }, KEY_B);
    expectError(await call('POST', '/v1/sessions', { id: 'shared-name' }), 409, 'session_exists');
  });
});

describe('bad input: the right 4xx and nothing written', () => {
  it('refuses malformed bodies without touching the session', async () => {
    const s = await newSession();
    const turns = `/v1/sessions/${s.id}/turns`;
    expectError(await call('POST', turns, undefined, { raw: '{"input": "hi",', headers: { 'content-type': 'application/json' } }), 400, 'invalid_json');
    expectError(await call('POST', turns, undefined, { raw: new Uint8Array([0x7b, 0x22, 0x69, 0x6e, 0x70, 0x75, 0x74, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]) }), 400, 'invalid_utf8');
    const wrong = await call('POST', turns, { input: 42, max_tokens: 'many' });
    expectError(wrong, 400, 'invalid_request');
    expect(wrong.json.error.details.map((d: { path: string }) => d.path).sort()).toEqual(['input', 'max_tokens']);
    expectError(await call('POST', turns, { input: 'hi', max_tokens: -1 }), 400, 'invalid_request');
    expectError(await call('POST', turns, { input: 'hi', max_tokens: 1e9 }), 400, 'invalid_request');
    const overLimit = await call('POST', turns, { input: 'hi', max_tokens: 2001 });
    expectError(overLimit, 400, 'invalid_request');
    expect(overLimit.json.error.message).toMatch(/limit of 2000/);
    expectError(await call('POST', turns, { input: 'hi', temperature: 7 }), 400, 'invalid_request');
    expectError(await call('POST', turns, { input: 'hi', surprise: true }), 400, 'invalid_request');
    expectError(await call('POST', turns, { input: 'lone \ud800 surrogate' }), 400, 'invalid_request');
    expectError(await call('POST', turns, { input: 'x'.repeat(70_000) }), 413, 'payload_too_large');
    expectError(await call('POST', '/v1/sessions/no-such-session/turns', { input: 'hi' }), 404, 'session_not_found');
    expectError(await call('POST', '/v1/sessions/bad id!/turns', { input: 'hi' }), 400, 'invalid_request');
    expectError(await call('GET', '/v1/nothing-here'), 404, 'route_not_found');
    expectError(await call('POST', '/v1/sessions', { model: 'no-such-model' }), 404, 'model_not_found');
    expectError(await call('POST', '/v1/sessions', { id: 'x'.repeat(129) }), 400, 'invalid_request');
    expect((await versions(s.id)).data).toHaveLength(1);
    expectError(await call('GET', '/v1/sessions/never-created-here'), 404, 'session_not_found');
  });

  it('refuses a state from another model, or a corrupt one, and keeps the head', async () => {
    const s = await newSession();
    await call('POST', `/v1/sessions/${s.id}/turns`, { input: 'remember this', max_tokens: 3, temperature: 0 });
    const exported = await fetch(`${serving.url}/v1/sessions/${s.id}/state`, { headers: { authorization: `Bearer ${KEY_A}` } });
    expect(exported.status).toBe(200);
    expect(exported.headers.get('x-session-version')).toBe('1');
    const bytes = new Uint8Array(await exported.arrayBuffer());
    const { header } = readMStateHeader(bytes);

    const target = await newSession();
    const put = (body: Uint8Array) => call('PUT', `/v1/sessions/${target.id}/state`, undefined, { raw: body, headers: { 'content-type': 'application/octet-stream' } });
    const foreign = encodeMState({
      modelFingerprint: 'f'.repeat(64),
      tokensAbsorbed: 3,
      parentVersion: null,
      transcriptHash: null,
      layout: header.layout,
      tensors: [{ name: 'conv_state', shape: [1], data: new Float32Array(1) }],
    });
    expectError(await put(foreign), 400, 'state_model_mismatch');
    const corrupt = bytes.slice();
    corrupt[corrupt.length - 40] = corrupt[corrupt.length - 40]! ^ 0xff;
    expectError(await put(corrupt), 400, 'state_invalid');
    expectError(await put(bytes.slice(0, 100)), 400, 'state_invalid');
    // The edge answers as soon as Content-Length says too much, without reading the body; a
    // client still writing then sees the socket close, so read the answer with node:http.
    expect(await statusOfOversizedUpload(`/v1/sessions/${target.id}/state`, 2 * 1048576)).toEqual({ status: 413, code: 'payload_too_large' });
    expect((await versions(target.id)).head).toBe(0);

    // The real thing imports, and the session continues from it.
    const ok = await put(bytes);
    expect(ok.status, JSON.stringify(ok.json)).toBe(201);
    expect(ok.json).toMatchObject({ version: 1, tokens_absorbed: header.tokens_absorbed });
    const after = await call('POST', `/v1/sessions/${target.id}/turns`, { input: 'and now', max_tokens: 3, temperature: 0 });
    expect(after.status).toBe(200);
    expect(after.json.usage.cached_tokens).toBe(header.tokens_absorbed);
  });
});

describe('one session, several requests', () => {
  it('two concurrent turns: one runs, the other is 409; queued ones run one after the other', async () => {
    const s = await newSession();
    const turns = `/v1/sessions/${s.id}/turns`;
    const [a, b] = await Promise.all([
      call('POST', turns, { input: 'first', max_tokens: 1500, temperature: 0 }),
      call('POST', turns, { input: 'second', max_tokens: 1500, temperature: 0 }),
    ]);
    const statuses = [a.status, b.status].sort();
    expect(statuses).toEqual([200, 409]);
    expectError([a, b].find((r) => r.status === 409)!, 409, 'session_busy');

    const queued = await Promise.all(
      ['q1', 'q2', 'q3'].map((input) => call('POST', turns, { input, max_tokens: 200, temperature: 0, on_busy: 'queue' })),
    );
    expect(queued.map((r) => r.status)).toEqual([200, 200, 200]);
    const made = queued.map((r) => TurnResponse.parse(r.json).version).sort();
    expect(made).toEqual([2, 3, 4]);
    const list = await versions(s.id);
    // No lost update: every version's parent is the one before it.
    expect(list.data.map((v) => [v.version, v.parent])).toEqual([
      [0, null],
      [1, 0],
      [2, 1],
      [3, 2],
      [4, 3],
    ]);
  });

  it('if_version: a stale version is refused with 409 and nothing runs', async () => {
    const s = await newSession();
    await call('POST', `/v1/sessions/${s.id}/turns`, { input: 'one', max_tokens: 2, temperature: 0 });
    const stale = await call('POST', `/v1/sessions/${s.id}/turns`, { input: 'two', if_version: 0 });
    expectError(stale, 409, 'version_mismatch');
    expect(stale.json.error.details).toEqual({ head: 1 });
    const ok = await call('POST', `/v1/sessions/${s.id}/turns`, { input: 'two', max_tokens: 2, if_version: 1 });
    expect(ok.json.version).toBe(2);
  });

  it('the same Idempotency-Key is the same turn; with another body it is 422', async () => {
    const s = await newSession();
    const send = (body: Record<string, unknown>) => call('POST', `/v1/sessions/${s.id}/turns`, { input: 'once', max_tokens: 4, ...body }, { headers: { 'Idempotency-Key': 'abc-123' } });
    const first = await send({ if_version: 0 });
    // Replayed from the stored result, though if_version no longer matches the head the turn moved.
    const again = await send({ if_version: 0 });
    expect(first.status).toBe(200);
    expect(again.json).toEqual(first.json);
    const reused = await send({ input: 'something else' });
    expectError(reused, 422, 'idempotency_key_reused');
    expect(reused.headers.get('x-should-retry')).toBe('false');
    expect((await versions(s.id)).head).toBe(1);
  });

  it('every error carries its retry hint: a busy session says retry after 1 s', async () => {
    const s = await newSession();
    const turns = `/v1/sessions/${s.id}/turns`;
    const [a, b] = await Promise.all([
      call('POST', turns, { input: 'long one', max_tokens: 1500, temperature: 0 }),
      call('POST', turns, { input: 'second', max_tokens: 1, temperature: 0 }),
    ]);
    const busy = [a, b].find((r) => r.status === 409)!;
    expectError(busy, 409, 'session_busy');
    expect(busy.headers.get('x-should-retry')).toBe('true');
    expect(busy.headers.get('retry-after')).toBe('1');
    const missing = await call('GET', '/v1/sessions/not-there');
    expect(missing.headers.get('x-should-retry')).toBe('false');
    expect(missing.headers.get('retry-after')).toBeNull();
  });
});

describe('sessions', () => {
  it('system prompt, fork, delete', async () => {
    const s = await newSession({ system: 'You are a careful assistant.', metadata: { app: 'test' } });
    expect(s.version).toBe(1);
    expect(s.tokens_absorbed).toBeGreaterThan(20);
    await call('POST', `/v1/sessions/${s.id}/turns`, { input: 'hello', max_tokens: 3, temperature: 0 });

    const fork = await call('POST', `/v1/sessions/${s.id}/fork`, { version: 1, id: 'the-fork' });
    expect(fork.status).toBe(201);
    expect(fork.json).toMatchObject({ id: 'the-fork', tokens_absorbed: s.tokens_absorbed });
    const forkVersions = await versions('the-fork');
    expect(forkVersions.data.at(-1)).toMatchObject({ origin: 'fork', tokens_absorbed: s.tokens_absorbed });
    const fromCreate = await newSession({ from: { session_id: s.id } });
    expect(fromCreate.tokens_absorbed).toBeGreaterThan(s.tokens_absorbed);

    const del = await call('DELETE', `/v1/sessions/${s.id}`);
    expect(del.json).toEqual({ id: s.id, deleted: true, versions_removed: 2 });
    expectError(await call('GET', `/v1/sessions/${s.id}`), 404, 'session_not_found');
    // The fork is its own session and outlives its source.
    expect(SessionInfo.parse((await call('GET', '/v1/sessions/the-fork')).json).version).toBe(forkVersions.head);
  });
});

describe('listing sessions', () => {
  it("lists the tenant's sessions newest first, page by page, without deleted or other tenants' ones", async () => {
    for (const id of ['c1', 'c2', 'c3', 'c4', 'c5']) {
      await newSession({ id, metadata: { n: id } }, KEY_C);
      await new Promise((r) => setTimeout(r, 3));
    }
    await call('POST', '/v1/sessions/c5/turns', { input: 'hello', max_tokens: 2 }, { key: KEY_C });
    const list = async (q: string) => {
      const r = await call('GET', `/v1/sessions${q}`, undefined, { key: KEY_C });
      expect(r.status, JSON.stringify(r.json)).toBe(200);
      return SessionList.parse(r.json);
    };
    const first = await list('?limit=2');
    expect(first.data.map((s) => s.id)).toEqual(['c5', 'c4']);
    expect(first).toMatchObject({ has_more: true, first_id: 'c5', last_id: 'c4' });
    expect(first.data[0]).toMatchObject({ version: 1, metadata: { n: 'c5' } });
    expect(first.data[0]!.tokens_absorbed).toBeGreaterThan(0);
    expect((await list('?limit=2&after=c4')).data.map((s) => s.id)).toEqual(['c3', 'c2']);
    expect(await call('DELETE', '/v1/sessions/c3', undefined, { key: KEY_C })).toMatchObject({ status: 200 });
    const rest = await list('?after=c4');
    expect(rest.data.map((s) => s.id)).toEqual(['c2', 'c1']);
    expect(rest.has_more).toBe(false);
    expect((await list('')).data.map((s) => s.id)).toEqual(['c5', 'c4', 'c2', 'c1']);
    // Tenants are apart: alpha's listing holds none of charlie's sessions.
    const alpha = SessionList.parse((await call('GET', '/v1/sessions?limit=100')).json);
    expect(alpha.data.map((s) => s.id)).not.toContain('c5');
    expectError(await call('GET', '/v1/sessions?limit=0', undefined, { key: KEY_C }), 400, 'invalid_request');
    expectError(await call('GET', '/v1/sessions?after=c3', undefined, { key: KEY_C }), 400, 'invalid_request');
  });
});

describe('a long session', () => {
  it('lists versions page by page, and exports and forks a version that has moved to a manifest page', async () => {
    const s = await newSession();
    // A history far longer than the manifest keeps, written the way turns write it (the states'
    // bytes are not checked by export or fork, so no model needs to run 200 turns).
    const store = serving.edge.deps.sessions;
    for (let i = 1; i <= 200; i++) {
      await store.commitVersion({
        tenant: 'alpha',
        session: s.id,
        fence: 0,
        state: new TextEncoder().encode(`state ${i}`),
        version: { parent: i - 1, tokens_absorbed: 10 * i, transcript_hash: 'a'.repeat(64), origin: 'turn' },
      });
    }
    const { manifest } = (await store.read('alpha', s.id))!;
    expect(manifest.paged_below).toBeGreaterThan(5);
    expect(manifest.versions.length).toBeLessThan(100);

    const first = VersionList.parse((await call('GET', `/v1/sessions/${s.id}/versions`)).json);
    expect(first.data.map((v) => v.version)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(first.has_more).toBe(true);
    const second = VersionList.parse((await call('GET', `/v1/sessions/${s.id}/versions?after=99&limit=1000`)).json);
    expect(second.data.map((v) => v.version)).toEqual(Array.from({ length: 101 }, (_, i) => 100 + i));
    expect(second.has_more).toBe(false);
    const newest = VersionList.parse((await call('GET', `/v1/sessions/${s.id}/versions?order=desc&limit=2`)).json);
    expect(newest).toMatchObject({ head: 200, has_more: true, data: [{ version: 200 }, { version: 199 }] });
    expect(SessionInfo.parse((await call('GET', `/v1/sessions/${s.id}`)).json).versions).toBe(201);
    expectError(await call('GET', `/v1/sessions/${s.id}/versions?limit=0`), 400, 'invalid_request');

    const exported = await fetch(`${serving.url}/v1/sessions/${s.id}/state?version=5`, { headers: { authorization: `Bearer ${KEY_A}` } });
    expect(exported.status).toBe(200);
    expect(exported.headers.get('x-session-version')).toBe('5');
    expect(await exported.text()).toBe('state 5');
    const fork = await call('POST', `/v1/sessions/${s.id}/fork`, { version: 5 });
    expect(fork.status, JSON.stringify(fork.json)).toBe(201);
    expect(fork.json).toMatchObject({ version: 1, tokens_absorbed: 50 });
    expectError(await call('GET', `/v1/sessions/${s.id}/state?version=999`), 404, 'version_not_found');
  });
});

describe('chat completions with a session', () => {
  const chat = (body: Record<string, unknown>, headers: Record<string, string> = {}) => call('POST', '/v1/chat/completions', { model: 'tiny', max_tokens: 4, temperature: 0, ...body }, { headers });

  it('reuses the stored prefix, 409s a divergent history, forks when asked', async () => {
    const history = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Name a colour.' },
    ];
    const r1 = await chat({ messages: history }, { 'X-Session-Id': 'chat-1' });
    expect(r1.status, JSON.stringify(r1.json)).toBe(200);
    expect(r1.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(r1.headers.get('x-session-id')).toBe('chat-1');
    expect(r1.json.session_version).toBe(1);
    const reply = r1.json.choices[0].message.content as string;

    const extended = [...history, { role: 'assistant', content: reply }, { role: 'user', content: 'Another.' }];
    const r2 = await chat({ messages: extended, session_id: 'chat-1' });
    expect(r2.status).toBe(200);
    const v1 = (await versions('chat-1')).data.find((v) => v.version === 1)!;
    expect(r2.json.usage.prompt_tokens_details.cached_tokens).toBe(v1.tokens_absorbed);
    expect(r2.json.usage.prompt_tokens).toBeGreaterThan(v1.tokens_absorbed);

    const edited = [...history.slice(0, 1), { role: 'user', content: 'Name a number.' }];
    const diverged = await chat({ messages: edited, session_id: 'chat-1' });
    expectError(diverged, 409, 'conversation_diverged');
    expect(diverged.json.error.details).toMatchObject({ head: 2, matched_version: 0 });
    expect((await versions('chat-1')).head).toBe(2);

    // Regenerate from after the first exchange: fork continues from version 1.
    const regen = await chat({ messages: [...history, { role: 'assistant', content: reply }, { role: 'user', content: 'A different one.' }], session_id: 'chat-1' }, { 'X-Session-Fork': 'true' });
    expect(regen.status).toBe(200);
    expect(regen.json.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    const list = await versions('chat-1');
    expect(list.head).toBe(3);
    expect(list.data.at(-1)).toMatchObject({ version: 3, parent: 1 });
  });

  it('append: only the new message, added to whatever the head holds; fork and append exclude each other', async () => {
    const first = await chat({ messages: [{ role: 'user', content: 'My locker code is 4812.' }] }, { 'X-Session-Id': 'appender' });
    expect(first.status, JSON.stringify(first.json)).toBe(200);
    const v1 = (await versions('appender')).data.at(-1)!;
    // Without append, a lone new message does not extend the head: 409, and the error says how to append.
    const lone = [{ role: 'user', content: 'What is my locker code?' }];
    const diverged = await chat({ messages: lone }, { 'X-Session-Id': 'appender' });
    expectError(diverged, 409, 'conversation_diverged');
    expect(diverged.json.error.message).toMatch(/append/);
    expect(diverged.headers.get('x-should-retry')).toBe('false');
    const byHeader = await chat({ messages: lone }, { 'X-Session-Id': 'appender', 'X-Session-Append': 'true' });
    expect(byHeader.status, JSON.stringify(byHeader.json)).toBe(200);
    expect(byHeader.json.usage.prompt_tokens_details.cached_tokens).toBe(v1.tokens_absorbed);
    expect(byHeader.json.session_version).toBe(2);
    const byBody = await chat({ messages: [{ role: 'user', content: 'Thanks.' }], session_id: 'appender', append: true });
    expect(byBody.json.session_version).toBe(3);
    expect((await versions('appender')).data.map((v) => v.parent)).toEqual([null, 0, 1, 2]);
    // A session started from another: a chat client that never saw the base's transcript appends to it.
    const branch = await newSession({ id: 'appender-branch', from: { session_id: 'appender' } });
    const onBranch = await chat({ messages: lone }, { 'X-Session-Id': branch.id, 'X-Session-Append': '1' });
    expect(onBranch.json.usage.prompt_tokens_details.cached_tokens).toBe(branch.tokens_absorbed);
    expectError(await chat({ messages: lone, session_id: 'appender', append: true, fork: true }), 400, 'invalid_request');
    expectError(await chat({ messages: lone, append: true }), 400, 'invalid_request');
  });

  it('a retried chat (same Idempotency-Key and body) after it succeeded gets the stored answer; another body is 422', async () => {
    const messages = [{ role: 'user', content: 'Say something.' }];
    const send = (body: Record<string, unknown>) => chat({ messages, session_id: 'retried', ...body }, { 'Idempotency-Key': 'chat-key-1' });
    const first = await send({});
    expect(first.status, JSON.stringify(first.json)).toBe(200);
    const again = await send({});
    expect(again.status, JSON.stringify(again.json)).toBe(200);
    expect(again.json.id).toBe(first.json.id);
    expect(again.json.choices).toEqual(first.json.choices);
    expect((await versions('retried')).head).toBe(1);
    expectError(await send({ messages: [{ role: 'user', content: 'Something else.' }] }), 422, 'idempotency_key_reused');
    // Stateless chats are keyed per tenant: the same holds without a session.
    const stateless = (content: string) => call('POST', '/v1/chat/completions', { model: 'tiny', max_tokens: 3, temperature: 0, messages: [{ role: 'user', content }] }, { headers: { 'Idempotency-Key': 'chat-key-2' } });
    const s1 = await stateless('one');
    expect((await stateless('one')).json.id).toBe(s1.json.id);
    expectError(await stateless('two'), 422, 'idempotency_key_reused');
  });

  it('the official openai client does not resend a request that cannot succeed', async () => {
    let requests = 0;
    const client = new OpenAI({
      baseURL: `${serving.url}/v1`,
      apiKey: KEY_A,
      fetch: (url, init) => {
        requests++;
        return fetch(url, init);
      },
    });
    await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Hi.' }], max_tokens: 2 }, { headers: { 'X-Session-Id': 'no-resend' } });
    requests = 0;
    const diverged = await client.chat.completions
      .create({ model: 'tiny', messages: [{ role: 'user', content: 'Another start.' }], max_tokens: 2 }, { headers: { 'X-Session-Id': 'no-resend' } })
      .catch((e: unknown) => e);
    expect(diverged).toBeInstanceOf(OpenAI.ConflictError);
    expect(requests).toBe(1);
  });

  it('without a session it is stateless; session id and header must agree', async () => {
    const r = await chat({ messages: [{ role: 'user', content: 'hi' }] });
    expect(r.status).toBe(200);
    expect(r.json.session_id).toBeUndefined();
    expectError(await chat({ messages: [{ role: 'user', content: 'hi' }], session_id: 'a' }, { 'X-Session-Id': 'b' }), 400, 'invalid_request');
    expectError(await chat({ messages: [{ role: 'user', content: 'hi' }], n: 2 }), 400, 'invalid_request');
    expectError(await chat({ messages: [] }), 400, 'invalid_request');
  });
});

function parseSse(text: string): Array<Record<string, string>> {
  return text
    .split('\n\n')
    .filter(Boolean)
    .map((block) => Object.fromEntries(block.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)])));
}

describe('streaming', () => {
  it('resumes a stream after Last-Event-ID (same Idempotency-Key)', async () => {
    const s = await newSession();
    const send = (extra: Record<string, string>) =>
      fetch(`${serving.url}/v1/sessions/${s.id}/turns`, {
        method: 'POST',
        headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/json', 'idempotency-key': 'resume-1', ...extra },
        body: JSON.stringify({ input: 'resume me', max_tokens: 10, temperature: 0, stream: true }),
      }).then((r) => r.text());
    const all = parseSse(await send({}));
    const tokens = all.filter((e) => e['event'] === 'token');
    expect(tokens.length).toBeGreaterThan(3);
    const rest = parseSse(await send({ 'last-event-id': tokens[2]!['id']! }));
    expect(rest.map((e) => e['id'])).toEqual(all.slice(all.indexOf(tokens[2]!) + 1).map((e) => e['id']));
    expect((await versions(s.id)).head).toBe(1);
  });

  it('native SSE: token events, then done with the durable version', async () => {
    const s = await newSession();
    const res = await fetch(`${serving.url}/v1/sessions/${s.id}/turns`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/json' },
      body: JSON.stringify({ input: 'stream please', max_tokens: 12, temperature: 0, stream: true }),
    });
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const text = await res.text();
    const events = text
      .split('\n\n')
      .filter(Boolean)
      .map((block) => Object.fromEntries(block.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)])));
    const tokens = events.filter((e) => e['event'] === 'token');
    const done = events.find((e) => e['event'] === 'done')!;
    const result = TurnResponse.parse(JSON.parse(done['data']!));
    expect(tokens.map((e) => JSON.parse(e['data']!).text).join('')).toBe(result.output);
    // Each id counts the characters of the reply sent through its event: what a client resumes after.
    let sent = '';
    for (const e of tokens) {
      sent += JSON.parse(e['data']!).text;
      expect(e['id']).toBe(String(sent.length));
    }
    expect(result.version).toBe(1);
  });
});

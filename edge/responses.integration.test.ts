// The Responses and Conversations APIs through the real stack (edge on loopback, a worker with a
// tiny model, a real Redis, states on a real S3-speaking server) with the official `openai`
// client: every response is a session version, previous_response_id resumes (and branches)
// from it, conversations are sessions, tenants are apart, bad input is a clear 4xx, and all of
// it survives a full restart of the stack (edge, worker and a fresh, empty Redis).
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionInfo, VersionList } from '../shared/api-schemas.ts';
import { ConversationObject, ItemList, ResponseObject, ResponseStreamEvent } from '../shared/responses-api.ts';
import { startRestartableStack, type RestartableStack } from '../test-support/restartable-stack.ts';

const KEY_A = 'key-alpha-0001';
const KEY_B = 'key-bravo-0002';
let stack: RestartableStack;

beforeAll(async () => {
  stack = await startRestartableStack({ API_KEYS: `${KEY_A}:alpha,${KEY_B}:bravo`, MAX_TOKENS_PER_TURN: '64' });
});
afterAll(async () => {
  await stack?.stop();
});

const client = (key = KEY_A) => new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: key, maxRetries: 0 });

async function raw(method: string, path: string, body?: unknown, key = KEY_A) {
  const res = await fetch(`${stack.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, json: (await res.json()) as any };
}

async function versions(session: string): Promise<VersionList> {
  return VersionList.parse((await raw('GET', `/v1/sessions/${session}/versions`)).json);
}

const base = { model: 'tiny', max_output_tokens: 6, temperature: 0 } as const;

describe('responses', () => {
  it('create, retrieve, continue with previous_response_id from the stored state, and branch from an older one', async () => {
    const ai = client();
    const r1 = await ai.responses.create({ ...base, input: 'Hello there.', instructions: 'Be brief.', metadata: { app: 'test' } });
    const o1 = ResponseObject.parse(r1);
    expect(o1).toMatchObject({ object: 'response', status: 'incomplete', model: 'tiny', store: true, previous_response_id: null, metadata: { app: 'test' } });
    expect(o1.incomplete_details).toEqual({ reason: 'max_output_tokens' });
    expect(o1.usage!.input_tokens_details.cached_tokens).toBe(0);
    expect(o1.usage!.output_tokens).toBe(6);
    expect(r1.output_text).toBe(o1.output[0]!.content.map((p) => p.text).join(''));
    expect(o1.session_version).toBe(1);
    const session = o1.session_id!;

    // The stored record answers GET exactly as the create did.
    expect(ResponseObject.parse(await ai.responses.retrieve(r1.id))).toEqual(o1);
    const inputs = await ai.responses.inputItems.list(r1.id);
    expect(inputs.data.map((i) => (i.type === 'message' ? [i.role, i.content] : i.type))).toEqual([['user', [{ type: 'input_text', text: 'Hello there.' }]]]);

    // Continue: only the new input is fed, the rest is the stored state. The same instructions are not fed again.
    const v1 = (await versions(session)).data.at(-1)!;
    const r2 = await ai.responses.create({ ...base, input: 'And then?', instructions: 'Be brief.', previous_response_id: r1.id });
    const o2 = ResponseObject.parse(r2);
    expect(o2.previous_response_id).toBe(r1.id);
    expect(o2.usage!.input_tokens_details.cached_tokens).toBe(v1.tokens_absorbed);
    expect(o2.usage!.input_tokens).toBeGreaterThan(v1.tokens_absorbed);
    expect(o2).toMatchObject({ session_id: session, session_version: 2 });

    // Continuing the older response again branches: a new version whose parent is version 1, no 409.
    const [r3, r4] = await Promise.all([
      ai.responses.create({ ...base, input: 'And then?', previous_response_id: r1.id }),
      ai.responses.create({ ...base, input: 'Or else?', previous_response_id: r1.id }),
    ]);
    const list = await versions(session);
    expect(list.data.map((v) => [v.version, v.parent])).toEqual([
      [0, null],
      [1, 0],
      [2, 1],
      [3, 1],
      [4, 1],
    ]);
    // Same state, same input, greedy: the branch answers exactly as the first continuation did (the
    // instructions r2 repeated were in effect already, so r2 and r3 fed the same tokens).
    expect(r3.usage!.input_tokens).toBe(r2.usage!.input_tokens);
    expect(r3.output_text).toBe(r2.output_text);
    expect(r4.previous_response_id).toBe(r1.id);
    // Other instructions are fed, before the input.
    const r5 = await ai.responses.create({ ...base, input: 'And then?', instructions: 'Be verbose.', previous_response_id: r1.id });
    expect(r5.usage!.input_tokens).toBeGreaterThan(r2.usage!.input_tokens);
  });

  it('streams the documented events with sequence numbers, and resumes after any of them', async () => {
    const ai = client();
    const stream = await ai.responses.create({ ...base, input: 'Stream it.', stream: true });
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of stream) events.push(e);
    const parsed = events.map((e) => ResponseStreamEvent.parse(e));
    expect(parsed.map((e) => e.sequence_number)).toEqual(parsed.map((_, i) => i));
    const types = parsed.map((e) => e.type);
    expect(types.slice(0, 4)).toEqual(['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
    expect(types.slice(-4)).toEqual(['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.incomplete']);
    expect(types.slice(4, -4).every((t) => t === 'response.output_text.delta')).toBe(true);
    const last = parsed.at(-1)! as Extract<ResponseStreamEvent, { type: 'response.incomplete' }>;
    const deltas = parsed.filter((e) => e.type === 'response.output_text.delta').map((e) => (e as { delta: string }).delta);
    expect(deltas.join('')).toBe(last.response.output_text);
    const id = last.response.id;
    expect(ResponseObject.parse(await ai.responses.retrieve(id))).toEqual(last.response);

    // The official resume: GET /v1/responses/{id}?stream=true, events after `starting_after`.
    const resumed = ai.responses.stream({ response_id: id, starting_after: 3 });
    const again: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of resumed) again.push(e);
    expect(again.map((e) => [e.sequence_number, e.type])).toEqual(parsed.slice(4).map((e) => [e.sequence_number, e.type]));
    expect((await resumed.finalResponse()).output_text).toBe(last.response.output_text);

    // A stream cut short resumes like the native one: the same Idempotency-Key and Last-Event-ID.
    const post = (headers: Record<string, string>) =>
      fetch(`${stack.url}/v1/responses`, {
        method: 'POST',
        headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/json', 'idempotency-key': 'resume-1', ...headers },
        body: JSON.stringify({ ...base, input: 'Resume me.', stream: true }),
      }).then((r) => r.text());
    const sse = (text: string) =>
      text
        .split('\n\n')
        .filter((b) => b && !b.startsWith(':'))
        .map((b) => Object.fromEntries(b.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)])));
    const whole = sse(await post({}));
    expect(whole.map((e) => e['id'])).toEqual(whole.map((_, i) => String(i)));
    expect(whole.every((e) => e['event'] === JSON.parse(e['data']!).type)).toBe(true);
    const rest = sse(await post({ 'last-event-id': '5' }));
    expect(rest.map((e) => e['data'])).toEqual(whole.slice(6).map((e) => e['data']));
    // The same key with another request is refused, not answered with the first one's reply.
    const reused = await fetch(`${stack.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/json', 'idempotency-key': 'resume-1' },
      body: JSON.stringify({ ...base, input: 'Something else.' }),
    });
    expect(reused.status).toBe(422);
    expect(((await reused.json()) as any).error.code).toBe('idempotency_key_reused');

    // The helper stream on create.
    const helper = ai.responses.stream({ ...base, input: 'Once more.', previous_response_id: id });
    const final = await helper.finalResponse();
    expect(final.previous_response_id).toBe(id);
    expect(final.output_text.length).toBeGreaterThan(0);
  });

  it('store: false runs from the state but leaves nothing retrievable or continuable', async () => {
    const ai = client();
    const r1 = await ai.responses.create({ ...base, input: 'Keep this.' });
    const session = ResponseObject.parse(r1).session_id!;
    const before = await versions(session);
    const eph = await ai.responses.create({ ...base, input: 'Do not keep this.', previous_response_id: r1.id, store: false });
    expect(ResponseObject.parse(eph).store).toBe(false);
    expect(eph.usage!.input_tokens_details.cached_tokens).toBe(before.data.at(-1)!.tokens_absorbed);
    expect(await versions(session)).toEqual(before);
    await expect(ai.responses.retrieve(eph.id)).rejects.toMatchObject({ status: 404 });
    await expect(ai.responses.create({ ...base, input: 'x', previous_response_id: eph.id })).rejects.toMatchObject({ status: 404 });
    const alone = await ai.responses.create({ ...base, input: 'Alone.', store: false });
    expect(ResponseObject.parse(alone).session_id).toBeNull();
  });

  it('a response whose state is gone fails cleanly: 404 as JSON, response.failed in a stream, status failed after', async () => {
    const ai = client();
    const r1 = await ai.responses.create({ ...base, input: 'Soon gone.' });
    const o1 = ResponseObject.parse(r1);
    await ai.responses.create({ ...base, input: 'Next.', previous_response_id: r1.id }); // v1's state leaves the worker's hot cache
    // The fault a retention rule causes: a superseded version's state expires from the store.
    await stack.serving.edge.deps.sessions.objects.delete([`tenants/alpha/sessions/${o1.session_id}/v${o1.session_version}.mstate`]);
    const plain = await raw('POST', '/v1/responses', { ...base, input: 'x', previous_response_id: r1.id });
    expect(plain.status).toBe(404);
    expect(plain.json.error.code).toBe('version_not_found');
    expect(plain.headers.get('x-should-retry')).toBe('false');

    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of await ai.responses.create({ ...base, input: 'x', previous_response_id: r1.id, stream: true })) events.push(e);
    const failed = ResponseStreamEvent.parse(events.at(-1));
    expect(failed.type).toBe('response.failed');
    const response = (failed as Extract<ResponseStreamEvent, { type: 'response.failed' }>).response;
    expect(response.error).toMatchObject({ code: 'version_not_found' });
    expect(ResponseObject.parse(await ai.responses.retrieve(response.id))).toMatchObject({ status: 'failed', error: { code: 'version_not_found' } });
  });

  it('ids are tenant-scoped; delete; errors are clear 4xx with x-should-retry', async () => {
    const a = client();
    const r = await a.responses.create({ ...base, input: 'Mine.' });
    const other = await raw('GET', `/v1/responses/${r.id}`, undefined, KEY_B);
    expect(other.status).toBe(404);
    expect(other.json.error.code).toBe('response_not_found');
    expect((await raw('POST', '/v1/responses', { ...base, input: 'x', previous_response_id: r.id }, KEY_B)).status).toBe(404);
    expect((await raw('DELETE', `/v1/responses/${r.id}`, undefined, KEY_B)).status).toBe(404);

    await a.responses.delete(r.id);
    await expect(a.responses.retrieve(r.id)).rejects.toMatchObject({ status: 404 });
    expect((await raw('GET', '/v1/responses/resp_garbage')).status).toBe(404);

    const expectCode = async (body: Record<string, unknown>, status: number, code: string) => {
      const res = await raw('POST', '/v1/responses', { ...base, input: 'x', ...body });
      expect(res.status, JSON.stringify(res.json)).toBe(status);
      expect(res.json.error.code).toBe(code);
      expect(res.headers.get('x-should-retry')).toBe('false');
    };
    await expectCode({ tools: [{ type: 'function', name: 'f', parameters: {} }] }, 400, 'tools_unsupported');
    await expectCode({ tool_choice: 'required' }, 400, 'tools_unsupported');
    await expectCode({ text: { format: { type: 'json_object' } } }, 400, 'unsupported_parameter');
    await expectCode({ input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'x' }] }] }, 400, 'unsupported_content');
    await expectCode({ input: [{ type: 'reasoning', summary: [] }] }, 400, 'unsupported_content');
    await expectCode({ conversation: 'conv_x', previous_response_id: 'resp_x' }, 400, 'invalid_request');
    await expectCode({ model: 'nope' }, 404, 'model_not_found');
    await expectCode({ max_output_tokens: 65 }, 400, 'invalid_request');
    await expectCode({ conversation: 'conv_nothing' }, 404, 'conversation_not_found');
    const prev = await a.responses.create({ ...base, input: 'x' });
    const mismatch = await raw('POST', '/v1/responses', { ...base, model: 'other', input: 'x', previous_response_id: prev.id });
    expect(mismatch.status).toBe(409);
    expect(mismatch.json.error.code).toBe('model_mismatch');
    expect(mismatch.headers.get('x-should-retry')).toBe('false');
    // An empty tool list and the parameters a Mamba model has no use for are fine.
    const ok = await a.responses.create({
      ...base,
      input: [{ role: 'developer', content: 'Be brief.' }, { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Hi' }] }],
      tools: [],
      tool_choice: 'auto',
      include: ['reasoning.encrypted_content'],
      reasoning: { effort: 'low' },
      text: { format: { type: 'text' } },
      prompt_cache_key: 'k',
      parallel_tool_calls: false,
      service_tier: 'auto',
      user: 'u',
      truncation: 'auto',
    });
    expect(ok.status).toBe('incomplete');
    expect(ok.truncation).toBe('auto');

    // An item_reference to an earlier reply (the Vercel AI SDK sends them) feeds that reply's text.
    const ref = await a.responses.create({ ...base, input: [{ role: 'user', content: 'Hi' }, { type: 'item_reference', id: ok.output[0]!.id! }, { role: 'user', content: 'Go on.' }] });
    const refItems = await a.responses.inputItems.list(ref.id, { order: 'asc' });
    expect(refItems.data.map((i) => i.type === 'message' && i.role)).toEqual(['user', 'assistant', 'user']);
    expect((refItems.data[1] as { content: Array<{ text: string }> }).content[0]!.text).toBe(ok.output_text);
    const foreign = await raw('POST', '/v1/responses', { ...base, input: [{ type: 'item_reference', id: ok.output[0]!.id }] }, KEY_B);
    expect(foreign.status).toBe(404);
    expect(foreign.json.error.code).toBe('item_not_found');
  });
});

describe('conversations', () => {
  it('are sessions: items absorbed at creation and appended, responses move the head, items listed page by page', async () => {
    const ai = client();
    const conv = ConversationObject.parse(
      await ai.conversations.create({ metadata: { topic: 'weather' }, items: [{ type: 'message', role: 'user', content: 'It is sunny.' }] }),
    );
    // The native API sees the same session: version 1 holds the item.
    const info = SessionInfo.parse((await raw('GET', `/v1/sessions/${conv.id}`)).json);
    expect(info).toMatchObject({ version: 1, metadata: { topic: 'weather' } });

    const r1 = await ai.responses.create({ ...base, input: 'What is the weather?', conversation: conv.id });
    expect(ResponseObject.parse(r1)).toMatchObject({ conversation: { id: conv.id }, session_id: conv.id, session_version: 2 });
    expect(r1.usage!.input_tokens_details.cached_tokens).toBe(info.tokens_absorbed);
    await ai.conversations.items.create(conv.id, { items: [{ type: 'message', role: 'user', content: 'Noted.' }, { type: 'message', role: 'assistant', content: 'Good.' }] });
    const r2 = await ai.responses.create({ ...base, input: [{ role: 'user', content: 'Again?' }], conversation: { id: conv.id } });
    expect(r2.output_text.length).toBeGreaterThan(0);

    const texts = (items: OpenAI.Conversations.ConversationItem[]) => items.map((i) => (i.type === 'message' ? `${i.role}:${(i.content[0] as { text: string }).text}` : i.type));
    const all: OpenAI.Conversations.ConversationItem[] = [];
    for await (const item of ai.conversations.items.list(conv.id, { order: 'asc', limit: 2 })) all.push(item);
    expect(texts(all)).toEqual([
      'user:It is sunny.',
      'user:What is the weather?',
      `assistant:${r1.output_text}`,
      'user:Noted.',
      'assistant:Good.',
      'user:Again?',
      `assistant:${r2.output_text}`,
    ]);
    expect(all[2]!.id).toBe(r1.output[0]!.id);
    const newest = ItemList.parse((await raw('GET', `/v1/conversations/${conv.id}/items?limit=3`)).json);
    expect(newest.has_more).toBe(true);
    expect(newest.data.map((i) => i.id)).toEqual(all.slice(-3).reverse().map((i) => i.id));
    const one = await ai.conversations.items.retrieve(all[3]!.id!, { conversation_id: conv.id });
    expect(one).toEqual(all[3]);

    const del = await raw('DELETE', `/v1/conversations/${conv.id}/items/${all[0]!.id}`);
    expect(del.status).toBe(409);
    expect(del.json.error.code).toBe('item_immutable');
    expect(del.headers.get('x-should-retry')).toBe('false');

    const updated = await ai.conversations.update(conv.id, { metadata: { topic: 'rain' } });
    expect(updated.metadata).toEqual({ topic: 'rain' });
    expect((await ai.conversations.retrieve(conv.id)).metadata).toEqual({ topic: 'rain' });
    expect((await raw('GET', `/v1/conversations/${conv.id}`, undefined, KEY_B)).status).toBe(404);

    await ai.conversations.delete(conv.id);
    await expect(ai.conversations.retrieve(conv.id)).rejects.toMatchObject({ status: 404 });
    // Its responses went with it.
    await expect(ai.responses.retrieve(r1.id)).rejects.toMatchObject({ status: 404 });
  });
});

describe('a full restart of the stack (edge, worker, and a fresh Redis)', () => {
  it('keeps responses retrievable and continuable, and conversations listable', async () => {
    const ai = client();
    const r1 = await ai.responses.create({ ...base, input: 'Remember me.' });
    const conv = await ai.conversations.create({ items: [{ type: 'message', role: 'user', content: 'Before the restart.' }] });
    await stack.restart();

    const after = client();
    const got = ResponseObject.parse(await after.responses.retrieve(r1.id));
    expect(got).toEqual(ResponseObject.parse(r1));
    const v1 = (await versions(got.session_id!)).data.at(-1)!;
    const r2 = await after.responses.create({ ...base, input: 'Still there?', previous_response_id: r1.id });
    expect(r2.usage!.input_tokens_details.cached_tokens).toBe(v1.tokens_absorbed);
    const r3 = await after.responses.create({ ...base, input: 'After.', conversation: conv.id });
    expect(r3.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(0);
    const items = await after.conversations.items.list(conv.id, { order: 'asc' });
    expect(items.data.map((i) => i.type === 'message' && i.role)).toEqual(['user', 'user', 'assistant']);
    expect((await after.responses.inputItems.list(r2.id)).data).toHaveLength(1);
  });
});

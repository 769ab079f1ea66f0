// Keep-alive comments on real streams: turns queued while no worker runs (QUEUE_WITHOUT_WORKERS,
// as in a deployment waiting for a cold GPU worker) send `: keep-alive` while they wait, on the
// native turn stream and on the OpenAI-compatible chat and Responses streams, which the real
// `openai` client reads as if they were not there.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TurnResponse } from '../shared/api-schemas.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { SSE_KEEPALIVE } from './sse.ts';

const redis = useRedisServer();
let model: TinyModel;
let serving: TestServing;

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({
    redisUrl: redis().url,
    modelDir: model.dir,
    workers: 0,
    env: { QUEUE_WITHOUT_WORKERS: 'true', DEFAULT_MODEL: 'tiny', SSE_KEEPALIVE_MS: '100', TURN_TIMEOUT_MS: '60000' },
  });
});
afterAll(async () => {
  await serving?.stop();
  await model?.remove();
});

/** Reads a response body as it arrives; `text` grows until the body ends (`ended`). */
function observe(body: ReadableStream<Uint8Array>): { readonly text: string; ended: Promise<void> } {
  const seen = { text: '', ended: Promise.resolve() };
  seen.ended = (async () => {
    for await (const chunk of body.pipeThrough(new TextDecoderStream())) seen.text += chunk;
  })();
  return seen;
}

const keepAlives = (text: string) => text.split(SSE_KEEPALIVE).length - 1;

async function waitFor(check: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A worker runs the waiting turns, then goes away again (scale to zero), so the next test's turn waits too. */
async function runWorkerUntil(done: Promise<unknown>): Promise<void> {
  const worker = await serving.addWorker();
  try {
    await done;
  } finally {
    await worker.stop(0);
    serving.workers.splice(serving.workers.indexOf(worker), 1);
  }
}

describe('SSE keep-alive while a turn waits for a worker', () => {
  it('native turn stream: comments while queued, then the tokens and done as usual', async () => {
    expect((await fetch(`${serving.url}/v1/sessions`, { method: 'POST', body: JSON.stringify({ id: 'ka' }) })).status).toBe(201);
    const res = await fetch(`${serving.url}/v1/sessions/ka/turns`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input: 'wait for it', max_tokens: 6, temperature: 0, stream: true }),
    });
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const seen = observe(res.body!);
    await waitFor(() => keepAlives(seen.text) >= 3, 'keep-alive comments while queued');
    expect(seen.text).toBe(SSE_KEEPALIVE.repeat(keepAlives(seen.text))); // nothing else yet

    await runWorkerUntil(seen.ended);
    const events = seen.text
      .split('\n\n')
      .filter((block) => block && !block.startsWith(':'))
      .map((block) => Object.fromEntries(block.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)])));
    const done = TurnResponse.parse(JSON.parse(events.at(-1)!['data']!));
    expect(events.at(-1)!['event']).toBe('done');
    expect(events.slice(0, -1).every((e) => e['event'] === 'token' && /^\d+$/.test(e['id']!))).toBe(true);
    expect(events.slice(0, -1).map((e) => JSON.parse(e['data']!).text).join('')).toBe(done.output);
    expect(done.version).toBe(1);
  });

  it('chat stream: the openai client ignores the comments', async () => {
    let seen: ReturnType<typeof observe> | undefined;
    const client = new OpenAI({
      baseURL: `${serving.url}/v1`,
      apiKey: 'local',
      maxRetries: 0,
      // The real fetch; the test reads a copy of the bytes the client parses.
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        if (!res.body) return res;
        const [forClient, forTest] = res.body.tee();
        seen = observe(forTest);
        return new Response(forClient, { status: res.status, statusText: res.statusText, headers: res.headers });
      },
    });
    const stream = await client.chat.completions.create(
      { model: 'tiny', messages: [{ role: 'user', content: 'wait for it' }], max_tokens: 6, temperature: 0, stream: true },
      { headers: { 'X-Session-Id': 'ka-chat' } },
    );
    await waitFor(() => keepAlives(seen?.text ?? '') >= 3, 'keep-alive comments while queued');

    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    const read = (async () => {
      for await (const chunk of stream) chunks.push(chunk);
    })();
    await runWorkerUntil(read);
    expect(chunks.length).toBeGreaterThanOrEqual(2);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toMatch(/^(stop|length)$/);
    expect((chunks.at(-1) as unknown as { session_version: number }).session_version).toBe(1);
    // What went over the wire: the role chunk, comments while queued, then the reply.
    await seen!.ended;
    const raw = seen!.text;
    expect(raw.indexOf(SSE_KEEPALIVE)).toBeGreaterThan(raw.indexOf('"role":"assistant"'));
    expect(raw.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  it('responses stream: the openai client reads the events around the comments', async () => {
    let seen: ReturnType<typeof observe> | undefined;
    const client = new OpenAI({
      baseURL: `${serving.url}/v1`,
      apiKey: 'local',
      maxRetries: 0,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        if (!res.body) return res;
        const [forClient, forTest] = res.body.tee();
        seen = observe(forTest);
        return new Response(forClient, { status: res.status, statusText: res.statusText, headers: res.headers });
      },
    });
    const stream = await client.responses.create({ model: 'tiny', input: 'wait for it', max_output_tokens: 6, temperature: 0, stream: true });
    await waitFor(() => keepAlives(seen?.text ?? '') >= 3, 'keep-alive comments while queued');
    const streamSeen = seen!; // the calls below go through the same fetch
    // While it waits, the response is visible as in progress, and cannot be deleted yet.
    const id = /"id":"(resp_[A-Za-z0-9_-]+)"/.exec(streamSeen.text)![1]!;
    expect((await client.responses.retrieve(id)).status).toBe('in_progress');
    await expect(client.responses.delete(id)).rejects.toMatchObject({ status: 409, error: { code: 'response_in_progress' } });
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    const read = (async () => {
      for await (const e of stream) events.push(e);
    })();
    await runWorkerUntil(read);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    expect(events[0]!.type).toBe('response.created');
    expect(events.at(-1)!.type).toMatch(/^response\.(completed|incomplete)$/);
    // The events that need no worker went out first, then comments while the turn waited.
    await streamSeen.ended;
    expect(streamSeen.text.indexOf(SSE_KEEPALIVE)).toBeGreaterThan(streamSeen.text.indexOf('response.content_part.added'));
  });
});

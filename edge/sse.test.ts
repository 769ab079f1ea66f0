// The SSE writer in a bare Hono app (no socket): keep-alive comments go out only while a
// stream is quiet, never inside or after its events, and not at all when turned off.
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { SSE_KEEPALIVE, sseResponse } from './sse.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function streamApp(keepAliveMs: number, produce: Parameters<typeof sseResponse>[1]): Hono {
  const app = new Hono();
  app.get('/', (c) => sseResponse(c, produce, async () => {}, { keepAliveMs }));
  return app;
}

/** The stream's blocks (separated by blank lines), in order. */
async function blocks(app: Hono): Promise<string[]> {
  const text = await (await app.request('/')).text();
  expect(text.endsWith('\n\n')).toBe(true);
  return text.slice(0, -2).split('\n\n');
}

const comment = SSE_KEEPALIVE.trimEnd();

describe('SSE keep-alive', () => {
  it('writes comment lines while the stream is quiet, between whole events', async () => {
    const got = await blocks(
      streamApp(60, async (sse) => {
        await sleep(400); // waiting in the queue
        await sse.send({ n: 1 }, { event: 'token', id: '1-0' });
        await sleep(400); // a slow step
        await sse.send({ n: 2 }, { event: 'done', id: '2-0' });
      }),
    );
    const first = got.indexOf('event: token\ndata: {"n":1}\nid: 1-0');
    const done = got.indexOf('event: done\ndata: {"n":2}\nid: 2-0');
    expect(first).toBeGreaterThan(0);
    expect(done).toBe(got.length - 1); // nothing after the last event: the timer ends with the stream
    expect(got.slice(0, first).length).toBeGreaterThanOrEqual(2);
    expect(got.slice(first + 1, done).length).toBeGreaterThanOrEqual(2);
    expect(got.filter((b, i) => i !== first && i !== done).every((b) => b === comment)).toBe(true);
  });

  it('writes none when turned off (0)', async () => {
    const got = await blocks(
      streamApp(0, async (sse) => {
        await sleep(300);
        await sse.sendRaw('[DONE]');
      }),
    );
    expect(got).toEqual(['data: [DONE]']);
  });
});

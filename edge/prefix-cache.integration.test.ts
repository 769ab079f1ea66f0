// Durable prefix reuse for chats without a session, through the real stack (edge on loopback, a
// worker, a real Redis, states on a real S3-speaking server) with the official `openai` client:
// the same history sent again is fed only past its longest stored prefix (and answers exactly as
// cold), the conversation's next request reuses the state after the reply, tenants never share
// entries, prefix_cache: false opts out, the reuse survives a restart with a fresh Redis, and the
// per-tenant byte budget evicts the least recently used entries from the store.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrefixCache } from '../shared/prefix-cache.ts';
import { startRestartableStack, type RestartableStack } from '../test-support/restartable-stack.ts';

const KEY_A = 'key-alpha-0001';
const KEY_B = 'key-bravo-0002';
const KEY_C = 'key-charlie-0003';
/** About five tiny-model states (~10.9 KB each): the eviction case below needs more. */
const BUDGET = 60_000;
let stack: RestartableStack;

beforeAll(async () => {
  stack = await startRestartableStack({
    API_KEYS: `${KEY_A}:alpha,${KEY_B}:bravo,${KEY_C}:charlie`,
    PREFIX_CACHE_MIN_TOKENS: '32',
    PREFIX_CACHE_TENANT_BYTES: String(BUDGET),
  });
});
afterAll(async () => {
  await stack?.stop();
});

const client = (key = KEY_A) => new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: key, maxRetries: 0 });
type Msg = OpenAI.Chat.ChatCompletionMessageParam;

const history: Msg[] = [
  { role: 'system', content: 'You are a patient assistant who remembers what the user says.' },
  { role: 'user', content: 'My locker code is 4812 and my dog is called Biscuit. Please remember both.' },
];

async function chat(messages: Msg[], key = KEY_A, extra: Record<string, unknown> = {}) {
  const r = await client(key).chat.completions.create({ model: 'tiny', messages, max_tokens: 8, temperature: 0, ...extra });
  return { text: r.choices[0]!.message.content!, cached: r.usage!.prompt_tokens_details!.cached_tokens!, prompt: r.usage!.prompt_tokens };
}

async function stored(tenant: string) {
  return (await stack.serving.edge.deps.sessions.objects.listPage(PrefixCache.tenantPrefix(tenant), { limit: 1000 })).objects;
}

describe('prefix reuse without a session', () => {
  let first: Awaited<ReturnType<typeof chat>>;
  let next: Awaited<ReturnType<typeof chat>>;
  let followUp: Msg[];

  it('feeds the same history only past its stored prefix, and answers exactly as cold', async () => {
    first = await chat(history);
    expect(first.cached).toBe(0);
    const again = await chat(history);
    // Only the generation prompt was fed: the rest is the state stored after the messages.
    expect(again.cached).toBeGreaterThan(0);
    expect(again.prompt - again.cached).toBeLessThan(16);
    expect(again.text).toBe(first.text);
    expect(again.prompt).toBe(first.prompt);
  });

  it("reuses the state after the reply for the conversation's next request", async () => {
    followUp = [...history, { role: 'assistant', content: first.text }, { role: 'user', content: 'What is my locker code?' }];
    next = await chat(followUp);
    expect(next.cached).toBeGreaterThan(first.prompt);
    const cold = await chat(followUp, KEY_A, { prefix_cache: false });
    expect(cold.cached).toBe(0);
    expect(cold.text).toBe(next.text);
  });

  it("never lets a tenant hit another's prefix", async () => {
    expect((await chat(history, KEY_B)).cached).toBe(0);
    expect((await stored('alpha')).length).toBeGreaterThan(0);
  });

  it('survives a restart with an empty Redis: the index is rebuilt from the store', async () => {
    await stack.restart();
    // The same request again: `next` stored the state after all its messages, which is found now
    // from the store alone (the worker's hot states went with the restart).
    const after = await chat(followUp);
    expect(after.cached).toBeGreaterThan(next.cached);
    expect(after.prompt - after.cached).toBeLessThan(16);
    expect(after.text).toBe(next.text);
  });

  it("keeps each tenant within its byte budget, evicting the least recently used from the store", async () => {
    const conversation = (i: number): Msg[] => [{ role: 'user', content: `Conversation number ${i}: please remember the word ${'abcdefgh'[i]}${i}${i}.` }];
    for (let i = 0; i < 5; i++) await chat(conversation(i), KEY_C);
    const objects = await stored('charlie');
    const total = objects.reduce((n, o) => n + o.bytes, 0);
    expect(total).toBeLessThanOrEqual(BUDGET);
    expect(objects.length).toBeLessThan(10);
    // The newest conversation is kept whole, and reused.
    expect((await chat(conversation(4), KEY_C)).cached).toBeGreaterThan(0);
  });
});

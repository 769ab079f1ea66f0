// The agent frameworks that speak the Responses API by default, used as their READMEs show,
// pointed at mamba-serve by changing only the base URL and the API key: the Vercel AI SDK
// (`openai(model)`, previousResponseId), the OpenAI Agents SDK (previousResponseId,
// OpenAIConversationsSession, conversationId) and LangChain.js (ChatOpenAI with
// useResponsesApi and previous_response_id; on Chat Completions, an append-only session by
// header). Each also continues across a full restart of the stack (edge, worker, and a fresh
// Redis; states and response records on the S3 server).
import { ChatOpenAI } from '@langchain/openai';
import { HumanMessage, SystemMessage, type AIMessageChunk } from '@langchain/core/messages';
import { createOpenAI } from '@ai-sdk/openai';
import { Agent, OpenAIConversationsSession, Runner, setDefaultOpenAIClient, setTracingDisabled } from '@openai/agents';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionInfo } from '../shared/api-schemas.ts';
import { ResponseObject } from '../shared/responses-api.ts';
import { startRestartableStack, type RestartableStack } from '../test-support/restartable-stack.ts';

const KEY = 'key-agents-0001';
let stack: RestartableStack;

beforeAll(async () => {
  // The Agents SDK exports traces to OpenAI unless told not to; nothing here may leave the machine.
  setTracingDisabled(true);
  stack = await startRestartableStack({ API_KEYS: `${KEY}:agents` });
});
afterAll(async () => {
  await stack?.stop();
});

const settings = { maxOutputTokens: 6, temperature: 0, maxRetries: 0 } as const;
const provider = () => createOpenAI({ baseURL: `${stack.url}/v1`, apiKey: KEY });
const openaiClient = () => new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: KEY, maxRetries: 0 });

async function stored(id: string) {
  return ResponseObject.parse(await openaiClient().responses.retrieve(id));
}

/** The native API's view of a session: its version and the tokens its state has absorbed. */
async function sessionInfo(id: string) {
  const res = await fetch(`${stack.url}/v1/sessions/${id}`, { headers: { authorization: `Bearer ${KEY}` } });
  expect(res.status).toBe(200);
  return SessionInfo.parse(await res.json());
}

describe('Vercel AI SDK: openai(model) is the Responses API', () => {
  it('generateText, then streamText continuing it with previousResponseId, also after a restart', async () => {
    const openai = provider();
    const first = await generateText({ model: openai('tiny'), system: 'Be brief.', prompt: 'Hello!', ...settings });
    const firstId = first.providerMetadata?.['openai']?.['responseId'] as string;
    expect(firstId).toMatch(/^resp_/);
    expect(first.text).toBe((await stored(firstId)).output_text);
    expect(first.finishReason).toBe('length');
    expect(first.usage.inputTokens).toBeGreaterThan(0);

    const second = streamText({ model: openai('tiny'), prompt: 'And now?', providerOptions: { openai: { previousResponseId: firstId } }, ...settings });
    let streamed = '';
    for await (const delta of second.textStream) streamed += delta;
    const secondId = (await second.providerMetadata)?.['openai']?.['responseId'] as string;
    const record = await stored(secondId);
    expect(streamed).toBe(record.output_text);
    expect(record.previous_response_id).toBe(firstId);
    // Only the new prompt was fed: the rest came from the stored state.
    expect((await second.usage).cachedInputTokens).toBe(record.usage!.input_tokens_details.cached_tokens);
    expect(record.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(0);

    await stack.restart();
    const third = await generateText({ model: provider()('tiny'), prompt: 'Still here?', providerOptions: { openai: { previousResponseId: secondId } }, ...settings });
    const thirdRecord = await stored(third.providerMetadata?.['openai']?.['responseId'] as string);
    expect(thirdRecord.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(record.usage!.input_tokens_details.cached_tokens);
    expect(thirdRecord.session_id).toBe(record.session_id);
  });
});

describe('OpenAI Agents SDK', () => {
  const agent = () => new Agent({ name: 'Assistant', instructions: 'Be brief.', model: 'tiny', modelSettings: { maxTokens: 6, temperature: 0 } });
  const runner = () => {
    setDefaultOpenAIClient(openaiClient());
    return new Runner();
  };

  it('an Agent run twice with previousResponseId, and again after a restart', async () => {
    const first = await runner().run(agent(), 'Hello!');
    expect(first.lastResponseId).toMatch(/^resp_/);
    expect(first.finalOutput).toBe((await stored(first.lastResponseId!)).output_text);

    const second = await runner().run(agent(), 'And now?', { previousResponseId: first.lastResponseId! });
    const record = await stored(second.lastResponseId!);
    expect(record.previous_response_id).toBe(first.lastResponseId);
    expect(second.finalOutput).toBe(record.output_text);
    expect(record.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(0);

    await stack.restart();
    const streamed = await runner().run(agent(), 'Still here?', { previousResponseId: second.lastResponseId!, stream: true });
    for await (const _ of streamed.toTextStream()) void _;
    await streamed.completed;
    const after = await stored(streamed.lastResponseId!);
    expect(after.previous_response_id).toBe(second.lastResponseId);
    expect(after.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(record.usage!.input_tokens_details.cached_tokens);
  });

  it('OpenAIConversationsSession keeps the history in a conversation, also across a restart', async () => {
    const session = new OpenAIConversationsSession({ client: openaiClient() });
    const first = await runner().run(agent(), 'My name is Ada.', { session });
    const conversation = await session.getSessionId();
    expect(conversation).toMatch(/^conv_/);
    const items = await session.getItems();
    expect(items.map((i) => ('role' in i ? i.role : i.type))).toEqual(['user', 'assistant']);
    expect(first.finalOutput).toBeTypeOf('string');

    await stack.restart();
    const again = new OpenAIConversationsSession({ client: openaiClient(), conversationId: conversation });
    await runner().run(agent(), 'What is my name?', { session: again });
    const history = await again.getItems();
    expect(history.map((i) => ('role' in i ? i.role : i.type))).toEqual(['user', 'assistant', 'user', 'assistant']);
    // The conversation is a session: the native API lists its versions.
    expect((await sessionInfo(conversation)).version).toBe(2);
  });

  it('conversationId: the server-side conversation continues from its stored state', async () => {
    const conv = await openaiClient().conversations.create({});
    const first = await runner().run(agent(), 'Hello!', { conversationId: conv.id });
    const second = await runner().run(agent(), 'Again.', { conversationId: conv.id });
    const a = await stored(first.lastResponseId!);
    const b = await stored(second.lastResponseId!);
    expect([a.conversation, b.conversation]).toEqual([{ id: conv.id }, { id: conv.id }]);
    // The second run fed only its input (and not the instructions again): the first exchange is in the state.
    expect(b.usage!.input_tokens_details.cached_tokens).toBeGreaterThanOrEqual(a.usage!.input_tokens + a.usage!.output_tokens);
    expect(b.usage!.input_tokens - b.usage!.input_tokens_details.cached_tokens).toBeLessThan(a.usage!.input_tokens);
    expect(b.session_version).toBe(2);
  });
});

describe('LangChain.js: ChatOpenAI', () => {
  // Every request the framework makes is recorded: nothing may leave the machine (LangChain can
  // fetch tokenizer files for token counting, and trace to LangSmith when told to).
  const requested: string[] = [];
  const realFetch = globalThis.fetch;
  beforeAll(() => {
    globalThis.fetch = (input, init) => {
      requested.push(input instanceof Request ? input.url : String(input));
      return realFetch(input, init);
    };
  });
  afterAll(() => {
    globalThis.fetch = realFetch;
  });
  // The client is made per call: it captures fetch, and a restart moves nothing it holds.
  const chatModel = (fields: { useResponsesApi?: boolean; headers?: Record<string, string> } = {}) =>
    new ChatOpenAI({
      model: 'tiny',
      apiKey: KEY,
      configuration: { baseURL: `${stack.url}/v1`, ...(fields.headers ? { defaultHeaders: fields.headers } : {}) },
      ...(fields.useResponsesApi ? { useResponsesApi: true } : {}),
      maxTokens: 6,
      temperature: 0,
      maxRetries: 0,
    });

  it('useResponsesApi: invoke, continue with previous_response_id, and stream on after a restart', async () => {
    const first = await chatModel({ useResponsesApi: true }).invoke([new SystemMessage('Be brief.'), new HumanMessage('Hello!')]);
    const firstId = first.response_metadata['id'] as string;
    expect(firstId).toMatch(/^resp_/);
    expect(first.text).toBe((await stored(firstId)).output_text);

    // Only the new message is sent; the rest of the conversation is the stored state.
    const second = await chatModel({ useResponsesApi: true }).invoke([new HumanMessage('And now?')], { previous_response_id: firstId });
    const secondId = second.response_metadata['id'] as string;
    const record = await stored(secondId);
    expect(record.previous_response_id).toBe(firstId);
    expect(second.text).toBe(record.output_text);
    expect(record.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(0);
    expect(second.usage_metadata?.input_token_details?.cache_read).toBe(record.usage!.input_tokens_details.cached_tokens);

    await stack.restart();
    let streamed: AIMessageChunk | undefined;
    for await (const chunk of await chatModel({ useResponsesApi: true }).stream([new HumanMessage('Still here?')], { previous_response_id: secondId })) {
      streamed = streamed ? streamed.concat(chunk) : chunk;
    }
    const thirdId = streamed!.response_metadata['id'] as string;
    const after = await stored(thirdId);
    expect(after.previous_response_id).toBe(secondId);
    expect(streamed!.text).toBe(after.output_text);
    expect(after.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(record.usage!.input_tokens_details.cached_tokens);
    expect(after.session_id).toBe(record.session_id);
  });

  it('Chat Completions with X-Session-Id and X-Session-Append: each invoke sends only its new message', async () => {
    const session = 'langchain-append-1';
    const model = () => chatModel({ headers: { 'X-Session-Id': session, 'X-Session-Append': 'true' } });
    const first = await model().invoke([new SystemMessage('Be brief.'), new HumanMessage('My locker code is 4812.')]);
    expect(first.text.length).toBeGreaterThan(0);
    const before = await sessionInfo(session);
    expect(before.version).toBe(1);

    await stack.restart();
    const second = await model().invoke([new HumanMessage('What is my locker code?')]);
    const now = await sessionInfo(session);
    expect(now.version).toBe(2);
    // The state grew by this turn alone: the new message and the reply, not the history again.
    expect(now.tokens_absorbed - before.tokens_absorbed).toBeLessThan(before.tokens_absorbed);
    // Usage as OpenAI reports it: the stored state's tokens are the prompt's cached part.
    expect(second.usage_metadata!.input_token_details?.cache_read).toBe(before.tokens_absorbed);
  });

  it('sent nothing anywhere but the stack', () => {
    expect(requested.length).toBeGreaterThanOrEqual(5);
    expect(requested.filter((url) => !url.startsWith(`${stack.url}/`))).toEqual([]);
  });
});

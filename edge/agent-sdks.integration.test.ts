// The agent frameworks that speak the Responses API by default, used as their READMEs show,
// pointed at mamba-serve by changing only the base URL and the API key: the Vercel AI SDK
// (`openai(model)`, previousResponseId) and the OpenAI Agents SDK (previousResponseId,
// OpenAIConversationsSession, conversationId). Each also continues across a full restart of the
// stack (edge, worker, and a fresh Redis; states and response records on the S3 server).
import { createOpenAI } from '@ai-sdk/openai';
import { Agent, OpenAIConversationsSession, Runner, setDefaultOpenAIClient, setTracingDisabled } from '@openai/agents';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
    const res = await fetch(`${stack.url}/v1/sessions/${conversation}`, { headers: { authorization: `Bearer ${KEY}` } });
    expect(((await res.json()) as { version: number }).version).toBe(2);
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

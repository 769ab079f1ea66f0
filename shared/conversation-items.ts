// Conversation items: what one session version absorbed and answered, in the Responses API's
// item shapes, kept durably beside the version's state as `v{N}.items.json` (written by the
// worker in the same commit, before the head advances). A state cannot be read back as text, so
// these files are how `GET /v1/conversations/{id}/items` and `/v1/responses/{id}/input_items`
// list what was said: the items of a session's head are those of every version on its parent
// chain, oldest first.
//
// Item ids name their place: session, the turn that committed the version (the manifest
// records each version's turn id), and the index in that version's items. They are base64url,
// opaque to clients, and resolve only inside the tenant that asks.
import { z } from 'zod';
import { FinishReason, TurnUsage, type Message } from './api-schemas.ts';

export const ItemRole = z.enum(['user', 'assistant', 'system', 'developer']);
export type ItemRole = z.infer<typeof ItemRole>;

export const InputTextPart = z.object({ type: z.literal('input_text'), text: z.string() });
export const OutputTextPart = z.object({ type: z.literal('output_text'), text: z.string(), annotations: z.array(z.unknown()), logprobs: z.array(z.unknown()).optional() });

export const MessageItem = z.object({
  id: z.string(),
  type: z.literal('message'),
  role: ItemRole,
  /** `incomplete`: a reply cut by its token limit. */
  status: z.enum(['completed', 'incomplete']),
  content: z.array(z.discriminatedUnion('type', [InputTextPart, OutputTextPart])),
}).meta({ id: 'MessageItem' });
export type MessageItem = z.infer<typeof MessageItem>;

export const FunctionCallOutputItem = z.object({
  id: z.string(),
  type: z.literal('function_call_output'),
  call_id: z.string(),
  output: z.string(),
  status: z.literal('completed'),
});

export const ConversationItem = z.discriminatedUnion('type', [MessageItem, FunctionCallOutputItem]).meta({ id: 'ConversationItem' });
export type ConversationItem = z.infer<typeof ConversationItem>;

/**
 * How a fed message is shown as an item, aligned one to one with a turn job's messages (which
 * carry only role and text: `developer` is fed as `system`, a tool output as `tool`).
 */
export const ItemShape = z.discriminatedUnion('type', [
  z.object({ type: z.literal('message'), role: ItemRole }),
  z.object({ type: z.literal('function_call_output'), call_id: z.string().max(256) }),
]);
export type ItemShape = z.infer<typeof ItemShape>;

export const ItemsFile = z.object({
  format: z.literal(1),
  turn_id: z.string(),
  /** Responses API instructions fed before the input this version, or null. Not an item: the API never lists them. */
  instructions: z.string().nullable(),
  input: z.array(ConversationItem),
  /** The reply (empty for versions that only absorbed input). */
  output: z.array(ConversationItem),
  /**
   * How the turn ended and what it cost (versions committed since this was kept): with the
   * reply, the turn's whole answer, so a retry finds it in the store even after Redis lost it.
   */
  result: z.object({ finish_reason: FinishReason, usage: TurnUsage, request_sha256: z.string().regex(/^[0-9a-f]{64}$/).optional() }).optional(),
});
export type ItemsFile = z.infer<typeof ItemsFile>;

type ItemPrefix = 'msg' | 'fco';

export function itemId(prefix: ItemPrefix, session: string, turnId: string, index: number): string {
  return `${prefix}_${Buffer.from(`${session}/${turnId}/${index}`).toString('base64url')}`;
}

/** The output message's id a turn will have: known before the turn runs (streams announce it first). */
export function replyItemId(session: string, turnId: string, inputItems: number): string {
  return itemId('msg', session, turnId, inputItems);
}

export function parseItemId(id: string): { session: string; turnId: string; index: number } | undefined {
  const m = /^(?:msg|fco)_([A-Za-z0-9_-]{1,400})$/.exec(id);
  if (!m) return undefined;
  const parts = Buffer.from(m[1]!, 'base64url').toString('utf8').split('/');
  if (parts.length !== 3 || !/^[A-Za-z0-9_-]{1,128}$/.test(parts[0]!) || !/^[A-Za-z0-9_-]{1,100}$/.test(parts[1]!) || !/^\d{1,6}$/.test(parts[2]!)) return undefined;
  return { session: parts[0]!, turnId: parts[1]!, index: Number(parts[2]) };
}

/** The shape a plain message has when nothing else is known (native turns, chat completions). */
export function defaultShape(m: Message): ItemShape {
  return m.role === 'tool' ? { type: 'function_call_output', call_id: '' } : { type: 'message', role: m.role };
}

function itemOf(session: string, turnId: string, index: number, m: Message, shape: ItemShape): ConversationItem {
  if (shape.type === 'function_call_output') {
    return { id: itemId('fco', session, turnId, index), type: 'function_call_output', call_id: shape.call_id, output: m.content, status: 'completed' };
  }
  const content =
    shape.role === 'assistant' ? [{ type: 'output_text' as const, text: m.content, annotations: [] }] : [{ type: 'input_text' as const, text: m.content }];
  return { id: itemId('msg', session, turnId, index), type: 'message', role: shape.role, status: 'completed', content };
}

/** The items file of a version a turn commits: its input messages, then its reply (if it wrote one). */
export function buildItemsFile(args: {
  session: string;
  turnId: string;
  messages: readonly Message[];
  shapes?: readonly ItemShape[] | undefined;
  instructions: string | null;
  reply?: { text: string; complete: boolean } | undefined;
  result?: ItemsFile['result'];
}): ItemsFile {
  const { session, turnId, messages } = args;
  const input = messages.map((m, i) => itemOf(session, turnId, i, m, args.shapes?.[i] ?? defaultShape(m)));
  const output: ConversationItem[] = args.reply
    ? [
        {
          id: replyItemId(session, turnId, input.length),
          type: 'message',
          role: 'assistant',
          status: args.reply.complete ? 'completed' : 'incomplete',
          content: [{ type: 'output_text', text: args.reply.text, annotations: [] }],
        },
      ]
    : [];
  return { format: 1, turn_id: turnId, instructions: args.instructions, input, output, ...(args.result ? { result: args.result } : {}) };
}

/** An item's text, as it was fed (item_reference inputs resolve to this). */
export function itemText(item: ConversationItem): string {
  return item.type === 'function_call_output' ? item.output : item.content.map((p) => p.text).join('');
}

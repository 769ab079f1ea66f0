// Wire formats of the OpenAI-compatible Responses and Conversations APIs (/v1/responses,
// /v1/conversations): request bodies the edge accepts and the objects it answers, shaped as the
// official clients type them. Unknown request fields are ignored, as OpenAI-compatible servers
// do; fields a Mamba model cannot honour are refused by the edge (edge/response-input.ts).
// See docs/responses-api.md.
import { z } from 'zod';
import { CartridgeId, Metadata, ModelId, SessionId, Text, VersionNumber } from './api-schemas.ts';
import { ConversationItem, MessageItem } from './conversation-items.ts';

/** Items one request may carry (input, conversation items). */
export const MAX_ITEMS_PER_REQUEST = 4096;

/** One content part as clients send it; only text parts are served (others: 400 unsupported_content). */
const ContentPartIn = z.looseObject({ type: z.string().max(64), text: Text.optional() });

/**
 * An input item as clients send it: a message (`type` "message" or absent, with a role), a
 * `function_call_output`, or an `item_reference` to an item this server issued. Checked item by
 * item by edge/response-input.ts, which names the offending item in its 400.
 */
export const InputItemIn = z.looseObject({
  type: z.string().max(64).optional(),
  id: z.string().max(600).optional(),
  role: z.string().max(32).optional(),
  content: z.union([Text, z.array(ContentPartIn).max(4096)]).optional(),
  call_id: z.string().max(256).optional(),
  output: z.union([Text, z.array(ContentPartIn).max(4096)]).optional(),
}).meta({ id: 'InputItemIn' });
export type InputItemIn = z.infer<typeof InputItemIn>;

const nullish = <T extends z.ZodType>(t: T) => t.nullable().optional();

export const CreateResponseRequest = z.object({
  model: ModelId.optional(),
  input: z.union([Text.max(10_000_000), z.array(InputItemIn).min(1).max(MAX_ITEMS_PER_REQUEST)]),
  /** Fed as a system message before this response's input (not again while they are the ones in effect). */
  instructions: nullish(Text.max(1_000_000)),
  previous_response_id: nullish(z.string().max(600)),
  /** A conversation id, or `{id}`: the response continues its head and moves it. */
  conversation: nullish(z.union([z.string().max(600), z.object({ id: z.string().max(600) })])),
  store: nullish(z.boolean()),
  stream: nullish(z.boolean()),
  max_output_tokens: nullish(z.number().int().min(1).max(1_000_000)),
  temperature: nullish(z.number().min(0).max(2)),
  top_p: nullish(z.number().gt(0).max(1)),
  metadata: nullish(Metadata),
  /** A state never overflows, so nothing is ever truncated; both values are accepted and echoed. */
  truncation: nullish(z.enum(['auto', 'disabled'])),
  tools: nullish(z.array(z.unknown()).max(1024)),
  tool_choice: nullish(z.union([z.enum(['none', 'auto', 'required']), z.looseObject({ type: z.string() })])),
  parallel_tool_calls: nullish(z.boolean()),
  text: nullish(z.looseObject({ format: nullish(z.looseObject({ type: z.string() })) })),
  background: nullish(z.boolean()),
  prompt: z.unknown().optional(),
  /** mamba-serve extension: a new chain (no previous_response_id, no conversation) starts from this ready cartridge's state. */
  cartridge: CartridgeId.optional(),
}).meta({ id: 'CreateResponseRequest' });
export type CreateResponseRequest = z.infer<typeof CreateResponseRequest>;

/** Query of GET /v1/responses/{id}: `stream=true` replays the response's events (resume after `starting_after`). */
export const RetrieveResponseQuery = z.object({
  stream: z.enum(['true', 'false']).optional(),
  starting_after: z.string().regex(/^\d{1,9}$/, 'must be a sequence number').transform(Number).optional(),
});

export const ResponseUsage = z.object({
  /** Every token the reply was conditioned on: those fed now plus `cached_tokens`. */
  input_tokens: z.number().int().nonnegative(),
  /** Tokens not fed again because the stored state already holds them. */
  input_tokens_details: z.object({ cached_tokens: z.number().int().nonnegative() }),
  output_tokens: z.number().int().nonnegative(),
  output_tokens_details: z.object({ reasoning_tokens: z.number().int().nonnegative() }),
  total_tokens: z.number().int().nonnegative(),
}).meta({ id: 'ResponseUsage' });
export type ResponseUsage = z.infer<typeof ResponseUsage>;

export const ResponseStatus = z.enum(['in_progress', 'completed', 'incomplete', 'failed']);
export type ResponseStatus = z.infer<typeof ResponseStatus>;

export const ResponseObject = z.object({
  id: z.string(),
  object: z.literal('response'),
  created_at: z.number().int(),
  completed_at: z.number().int().nullable(),
  status: ResponseStatus,
  background: z.literal(false),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  incomplete_details: z.object({ reason: z.literal('max_output_tokens') }).nullable(),
  instructions: z.string().nullable(),
  max_output_tokens: z.number().int().nullable(),
  metadata: z.record(z.string(), z.string()),
  model: z.string(),
  output: z.array(MessageItem),
  /** The reply's text (the official SDKs derive it from `output`; others read it here). */
  output_text: z.string(),
  parallel_tool_calls: z.boolean(),
  previous_response_id: z.string().nullable(),
  conversation: z.object({ id: z.string() }).nullable(),
  reasoning: z.object({ effort: z.null(), summary: z.null() }),
  service_tier: z.literal('default'),
  store: z.boolean(),
  temperature: z.number(),
  top_p: z.number(),
  text: z.object({ format: z.object({ type: z.literal('text') }) }),
  tool_choice: z.enum(['none', 'auto']),
  // Always empty: tool calling is refused (docs/responses-api.md).
  tools: z.array(z.unknown()).max(0),
  truncation: z.enum(['auto', 'disabled']),
  usage: ResponseUsage.nullable(),
  user: z.null(),
  /** mamba-serve extensions: the session and version this response is (null when not stored). */
  session_id: SessionId.nullable(),
  session_version: VersionNumber.nullable(),
}).meta({ id: 'ResponseObject' });
export type ResponseObject = z.infer<typeof ResponseObject>;

export const ResponseDeleted = z.object({ id: z.string(), object: z.literal('response'), deleted: z.literal(true) }).meta({ id: 'ResponseDeleted' });

// ---------------------------------------------------------------------------- streaming events

const seq = { sequence_number: z.number().int().nonnegative() };
const at = { item_id: z.string(), output_index: z.number().int(), content_index: z.number().int() };
const TextPart = z.object({ type: z.literal('output_text'), text: z.string(), annotations: z.array(z.unknown()), logprobs: z.array(z.unknown()) });

export const ResponseStreamEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('response.created'), response: ResponseObject, ...seq }),
  z.object({ type: z.literal('response.in_progress'), response: ResponseObject, ...seq }),
  z.object({ type: z.literal('response.output_item.added'), output_index: z.number().int(), item: MessageItem.extend({ status: z.enum(['in_progress', 'completed', 'incomplete']) }), ...seq }),
  z.object({ type: z.literal('response.content_part.added'), ...at, part: TextPart, ...seq }),
  z.object({ type: z.literal('response.output_text.delta'), ...at, delta: z.string(), logprobs: z.array(z.unknown()), ...seq }),
  z.object({ type: z.literal('response.output_text.done'), ...at, text: z.string(), logprobs: z.array(z.unknown()), ...seq }),
  z.object({ type: z.literal('response.content_part.done'), ...at, part: TextPart, ...seq }),
  z.object({ type: z.literal('response.output_item.done'), output_index: z.number().int(), item: MessageItem, ...seq }),
  z.object({ type: z.literal('response.completed'), response: ResponseObject, ...seq }),
  z.object({ type: z.literal('response.incomplete'), response: ResponseObject, ...seq }),
  z.object({ type: z.literal('response.failed'), response: ResponseObject, ...seq }),
]);
export type ResponseStreamEvent = z.infer<typeof ResponseStreamEvent>;

// ---------------------------------------------------------------------------- conversations

export const ConversationObject = z.object({
  id: SessionId,
  object: z.literal('conversation'),
  created_at: z.number().int(),
  metadata: z.record(z.string(), z.string()),
}).meta({ id: 'ConversationObject' });
export type ConversationObject = z.infer<typeof ConversationObject>;

export const CreateConversationRequest = z.object({
  /** Absorbed at creation (one version), without generating. */
  items: nullish(z.array(InputItemIn).max(MAX_ITEMS_PER_REQUEST)),
  metadata: nullish(Metadata),
  /** mamba-serve extension: the conversation's model (default: DEFAULT_MODEL, or the only one served). */
  model: ModelId.optional(),
  /** mamba-serve extension: start from this ready cartridge's state (docs/cartridges.md). */
  cartridge: CartridgeId.optional(),
}).meta({ id: 'CreateConversationRequest' });

export const UpdateConversationRequest = z.object({ metadata: Metadata }).meta({ id: 'UpdateConversationRequest' });

export const CreateItemsRequest = z.object({ items: z.array(InputItemIn).min(1).max(MAX_ITEMS_PER_REQUEST) }).meta({ id: 'CreateItemsRequest' });

export const ConversationDeleted = z.object({ id: z.string(), object: z.literal('conversation.deleted'), deleted: z.literal(true) }).meta({ id: 'ConversationDeleted' });

export const ItemList = z.object({
  object: z.literal('list'),
  data: z.array(ConversationItem),
  first_id: z.string().nullable(),
  last_id: z.string().nullable(),
  has_more: z.boolean(),
}).meta({ id: 'ItemList' });
export type ItemList = z.infer<typeof ItemList>;

/** Query of the item listings (conversation items, a response's input items); `include` is accepted and ignored. */
export const ItemListQuery = z.object({
  limit: z.string().regex(/^\d{1,4}$/, 'must be a number from 1 to 100').transform(Number).pipe(z.number().int().min(1).max(100)).optional().default(20),
  order: z.enum(['asc', 'desc']).optional().default('desc'),
  after: z.string().max(600).optional(),
});
export type ItemListQuery = z.infer<typeof ItemListQuery>;

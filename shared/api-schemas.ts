// Wire formats of the HTTP API: every request body the edge accepts and every JSON body it
// answers, as zod schemas. Types are inferred from them; the edge validates requests with
// them and the tests parse responses with them, so the contract lives in one place.
import { z } from 'zod';
import { ERROR_STATUS, type ErrorCode } from './errors.ts';

/** Session ids may be chosen by clients; they are scoped to the tenant. */
export const SessionId = z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, 'must match [A-Za-z0-9_-]{1,128}');
export const ModelId = z.string().regex(/^[A-Za-z0-9._:/-]{1,128}$/, 'must match [A-Za-z0-9._:/-]{1,128}');
export const VersionNumber = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
/** Server-made: `cart_` + the creation time, inverted, in base 36 (ids sort newest first) + random. */
export const CartridgeId = z.string().regex(/^cart_[A-Za-z0-9_-]{16,64}$/, 'must be a cartridge id (cart_…)');

/**
 * Text that reaches the tokenizer. JSON can carry lone UTF-16 surrogates ("\ud800") that no
 * encoding of Unicode can represent; refuse them rather than feeding replacement characters.
 */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
export const Text = z.string().refine((s) => !LONE_SURROGATE.test(s), 'contains a lone surrogate (not valid Unicode)');

/** Small string → string map stored with the session and returned as given. */
export const Metadata = z
  .record(z.string().min(1).max(64), z.string().max(512))
  .refine((m) => Object.keys(m).length <= 16, 'at most 16 keys').meta({ id: 'Metadata' });

export const ChatRole = z.enum(['system', 'user', 'assistant', 'tool']);
export type ChatRole = z.infer<typeof ChatRole>;

/** A message as the worker absorbs it: one role, plain text. */
export const Message = z.object({ role: ChatRole, content: Text }).meta({ id: 'Message' });
export type Message = z.infer<typeof Message>;

// ---------------------------------------------------------------------------- sessions

export const CreateSessionRequest = z.strictObject({
  /** Client-chosen id; one is generated when absent. An existing id answers 409 session_exists. */
  id: SessionId.optional(),
  model: ModelId.optional(),
  /** A system prompt absorbed into the state at creation (the session starts at version 1). */
  system: Text.max(1_000_000).optional(),
  /** Start from a copy of another session's state (default: its head). */
  from: z.strictObject({ session_id: SessionId, version: VersionNumber.optional() }).optional(),
  /** Start from a ready cartridge's state (one state load, never a re-read of its documents); excludes `from`. */
  cartridge: CartridgeId.optional(),
  metadata: Metadata.optional(),
})
  .refine((r) => r.from === undefined || r.cartridge === undefined, { message: 'from and cartridge exclude each other', path: ['cartridge'] })
  .meta({ id: 'CreateSessionRequest' });
export type CreateSessionRequest = z.infer<typeof CreateSessionRequest>;

export const ForkSessionRequest = z.strictObject({
  version: VersionNumber.optional(),
  id: SessionId.optional(),
  metadata: Metadata.optional(),
}).meta({ id: 'ForkSessionRequest' });
export type ForkSessionRequest = z.infer<typeof ForkSessionRequest>;

export const SessionCreated = z.object({
  id: SessionId,
  model: ModelId,
  version: VersionNumber,
  tokens_absorbed: z.number().int().nonnegative(),
}).meta({ id: 'SessionCreated' });
export type SessionCreated = z.infer<typeof SessionCreated>;

export const VersionInfo = z.object({
  version: VersionNumber,
  /** The version this one was derived from (null for a fresh or imported start). */
  parent: VersionNumber.nullable(),
  tokens_absorbed: z.number().int().nonnegative(),
  /** Bytes of the stored `.mstate`; 0 for the empty state of a new session (nothing stored). */
  state_bytes: z.number().int().nonnegative(),
  created_at: z.string(),
  /** How the version came to be. */
  origin: z.enum(['created', 'turn', 'import', 'fork', 'cartridge']),
}).meta({ id: 'VersionInfo' });
export type VersionInfo = z.infer<typeof VersionInfo>;

export const SessionInfo = z.object({
  id: SessionId,
  model: ModelId,
  version: VersionNumber,
  tokens_absorbed: z.number().int().nonnegative(),
  state_bytes: z.number().int().nonnegative(),
  created_at: z.string(),
  updated_at: z.string(),
  metadata: z.record(z.string(), z.string()),
  versions: z.number().int().nonnegative(),
  /** The cartridge the session started from, or null. */
  cartridge: z.string().nullable(),
}).meta({ id: 'SessionInfo' });
export type SessionInfo = z.infer<typeof SessionInfo>;

/** A page of the tenant's sessions, newest first; `has_more`: ask again with `after` = `last_id`. */
export const SessionList = z
  .object({
    object: z.literal('list'),
    data: z.array(SessionInfo),
    first_id: SessionId.nullable(),
    last_id: SessionId.nullable(),
    has_more: z.boolean(),
  })
  .meta({ id: 'SessionList' });
export type SessionList = z.infer<typeof SessionList>;

export const SessionListQuery = z.strictObject({
  /** Sessions per answer (1-100, default 20). */
  limit: z.string().regex(/^\d{1,3}$/, 'must be a number from 1 to 100').transform(Number).pipe(z.number().int().min(1).max(100)).optional().default(20),
  /** Continue after this session (the `last_id` of the previous answer). */
  after: SessionId.optional(),
});

/** One page of a session's versions; `has_more`: ask again with `after` = the last version listed. */
export const VersionList = z.object({ session_id: SessionId, head: VersionNumber, data: z.array(VersionInfo), has_more: z.boolean() }).meta({ id: 'VersionList' });
export type VersionList = z.infer<typeof VersionList>;

const versionParam = (what: string) => z.string().regex(/^\d{1,15}$/, `must be a ${what}`).transform(Number);

export const VersionListQuery = z.strictObject({
  /** Versions per answer. */
  limit: versionParam('number from 1 to 1000').pipe(z.number().int().min(1).max(1000)).optional().default(100),
  /** `asc`: by number from version 0; `desc`: newest first. */
  order: z.enum(['asc', 'desc']).optional().default('asc'),
  /** Start after this version in the listing's order (the last one of the previous answer). */
  after: versionParam('version number').optional(),
});

export const SessionDeleted = z.object({ id: SessionId, deleted: z.literal(true), versions_removed: z.number().int() }).meta({ id: 'SessionDeleted' });

export const StateQuery = z.strictObject({ version: z.string().regex(/^\d{1,15}$/, 'must be a version number').transform(Number).optional() });

export const StateImported = z.object({
  id: SessionId,
  version: VersionNumber,
  tokens_absorbed: z.number().int().nonnegative(),
  state_bytes: z.number().int().nonnegative(),
}).meta({ id: 'StateImported' });

// ---------------------------------------------------------------------------- turns

const MaxTokens = z.number().int().min(0).max(1_000_000);
const Stop = z.union([Text.min(1).max(128), z.array(Text.min(1).max(128)).max(8)]);

/**
 * What to do when another turn already holds the session: `reject` answers 409
 * session_busy at once; `queue` waits behind it (the turn still runs on the head it finds).
 */
export const OnBusy = z.enum(['reject', 'queue']);

export const TurnRequest = z.strictObject({
  /** A user message, or messages of any roles absorbed in order before the reply. */
  input: z.union([Text.max(10_000_000), z.array(Message).min(1).max(4096)]),
  max_tokens: MaxTokens.default(256),
  temperature: z.number().min(0).max(2).default(1),
  top_p: z.number().gt(0).max(1).default(1),
  top_k: z.number().int().min(0).max(1_000_000).default(0),
  seed: z.number().int().min(0).max(2 ** 32 - 1).optional(),
  stop: Stop.optional(),
  stream: z.boolean().default(false),
  /** Run only if the session's head is this version (optimistic concurrency), else 409 version_mismatch. */
  if_version: VersionNumber.optional(),
  on_busy: OnBusy.default('reject'),
}).meta({ id: 'TurnRequest' });
export type TurnRequest = z.infer<typeof TurnRequest>;

export const FinishReason = z.enum(['stop', 'length']);
export type FinishReason = z.infer<typeof FinishReason>;

export const TurnUsage = z.object({
  /** Tokens fed into the state this turn (the new input, rendered by the chat template). */
  input_tokens: z.number().int().nonnegative(),
  output_tokens: z.number().int().nonnegative(),
  /** Tokens the state had already absorbed before the turn: reused, not recomputed. */
  cached_tokens: z.number().int().nonnegative(),
  /** Tokens the new version has absorbed in all. */
  tokens_absorbed: z.number().int().nonnegative(),
}).meta({ id: 'TurnUsage' });
export type TurnUsage = z.infer<typeof TurnUsage>;

/** Where the worker spent the turn, in milliseconds (also sent as a Server-Timing header). */
export const TurnTimings = z.object({
  /** From the edge enqueueing the turn to a worker starting it. */
  queue_ms: z.number().nonnegative(),
  /** Getting the starting state: hot cache, the store, or a fresh zero state (`state_source`). */
  load_ms: z.number().nonnegative(),
  state_source: z.enum(['cache', 'store', 'empty']),
  prefill_ms: z.number().nonnegative(),
  decode_ms: z.number().nonnegative(),
  /** Export + durable write of the new version + head advance. */
  checkpoint_ms: z.number().nonnegative(),
}).meta({ id: 'TurnTimings' });
export type TurnTimings = z.infer<typeof TurnTimings>;

export const TurnResponse = z.object({
  turn_id: z.string(),
  session_id: SessionId,
  /** The session's new head version: durable before this answer was sent. */
  version: VersionNumber,
  output: z.string(),
  finish_reason: FinishReason,
  usage: TurnUsage,
  timings: TurnTimings.optional(),
}).meta({ id: 'TurnResponse' });
export type TurnResponse = z.infer<typeof TurnResponse>;

// ---------------------------------------------------------------------------- OpenAI-compatible chat

/** OpenAI's content may be a string or an array of parts; text parts are all we serve. */
const ChatContent = z.union([
  Text,
  z.array(z.object({ type: z.literal('text'), text: Text })).min(1),
]);

export const ChatCompletionMessage = z.object({
  // `developer` is OpenAI's newer name for `system`.
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: ChatContent.nullable(),
  name: z.string().max(64).optional(),
  tool_call_id: z.string().optional(),
}).meta({ id: 'ChatCompletionMessage' });

/** Unknown fields are ignored as OpenAI-compatible servers do; fields we cannot honour are refused. */
export const ChatCompletionRequest = z.object({
  model: ModelId.optional(),
  messages: z.array(ChatCompletionMessage).min(1).max(4096),
  max_tokens: MaxTokens.nullable().optional(),
  max_completion_tokens: MaxTokens.nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  top_k: z.number().int().min(0).nullable().optional(),
  seed: z.number().int().min(0).max(2 ** 32 - 1).nullable().optional(),
  stop: Stop.nullable().optional(),
  n: z.literal(1, 'only n = 1 is supported').nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullable().optional(),
  /** The session this conversation lives in (or the X-Session-Id header). Unknown ids are created. */
  session_id: SessionId.optional(),
  /**
   * When `messages` do not extend the session's head: continue from the longest stored version
   * they do extend (the head moves there; older versions stay listed) instead of 409.
   * Also settable with the header `X-Session-Fork: true`.
   */
  fork: z.boolean().optional(),
  /**
   * `messages` are new messages to add to the session's head, whatever it already holds (not
   * the whole conversation): for clients that keep their history server-side and send one
   * message a turn. Needs a session; excludes `fork`. Also settable with `X-Session-Append: true`.
   */
  append: z.boolean().optional(),
  /**
   * Without a session: reuse the longest stored prefix of `messages` and store this chat's own
   * prefix states for later requests (default true). `false`: start from the empty state and store nothing.
   */
  prefix_cache: z.boolean().optional(),
  /**
   * Start from this ready cartridge's state: a new session (session_id) is created from it, and
   * a stateless chat runs on a copy of it. Also settable with the header `X-Cartridge-Id`.
   */
  cartridge: CartridgeId.optional(),
  on_busy: OnBusy.optional(),
}).meta({ id: 'ChatCompletionRequest' });
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

export const ChatUsage = z.object({
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int(),
  total_tokens: z.number().int(),
  prompt_tokens_details: z.object({ cached_tokens: z.number().int() }),
}).meta({ id: 'ChatUsage' });

export const ChatCompletion = z.object({
  id: z.string(),
  object: z.literal('chat.completion'),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.object({
      index: z.number().int(),
      message: z.object({ role: z.literal('assistant'), content: z.string() }),
      finish_reason: FinishReason,
      logprobs: z.null(),
    }),
  ),
  usage: ChatUsage,
  /** mamba-serve extension: the session and the version this answer produced (absent when stateless). */
  session_id: SessionId.optional(),
  session_version: VersionNumber.optional(),
}).meta({ id: 'ChatCompletion' });
export type ChatCompletion = z.infer<typeof ChatCompletion>;

export const ChatCompletionChunk = z.object({
  id: z.string(),
  object: z.literal('chat.completion.chunk'),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.object({
      index: z.number().int(),
      delta: z.object({ role: z.literal('assistant').optional(), content: z.string().optional() }),
      finish_reason: FinishReason.nullable(),
      logprobs: z.null(),
    }),
  ),
  usage: ChatUsage.nullable().optional(),
  session_id: SessionId.optional(),
  session_version: VersionNumber.optional(),
}).meta({ id: 'ChatCompletionChunk' });
export type ChatCompletionChunk = z.infer<typeof ChatCompletionChunk>;

// ---------------------------------------------------------------------------- models, health

export const ModelList = z.object({
  object: z.literal('list'),
  data: z.array(
    z.object({
      id: ModelId,
      object: z.literal('model'),
      created: z.number().int(),
      owned_by: z.string(),
      /**
       * mamba-serve extensions: bytes of one session's state, fixed whatever the history (null
       * until a worker has registered the model); each layer's type and a hybrid's attention
       * window (null for a pure Mamba model); workers alive for this model.
       */
      state_bytes: z.number().int().nullable(),
      layer_types: z.array(z.enum(['mamba', 'sliding_attention'])).nullable(),
      sliding_window: z.number().int().positive().nullable(),
      workers: z.number().int(),
    }),
  ),
}).meta({ id: 'ModelList' });

/** Every error answer: `code` is one of shared/errors.ts's, which also fixes the status. */
export const ErrorResponse = z
  .object({
    error: z.object({ code: z.enum(Object.keys(ERROR_STATUS) as [ErrorCode, ...ErrorCode[]]), message: z.string(), details: z.unknown().optional() }),
  })
  .meta({ id: 'ErrorResponse' });

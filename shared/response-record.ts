// A Responses API response as it is stored: the record that maps a response id to the session
// version it committed, written by the worker right after the commit and before the turn is
// reported done (so nothing acknowledged is lost with Redis), at
// `tenants/{tenant}/sessions/{session}/responses/{nonce}.json` (inside its session, so deleting
// the session or conversation deletes its responses). The public response object is a pure
// function of the record, so the edge's answer, a later GET and a stream's final event agree.
//
// Response ids are `resp_` + base64url(session "/" nonce): opaque to clients, found without an
// index, and looked up only under the tenant that asks (another tenant's id names nothing).
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { ModelId, SessionId, VersionNumber } from './api-schemas.ts';
import { replyItemId, type MessageItem } from './conversation-items.ts';
import type { TurnResult } from './jobs.ts';
import type { ResponseObject, ResponseStatus } from './responses-api.ts';
import { TenantId } from './session-manifest.ts';

const NONCE = /^[A-Za-z0-9_-]{16,64}$/;

export function newResponseId(session: string | null): string {
  return responseIdOf(session, randomBytes(16).toString('base64url'));
}

/** A stateless response (store: false and nothing to continue) names no session. */
export function responseIdOf(session: string | null, nonce: string): string {
  return `resp_${Buffer.from(`${session ?? ''}/${nonce}`).toString('base64url')}`;
}

export function parseResponseId(id: string): { session: string; nonce: string } | undefined {
  const m = /^resp_([A-Za-z0-9_-]{1,400})$/.exec(id);
  if (!m) return undefined;
  const [session, nonce, ...rest] = Buffer.from(m[1]!, 'base64url').toString('utf8').split('/');
  if (rest.length > 0 || !SessionId.safeParse(session).success || !NONCE.test(nonce ?? '')) return undefined;
  return { session: session!, nonce: nonce! };
}

/** What the edge knows of a response before its turn runs: carried in the turn job for the worker's record. */
export const ResponseSpec = z.object({
  id: z.string(),
  created_at: z.number().int(),
  model: ModelId,
  instructions: z.string().nullable(),
  previous_response_id: z.string().nullable(),
  /** The conversation the response continued (and moved), if it was made with one. */
  conversation: SessionId.nullable(),
  metadata: z.record(z.string(), z.string()),
  store: z.boolean(),
  temperature: z.number(),
  top_p: z.number(),
  max_output_tokens: z.number().int().nullable(),
  truncation: z.enum(['auto', 'disabled']),
  parallel_tool_calls: z.boolean(),
  tool_choice: z.enum(['none', 'auto']),
  /** Input items the request carried (the reply's item index follows them). */
  input_items: z.number().int().nonnegative(),
  /** Fingerprint of a request made with an Idempotency-Key: a retry with another body is refused. */
  request_sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
});
export type ResponseSpec = z.infer<typeof ResponseSpec>;

export const ResponseRecord = ResponseSpec.extend({
  format: z.literal(1),
  tenant: TenantId,
  session: SessionId,
  version: VersionNumber,
  base_version: VersionNumber.nullable(),
  turn_id: z.string(),
  completed_at: z.number().int(),
  status: z.enum(['completed', 'incomplete']),
  output_text: z.string(),
  usage: z.object({ fed_tokens: z.number().int(), cached_tokens: z.number().int(), output_tokens: z.number().int() }),
});
export type ResponseRecord = z.infer<typeof ResponseRecord>;

/** The record of a stored response whose turn has committed. */
export function completeRecord(tenant: string, spec: ResponseSpec, result: TurnResult): ResponseRecord {
  if (result.session === null || result.version === null) throw new Error('a stored response needs a committed version');
  return {
    ...spec,
    format: 1,
    tenant,
    session: result.session,
    version: result.version,
    base_version: result.base_version,
    turn_id: result.turn_id,
    completed_at: Math.floor(Date.now() / 1000),
    status: result.finish_reason === 'length' ? 'incomplete' : 'completed',
    output_text: result.output,
    usage: { fed_tokens: result.usage.input_tokens, cached_tokens: result.usage.cached_tokens, output_tokens: result.usage.output_tokens },
  };
}

/** A response's state as the edge sees it, whatever stage: the input of `responseObject`. */
export interface ResponseView {
  readonly spec: ResponseSpec;
  readonly status: ResponseStatus;
  /** Session of a stored response (null for store: false). */
  readonly session: string | null;
  readonly version: number | null;
  readonly turnId: string;
  readonly outputText?: string;
  readonly completedAt?: number;
  readonly usage?: ResponseRecord['usage'];
  readonly error?: { code: string; message: string };
}

export function viewOfRecord(r: ResponseRecord): ResponseView {
  return { spec: r, status: r.status, session: r.session, version: r.version, turnId: r.turn_id, outputText: r.output_text, completedAt: r.completed_at, usage: r.usage };
}

/** The view of a finished turn (stored or not). */
export function viewOfResult(spec: ResponseSpec, session: string | null, turnId: string, r: TurnResult): ResponseView {
  return {
    spec,
    status: r.finish_reason === 'length' ? 'incomplete' : 'completed',
    session,
    version: r.version,
    turnId,
    outputText: r.output,
    completedAt: Math.floor(Date.now() / 1000),
    usage: { fed_tokens: r.usage.input_tokens, cached_tokens: r.usage.cached_tokens, output_tokens: r.usage.output_tokens },
  };
}

/**
 * The id of the reply's message item. A stored response's reply is an item of its session's
 * version (conversation items list it under this id); a stateless one gets a stand-in session.
 */
export function replyId(view: Pick<ResponseView, 'session' | 'turnId' | 'spec'>): string {
  return replyItemId(view.session ?? 'stateless', view.turnId, view.spec.input_items);
}

export function replyItem(view: ResponseView, itemStatus: 'in_progress' | 'completed' | 'incomplete' = view.status === 'incomplete' ? 'incomplete' : 'completed'): MessageItem {
  return {
    id: replyId(view),
    type: 'message',
    role: 'assistant',
    status: itemStatus as MessageItem['status'],
    content: itemStatus === 'in_progress' ? [] : [{ type: 'output_text', text: view.outputText ?? '', annotations: [], logprobs: [] }],
  };
}

export function responseObject(view: ResponseView): ResponseObject {
  const { spec } = view;
  const done = view.status === 'completed' || view.status === 'incomplete';
  const u = view.usage;
  return {
    id: spec.id,
    object: 'response',
    created_at: spec.created_at,
    completed_at: done ? (view.completedAt ?? null) : null,
    status: view.status,
    background: false,
    error: view.error ?? null,
    incomplete_details: view.status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    instructions: spec.instructions,
    max_output_tokens: spec.max_output_tokens,
    metadata: spec.metadata,
    model: spec.model,
    output: done ? [replyItem(view)] : [],
    output_text: done ? (view.outputText ?? '') : '',
    parallel_tool_calls: spec.parallel_tool_calls,
    previous_response_id: spec.previous_response_id,
    conversation: spec.conversation === null ? null : { id: spec.conversation },
    reasoning: { effort: null, summary: null },
    service_tier: 'default',
    store: spec.store,
    temperature: spec.temperature,
    top_p: spec.top_p,
    text: { format: { type: 'text' } },
    tool_choice: spec.tool_choice,
    tools: [],
    truncation: spec.truncation,
    usage: u
      ? {
          input_tokens: u.fed_tokens + u.cached_tokens,
          input_tokens_details: { cached_tokens: u.cached_tokens },
          output_tokens: u.output_tokens,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: u.fed_tokens + u.cached_tokens + u.output_tokens,
        }
      : null,
    user: null,
    session_id: spec.store ? view.session : null,
    session_version: spec.store ? view.version : null,
  };
}

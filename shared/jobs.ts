// The payload of a `turn` job (edge → worker through BullMQ) and the result a worker returns.
// Both sides parse them with these schemas, so a change here is a change of the contract.
import { z } from 'zod';
import { FinishReason, Message, ModelId, SessionId, TurnTimings, TurnUsage, VersionNumber } from './api-schemas.ts';
import { CartridgeId } from './cartridges-api.ts';
import { ItemShape } from './conversation-items.ts';
import { isErrorCode, type ErrorCode } from './errors.ts';
import { ResponseSpec } from './response-record.ts';
import { TenantId } from './session-manifest.ts';

/** Job ids are turn ids; BullMQ forbids ':' in them. */
export const TurnId = z.string().regex(/^[A-Za-z0-9_-]{1,100}$/);

export const SamplingSettings = z.object({
  temperature: z.number().min(0).max(2),
  top_p: z.number().gt(0).max(1),
  top_k: z.number().int().min(0),
  /** Always set: the edge derives one from the turn id when the client gives none, so a retried turn samples the same tokens. */
  seed: z.number().int().min(0).max(2 ** 32 - 1),
});
export type SamplingSettings = z.infer<typeof SamplingSettings>;

/** Which state the turn starts from. */
export const TurnBase = z.discriminatedUnion('kind', [
  /** The head the worker finds (optionally required to be `if_version`). */
  z.object({ kind: z.literal('head'), if_version: VersionNumber.nullable() }),
  /**
   * A stored version the edge matched the conversation to. With `must_be_head` the turn fails
   * (409) if the head moved meanwhile; without, the session branches from it (a chat `fork`).
   */
  z.object({ kind: z.literal('version'), version: VersionNumber, must_be_head: z.boolean() }),
]);
export type TurnBase = z.infer<typeof TurnBase>;

export const TurnJob = z.object({
  turn_id: TurnId,
  tenant: TenantId,
  /** null: a stateless chat completion (zero state, nothing stored). */
  session: SessionId.nullable(),
  /**
   * The session's incarnation (SessionManifest.incarnation) when the turn was accepted: a turn
   * queued before a DELETE never runs in a session created again under the same id. Absent only
   * in jobs queued before it was recorded.
   */
  incarnation: z.string().regex(/^[0-9a-f]{16,64}$/).optional(),
  model: ModelId,
  /** `absorb` feeds the messages and generates nothing (a session created with a system prompt). */
  kind: z.enum(['turn', 'absorb']),
  base: TurnBase,
  /** New messages to feed, in order, on top of the base state. */
  messages: z.array(Message),
  max_tokens: z.number().int().min(0),
  sampling: SamplingSettings,
  stop: z.array(z.string()),
  /**
   * Epoch ms after which the turn does not commit: its commit refuses it instead (turn_timeout),
   * and the edge, waiting past it, has the store decide (shared/session-store.ts).
   */
  deadline_ms: z.number().int(),
  /** Whether the edge claimed the session's turn slot for this turn (the worker frees it at the end). */
  owns_turn_slot: z.boolean(),
  /** Epoch ms when the edge enqueued it: queue wait and turn latency are measured from here. */
  enqueued_at: z.number().int(),
  /**
   * Responses API instructions: fed as a system message before `messages`, unless the base
   * version has the same instructions in effect already (ManifestVersion.instructions_sha256).
   */
  instructions: z.string().nullable().optional(),
  /** How each of `messages` is listed as a conversation item (default: by its role). */
  item_shapes: z.array(ItemShape).optional(),
  /** A stored Responses API response: the worker writes its record after the commit, before `done`. */
  response: ResponseSpec.optional(),
  /** Run on a copy of the base state and commit nothing (Responses API `store: false`). */
  ephemeral: z.boolean().optional(),
  /**
   * A stateless turn that starts from this cartridge's state (not the empty one); its transcript
   * hash roots the turn's prefix-cache chain.
   */
  cartridge: z.object({ id: CartridgeId, transcript_hash: z.string().regex(/^[0-9a-f]{64}$/) }).optional(),
  /**
   * A stateless chat that starts from the longest stored prefix of its messages and stores its
   * own prefix states for later requests (shared/prefix-cache.ts).
   */
  prefix_cache: z.boolean().optional(),
  /**
   * Fingerprint of the request that made this turn (edge/idempotency.ts): a retry with the same
   * Idempotency-Key must carry the same one, or it is refused (422 idempotency_key_reused).
   */
  request_hash: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  /**
   * Set by a worker: the turn failed, but the store did not answer when asked to decide it
   * (worker/turn-runner.ts finishFailed), so nothing was reported; the next attempt decides it first.
   */
  settling: z.object({ code: z.string().regex(/^[a-z_]{1,64}$/), message: z.string() }).optional(),
});
export type TurnJob = z.infer<typeof TurnJob>;

/**
 * A `cartridge` job (same queue as the model's turns, so builds share the worker's batches):
 * build cartridge `cartridge` of `tenant` from its stored input. The record and the input are
 * in the store (shared/cartridge-store.ts); the job carries only what names them.
 */
export const CartridgeJob = z.object({
  tenant: TenantId,
  cartridge: CartridgeId,
  model: ModelId,
  /** Epoch ms after which the build gives up (CARTRIDGE_TIMEOUT_MS from when it was accepted). */
  deadline_ms: z.number().int(),
  enqueued_at: z.number().int(),
});
export type CartridgeJob = z.infer<typeof CartridgeJob>;

/** BullMQ job names on a model's queue. */
export const JOB_NAMES = { turn: 'turn', cartridge: 'cartridge' } as const;

export const TurnResult = z.object({
  turn_id: TurnId,
  session: SessionId.nullable(),
  /** The new head (null for stateless turns). */
  version: VersionNumber.nullable(),
  base_version: VersionNumber.nullable(),
  output: z.string(),
  finish_reason: FinishReason,
  usage: TurnUsage,
  timings: TurnTimings.optional(),
});
export type TurnResult = z.infer<typeof TurnResult>;

/**
 * A failed turn's reason as BullMQ stores it (`failedReason` is a string): "code: message",
 * so an idempotent replay after the token stream expired still answers with the right code.
 */
export function encodeFailure(code: ErrorCode, message: string): string {
  return `${code}: ${message}`;
}

export function decodeFailure(reason: string | undefined): { code: ErrorCode; message: string } {
  const m = /^([a-z_]+): ([\s\S]*)$/.exec(reason ?? '');
  if (m && isErrorCode(m[1])) return { code: m[1], message: m[2]! };
  return { code: 'turn_failed', message: 'the turn failed' };
}

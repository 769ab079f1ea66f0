// Turns from the edge's side: admission (worker alive or allowed to wait for one, queue depth, the session's turn slot,
// idempotency), enqueueing the job, and following its token stream to a result. Native turns,
// chat completions and session creation with a system prompt all go through here.
import { createHash, randomBytes } from 'node:crypto';
import type { Message } from '../shared/api-schemas.ts';
import type { ItemShape } from '../shared/conversation-items.ts';
import type { ResponseSpec } from '../shared/response-record.ts';
import { ApiError } from '../shared/errors.ts';
import { decodeFailure, TurnResult, type TurnBase, type TurnJob } from '../shared/jobs.ts';
import { readTurnStream } from '../shared/turn-stream.ts';
import type { EdgeDeps } from './deps.ts';

export interface TurnSubmission {
  readonly tenant: string;
  readonly session: string | null;
  readonly model: string;
  readonly kind: TurnJob['kind'];
  readonly base: TurnBase;
  readonly messages: readonly Message[];
  readonly maxTokens: number;
  readonly sampling: { temperature: number; top_p: number; top_k: number; seed?: number | undefined };
  readonly stop: readonly string[];
  readonly onBusy: 'reject' | 'queue';
  readonly idempotencyKey?: string | undefined;
  /** Responses API: instructions, how messages are listed as items, the response to record. */
  readonly instructions?: string | null;
  readonly itemShapes?: readonly ItemShape[];
  readonly response?: ResponseSpec;
  /** Run on the session's stored state without committing (store: false): claims no turn slot. */
  readonly ephemeral?: boolean;
  /** Fingerprint of the request (edge/idempotency.ts), checked against a turn its Idempotency-Key already names. */
  readonly requestHash?: string;
  /** A stateless chat on the durable prefix cache (shared/prefix-cache.ts). */
  readonly prefixCache?: boolean;
  /** A stateless turn from a ready cartridge's state (its transcript hash roots the prefix chain). */
  readonly cartridge?: { readonly id: string; readonly transcript_hash: string };
}

/** What names an existing turn: an Idempotency-Key, on a session (or none), for a model's queue. */
export interface ReplayKey {
  readonly tenant: string;
  readonly session: string | null;
  readonly model: string;
  readonly idempotencyKey: string | undefined;
  readonly requestHash?: string | undefined;
}

export interface SubmittedTurn {
  readonly turnId: string;
  readonly model: string;
  readonly deadlineMs: number;
  /** An Idempotency-Key named a turn that already exists: this is that turn. */
  readonly replayed: boolean;
}

export type TurnOutput =
  | { readonly type: 'text'; readonly text: string; readonly id: string }
  | { readonly type: 'done'; readonly result: TurnResult; readonly id: string };

/** How long past its deadline the edge still waits for a turn's final event (the worker stops committing at the deadline). */
const DEADLINE_GRACE_MS = 2_000;

export function turnIdFor(tenant: string, session: string | null, idempotencyKey: string | undefined): string {
  if (!idempotencyKey) return `t_${randomBytes(16).toString('base64url')}`;
  const digest = createHash('sha256').update(`${tenant}\0${session ?? ''}\0${idempotencyKey}`).digest('base64url');
  return `k_${digest.slice(0, 40)}`;
}

/** A seed derived from the turn id: a retried attempt samples exactly the tokens the first one did. */
export function seedFor(turnId: string): number {
  return createHash('sha256').update(turnId).digest().readUInt32LE(0);
}

function compareStreamIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split('-').map(Number);
  const [bm = 0, bs = 0] = b.split('-').map(Number);
  return am - bm || as - bs;
}

export class TurnService {
  constructor(private readonly deps: EdgeDeps) {}

  /**
   * The turn an Idempotency-Key already names, while its job is retained (TURN_RETENTION_S):
   * routes look it up before checking the request against the session's current head, which
   * the turn itself has moved (a retried chat would otherwise no longer "extend the head").
   * The same key with another request is 422 idempotency_key_reused.
   */
  async replay(k: ReplayKey): Promise<SubmittedTurn | undefined> {
    if (!k.idempotencyKey) return undefined;
    const turnId = turnIdFor(k.tenant, k.session, k.idempotencyKey);
    const existing = await this.deps.queues.getJob(k.model, turnId);
    if (!existing) return undefined;
    const stored = existing.data.request_hash;
    if (k.requestHash !== undefined && stored !== undefined && stored !== k.requestHash) {
      throw new ApiError(
        'idempotency_key_reused',
        `Idempotency-Key "${k.idempotencyKey}" was already used for a different request (turn ${turnId}); use a new key for a new request`,
        { details: { turn_id: turnId } },
      );
    }
    return { turnId, model: k.model, deadlineMs: existing.data.deadline_ms, replayed: true };
  }

  async submit(s: TurnSubmission): Promise<SubmittedTurn> {
    const { config, queues, leases, served } = this.deps;
    const turnId = turnIdFor(s.tenant, s.session, s.idempotencyKey);
    const replayed = await this.replay({ tenant: s.tenant, session: s.session, model: s.model, idempotencyKey: s.idempotencyKey, requestHash: s.requestHash });
    if (replayed) return replayed;
    // With QUEUE_WITHOUT_WORKERS the turn may wait for a worker to start (it waits at most
    // TURN_TIMEOUT_MS; the worker refuses it after its deadline).
    await served.assertRunnable(s.model);
    const depth = await queues.depth(s.model);
    if (depth >= config.MAX_QUEUE_DEPTH) {
      throw new ApiError('queue_full', `${depth} turns are waiting for model ${s.model} (limit ${config.MAX_QUEUE_DEPTH}); retry later`, {
        retryAfterSeconds: config.RETRY_AFTER_S,
      });
    }
    const now = Date.now();
    const deadlineMs = now + config.TURN_TIMEOUT_MS;
    let ownsSlot = false;
    if (s.session !== null && !s.ephemeral) {
      const claim = await leases.claimTurn(s.tenant, s.session, turnId, config.TURN_TIMEOUT_MS + 5_000);
      if (claim.claimed) ownsSlot = true;
      else if (s.onBusy === 'reject') {
        throw new ApiError('session_busy', `session ${s.session} is running another turn (${claim.holder}); retry when it ends, or send on_busy: "queue"`, {
          details: { turn_id: claim.holder },
        });
      }
    }
    const job: TurnJob = {
      turn_id: turnId,
      tenant: s.tenant,
      session: s.session,
      model: s.model,
      kind: s.kind,
      base: s.base,
      messages: [...s.messages],
      max_tokens: s.maxTokens,
      sampling: {
        temperature: s.sampling.temperature,
        top_p: s.sampling.top_p,
        top_k: s.sampling.top_k,
        seed: s.sampling.seed ?? seedFor(turnId),
      },
      stop: [...s.stop],
      deadline_ms: deadlineMs,
      owns_turn_slot: ownsSlot,
      enqueued_at: now,
      ...(s.instructions != null ? { instructions: s.instructions } : {}),
      ...(s.itemShapes ? { item_shapes: [...s.itemShapes] } : {}),
      ...(s.response ? { response: s.response } : {}),
      ...(s.ephemeral ? { ephemeral: true } : {}),
      ...(s.requestHash ? { request_hash: s.requestHash } : {}),
      ...(s.prefixCache && s.session === null ? { prefix_cache: true } : {}),
      ...(s.cartridge && s.session === null ? { cartridge: { id: s.cartridge.id, transcript_hash: s.cartridge.transcript_hash } } : {}),
    };
    try {
      await queues.of(s.model).add('turn', job, {
        jobId: turnId,
        attempts: config.TURN_ATTEMPTS,
        backoff: { type: 'exponential', delay: config.TURN_BACKOFF_MS },
        removeOnComplete: { age: config.TURN_RETENTION_S },
        removeOnFail: { age: config.TURN_RETENTION_S },
      });
    } catch (e) {
      if (ownsSlot && s.session !== null) await leases.releaseTurn(s.tenant, s.session, turnId).catch(() => {});
      throw e;
    }
    return { turnId, model: s.model, deadlineMs, replayed: false };
  }

  /**
   * The turn's reply as it is generated, then its result. Text is deduplicated across attempts:
   * a retried attempt (same seed, same tokens) is only forwarded past what was already sent.
   * `afterId` (an SSE Last-Event-ID) skips what the client already has.
   */
  async *follow(turn: SubmittedTurn, options: { afterId?: string | undefined; signal?: AbortSignal } = {}): AsyncGenerator<TurnOutput> {
    const { redis, keys, queues } = this.deps;
    const finished = await this.finishedResult(turn);
    // A finished turn is replayed from its token stream while that exists (exact event ids, so
    // Last-Event-ID works), else from the stored result.
    if (finished && !(await redis.exists(keys.turnStream(turn.turnId)))) {
      if (finished.output && !options.afterId) yield { type: 'text', text: finished.output, id: '0-1' };
      yield { type: 'done', result: finished, id: '0-2' };
      return;
    }
    let sent = '';
    let attempt = -1;
    let attemptText = '';
    const visible = (id: string) => !options.afterId || compareStreamIds(id, options.afterId) > 0;
    for await (const { id, event } of readTurnStream(redis, keys.turnStream(turn.turnId), {
      deadlineMs: turn.deadlineMs + DEADLINE_GRACE_MS,
      ...(options.signal ? { signal: options.signal } : {}),
    })) {
      if (event.type === 'start' || event.type === 'token') {
        if (event.attempt !== attempt) {
          attempt = event.attempt;
          attemptText = '';
        }
      }
      if (event.type === 'token') {
        attemptText += event.text;
        const consistent = attemptText.length <= sent.length ? sent.startsWith(attemptText) : attemptText.startsWith(sent);
        if (!consistent) {
          throw new ApiError('turn_failed', 'the turn was retried after a worker fault and the retry produced different text; its result is in the session, re-read it');
        }
        if (attemptText.length > sent.length) {
          const delta = attemptText.slice(sent.length);
          sent = attemptText;
          if (visible(id)) yield { type: 'text', text: delta, id };
        }
      } else if (event.type === 'done') {
        const rest = event.result.output.startsWith(sent) ? event.result.output.slice(sent.length) : '';
        if (rest && visible(id)) yield { type: 'text', text: rest, id };
        yield { type: 'done', result: event.result, id };
        return;
      } else if (event.type === 'error' && event.final) {
        throw new ApiError(event.code, event.message);
      }
    }
    if (options.signal?.aborted) return;
    // The stream ended without a final event: the turn finished while we were not looking
    // (its stream trimmed or expired), or it ran out of time.
    const late = await this.finishedResult(turn);
    if (late) {
      yield { type: 'done', result: late, id: '0-2' };
      return;
    }
    const job = await queues.getJob(turn.model, turn.turnId);
    if (!job) throw new ApiError('turn_failed', `turn ${turn.turnId} is no longer known`);
    throw new ApiError('turn_timeout', `the turn did not finish within ${this.deps.config.TURN_TIMEOUT_MS} ms`);
  }

  /** Gather the whole turn. */
  async result(turn: SubmittedTurn, signal?: AbortSignal): Promise<TurnResult> {
    for await (const out of this.follow(turn, signal ? { signal } : {})) if (out.type === 'done') return out.result;
    throw new ApiError('turn_timeout', 'the client went away before the turn finished');
  }

  /** The stored result of a turn that has already completed or failed (idempotent replays, expired streams). */
  private async finishedResult(turn: SubmittedTurn): Promise<TurnResult | undefined> {
    const outcome = await this.deps.queues.outcome(turn.model, turn.turnId);
    if (outcome?.state === 'completed') return TurnResult.parse(outcome.returnvalue);
    if (outcome?.state === 'failed') {
      const { code, message } = decodeFailure(outcome.failedReason);
      throw new ApiError(code, message);
    }
    return undefined;
  }
}

// Turns from the edge's side: admission (worker alive or allowed to wait for one, queue depth, the session's turn slot,
// idempotency), enqueueing the job, and following its token stream to a result. Native turns,
// chat completions and session creation with a system prompt all go through here.
//
// What a client is told about a session turn is its one outcome, as the store decides it
// (shared/session-store.ts): a result only once it is committed, a failure only once the
// store records the turn refused (the worker's final error, or this edge's own decision at
// the deadline or when the queue lost the job), and, when the store cannot be asked, 503
// `unavailable` saying the outcome is not known yet, never a failure that may be false.
import { createHash, randomBytes } from 'node:crypto';
import type { Message } from '../shared/api-schemas.ts';
import type { ItemShape } from '../shared/conversation-items.ts';
import { completeRecord, type ResponseSpec } from '../shared/response-record.ts';
import { ResponseStore } from '../shared/response-store.ts';
import { ApiError } from '../shared/errors.ts';
import { decodeFailure, TurnResult, type TurnBase, type TurnJob } from '../shared/jobs.ts';
import type { TurnOutcome } from '../shared/session-store.ts';
import { StoreUnavailableError } from '../shared/state-store.ts';
import { answerOf, outcomeUnknown, type SessionTurnRef } from '../shared/turn-outcome.ts';
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
  /** The session's incarnation as the request found it (SessionManifest.incarnation): required with a session. */
  readonly incarnation?: string | undefined;
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
  /** A session turn (not ephemeral): where its outcome is decided. */
  readonly ref?: SessionTurnRef | undefined;
  /** Its outcome, already found in the store (a replay whose job Redis no longer has). */
  readonly decided?: TurnOutcome | undefined;
  /** The request's fingerprint (edge/idempotency.ts), kept with a refusal this edge decides. */
  readonly requestHash?: string | undefined;
}

export type TurnOutput =
  /** `id`: the characters of the reply sent through this piece, what a client resumes after (SSE Last-Event-ID). */
  | { readonly type: 'text'; readonly text: string; readonly id: string }
  | { readonly type: 'done'; readonly result: TurnResult; readonly id: string };

/** How long past its deadline the edge waits for a turn's final event before it has the store decide. */
const DEADLINE_GRACE_MS = 2_000;
/** How often a quiet stream's job is looked at: a turn that ended without a final event (its job failed or lost) is noticed this soon. */
const JOB_CHECK_MS = 2_000;

export function turnIdFor(tenant: string, session: string | null, idempotencyKey: string | undefined): string {
  if (!idempotencyKey) return `t_${randomBytes(16).toString('base64url')}`;
  const digest = createHash('sha256').update(`${tenant}\0${session ?? ''}\0${idempotencyKey}`).digest('base64url');
  return `k_${digest.slice(0, 40)}`;
}

/** A seed derived from the turn id: a retried attempt samples exactly the tokens the first one did. */
export function seedFor(turnId: string): number {
  return createHash('sha256').update(turnId).digest().readUInt32LE(0);
}

export class TurnService {
  constructor(private readonly deps: EdgeDeps) {}

  /**
   * The turn an Idempotency-Key already names: its job while retained (TURN_RETENTION_S), else,
   * for a session turn, its outcome in the store (Redis may have lost the job). Routes look it
   * up before checking the request against the session's current head, which the turn itself
   * has moved (a retried chat would otherwise no longer "extend the head"). The same key with
   * another request is 422 idempotency_key_reused.
   */
  async replay(k: ReplayKey): Promise<SubmittedTurn | undefined> {
    if (!k.idempotencyKey) return undefined;
    const turnId = turnIdFor(k.tenant, k.session, k.idempotencyKey);
    const reused = (stored: string | undefined) => {
      if (k.requestHash !== undefined && stored !== undefined && stored !== k.requestHash) {
        throw new ApiError(
          'idempotency_key_reused',
          `Idempotency-Key "${k.idempotencyKey}" was already used for a different request (turn ${turnId}); use a new key for a new request`,
          { details: { turn_id: turnId } },
        );
      }
    };
    const existing = await this.deps.queues.getJob(k.model, turnId);
    if (existing) {
      reused(existing.data.request_hash);
      const d = existing.data;
      const ref = d.session !== null && !d.ephemeral ? { tenant: d.tenant, session: d.session, turnId, incarnation: d.incarnation } : undefined;
      return { turnId, model: k.model, deadlineMs: d.deadline_ms, replayed: true, ref, requestHash: d.request_hash };
    }
    if (k.session === null) return undefined;
    const decided = await this.deps.sessions.findTurn(k.tenant, k.session, { id: turnId }, { searchPages: true });
    if (!decided || decided.state === 'gone') return undefined;
    reused(decided.state === 'committed' ? undefined : decided.refusal.request_sha256);
    if (decided.state === 'committed') {
      const items = decided.entry.items ? await this.deps.sessions.readItems(k.tenant, k.session, decided.entry.version) : null;
      reused(items?.result?.request_sha256);
    }
    return { turnId, model: k.model, deadlineMs: Date.now(), replayed: true, ref: { tenant: k.tenant, session: k.session, turnId }, decided };
  }

  async submit(s: TurnSubmission): Promise<SubmittedTurn> {
    const { config, queues, leases, served } = this.deps;
    const turnId = turnIdFor(s.tenant, s.session, s.idempotencyKey);
    const replayed = await this.replay({ tenant: s.tenant, session: s.session, model: s.model, idempotencyKey: s.idempotencyKey, requestHash: s.requestHash });
    if (replayed) return replayed;
    if (s.session !== null && !s.ephemeral && s.incarnation === undefined) throw new Error('a session turn is submitted with the incarnation it was accepted for');
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
      ...(s.incarnation !== undefined && s.session !== null ? { incarnation: s.incarnation } : {}),
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
    const ref = s.session !== null && !s.ephemeral ? { tenant: s.tenant, session: s.session, turnId, incarnation: s.incarnation } : undefined;
    return { turnId, model: s.model, deadlineMs, replayed: false, ref, requestHash: s.requestHash };
  }

  /**
   * The turn's reply as it is generated, then its result. The stream's text only grows (every
   * attempt continues what earlier ones streamed: shared/turn-stream.ts), so it is forwarded as
   * it comes, each piece with the count of characters sent through it as its id;
   * `afterChars` (an SSE Last-Event-ID) skips what the client already has.
   */
  async *follow(turn: SubmittedTurn, options: { afterChars?: number | undefined; signal?: AbortSignal } = {}): AsyncGenerator<TurnOutput> {
    const { redis, keys } = this.deps;
    const after = options.afterChars ?? 0;
    /** The rest of a finished reply, past what was already sent, then `done`. */
    const finish = function* (result: TurnResult, sent: string): Generator<TurnOutput> {
      const from = Math.max(after, sent.length);
      if (result.output.length > from && result.output.startsWith(sent)) yield { type: 'text', text: result.output.slice(from), id: String(result.output.length) };
      yield { type: 'done', result, id: String(result.output.length) };
    };
    if (turn.decided) {
      yield* finish(await this.answerDecided(turn, turn.decided), '');
      return;
    }
    // A finished turn is replayed from its token stream while that exists (the same pieces),
    // else from the stored result.
    const finished = await this.finishedResult(turn);
    if (finished && !(await redis.exists(keys.turnStream(turn.turnId)))) {
      yield* finish(finished, '');
      return;
    }
    let sent = '';
    let ended: TurnResult | undefined;
    const ticks = readTurnStream(redis, keys.turnStream(turn.turnId), {
      deadlineMs: turn.deadlineMs + DEADLINE_GRACE_MS,
      idleMs: JOB_CHECK_MS,
      // A quiet stream: the job may have ended without a final event (failed by its queue, lost
      // with Redis). Looked at here so the client hears of it now, not at the deadline.
      onIdle: async () => !(await this.deps.queues.getJob(turn.model, turn.turnId)) || (ended = await this.finishedResult(turn)) !== undefined,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    for await (const { event } of ticks) {
      if (event.type === 'token') {
        const before = sent.length;
        sent += event.text;
        if (sent.length > after) yield { type: 'text', text: sent.slice(Math.max(before, after)), id: String(sent.length) };
      } else if (event.type === 'done') {
        if (!event.result.output.startsWith(sent)) {
          // Cannot happen while attempts continue each other's text; said loudly if it ever does.
          this.deps.log.error('a turn committed a reply that does not extend what its stream sent', { turn: turn.turnId });
        }
        yield* finish(event.result, sent);
        return;
      } else if (event.type === 'error' && event.final) {
        throw new ApiError(event.code, event.message);
      }
    }
    if (options.signal?.aborted) return;
    const late = ended ?? (await this.finishedResult(turn));
    if (late) {
      yield* finish(late, sent);
      return;
    }
    // No final event and no finished job: past the deadline, or the job is gone (Redis lost it).
    yield* finish(await this.decide(turn), sent);
  }

  /** Gather the whole turn. */
  async result(turn: SubmittedTurn, signal?: AbortSignal): Promise<TurnResult> {
    for await (const out of this.follow(turn, signal ? { signal } : {})) if (out.type === 'done') return out.result;
    throw new ApiError('turn_timeout', 'the client went away before the turn finished');
  }

  /**
   * The turn ran out of time, or its job is gone: the store decides (session turns), refusing
   * it unless it committed; the answer is that decision. Its turn slot is freed when refused,
   * so the session takes its next turn at once.
   */
  private async decide(turn: SubmittedTurn): Promise<TurnResult> {
    const { config, queues, sessions, leases } = this.deps;
    const job = await queues.getJob(turn.model, turn.turnId);
    const gone = !job;
    const why = gone
      ? { code: 'turn_failed' as const, message: `turn ${turn.turnId} was lost by the queue (Redis lost its data) before it finished; it was not saved` }
      : { code: 'turn_timeout' as const, message: `the turn did not finish within ${config.TURN_TIMEOUT_MS} ms; it was not saved` };
    const ref = turn.ref;
    if (!ref) throw new ApiError(why.code, gone ? `turn ${turn.turnId} was lost by the queue before it finished` : `the turn did not finish within ${config.TURN_TIMEOUT_MS} ms`);
    let outcome: TurnOutcome;
    try {
      const incarnation = ref.incarnation ?? (await sessions.read(ref.tenant, ref.session))?.manifest.incarnation;
      const refusal = { ...why, request_sha256: turn.requestHash };
      outcome = incarnation === undefined ? { state: 'gone' } : await sessions.settleTurn(ref.tenant, ref.session, { id: ref.turnId, incarnation }, refusal);
    } catch (e) {
      if (e instanceof StoreUnavailableError) throw outcomeUnknown(turn.turnId, e);
      throw e;
    }
    if (outcome.state !== 'committed') await leases.releaseTurn(ref.tenant, ref.session, ref.turnId).catch(() => {});
    const result = await this.answerDecided(turn, outcome);
    // A Responses API turn's record maps the response id to its version; the worker that
    // committed may have died before writing it (kept if it did).
    const spec = job?.data.response;
    if (spec) await new ResponseStore(sessions.objects).write(completeRecord(ref.tenant, spec, result)).catch((e: unknown) => this.deps.log.warn('response record not written', { turn: turn.turnId, error: String(e) }));
    return result;
  }

  private async answerDecided(turn: SubmittedTurn, outcome: TurnOutcome): Promise<TurnResult> {
    try {
      return await answerOf(this.deps.sessions, turn.ref!, outcome);
    } catch (e) {
      if (e instanceof StoreUnavailableError) throw outcomeUnknown(turn.turnId, e);
      throw e;
    }
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

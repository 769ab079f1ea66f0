// One turn on the worker, start to durable finish:
//   lease (one writer per session, fenced) → manifest → starting state (hot cache, store, or
//   empty) → prefill the new messages → batched decode, tokens to the turn's Redis Stream →
//   reply suffix → export + commit the new version (file, then head) → `done`.
// Nothing is reported done before the version is durable and the head has advanced. Any
// failure before that leaves the session at its last version; the state handle that was
// being advanced is freed, never cached.
//
// Exactly once: a session turn's outcome is decided by the store (session-store.ts: its commit
// or its refusal, whichever replaces the manifest first). An attempt that finds it decided
// reports that outcome and runs nothing; a failure is reported only through finishFailed,
// which has the store decide first (and reports the commit instead if one won). An attempt
// that may have an earlier attempt still running somewhere records its fence in the store
// before it generates anything, so that earlier attempt can no longer commit; and it continues
// the reply the earlier attempts streamed (shared/turn-stream.ts) instead of starting over.
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Message } from '../shared/api-schemas.ts';
import type { WorkerConfig } from '../shared/config.ts';
import type { ErrorCode } from '../shared/errors.ts';
import { buildItemsFile } from '../shared/conversation-items.ts';
import { type TurnJob, type TurnResult } from '../shared/jobs.ts';
import type { Logger } from '../shared/logger.ts';
import { countTurnOnce, MetricsBatch, METRICS } from '../shared/metrics.ts';
import { StateFormatError } from '../shared/mstate.ts';
import type { RedisKeys } from '../shared/redis-keys.ts';
import { completeRecord } from '../shared/response-record.ts';
import { ResponseStore } from '../shared/response-store.ts';
import { findVersion, type ManifestVersion, type SessionManifest } from '../shared/session-manifest.ts';
import { FENCE_GAP_AFTER_REDIS_LOSS, isLease, type SessionLease, type SessionLeases } from '../shared/session-lease.ts';
import type { CartridgeStore } from '../shared/cartridge-store.ts';
import { CommitConflictError, FencedOutError, recordedOutcome, TurnSettledError, type SessionStore, type TurnOutcome } from '../shared/session-store.ts';
import { EMPTY_TRANSCRIPT_ROOT, extendTranscript } from '../shared/transcript-hash.ts';
import { committedResult, failureOf, type SessionTurnRef } from '../shared/turn-outcome.ts';
import { TurnStreamWriter, type StreamedSoFar } from '../shared/turn-stream.ts';
import { EngineError, type StateHandle } from './engine/engine.ts';
import type { FaultPoints } from './fault-points.ts';
import { Sampler } from './generate/sampling.ts';
import { SequenceDecoder } from './generate/sequence.ts';
import type { ChatMessage } from './model/chat-template.ts';
import { WorkAborted, type BatchScheduler } from './scheduler/batch-scheduler.ts';
import type { PrefixStates } from './prefix-states.ts';
import type { ServingModel } from './serving-model.ts';
import { cartridgeCacheKey, stateCacheKey, type StateCache } from './state-cache.ts';

/** A turn that cannot succeed by retrying (bad input, conflict, timeout): reported with its code. */
export class TurnRejected extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'TurnRejected';
  }
}

/** The session's lease is held by another turn: try again shortly (not a failed attempt). */
export class SessionLeaseBusy extends Error {
  constructor(readonly holder: string) {
    super(`session lease held by ${holder}`);
    this.name = 'SessionLeaseBusy';
  }
}

/** One attempt of a turn: a unique id (its stream writes), and whether an earlier attempt of the turn was started. */
export interface TurnAttempt {
  readonly id: string;
  readonly retried: boolean;
}

/** The worker is shutting down: the turn goes back to the queue untouched. */
export class TurnReleased extends Error {
  constructor() {
    super('worker shutting down; turn released');
    this.name = 'TurnReleased';
  }
}

export interface TurnRunnerDeps {
  readonly model: ServingModel;
  readonly scheduler: BatchScheduler;
  readonly cache: StateCache;
  readonly sessions: SessionStore;
  readonly cartridges: CartridgeStore;
  readonly leases: SessionLeases;
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly config: Pick<WorkerConfig, 'MAX_INPUT_TOKENS_PER_TURN' | 'MAX_TOKENS_PER_TURN' | 'TURN_RETENTION_S'>;
  readonly workerId: string;
  readonly log: Logger;
  /** Stateless chats' prefix states (shared/prefix-cache.ts); absent: stateless chats start empty. */
  readonly prefixes?: PrefixStates;
  /** Crash points of the fault suite (FAULT_CRASH_POINTS); absent in normal operation. */
  readonly faults?: FaultPoints;
}

/** How long a turn's stream outlives its deadline (late readers, Last-Event-ID resumes). */
const STREAM_LINGER_MS = 5 * 60_000;

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** The chat template knows system, user and assistant; a tool result is read as a user message. */
export function templateMessage(m: Message): ChatMessage {
  return { role: m.role === 'tool' ? 'user' : m.role, content: m.content };
}

interface StartingState {
  readonly state: StateHandle;
  readonly base: ManifestVersion | null;
  readonly source: 'cache' | 'store' | 'empty';
  /** A stateless chat on the prefix cache: how many of the job's messages the state holds, and the hash chain. */
  readonly prefix?: { readonly messages: number; readonly hashes: readonly string[] };
}

export class TurnRunner {
  private readonly responses: ResponseStore;

  constructor(private readonly deps: TurnRunnerDeps) {
    this.responses = new ResponseStore(deps.sessions.objects);
  }

  /**
   * Run `job` as `attempt`; `shutdown` aborts it for release back to the queue. Throws
   * TurnRejected (fails the turn: the consumer then calls finishFailed), TurnSettledError (the
   * store already decided it failed), SessionLeaseBusy (delay and retry), TurnReleased, or any
   * other error (transient: BullMQ retries with backoff).
   */
  async run(job: TurnJob, attempt: TurnAttempt, shutdown: AbortSignal): Promise<TurnResult> {
    const { deps } = this;
    const stream = this.streamOf(job, attempt.id);
    const startedAt = Date.now();
    if (startedAt > job.deadline_ms) throw new TurnRejected('turn_timeout', 'the turn waited in the queue past its deadline');

    let lease: SessionLease | undefined;
    let stopKeepAlive = () => {};
    const abort = new AbortController();
    const onShutdown = () => abort.abort(new TurnReleased());
    shutdown.addEventListener('abort', onShutdown);
    const deadlineTimer = setTimeout(() => abort.abort(new TurnRejected('turn_timeout', 'the turn ran past its deadline')), job.deadline_ms - startedAt);
    let owned: StateHandle | undefined;
    // The client may send its next turn the moment it sees `done`: lease and turn slot must be
    // free by then, so they are let go before it is written (and again, harmlessly, in finally).
    const releaseSession = async () => {
      stopKeepAlive();
      if (lease) await deps.leases.release(lease).catch(() => {});
      lease = undefined;
      await this.freeTurnSlot(job);
    };
    try {
      let manifest: SessionManifest | null = null;
      let streamed: StreamedSoFar;
      if (job.session !== null && job.ephemeral) {
        // Reads a stored version and writes nothing: no lease, no turn slot.
        manifest = (await deps.sessions.read(job.tenant, job.session))?.manifest ?? null;
        this.checkSession(job, manifest);
        streamed = await stream.claim();
      } else if (job.session !== null) {
        const acquired = await this.acquireLease(job);
        lease = acquired.lease;
        deps.faults?.reach('after-lease');
        stopKeepAlive = deps.leases.keepAlive(lease, (why) => abort.abort(new Error(`session lease lost (${why})`)));
        manifest = (await deps.sessions.read(job.tenant, job.session))?.manifest ?? null;
        this.checkSession(job, manifest);
        const ref = this.refOf(job, manifest!);
        // Decided already (an earlier attempt committed and died before reporting; or the turn
        // was refused, e.g. at its deadline by the edge): report that, run nothing.
        const decided = recordedOutcome(manifest!, { id: job.turn_id, incarnation: ref.incarnation! });
        if (decided) return await this.reportDecided(job, attempt.id, decided, releaseSession);
        streamed = await stream.claim();
        if (streamed.earlier || attempt.retried || acquired.counterWasFresh) {
          // An earlier attempt may still be running somewhere (its worker frozen past its
          // lease, or Redis restarted under it). Our fence in the store first: from here on
          // it cannot commit, so what we generate is the one reply.
          const claimed = await deps.sessions.claimFence(job.tenant, job.session, lease.fence).catch((e: unknown) => {
            if (e instanceof FencedOutError) throw new Error(`lost the session to a newer lease before starting: ${e.message}`);
            throw e;
          });
          manifest = claimed?.manifest ?? null;
          this.checkSession(job, manifest);
          const now = recordedOutcome(manifest!, { id: job.turn_id, incarnation: ref.incarnation! });
          if (now) return await this.reportDecided(job, attempt.id, now, releaseSession);
        }
      } else {
        streamed = await stream.claim();
      }

      const loadStart = performance.now();
      const start = await this.startingState(job, manifest);
      const timings = {
        queue_ms: Math.max(0, startedAt - job.enqueued_at),
        load_ms: performance.now() - loadStart,
        state_source: start.source,
        prefill_ms: 0,
        decode_ms: 0,
        checkpoint_ms: 0,
      };
      owned = start.state;
      const cachedTokens = start.state.tokensAbsorbed;

      const { template, tokenizer } = deps.model;
      // Instructions already in effect on the base state (the Agents SDK sends its agent's with
      // every request) are not fed again: the state holds them.
      const instructions = job.instructions ?? null;
      const instructionsHash = instructions === null ? start.base?.instructions_sha256 : sha256(instructions);
      const feedInstructions = instructions !== null && start.base?.instructions_sha256 !== instructionsHash;
      const newMessages = start.prefix ? job.messages.slice(start.prefix.messages) : job.messages;
      const fed: Message[] = [...(feedInstructions ? [{ role: 'system' as const, content: instructions }] : []), ...newMessages];
      const messageIds = template.encodeMessages(fed.map(templateMessage));
      const promptIds = job.kind === 'turn' ? template.generationPromptIds : [];
      const inputIds = [...messageIds, ...promptIds];
      if (inputIds.length > deps.config.MAX_INPUT_TOKENS_PER_TURN) {
        throw new TurnRejected('input_too_long', `the input is ${inputIds.length} tokens; this server takes at most ${deps.config.MAX_INPUT_TOKENS_PER_TURN} per turn (MAX_INPUT_TOKENS_PER_TURN)`);
      }
      const maxTokens = Math.min(job.max_tokens, deps.config.MAX_TOKENS_PER_TURN);
      const metrics = new MetricsBatch();
      const labels = { model: deps.model.id };
      metrics.observe(METRICS.queueWaitSeconds, labels, (startedAt - job.enqueued_at) / 1000);
      metrics.inc(METRICS.stateLoads, { ...labels, source: start.source });

      let output = '';
      let finishReason: TurnResult['finish_reason'] = 'length';
      let outputTokens = 0;
      let firstTokenAt: number | undefined;
      let streamWrites: Promise<unknown> = Promise.resolve();

      let logits: Float32Array | undefined;
      const prefillStart = performance.now();
      // Prefix states being written (stateless chats): all durable before `done`.
      const prefixWrites: Array<() => Promise<void>> = [];
      const prefixes = start.prefix ? deps.prefixes : undefined;
      if (start.prefix && prefixes && messageIds.length > 0) {
        // The state after the request's messages, before the generation prompt: what the same
        // history sent again (or a regenerated reply) starts from.
        await deps.scheduler.prefill(start.state, Int32Array.from(messageIds), abort.signal);
        if (prefixes.worthKeeping(start.state.tokensAbsorbed)) {
          const hash = start.prefix.hashes[job.messages.length]!;
          prefixWrites.push(await prefixes.save(job.tenant, hash, start.state));
          prefixes.keepHot(job.tenant, hash, await deps.model.engine.cloneState(start.state));
        }
        if (promptIds.length > 0) logits = await deps.scheduler.prefill(start.state, Int32Array.from(promptIds), abort.signal);
      } else if (inputIds.length > 0) {
        logits = await deps.scheduler.prefill(start.state, Int32Array.from(inputIds), abort.signal);
      }
      timings.prefill_ms = performance.now() - prefillStart;
      metrics.inc(METRICS.prefillTokens, labels, inputIds.length);
      if (job.kind === 'turn') {
        if (!logits) throw new Error('a turn always feeds its generation prompt');
        const decoder = new SequenceDecoder(
          tokenizer,
          new Sampler({ temperature: job.sampling.temperature, topP: job.sampling.top_p, topK: job.sampling.top_k, seed: job.sampling.seed }, tokenizer.vocabSize),
          // The tokens earlier attempts streamed are this attempt's first tokens too.
          { maxTokens, stop: [...template.stopStrings, ...job.stop], stopTokenIds: template.stopTokenIds, forced: streamed.ids },
        );
        let streamedChars = streamed.text.length;
        let idsStreamed = streamed.ids.length;
        let ownsStream = true;
        const outcome = await deps.scheduler.decode(
          start.state,
          logits,
          decoder,
          () => {
            // The text a step released, past what earlier attempts streamed (replayed, not
            // sent again). The final step's text goes out with `done` only: an attempt that
            // dies before committing must not have streamed what the next one might not end with.
            if (decoder.finishReason !== undefined || !ownsStream) return;
            const all = decoder.text;
            if (all.length <= streamedChars) return;
            const text = all.slice(streamedChars);
            const ids = decoder.tokenIds.slice(idsStreamed);
            streamedChars = all.length;
            idsStreamed = decoder.tokenIds.length;
            firstTokenAt ??= Date.now();
            deps.faults?.reach('mid-decode');
            // Ordered, not awaited per token; a lost write costs the client a late token (the
            // `done` event carries the whole output), never the turn.
            streamWrites = streamWrites
              .then(async () => {
                if (ownsStream && !(await stream.token(text, ids))) {
                  // A later attempt took the turn over (this one's worker stalled): stop writing.
                  ownsStream = false;
                  abort.abort(new Error('a later attempt of the turn has taken its stream over'));
                }
              })
              .catch((e) => deps.log.warn('stream write failed', { turn: job.turn_id, error: String(e) }));
          },
          abort.signal,
        );
        timings.decode_ms = outcome.seconds * 1000;
        output = outcome.text;
        finishReason = outcome.finishReason;
        outputTokens = outcome.generatedTokens;
        metrics.inc(METRICS.generatedTokens, labels, outputTokens).inc(METRICS.decodeSeconds, labels, outcome.seconds);
        if (firstTokenAt !== undefined) metrics.observe(METRICS.ttftSeconds, labels, (firstTokenAt - job.enqueued_at) / 1000);
        // Close the reply the way the template renders an assistant message, so the next turn starts clean.
        if (template.replySuffixIds.length > 0) await deps.scheduler.prefill(start.state, Int32Array.from(template.replySuffixIds), abort.signal);
      }
      await streamWrites;
      if (abort.signal.aborted) throw abort.signal.reason;

      const usage = { input_tokens: inputIds.length, output_tokens: outputTokens, cached_tokens: cachedTokens, tokens_absorbed: start.state.tokensAbsorbed };
      let result: TurnResult;
      if (job.session === null || !manifest || !lease) {
        if (start.prefix && prefixes && job.kind === 'turn' && prefixes.worthKeeping(start.state.tokensAbsorbed)) {
          // The state after the reply: what the conversation's next request (which resends it) starts from.
          const hash = extendTranscript(start.prefix.hashes[job.messages.length]!, { role: 'assistant', content: output });
          prefixWrites.push(await prefixes.save(job.tenant, hash, start.state));
          prefixes.keepHot(job.tenant, hash, start.state);
          owned = undefined;
        }
        await Promise.all(prefixWrites.map((written) => written()));
        result = { turn_id: job.turn_id, session: null, version: null, base_version: start.base?.version ?? null, output, finish_reason: finishReason, usage, timings };
      } else {
        const transcript = [...fed, ...(job.kind === 'turn' ? [{ role: 'assistant' as const, content: output }] : [])].reduce(
          (h, m) => extendTranscript(h, m),
          start.base!.transcript_hash,
        );
        const checkpointStart = performance.now();
        const bytes = await deps.model.engine.exportState(start.state, { parentVersion: start.base!.version, transcriptHash: transcript });
        const headAtStart = manifest.head;
        let committed;
        deps.faults?.reach('before-commit');
        try {
          committed = await deps.sessions.commitVersion({
            tenant: job.tenant,
            session: job.session,
            fence: lease.fence,
            state: bytes,
            // The turn's deadline is decided here, against the manifest the commit replaces.
            turn: { id: job.turn_id, incarnation: this.refOf(job, manifest).incarnation!, deadlineMs: job.deadline_ms, requestSha256: job.request_hash },
            version: {
              parent: start.base!.version,
              tokens_absorbed: start.state.tokensAbsorbed,
              transcript_hash: transcript,
              origin: 'turn',
              instructions_sha256: instructionsHash,
            },
            items: buildItemsFile({
              session: job.session,
              turnId: job.turn_id,
              messages: job.messages,
              shapes: job.item_shapes,
              instructions: feedInstructions ? instructions : null,
              reply: job.kind === 'turn' ? { text: output, complete: finishReason !== 'length' } : undefined,
              result: { finish_reason: finishReason, usage, ...(job.request_hash ? { request_sha256: job.request_hash } : {}) },
            }),
            precondition: (m) => {
              if (m.head !== headAtStart) throw new CommitConflictError(`the head moved from ${headAtStart} to ${m.head} during the turn`);
            },
          });
        } catch (e) {
          if (e instanceof TurnSettledError) return await this.reportDecided(job, attempt.id, e.outcome, releaseSession);
          if (e instanceof FencedOutError) throw new Error(`lost the session lease before committing: ${e.message}`);
          throw e;
        }
        deps.faults?.reach('after-commit');
        timings.checkpoint_ms = performance.now() - checkpointStart;
        result = {
          turn_id: job.turn_id,
          session: job.session,
          version: committed.entry.version,
          base_version: start.base!.version,
          output,
          finish_reason: finishReason,
          usage,
          timings,
        };
        metrics.observe(METRICS.checkpointSeconds, labels, (performance.now() - checkpointStart) / 1000).observe(METRICS.checkpointBytes, labels, bytes.byteLength);
        deps.cache.put(stateCacheKey(job.tenant, job.session, manifest.incarnation, committed.entry.version), start.state);
        owned = undefined;
        // The response id → version mapping is durable before anyone hears of the response.
        if (job.response) await this.responses.write(completeRecord(job.tenant, job.response, result));
      }
      await releaseSession();
      metrics.observe(METRICS.turnSeconds, labels, (Date.now() - job.enqueued_at) / 1000);
      await metrics.send(deps.redis, deps.keys).catch(() => {});
      await this.countOutcome(job, 'ok');
      await stream.append({ type: 'done', result });
      deps.faults?.reach('after-done');
      return result;
    } catch (e) {
      throw this.classify(e, abort.signal);
    } finally {
      clearTimeout(deadlineTimer);
      shutdown.removeEventListener('abort', onShutdown);
      stopKeepAlive();
      if (owned) deps.model.engine.freeState(owned);
      if (lease) await deps.leases.release(lease).catch(() => {});
    }
  }

  /**
   * The one way a turn ends in failure. A session turn's failure is first decided by the store
   * (settleTurn): if the turn committed after all (an earlier attempt, a write whose answer was
   * lost), its result is reported instead; if it was refused before, that refusal. Then the
   * turn slot is freed, the final `error` written and the outcome counted. Returns what was
   * reported. Throws (StoreUnavailableError, Redis errors) when nothing could be decided: the
   * caller must then not report a failure, and tries again later.
   */
  async finishFailed(job: TurnJob, attemptId: string, why: { code: ErrorCode; message: string }): Promise<{ result: TurnResult } | { failure: { code: ErrorCode; message: string } }> {
    let failure = why;
    if (job.session !== null && !job.ephemeral) {
      const ref = { tenant: job.tenant, session: job.session, turnId: job.turn_id, incarnation: job.incarnation };
      const incarnation = job.incarnation ?? (await this.deps.sessions.read(job.tenant, job.session))?.manifest.incarnation;
      const refusal = { ...why, request_sha256: job.request_hash };
      const outcome: TurnOutcome = incarnation === undefined ? { state: 'gone' } : await this.deps.sessions.settleTurn(job.tenant, job.session, { id: job.turn_id, incarnation }, refusal);
      if (outcome.state === 'committed') return { result: await this.reportDecided(job, attemptId, outcome, () => this.freeTurnSlot(job)) };
      failure = failureOf(outcome, ref);
    }
    await this.freeTurnSlot(job);
    await this.streamOf(job, attemptId).append({ type: 'error', code: failure.code, message: failure.message, final: true });
    await this.countOutcome(job, failure.code);
    return { failure };
  }

  /** Tell readers this attempt failed and the turn will be retried (they wait on; nothing is decided). */
  async noteRetry(job: TurnJob, attemptId: string): Promise<void> {
    await this.streamOf(job, attemptId).append({ type: 'error', code: 'turn_failed', message: 'retrying after a fault', final: false }).catch(() => {});
  }

  private streamOf(job: TurnJob, attemptId: string): TurnStreamWriter {
    const ttl = Math.max(0, job.deadline_ms - Date.now()) + STREAM_LINGER_MS;
    return new TurnStreamWriter(this.deps.redis, { stream: this.deps.keys.turnStream(job.turn_id), owner: this.deps.keys.turnStreamOwner(job.turn_id) }, ttl, attemptId);
  }

  private async freeTurnSlot(job: TurnJob): Promise<void> {
    if (job.owns_turn_slot && job.session !== null) await this.deps.leases.releaseTurn(job.tenant, job.session, job.turn_id).catch(() => {});
  }

  private async countOutcome(job: TurnJob, outcome: string): Promise<void> {
    const { deps } = this;
    await countTurnOnce(deps.redis, deps.keys, { model: deps.model.id, outcome }, job.turn_id, deps.config.TURN_RETENTION_S).catch(() => {});
  }

  private refOf(job: TurnJob, manifest: SessionManifest): SessionTurnRef {
    // Jobs queued before the edge recorded the incarnation take the one the turn found.
    return { tenant: job.tenant, session: job.session!, turnId: job.turn_id, incarnation: job.incarnation ?? manifest.incarnation };
  }

  /** The session exists, is the incarnation the turn was accepted for, and belongs to this model. */
  private checkSession(job: TurnJob, manifest: SessionManifest | null): void {
    if (!manifest) throw new TurnRejected('session_not_found', `session ${job.session} not found`);
    if (job.incarnation !== undefined && manifest.incarnation !== job.incarnation) {
      throw new TurnRejected('session_not_found', `session ${job.session} was deleted after turn ${job.turn_id} was accepted; the turn was not saved`);
    }
    if (manifest.model !== this.deps.model.id) throw new TurnRejected('model_mismatch', `session ${job.session} belongs to model ${manifest.model}`);
  }

  /** The error as the consumer should treat it. */
  private classify(e: unknown, signal: AbortSignal): unknown {
    const reason = e instanceof WorkAborted ? e.reason : signal.aborted && !(e instanceof TurnRejected) ? signal.reason : e;
    if (reason instanceof TurnRejected || reason instanceof TurnReleased || reason instanceof SessionLeaseBusy || reason instanceof TurnSettledError) return reason;
    if (reason instanceof StateFormatError) return new TurnRejected(reason.code, reason.message);
    if (reason instanceof EngineError && reason.code === 'token_out_of_range') return new TurnRejected('token_out_of_range', reason.message);
    return reason;
  }

  /**
   * The session's lease. `counterWasFresh`: Redis had no fence counter for the session (its
   * first turn, or Redis lost its data): the fence is then lifted FENCE_GAP_AFTER_REDIS_LOSS
   * above the store's, past any fence handed out before the loss to a turn that may still be
   * running, and the caller records it in the store before it runs.
   */
  private async acquireLease(job: TurnJob): Promise<{ lease: SessionLease; counterWasFresh: boolean }> {
    const { leases, sessions, workerId } = this.deps;
    const session = job.session!;
    let got = await leases.tryAcquire(job.tenant, session, workerId);
    if (!isLease(got)) throw new SessionLeaseBusy(got.held);
    const fresh = got.fresh;
    const current = await sessions.read(job.tenant, session);
    if (current && (fresh || current.manifest.fence >= got.fence)) {
      await leases.release(got);
      got = await leases.tryAcquire(job.tenant, session, workerId, current.manifest.fence + FENCE_GAP_AFTER_REDIS_LOSS);
      if (!isLease(got)) throw new SessionLeaseBusy(got.held);
    }
    return { lease: got, counterWasFresh: fresh };
  }

  /** The state the turn starts from, owned by the caller. */
  private async startingState(job: TurnJob, manifest: SessionManifest | null): Promise<StartingState> {
    const { engine } = this.deps.model;
    if (job.session === null || !manifest) {
      const cartridge = job.cartridge;
      const base = async (): Promise<{ state: StateHandle; source: StartingState['source'] }> =>
        cartridge ? await this.cartridgeState(job.tenant, cartridge.id) : { state: await engine.newState(), source: 'empty' };
      if (job.prefix_cache && this.deps.prefixes) {
        const root = cartridge?.transcript_hash ?? EMPTY_TRANSCRIPT_ROOT;
        const start = await this.deps.prefixes.start(job.tenant, root, job.messages, base);
        return { state: start.state, base: null, source: start.source, prefix: { messages: start.messages, hashes: start.hashes } };
      }
      return { ...(await base()), base: null };
    }
    const base = await this.baseVersion(job, manifest);
    const key = stateCacheKey(job.tenant, job.session, manifest.incarnation, base.version);
    // An ephemeral turn reads the stored copy: taking the cached one (and discarding it after)
    // would cost the session's next turn its hot state.
    const cached = job.ephemeral ? undefined : this.deps.cache.take(key);
    if (cached) return { state: cached, base, source: 'cache' };
    if (base.state_bytes === 0) return { state: await engine.newState(), base, source: 'empty' };
    // A session's first version copied from a cartridge: the cartridge's state, if held hot, is the
    // same state (N sessions started from one cartridge on this worker read the store once).
    if (base.origin === 'cartridge' && manifest.cartridge) {
      const hot = await this.hotCartridge(job.tenant, manifest.cartridge);
      if (hot) return { state: hot, base, source: 'cache' };
    }
    const bytes = await this.deps.sessions.readState(job.tenant, job.session, base.version);
    // Listed but gone: expired under the store's retention rule for superseded versions (retrying cannot help).
    if (!bytes) throw new TurnRejected('version_not_found', `the state of version ${base.version} of session ${job.session} is no longer stored`);
    const imported = await engine.importState(bytes);
    return { state: imported.state, base, source: 'store' };
  }

  /** A copy of the cartridge's state held hot on this worker, or undefined. */
  private async hotCartridge(tenant: string, cartridge: string): Promise<StateHandle | undefined> {
    const { cache, model } = this.deps;
    const key = cartridgeCacheKey(tenant, cartridge);
    // Taken out while it is copied, so no eviction frees it meanwhile; then put back.
    const held = cache.take(key);
    if (!held) return undefined;
    try {
      return await model.engine.cloneState(held);
    } finally {
      cache.put(key, held);
    }
  }

  /** A stateless turn's starting state from a cartridge: a copy of the hot one, else one load from the store. */
  private async cartridgeState(tenant: string, cartridge: string): Promise<{ state: StateHandle; source: 'cache' | 'store' }> {
    const hot = await this.hotCartridge(tenant, cartridge);
    if (hot) return { state: hot, source: 'cache' };
    const bytes = await this.deps.cartridges.readState(tenant, cartridge);
    // Checked ready by the edge when the turn was accepted: gone now means deleted since.
    if (!bytes) throw new TurnRejected('cartridge_not_found', `cartridge ${cartridge} is no longer stored`);
    const { engine } = this.deps.model;
    const imported = await engine.importState(bytes);
    this.deps.cache.put(cartridgeCacheKey(tenant, cartridge), await engine.cloneState(imported.state));
    return { state: imported.state, source: 'store' };
  }

  private async baseVersion(job: TurnJob, m: SessionManifest): Promise<ManifestVersion> {
    const b = job.base;
    if (b.kind === 'head') {
      if (b.if_version !== null && b.if_version !== m.head) {
        throw new TurnRejected('version_mismatch', `session ${m.session} is at version ${m.head}, not ${b.if_version}`);
      }
      return findVersion(m, m.head)!;
    }
    if (b.must_be_head && b.version !== m.head) {
      throw new TurnRejected('conversation_diverged', `session ${m.session} moved on to version ${m.head} since the request was matched to version ${b.version}`);
    }
    // Matched by the edge among the manifest's newest versions; by now possibly moved to a page.
    const entry = await this.deps.sessions.findVersion(job.tenant, m.session, m, b.version);
    if (!entry) throw new TurnRejected('version_not_found', `session ${m.session} has no version ${b.version}`);
    return entry;
  }

  /**
   * Report an outcome the store already records: a committed turn's result, read back from the
   * store (the attempt that committed it died before reporting, or lost a race it had won), or
   * a refusal, thrown as TurnSettledError for the consumer to report.
   */
  private async reportDecided(job: TurnJob, attemptId: string, outcome: TurnOutcome, release: () => Promise<void>): Promise<TurnResult> {
    if (outcome.state !== 'committed') throw new TurnSettledError(outcome);
    const result = await committedResult(this.deps.sessions, { tenant: job.tenant, session: job.session!, turnId: job.turn_id }, outcome.entry);
    // The committing attempt may have died between its commit and its response record.
    if (job.response) await this.responses.write(completeRecord(job.tenant, job.response, result));
    await release();
    await this.countOutcome(job, 'ok');
    await this.streamOf(job, attemptId).append({ type: 'done', result });
    return result;
  }
}

// One turn on the worker, start to durable finish:
//   lease (one writer per session, fenced) → manifest → starting state (hot cache, store, or
//   empty) → prefill the new messages → batched decode, tokens to the turn's Redis Stream →
//   reply suffix → export + commit the new version (file, then head) → `done`.
// Nothing is reported done before the version is durable and the head has advanced. Any
// failure before that leaves the session at its last version; the state handle that was
// being advanced is freed, never cached.
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Message } from '../shared/api-schemas.ts';
import type { WorkerConfig } from '../shared/config.ts';
import type { ErrorCode } from '../shared/errors.ts';
import { buildItemsFile } from '../shared/conversation-items.ts';
import { TurnResult, type TurnJob } from '../shared/jobs.ts';
import type { Logger } from '../shared/logger.ts';
import { MetricsBatch, METRICS } from '../shared/metrics.ts';
import { StateFormatError } from '../shared/mstate.ts';
import type { RedisKeys } from '../shared/redis-keys.ts';
import { completeRecord } from '../shared/response-record.ts';
import { ResponseStore } from '../shared/response-store.ts';
import { findVersion, type ManifestVersion, type SessionManifest } from '../shared/session-manifest.ts';
import { isLease, type SessionLease, type SessionLeases } from '../shared/session-lease.ts';
import type { CartridgeStore } from '../shared/cartridge-store.ts';
import { CommitConflictError, FencedOutError, type SessionStore } from '../shared/session-store.ts';
import { EMPTY_TRANSCRIPT_ROOT, extendTranscript } from '../shared/transcript-hash.ts';
import { TurnStreamWriter, type TurnEvent } from '../shared/turn-stream.ts';
import { EngineError, type StateHandle } from './engine/engine.ts';
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
   * Run `job` (attempt `attempt`); `shutdown` aborts it for release back to the queue.
   * Throws TurnRejected (final), SessionLeaseBusy (delay and retry), TurnReleased, or any
   * other error (transient: BullMQ retries with backoff).
   */
  async run(job: TurnJob, attempt: number, shutdown: AbortSignal): Promise<TurnResult> {
    const { deps } = this;
    const stream = new TurnStreamWriter(deps.redis, deps.keys.turnStream(job.turn_id), Math.max(0, job.deadline_ms - Date.now()) + STREAM_LINGER_MS);
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
      if (job.owns_turn_slot && job.session !== null) await deps.leases.releaseTurn(job.tenant, job.session, job.turn_id).catch(() => {});
    };
    try {
      let manifest: SessionManifest | null = null;
      if (job.session !== null && job.ephemeral) {
        // Reads a stored version and writes nothing: no lease, no turn slot.
        manifest = (await deps.sessions.read(job.tenant, job.session))?.manifest ?? null;
        if (!manifest) throw new TurnRejected('session_not_found', `session ${job.session} not found`);
        if (manifest.model !== deps.model.id) throw new TurnRejected('model_mismatch', `session ${job.session} belongs to model ${manifest.model}`);
      } else if (job.session !== null) {
        lease = await this.acquireLease(job);
        stopKeepAlive = deps.leases.keepAlive(lease, (why) => abort.abort(new Error(`session lease lost (${why})`)));
        manifest = (await deps.sessions.read(job.tenant, job.session))?.manifest ?? null;
        if (!manifest) throw new TurnRejected('session_not_found', `session ${job.session} not found`);
        if (manifest.model !== deps.model.id) throw new TurnRejected('model_mismatch', `session ${job.session} belongs to model ${manifest.model}`);
        // A previous attempt committed and then died before reporting: report its result. Its
        // version is among the manifest's newest (MANIFEST_RECENT_VERSIONS, at least 16) unless
        // that many other turns committed between its commit and this retry (about QUEUE_LOCK_MS).
        const committed = manifest.versions.find((v) => v.turn_id === job.turn_id);
        if (committed) return await this.replayCommitted(job, committed, attempt, stream, releaseSession);
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
      await stream.append({ type: 'start', attempt, base_version: start.base?.version ?? null, cached_tokens: cachedTokens });

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
      const push = (event: TurnEvent) => {
        // Stream writes are ordered but not awaited per token; a lost write costs the client a
        // late token (the `done` event carries the whole output), never the turn.
        streamWrites = streamWrites.then(() => stream.append(event)).catch((e) => deps.log.warn('stream write failed', { turn: job.turn_id, error: String(e) }));
      };

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
          { maxTokens, stop: [...template.stopStrings, ...job.stop], stopTokenIds: template.stopTokenIds },
        );
        const outcome = await deps.scheduler.decode(
          start.state,
          logits,
          decoder,
          (text) => {
            firstTokenAt ??= Date.now();
            push({ type: 'token', attempt, text });
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
        if (Date.now() > job.deadline_ms) throw new TurnRejected('turn_timeout', 'the turn ran past its deadline before its state was stored');
        const headAtStart = manifest.head;
        const pending: TurnResult = {
          turn_id: job.turn_id,
          session: job.session,
          version: manifest.next_version,
          base_version: start.base!.version,
          output,
          finish_reason: finishReason,
          usage,
          timings,
        };
        // Written before the head advances, so an attempt that commits and then dies can still be reported by its retry.
        await deps.redis.set(deps.keys.turnResult(job.turn_id), JSON.stringify(pending), 'EX', deps.config.TURN_RETENTION_S);
        let committed;
        try {
          committed = await deps.sessions.commitVersion({
            tenant: job.tenant,
            session: job.session,
            fence: lease.fence,
            state: bytes,
            version: {
              parent: start.base!.version,
              tokens_absorbed: start.state.tokensAbsorbed,
              transcript_hash: transcript,
              origin: 'turn',
              turn_id: job.turn_id,
              instructions_sha256: instructionsHash,
            },
            items: buildItemsFile({
              session: job.session,
              turnId: job.turn_id,
              messages: job.messages,
              shapes: job.item_shapes,
              instructions: feedInstructions ? instructions : null,
              reply: job.kind === 'turn' ? { text: output, complete: finishReason !== 'length' } : undefined,
            }),
            precondition: (m) => {
              if (m.head !== headAtStart) throw new CommitConflictError(`the head moved from ${headAtStart} to ${m.head} during the turn`);
            },
          });
        } catch (e) {
          if (e instanceof FencedOutError) throw new Error(`lost the session lease before committing: ${e.message}`);
          throw e;
        }
        timings.checkpoint_ms = performance.now() - checkpointStart;
        result = { ...pending, version: committed.entry.version, timings };
        if (result.version !== pending.version) {
          await deps.redis.set(deps.keys.turnResult(job.turn_id), JSON.stringify(result), 'EX', deps.config.TURN_RETENTION_S);
        }
        metrics.observe(METRICS.checkpointSeconds, labels, (performance.now() - checkpointStart) / 1000).observe(METRICS.checkpointBytes, labels, bytes.byteLength);
        deps.cache.put(stateCacheKey(job.tenant, job.session, manifest.incarnation, committed.entry.version), start.state);
        owned = undefined;
        // The response id → version mapping is durable before anyone hears of the response.
        if (job.response) await this.responses.write(completeRecord(job.tenant, job.response, result));
      }
      await releaseSession();
      await stream.append({ type: 'done', attempt, result });
      metrics.inc(METRICS.turns, { ...labels, outcome: 'ok' }).observe(METRICS.turnSeconds, labels, (Date.now() - job.enqueued_at) / 1000);
      await metrics.send(deps.redis, deps.keys).catch(() => {});
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

  /** The error as the consumer should treat it. */
  private classify(e: unknown, signal: AbortSignal): unknown {
    const reason = e instanceof WorkAborted ? e.reason : signal.aborted && !(e instanceof TurnRejected) ? signal.reason : e;
    if (reason instanceof TurnRejected || reason instanceof TurnReleased || reason instanceof SessionLeaseBusy) return reason;
    if (reason instanceof StateFormatError) return new TurnRejected(reason.code, reason.message);
    if (reason instanceof EngineError && reason.code === 'token_out_of_range') return new TurnRejected('token_out_of_range', reason.message);
    return reason;
  }

  private async acquireLease(job: TurnJob): Promise<SessionLease> {
    const { leases, sessions, workerId } = this.deps;
    const session = job.session!;
    let got = await leases.tryAcquire(job.tenant, session, workerId);
    if (!isLease(got)) throw new SessionLeaseBusy(got.held);
    const current = await sessions.read(job.tenant, session);
    if (current && current.manifest.fence >= got.fence) {
      // Redis's fence counter is behind the store's (Redis lost data): lift it above.
      await leases.release(got);
      got = await leases.tryAcquire(job.tenant, session, workerId, current.manifest.fence);
      if (!isLease(got)) throw new SessionLeaseBusy(got.held);
    }
    return got;
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

  private async replayCommitted(
    job: TurnJob,
    committed: ManifestVersion,
    attempt: number,
    stream: TurnStreamWriter,
    releaseSession: () => Promise<void>,
  ): Promise<TurnResult> {
    const raw = await this.deps.redis.get(this.deps.keys.turnResult(job.turn_id));
    const parsed = raw ? TurnResult.safeParse(JSON.parse(raw)) : undefined;
    const result: TurnResult = parsed?.success
      ? { ...parsed.data, version: committed.version }
      : {
          // The result record is gone (Redis lost it): the version is durable, its text is not known here.
          turn_id: job.turn_id,
          session: job.session,
          version: committed.version,
          base_version: committed.parent,
          output: '',
          finish_reason: 'stop',
          usage: { input_tokens: 0, output_tokens: 0, cached_tokens: 0, tokens_absorbed: committed.tokens_absorbed },
        };
    // The first attempt may have died between its commit and its response record.
    if (job.response && parsed?.success) await this.responses.write(completeRecord(job.tenant, job.response, result));
    await stream.append({ type: 'start', attempt, base_version: committed.parent, cached_tokens: result.usage.cached_tokens });
    await releaseSession();
    await stream.append({ type: 'done', attempt, result });
    return result;
  }
}

// Building a cartridge on the worker (docs/cartridges.md): read its input from the store,
// tokenize it (the chat template renders its messages as a conversation would), absorb it into
// a zero state in chunks through the scheduler (so a long build shares the engine with the
// turns decoding beside it), reporting progress after each chunk, then store the state
// create-if-absent and mark the record ready by compare-and-swap. Until then the cartridge is not
// startable; after it, it never changes.
//
// A deleted cartridge stops its build at the next chunk. A worker shutting down releases the
// build to the queue (it starts over elsewhere: a build keeps no partial state). A retried build
// whose state is already stored (the first attempt died before marking it ready) writes nothing
// new: the same input gives the same state.
import type { Redis } from 'ioredis';
import type { WorkerConfig } from '../shared/config.ts';
import { CartridgeChangedError, type CartridgeStore, type RecordRead } from '../shared/cartridge-store.ts';
import type { ErrorCode } from '../shared/errors.ts';
import type { CartridgeJob } from '../shared/jobs.ts';
import type { Logger } from '../shared/logger.ts';
import type { RedisKeys } from '../shared/redis-keys.ts';
import { EMPTY_TRANSCRIPT_ROOT, extendTranscript } from '../shared/transcript-hash.ts';
import { startProgress } from '../shared/progress.ts';
import type { StateHandle } from './engine/engine.ts';
import { WorkAborted, type BatchScheduler } from './scheduler/batch-scheduler.ts';
import type { ServingModel } from './serving-model.ts';
import { cartridgeCacheKey, type StateCache } from './state-cache.ts';
import { templateMessage, TurnRejected, TurnReleased } from './turn-runner.ts';

/** Tokens absorbed between two progress reports (and two checks that the cartridge still exists). */
export const CARTRIDGE_PROGRESS_TOKENS = 4096;
/** How long a build's progress outlives its last report in Redis. */
const PROGRESS_TTL_S = 86_400;

export interface CartridgeBuilderDeps {
  readonly model: ServingModel;
  readonly scheduler: BatchScheduler;
  readonly cartridges: CartridgeStore;
  readonly cache: StateCache;
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly config: Pick<WorkerConfig, 'MAX_CARTRIDGE_TOKENS'>;
  readonly log: Logger;
}

export class CartridgeBuilder {
  constructor(private readonly deps: CartridgeBuilderDeps) {}

  /**
   * Build `job`'s cartridge. Throws TurnRejected (final: the record is marked failed), TurnReleased
   * (shutdown), or any other error (transient: the consumer retries, and calls fail() after the last).
   */
  async build(job: CartridgeJob, shutdown: AbortSignal): Promise<void> {
    const { deps } = this;
    const { cartridges, model } = deps;
    let read = await cartridges.read(job.tenant, job.cartridge);
    // Deleted, or finished by an earlier attempt: nothing to do.
    if (!read || read.record.status === 'ready' || read.record.status === 'failed') return;
    if (read.record.model !== model.id) throw new TurnRejected('model_mismatch', `cartridge ${job.cartridge} belongs to model ${read.record.model}`);
    if (Date.now() > job.deadline_ms) throw new TurnRejected('turn_timeout', 'the build waited in the queue past its deadline');

    const input = await cartridges.readInput(job.tenant, job.cartridge);
    if (!input) throw new TurnRejected('cartridge_not_found', `cartridge ${job.cartridge} has no stored input`);
    const tokens = model.template.encodeMessages(input.messages.map(templateMessage));
    if (tokens.length > deps.config.MAX_CARTRIDGE_TOKENS) {
      throw new TurnRejected('input_too_long', `the cartridge's input is ${tokens.length} tokens; this server builds at most ${deps.config.MAX_CARTRIDGE_TOKENS} (MAX_CARTRIDGE_TOKENS)`);
    }
    read = await cartridges.replace(read, { ...read.record, status: 'building', tokens_total: tokens.length });
    await this.progress(job, 0, tokens.length);

    const abort = new AbortController();
    const onShutdown = () => abort.abort(new TurnReleased());
    shutdown.addEventListener('abort', onShutdown);
    const deadline = setTimeout(() => abort.abort(new TurnRejected('turn_timeout', 'the build ran past its deadline (CARTRIDGE_TIMEOUT_MS)')), Math.max(0, job.deadline_ms - Date.now()));
    let state: StateHandle | undefined = await model.engine.newState();
    // For the person watching the worker (the API reports the same through GET and /events).
    const shown = startProgress({ label: `building cartridge ${job.cartridge}`, total: tokens.length, unit: 'tokens' });
    try {
      const ids = Int32Array.from(tokens);
      for (let at = 0; at < ids.length; at += CARTRIDGE_PROGRESS_TOKENS) {
        await deps.scheduler.prefill(state, ids.subarray(at, at + CARTRIDGE_PROGRESS_TOKENS), abort.signal);
        await this.progress(job, Math.min(ids.length, at + CARTRIDGE_PROGRESS_TOKENS), ids.length);
        shown.update(Math.min(ids.length, at + CARTRIDGE_PROGRESS_TOKENS));
        // A deleted cartridge stops here rather than building on for minutes.
        if (!(await cartridges.read(job.tenant, job.cartridge))) return;
      }
      const transcript = input.messages.reduce((h, m) => extendTranscript(h, m), EMPTY_TRANSCRIPT_ROOT);
      const bytes = await model.engine.exportState(state, { parentVersion: null, transcriptHash: transcript });
      const current = await cartridges.read(job.tenant, job.cartridge);
      if (!current) return;
      await cartridges.writeState(job.tenant, job.cartridge, bytes);
      // The record says ready only once the state is durable.
      await cartridges.replace(current, {
        ...current.record,
        status: 'ready',
        ready_at: new Date().toISOString(),
        tokens_total: ids.length,
        tokens_absorbed: state.tokensAbsorbed,
        state_bytes: bytes.byteLength,
        transcript_hash: transcript,
      });
      // Kept hot: sessions and chats started from it on this worker clone it instead of reading the store.
      deps.cache.put(cartridgeCacheKey(job.tenant, job.cartridge), state);
      state = undefined;
      deps.log.info('cartridge built', { tenant: job.tenant, cartridge: job.cartridge, tokens: ids.length, bytes: bytes.byteLength });
    } catch (e) {
      const reason = e instanceof WorkAborted ? e.reason : abort.signal.aborted ? abort.signal.reason : e;
      // Deleted while being marked ready: nothing left to mark.
      if (reason instanceof CartridgeChangedError) return;
      throw reason;
    } finally {
      shown.finish();
      clearTimeout(deadline);
      shutdown.removeEventListener('abort', onShutdown);
      if (state) model.engine.freeState(state);
    }
  }

  /** Mark the cartridge failed (a final failure: a bad input, its deadline, or every attempt failed). */
  async fail(job: CartridgeJob, code: ErrorCode, message: string): Promise<void> {
    const { cartridges } = this.deps;
    for (let attempt = 0; attempt < 3; attempt++) {
      const read: RecordRead | null = await cartridges.read(job.tenant, job.cartridge);
      if (!read || read.record.status === 'ready') return;
      try {
        await cartridges.replace(read, { ...read.record, status: 'failed', error: { code, message } });
        break;
      } catch (e) {
        if (!(e instanceof CartridgeChangedError)) throw e;
      }
    }
    await this.deps.redis.del(this.deps.keys.cartridgeProgress(job.tenant, job.cartridge));
  }

  private async progress(job: CartridgeJob, absorbed: number, total: number): Promise<void> {
    const key = this.deps.keys.cartridgeProgress(job.tenant, job.cartridge);
    await this.deps.redis.multi().hset(key, { tokens_absorbed: absorbed, tokens_total: total }).expire(key, PROGRESS_TTL_S).exec();
  }
}

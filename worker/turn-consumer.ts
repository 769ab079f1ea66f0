// The BullMQ side of the worker: takes `turn` jobs of this worker's model (up to
// WORKER_CONCURRENCY at once, all decoding together in the scheduler), maps a turn's outcome
// onto BullMQ's (done, final failure, retry with backoff, delay behind a busy session, release
// on shutdown), and shuts down gracefully: stop taking jobs, let in-flight turns finish within
// the grace period, then release the rest back to the queue untouched.
//
// A turn fails only through TurnRunner.finishFailed (the store decides first, and a turn that
// committed after all is reported done), never by BullMQ on its own: a job whose worker died
// is moved back to the queue however often that happens (maxStalledCount is unbounded), and
// this consumer fails it after TURN_ATTEMPTS such stalls, through the same path. BullMQ's own
// stall limit failed such jobs without running anything, so a turn committed just before its
// worker died was reported failed, and its retry under a new key applied the input twice.
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { DelayedError, UnrecoverableError, WaitingError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { WorkerConfig } from '../shared/config.ts';
import { isErrorCode, type ErrorCode } from '../shared/errors.ts';
import { CartridgeJob, encodeFailure, JOB_NAMES, TurnJob, type TurnResult } from '../shared/jobs.ts';
import type { Logger } from '../shared/logger.ts';
import type { RedisKeys } from '../shared/redis-keys.ts';
import { TurnSettledError } from '../shared/session-store.ts';
import { failureOf } from '../shared/turn-outcome.ts';
import type { CartridgeBuilder } from './cartridge-builder.ts';
import { SessionLeaseBusy, TurnRejected, TurnReleased, type TurnAttempt, type TurnRunner } from './turn-runner.ts';

/** How soon a turn waiting behind a busy session looks again. */
const BUSY_RETRY_MS = 200;
/** How soon a failed turn whose failure the store could not decide asks it again. */
const SETTLE_RETRY_MS = 2_000;
/** BullMQ's stall limit, never reached: stalls are counted here instead (see the top of this file). */
const UNBOUNDED_STALLS = 1_000_000;

export interface TurnConsumerOptions {
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly modelId: string;
  readonly runner: TurnRunner;
  readonly builder: CartridgeBuilder;
  readonly config: Pick<WorkerConfig, 'WORKER_CONCURRENCY' | 'QUEUE_LOCK_MS' | 'TURN_ATTEMPTS'>;
  readonly log: Logger;
}

export class TurnConsumer {
  private worker: Worker<unknown, TurnResult | null> | undefined;
  private readonly shutdown = new AbortController();
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly o: TurnConsumerOptions) {
    // Every in-flight turn listens for shutdown: up to WORKER_CONCURRENCY listeners is expected.
    setMaxListeners(o.config.WORKER_CONCURRENCY + 16, this.shutdown.signal);
  }

  get activeTurns(): number {
    return this.inFlight.size;
  }

  start(): void {
    const { o } = this;
    this.worker = new Worker<unknown, TurnResult | null>(
      o.keys.turnQueue(o.modelId),
      (job, token) => this.track(job.name === JOB_NAMES.cartridge ? this.build(job, token).then(() => null) : this.process(job, token)),
      {
      connection: o.redis,
      prefix: o.keys.bullPrefix,
      concurrency: o.config.WORKER_CONCURRENCY,
      lockDuration: o.config.QUEUE_LOCK_MS,
      // A turn whose worker died is noticed within one interval and retried (its lease expires meanwhile).
      stalledInterval: o.config.QUEUE_LOCK_MS,
      maxStalledCount: UNBOUNDED_STALLS,
      },
    );
    this.worker.on('error', (e) => o.log.warn('queue error', { error: e.message }));
    this.worker.on('failed', (job, e) => {
      if (job && !(e instanceof DelayedError) && !(e instanceof WaitingError)) {
        o.log.info('turn failed', { turn: job.id, attempt: job.attemptsMade, error: e.message });
      }
    });
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => {});
    return p;
  }

  /** A cartridge build: outcomes map onto BullMQ's as a turn's do; a final failure marks the cartridge failed. */
  private async build(job: Job<unknown, unknown>, token: string | undefined): Promise<void> {
    const { o } = this;
    const data = CartridgeJob.safeParse(job.data);
    if (!data.success) throw new UnrecoverableError(encodeFailure('invalid_request', 'malformed cartridge job'));
    const build = data.data;
    if (job.stalledCounter >= o.config.TURN_ATTEMPTS) {
      // Its workers keep dying on it (BullMQ's own stall limit is lifted for turns' sake).
      await o.builder.fail(build, 'turn_failed', `the workers building it stopped ${job.stalledCounter} times`);
      throw new UnrecoverableError(encodeFailure('turn_failed', 'the build failed'));
    }
    try {
      await o.builder.build(build, this.shutdown.signal);
    } catch (e) {
      if (e instanceof TurnReleased) {
        await job.moveToWait(token);
        throw new WaitingError();
      }
      if (e instanceof TurnRejected) {
        await o.builder.fail(build, e.code, e.message);
        throw new UnrecoverableError(encodeFailure(e.code, e.message));
      }
      const message = e instanceof Error ? e.message : String(e);
      const final = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      o.log.warn('cartridge build attempt failed', { cartridge: build.cartridge, final, error: e instanceof Error ? (e.stack ?? message) : message });
      if (final) await o.builder.fail(build, 'turn_failed', 'the build failed after retries').catch(() => {});
      throw new Error(encodeFailure('turn_failed', 'the build failed'));
    }
  }

  private async process(job: Job<unknown, unknown>, token: string | undefined): Promise<TurnResult> {
    const { o } = this;
    const data = TurnJob.safeParse(job.data);
    if (!data.success) throw new UnrecoverableError(encodeFailure('invalid_request', 'malformed turn job'));
    const turn = data.data;
    const attempt: TurnAttempt = {
      // Unique, not BullMQ's counter: that restarts when Redis loses the job and the edge queues the turn again.
      id: `${job.attemptsStarted}.${randomBytes(6).toString('hex')}`,
      retried: job.attemptsMade > 0 || job.stalledCounter > 0,
    };
    if (turn.settling) {
      const code = isErrorCode(turn.settling.code) ? turn.settling.code : 'turn_failed';
      return this.fail(job, token, turn, attempt, { code, message: turn.settling.message });
    }
    if (job.stalledCounter >= o.config.TURN_ATTEMPTS) {
      return this.fail(job, token, turn, attempt, { code: 'turn_failed', message: `the workers running the turn stopped ${job.stalledCounter} times` });
    }
    try {
      // The runner frees the turn slot itself before it reports `done`.
      return await o.runner.run(turn, attempt, this.shutdown.signal);
    } catch (e) {
      if (e instanceof SessionLeaseBusy) {
        // Another turn on this session is running: wait behind it without spending an attempt.
        if (Date.now() + BUSY_RETRY_MS > turn.deadline_ms) return this.fail(job, token, turn, attempt, { code: 'turn_timeout', message: 'the session stayed busy past the turn deadline' });
        await job.moveToDelayed(Date.now() + BUSY_RETRY_MS, token);
        throw new DelayedError();
      }
      if (e instanceof TurnReleased) {
        await job.moveToWait(token);
        throw new WaitingError();
      }
      if (e instanceof TurnRejected) return this.fail(job, token, turn, attempt, { code: e.code, message: e.message });
      if (e instanceof TurnSettledError && e.outcome.state !== 'committed') {
        return this.fail(job, token, turn, attempt, failureOf(e.outcome, { tenant: turn.tenant, session: turn.session ?? '', turnId: turn.turn_id }));
      }
      const message = e instanceof Error ? e.message : String(e);
      const final = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      o.log.warn('turn attempt failed', { turn: turn.turn_id, attempt: attempt.id, final, error: e instanceof Error ? (e.stack ?? message) : message });
      if (final) return this.fail(job, token, turn, attempt, { code: 'turn_failed', message: 'the turn failed after retries' });
      await o.runner.noteRetry(turn, attempt.id);
      throw new Error(encodeFailure('turn_failed', 'retrying after a fault'));
    }
  }

  /**
   * Fail the turn through the runner (the store decides first: a commit found wins). Only while
   * this attempt still holds the job: one whose job was taken over (its worker stalled) or lost
   * (Redis lost it) must not decide a turn that another attempt may be running. When the store
   * cannot be asked, nothing is reported: the failure is kept in the job and asked again shortly.
   */
  private async fail(job: Job<unknown, unknown>, token: string | undefined, turn: TurnJob, attempt: TurnAttempt, why: { code: ErrorCode; message: string }): Promise<TurnResult> {
    const { o } = this;
    const held = token !== undefined && (await job.extendLock(token, o.config.QUEUE_LOCK_MS).catch(() => 0)) === 1;
    if (!held) throw new Error(`turn ${turn.turn_id}: this attempt no longer holds its job; another decides it`);
    let decided;
    try {
      decided = await o.runner.finishFailed(turn, attempt.id, why);
    } catch (e) {
      o.log.warn('turn failed but the store could not decide it; asking again shortly', { turn: turn.turn_id, error: e instanceof Error ? e.message : String(e) });
      await job.updateData({ ...turn, settling: why });
      await job.moveToDelayed(Date.now() + SETTLE_RETRY_MS, token);
      throw new DelayedError();
    }
    if ('result' in decided) return decided.result;
    throw new UnrecoverableError(encodeFailure(decided.failure.code, decided.failure.message));
  }

  /**
   * Stop taking turns; give in-flight ones `graceMs` to finish, then release the rest to the
   * queue (they restart elsewhere from the session's last version). worker.close() alone would
   * wait for active jobs forever.
   */
  async stop(graceMs: number): Promise<void> {
    const worker = this.worker;
    if (!worker) return;
    await worker.pause(true).catch(() => {});
    const settled = Promise.allSettled([...this.inFlight]);
    const inTime = await Promise.race([settled.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), graceMs).unref())]);
    if (!inTime) {
      this.o.log.warn('shutdown grace over: releasing in-flight turns', { turns: this.inFlight.size });
      this.shutdown.abort();
      await Promise.race([Promise.allSettled([...this.inFlight]), new Promise((r) => setTimeout(r, 5_000).unref())]);
    }
    await worker.close(true).catch(() => {});
    this.worker = undefined;
  }
}

// The BullMQ side of the worker: takes `turn` jobs of this worker's model (up to
// WORKER_CONCURRENCY at once, all decoding together in the scheduler), maps a turn's outcome
// onto BullMQ's (done, final failure, retry with backoff, delay behind a busy session, release
// on shutdown), frees the session's turn slot when a turn ends, and shuts down gracefully:
// stop taking jobs, let in-flight turns finish within the grace period, then release the rest
// back to the queue untouched.
import { setMaxListeners } from 'node:events';
import { DelayedError, UnrecoverableError, WaitingError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { WorkerConfig } from '../shared/config.ts';
import { CartridgeJob, encodeFailure, JOB_NAMES, TurnJob, type TurnResult } from '../shared/jobs.ts';
import type { Logger } from '../shared/logger.ts';
import { MetricsBatch, METRICS } from '../shared/metrics.ts';
import type { RedisKeys } from '../shared/redis-keys.ts';
import type { SessionLeases } from '../shared/session-lease.ts';
import { TurnStreamWriter } from '../shared/turn-stream.ts';
import type { CartridgeBuilder } from './cartridge-builder.ts';
import { SessionLeaseBusy, TurnRejected, TurnReleased, type TurnRunner } from './turn-runner.ts';

/** How soon a turn waiting behind a busy session looks again. */
const BUSY_RETRY_MS = 200;

export interface TurnConsumerOptions {
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly modelId: string;
  readonly runner: TurnRunner;
  readonly builder: CartridgeBuilder;
  readonly leases: SessionLeases;
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
      maxStalledCount: Math.max(1, o.config.TURN_ATTEMPTS - 1),
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
    const attempt = job.attemptsStarted;
    const maxAttempts = job.opts.attempts ?? 1;
    const stream = new TurnStreamWriter(o.redis, o.keys.turnStream(turn.turn_id), Math.max(0, turn.deadline_ms - Date.now()) + 5 * 60_000);
    const freeSlot = async () => {
      if (turn.owns_turn_slot && turn.session !== null) await o.leases.releaseTurn(turn.tenant, turn.session, turn.turn_id).catch(() => {});
    };
    try {
      // The runner frees the turn slot itself before it reports `done`.
      return await o.runner.run(turn, attempt, this.shutdown.signal);
    } catch (e) {
      if (e instanceof SessionLeaseBusy) {
        // Another turn on this session is running: wait behind it without spending an attempt.
        if (Date.now() + BUSY_RETRY_MS > turn.deadline_ms) return this.fail(turn, stream, attempt, new TurnRejected('turn_timeout', 'the session stayed busy past the turn deadline'), freeSlot);
        await job.moveToDelayed(Date.now() + BUSY_RETRY_MS, token);
        throw new DelayedError();
      }
      if (e instanceof TurnReleased) {
        await job.moveToWait(token);
        throw new WaitingError();
      }
      if (e instanceof TurnRejected) return this.fail(turn, stream, attempt, e, freeSlot);
      const message = e instanceof Error ? e.message : String(e);
      const final = job.attemptsMade + 1 >= maxAttempts;
      o.log.warn('turn attempt failed', { turn: turn.turn_id, attempt, final, error: e instanceof Error ? (e.stack ?? message) : message });
      if (final) await freeSlot();
      await stream.append({ type: 'error', attempt, code: 'turn_failed', message: final ? 'the turn failed' : 'retrying after a fault', final }).catch(() => {});
      if (final) await this.countOutcome('failed');
      throw new Error(encodeFailure('turn_failed', 'the turn failed after retries'));
    }
  }

  private async fail(
    turn: TurnJob,
    stream: TurnStreamWriter,
    attempt: number,
    e: TurnRejected,
    freeSlot: () => Promise<void>,
  ): Promise<never> {
    await freeSlot();
    await stream.append({ type: 'error', attempt, code: e.code, message: e.message, final: true }).catch(() => {});
    await this.countOutcome(e.code);
    throw new UnrecoverableError(encodeFailure(e.code, e.message));
  }

  private async countOutcome(outcome: string): Promise<void> {
    await new MetricsBatch().inc(METRICS.turns, { model: this.o.modelId, outcome }).send(this.o.redis, this.o.keys).catch(() => {});
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

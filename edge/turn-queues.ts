// The BullMQ queues of turns, one per model, opened lazily and shared by all requests.
import { Queue, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { TurnJob, TurnResult } from '../shared/jobs.ts';
import type { RedisKeys } from '../shared/redis-keys.ts';

export class TurnQueues {
  private readonly queues = new Map<string, Queue<TurnJob, TurnResult>>();

  constructor(
    private readonly connection: Redis,
    private readonly keys: RedisKeys,
  ) {}

  of(modelId: string): Queue<TurnJob, TurnResult> {
    let queue = this.queues.get(modelId);
    if (!queue) {
      queue = new Queue<TurnJob, TurnResult>(this.keys.turnQueue(modelId), { connection: this.connection, prefix: this.keys.bullPrefix });
      this.queues.set(modelId, queue);
    }
    return queue;
  }

  /** Turns accepted but not yet running: waiting, prioritized, and delayed (backing off or behind a busy session). */
  async depth(modelId: string): Promise<number> {
    const counts = await this.of(modelId).getJobCounts('waiting', 'prioritized', 'delayed');
    return (counts['waiting'] ?? 0) + (counts['prioritized'] ?? 0) + (counts['delayed'] ?? 0);
  }

  async counts(modelId: string): Promise<Record<string, number>> {
    return this.of(modelId).getJobCounts('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed');
  }

  async getJob(modelId: string, turnId: string): Promise<Job<TurnJob, TurnResult> | undefined> {
    return this.of(modelId).getJob(turnId);
  }

  /**
   * How a turn ended, or undefined while it has not (or is no longer known). The state is read
   * before the job: BullMQ writes a job's return value (or failure reason) in the same script
   * that moves it to completed (failed), and a finished job never leaves that state, so a job
   * read after its state says finished has them. Read the other way round, a job read while
   * active and then found completed has no return value yet.
   */
  async outcome(
    modelId: string,
    turnId: string,
  ): Promise<{ readonly state: 'completed'; readonly returnvalue: unknown } | { readonly state: 'failed'; readonly failedReason: string | undefined } | undefined> {
    const queue = this.of(modelId);
    const state = await queue.getJobState(turnId);
    if (state !== 'completed' && state !== 'failed') return undefined;
    const job = await queue.getJob(turnId);
    if (!job) return undefined; // removed at the end of its retention
    return state === 'completed' ? { state, returnvalue: job.returnvalue } : { state, failedReason: job.failedReason };
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
    this.queues.clear();
  }
}

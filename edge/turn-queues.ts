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

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
    this.queues.clear();
  }
}

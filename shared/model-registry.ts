// What workers tell the edge about the models they serve, through Redis: each worker
// heartbeats into a per-model sorted set and records the model's description (fingerprint
// and state layout, so the edge can check an uploaded `.mstate` without loading the model).
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { ModelId } from './api-schemas.ts';
import { StateLayout } from './mstate.ts';
import type { RedisKeys } from './redis-keys.ts';

export const RegisteredModel = z.object({
  id: ModelId,
  fingerprint: z.string().regex(/^[0-9a-f]{64}$/),
  layout: StateLayout,
  state_bytes: z.number().int().nonnegative(),
  vocab_rows: z.number().int().positive(),
  engine: z.string(),
  /** Epoch seconds the model was first registered (OpenAI's `created`). */
  created: z.number().int(),
});
export type RegisteredModel = z.infer<typeof RegisteredModel>;

export class ModelRegistry {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    /** A heartbeat older than this is a dead worker. */
    private readonly staleMs: number,
  ) {}

  /** Record the model (first registration keeps its `created`) and a heartbeat of `workerId`. */
  async heartbeat(model: Omit<RegisteredModel, 'created'>, workerId: string): Promise<void> {
    const existing = await this.get(model.id);
    const record: RegisteredModel = { ...model, created: existing?.created ?? Math.floor(Date.now() / 1000) };
    const now = Date.now();
    await this.redis
      .multi()
      .hset(this.keys.models, model.id, JSON.stringify(record))
      .zadd(this.keys.workers(model.id), now, workerId)
      .zremrangebyscore(this.keys.workers(model.id), '-inf', now - 10 * this.staleMs)
      .exec();
  }

  async unregister(modelId: string, workerId: string): Promise<void> {
    await this.redis.zrem(this.keys.workers(modelId), workerId);
  }

  async get(modelId: string): Promise<RegisteredModel | undefined> {
    const raw = await this.redis.hget(this.keys.models, modelId);
    if (!raw) return undefined;
    const parsed = RegisteredModel.safeParse(JSON.parse(raw));
    return parsed.success ? parsed.data : undefined;
  }

  async list(): Promise<RegisteredModel[]> {
    const all = await this.redis.hgetall(this.keys.models);
    return Object.values(all)
      .map((raw) => RegisteredModel.safeParse(JSON.parse(raw)))
      .filter((p) => p.success)
      .map((p) => p.data!)
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Workers of `modelId` whose last heartbeat is recent. */
  async liveWorkers(modelId: string): Promise<number> {
    return this.redis.zcount(this.keys.workers(modelId), Date.now() - this.staleMs, '+inf');
  }
}

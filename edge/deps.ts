// Everything the edge's routes need, built once per process (node.ts, lambda.ts, tests) and
// handed to createApp: the app itself does no I/O at import and knows nothing of its runtime.
import { Redis } from 'ioredis';
import type { EdgeConfig } from '../shared/config.ts';
import { createStateStore } from '../shared/create-state-store.ts';
import { createLogger, type Logger } from '../shared/logger.ts';
import { ModelRegistry } from '../shared/model-registry.ts';
import { RedisKeys } from '../shared/redis-keys.ts';
import { SessionLeases } from '../shared/session-lease.ts';
import { SessionStore } from '../shared/session-store.ts';
import { ServedModels } from './served-models.ts';
import { TurnQueues } from './turn-queues.ts';

export interface EdgeDeps {
  readonly config: EdgeConfig;
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly sessions: SessionStore;
  readonly leases: SessionLeases;
  readonly models: ModelRegistry;
  /** What the edge serves and may admit turns for (the registry, plus QUEUE_WITHOUT_WORKERS). */
  readonly served: ServedModels;
  readonly queues: TurnQueues;
  /** API key → tenant; undefined = no auth (local only). */
  readonly apiKeys: ReadonlyMap<string, string> | undefined;
  readonly log: Logger;
  close(): Promise<void>;
}

/** The tenant of every session when API_KEYS is unset. */
export const LOCAL_TENANT = 'local';

export function createEdgeDeps(config: EdgeConfig, overrides: { apiKeys?: ReadonlyMap<string, string>; log?: Logger } = {}): EdgeDeps {
  const log = overrides.log ?? createLogger('edge', config.LOG_LEVEL);
  const redis = new Redis(config.REDIS_URL, {
    ...(config.REDIS_PASSWORD ? { password: config.REDIS_PASSWORD } : {}),
    // A request whose Redis is down fails after a few reconnect attempts (503) instead of
    // hanging; BullMQ requires `null` only for Workers' blocking connections, not for Queues.
    maxRetriesPerRequest: 2,
    lazyConnect: false,
  });
  redis.on('error', (e) => log.warn('redis error', { error: e.message }));
  const keys = new RedisKeys(config.REDIS_PREFIX);
  const objects = createStateStore(config, (m) => log.warn(m));
  const queues = new TurnQueues(redis, keys);
  const models = new ModelRegistry(redis, keys, config.WORKER_STALE_MS);
  return {
    config,
    redis,
    keys,
    sessions: new SessionStore(objects, { recentVersions: config.MANIFEST_RECENT_VERSIONS }),
    leases: new SessionLeases(redis, keys, config.LEASE_TTL_MS),
    models,
    served: new ServedModels(models, config),
    queues,
    apiKeys: overrides.apiKeys ?? config.API_KEYS,
    log,
    async close() {
      await queues.close();
      await objects.close();
      redis.disconnect();
    },
  };
}

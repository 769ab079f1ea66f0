// Assembles a serving worker: model, scheduler, hot-state cache, store, Redis, lease and
// queue consumer, registry heartbeat. worker/main.ts runs it as a process; tests and
// benchmarks run it in-process.
import { Redis } from 'ioredis';
import type { WorkerConfig } from '../shared/config.ts';
import { CartridgeStore } from '../shared/cartridge-store.ts';
import { createStateStore } from '../shared/create-state-store.ts';
import { createLogger, type Logger } from '../shared/logger.ts';
import { ModelRegistry } from '../shared/model-registry.ts';
import { PrefixCache } from '../shared/prefix-cache.ts';
import { RedisKeys } from '../shared/redis-keys.ts';
import { SessionLeases } from '../shared/session-lease.ts';
import { SessionStore } from '../shared/session-store.ts';
import { CartridgeBuilder } from './cartridge-builder.ts';
import { PrefixStates } from './prefix-states.ts';
import { BatchScheduler } from './scheduler/batch-scheduler.ts';
import { loadServingModel, type ServingModel } from './serving-model.ts';
import { StateCache } from './state-cache.ts';
import { TurnConsumer } from './turn-consumer.ts';
import { TurnRunner } from './turn-runner.ts';
import { FaultPoints } from './fault-points.ts';
import { defaultWorkerId } from './worker-id.ts';

export interface RunningWorker {
  readonly id: string;
  readonly model: ServingModel;
  readonly scheduler: BatchScheduler;
  readonly cache: StateCache;
  /** Graceful stop: no new turns, in-flight ones finish within `graceMs` or go back to the queue. */
  stop(graceMs?: number): Promise<void>;
}

export async function startWorker(config: WorkerConfig, options: { log?: Logger; model?: ServingModel } = {}): Promise<RunningWorker> {
  const log = options.log ?? createLogger('worker', config.LOG_LEVEL);
  const id = config.WORKER_ID ?? defaultWorkerId();
  const model = options.model ?? (await loadServingModel(config, log));
  const redis = new Redis(config.REDIS_URL, {
    ...(config.REDIS_PASSWORD ? { password: config.REDIS_PASSWORD } : {}),
    maxRetriesPerRequest: null, // BullMQ's requirement for worker connections
  });
  redis.on('error', (e) => log.warn('redis error', { error: e.message }));
  const keys = new RedisKeys(config.REDIS_PREFIX);
  const objects = createStateStore(config, (m) => log.warn(m));
  const sessions = new SessionStore(objects, { recentVersions: config.MANIFEST_RECENT_VERSIONS });
  const leases = new SessionLeases(redis, keys, config.LEASE_TTL_MS);
  const registry = new ModelRegistry(redis, keys, config.WORKER_STALE_MS);
  const scheduler = new BatchScheduler(model.engine, config.PREFILL_CHUNK_TOKENS);
  const cache = new StateCache(model.engine, config.STATE_CACHE_BYTES, model.engine.model.stateBytes);
  const prefixes = new PrefixStates({
    engine: model.engine,
    cache,
    store: new PrefixCache(objects, redis, keys, { tenantBytes: config.PREFIX_CACHE_TENANT_BYTES }),
    minTokens: config.PREFIX_CACHE_MIN_TOKENS,
    log,
  });
  const cartridges = new CartridgeStore(objects);
  const faults = new FaultPoints(config.FAULT_CRASH_POINTS);
  if (faults.enabled) log.warn('FAULT_CRASH_POINTS is set: this worker kills itself at random (tests only)', { points: config.FAULT_CRASH_POINTS });
  const runner = new TurnRunner({ model, scheduler, cache, sessions, cartridges, leases, redis, keys, config, workerId: id, log, prefixes, ...(faults.enabled ? { faults } : {}) });
  const builder = new CartridgeBuilder({ model, scheduler, cartridges, cache, redis, keys, config, log });
  const consumer = new TurnConsumer({ redis, keys, modelId: model.id, runner, builder, config, log });

  const beat = () => registry.heartbeat(model.registration, id).catch((e) => log.warn('heartbeat failed', { error: String(e) }));
  await registry.heartbeat(model.registration, id);
  const heartbeat = setInterval(beat, Math.max(250, Math.floor(config.WORKER_STALE_MS / 3)));
  heartbeat.unref();
  consumer.start();
  log.info('worker ready', { worker: id, model: model.id, engine: model.engine.kind, store: objects.description, concurrency: config.WORKER_CONCURRENCY });

  let stopped: Promise<void> | undefined;
  return {
    id,
    model,
    scheduler,
    cache,
    stop(graceMs = config.SHUTDOWN_GRACE_MS) {
      stopped ??= (async () => {
        clearInterval(heartbeat);
        await registry.unregister(model.id, id).catch(() => {});
        await consumer.stop(graceMs);
        cache.clear();
        if (!options.model) await model.engine.close();
        await objects.close();
        redis.disconnect();
        log.info('worker stopped', { worker: id });
      })();
      return stopped;
    },
  };
}

// /healthz: the process answers. /readyz: Redis answers and a worker is alive for the model
// (DEFAULT_MODEL, else any) — what a load balancer should route on. With QUEUE_WITHOUT_WORKERS
// the edge is ready with no worker alive, since it accepts (queues) turns then; the answer still
// says how many workers are alive, and why zero is ready.
import { Hono } from 'hono';
import { ApiError } from '../../shared/errors.ts';
import type { EdgeDeps } from '../deps.ts';
import { errorResponse } from '../http-errors.ts';

export function healthRoutes(deps: EdgeDeps): Hono {
  const app = new Hono();
  app.get('/healthz', (c) => c.json({ ok: true }));
  app.get('/readyz', async (c) => {
    try {
      await Promise.race([deps.redis.ping(), new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 2_000).unref())]);
    } catch {
      return errorResponse(c, new ApiError('unavailable', 'Redis does not answer', { retryAfterSeconds: deps.config.RETRY_AFTER_S }));
    }
    const models = deps.config.DEFAULT_MODEL ? [deps.config.DEFAULT_MODEL] : (await deps.models.list()).map((m) => m.id);
    const workers = Object.fromEntries(await Promise.all(models.map(async (m) => [m, await deps.models.liveWorkers(m)] as const)));
    const queued = models.filter((m) => deps.served.queuesWithoutWorkers(m));
    if (queued.length > 0) return c.json({ ok: true, workers, queue_without_workers: queued });
    if (!Object.values(workers).some((n) => n > 0)) {
      return errorResponse(c, new ApiError('no_worker', 'no worker is alive', { retryAfterSeconds: deps.config.RETRY_AFTER_S, details: { workers } }));
    }
    return c.json({ ok: true, workers });
  });
  return app;
}

// /healthz: the process answers. /readyz: Redis answers and a worker is alive for the model
// (DEFAULT_MODEL, else any) — what a load balancer should route on. With QUEUE_WITHOUT_WORKERS
// the edge is ready with no worker alive, since it accepts (queues) turns then; the answer still
// says how many workers are alive, and why zero is ready.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { ApiError } from '../../shared/errors.ts';
import type { EdgeDeps } from '../deps.ts';
import { errorResponse } from '../http-errors.ts';
import { errors, json, mount } from '../openapi.ts';

const tags = ['Operations'];

const health = createRoute({
  method: 'get',
  path: '/healthz',
  operationId: 'health',
  tags,
  security: [],
  summary: 'The process answers',
  responses: { 200: json(z.object({ ok: z.literal(true) }), 'Alive') },
});

const Readiness = z.object({
  ok: z.literal(true),
  workers: z.record(z.string(), z.number().int()),
  queue_without_workers: z.array(z.string()).optional(),
});

const ready = createRoute({
  method: 'get',
  path: '/readyz',
  operationId: 'ready',
  tags,
  security: [],
  summary: 'Redis answers and a worker is alive (or turns may queue for one)',
  responses: { 200: json(Readiness, 'Ready: live workers per model'), ...errors(503) },
});

export function healthRoutes(deps: EdgeDeps): OpenAPIHono {
  const app = new OpenAPIHono();
  mount(app, health, (c) => c.json({ ok: true }));
  mount(app, ready, async (c) => {
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

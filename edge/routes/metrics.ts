// GET /metrics: Prometheus text. Turn latency, time to first token, tokens, checkpoint size
// and latency come from the workers through Redis (shared/metrics.ts); queue depth and live
// workers are read at scrape time.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { renderMetrics } from '../../shared/metrics.ts';
import type { EdgeDeps } from '../deps.ts';
import { mount } from '../openapi.ts';

const metrics = createRoute({
  method: 'get',
  path: '/metrics',
  operationId: 'metrics',
  tags: ['Operations'],
  security: [],
  summary: 'Prometheus metrics of the whole cluster',
  responses: { 200: { description: 'Prometheus text format 0.0.4', content: { 'text/plain': { schema: z.string() } } } },
});

export function metricsRoutes(deps: EdgeDeps): OpenAPIHono {
  const app = new OpenAPIHono();
  mount(app, metrics, async (c) => {
    // Served models include one whose turns wait for a worker no one has started yet.
    const models = await deps.served.list();
    const depth: Array<[Record<string, string>, number]> = [];
    const workers: Array<[Record<string, string>, number]> = [];
    for (const m of models) {
      const counts = await deps.queues.counts(m.id);
      for (const state of ['waiting', 'prioritized', 'delayed', 'active'] as const) depth.push([{ model: m.id, state }, counts[state] ?? 0]);
      workers.push([{ model: m.id }, m.workers]);
    }
    const text = await renderMetrics(deps.redis, deps.keys, [
      { name: 'mamba_queue_depth', help: 'Turns in the queue by state.', samples: depth },
      { name: 'mamba_workers', help: 'Workers with a recent heartbeat.', samples: workers },
    ]);
    return c.body(text, 200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
  });
  return app;
}

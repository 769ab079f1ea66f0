// GET /metrics: Prometheus text. Turn latency, time to first token, tokens, checkpoint size
// and latency come from the workers through Redis (shared/metrics.ts); queue depth and live
// workers are read at scrape time.
import { Hono } from 'hono';
import { renderMetrics } from '../../shared/metrics.ts';
import type { EdgeDeps } from '../deps.ts';

export function metricsRoutes(deps: EdgeDeps): Hono {
  const app = new Hono();
  app.get('/metrics', async (c) => {
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

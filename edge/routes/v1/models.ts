// GET /v1/models: the models served here, OpenAI's list shape. A model is served once a worker
// has registered it, or, with QUEUE_WITHOUT_WORKERS, DEFAULT_MODEL before that (its turns
// wait for a worker to start; what only a worker knows, its state size, is null until then).
import { Hono } from 'hono';
import type { EdgeEnv } from '../../auth.ts';
import type { EdgeDeps } from '../../deps.ts';

export function modelRoutes(deps: EdgeDeps): Hono<EdgeEnv> {
  const app = new Hono<EdgeEnv>();
  app.get('/', async (c) => {
    const models = await deps.served.list();
    const data = models.map((m) => ({
      id: m.id,
      object: 'model' as const,
      created: m.created,
      owned_by: 'mamba-serve',
      state_bytes: m.state_bytes,
      workers: m.workers,
    }));
    return c.json({ object: 'list' as const, data });
  });
  return app;
}

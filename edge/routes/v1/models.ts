// GET /v1/models: the models workers have registered, OpenAI's list shape.
import { Hono } from 'hono';
import type { EdgeEnv } from '../../auth.ts';
import type { EdgeDeps } from '../../deps.ts';

export function modelRoutes(deps: EdgeDeps): Hono<EdgeEnv> {
  const app = new Hono<EdgeEnv>();
  app.get('/', async (c) => {
    const models = await deps.models.list();
    const data = await Promise.all(
      models.map(async (m) => ({
        id: m.id,
        object: 'model' as const,
        created: m.created,
        owned_by: 'mamba-serve',
        state_bytes: m.state_bytes,
        workers: await deps.models.liveWorkers(m.id),
      })),
    );
    return c.json({ object: 'list' as const, data });
  });
  return app;
}

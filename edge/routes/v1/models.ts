// GET /v1/models: the models served here, OpenAI's list shape. A model is served once a worker
// has registered it, or, with QUEUE_WITHOUT_WORKERS, DEFAULT_MODEL before that (its turns
// wait for a worker to start; what only a worker knows, its state size and layer layout, is
// null until then). mamba-serve extensions beside OpenAI's fields: state_bytes (one session's
// fixed-size state), layer_types and sliding_window (a hybrid's attention layers and window),
// workers.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import type { EdgeEnv } from '../../auth.ts';
import { ModelList } from '../../../shared/api-schemas.ts';
import type { EdgeDeps } from '../../deps.ts';
import { COMMON_ERRORS, errors, json, mount } from '../../openapi.ts';

const listModels = createRoute({
  method: 'get',
  path: '/',
  operationId: 'listModels',
  tags: ['Models'],
  summary: 'The models served here',
  responses: { 200: json(ModelList, "OpenAI's model list, with each model's state size, layer types and live workers"), ...errors(...COMMON_ERRORS) },
});

export function modelRoutes(deps: EdgeDeps): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();
  mount(app, listModels, async (c) => {
    const models = await deps.served.list();
    const data = models.map((m) => ({
      id: m.id,
      object: 'model' as const,
      created: m.created,
      owned_by: 'mamba-serve',
      state_bytes: m.state_bytes,
      layer_types: m.layer_types,
      sliding_window: m.sliding_window,
      workers: m.workers,
    }));
    // The schema is the wire contract: answering through it keeps the two from drifting apart.
    return c.json(ModelList.parse({ object: 'list', data }));
  });
  return app;
}

// GET /v1/responses/{id}/input_items: the items a response was asked with, paginated like
// OpenAI's (newest first by default), read from its version's items file.
import { Hono } from 'hono';
import { ItemListQuery } from '../../../../shared/responses-api.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { ResponseService } from '../../../response-service.ts';
import { queryOf } from '../../../validators.ts';

export function responseInputItemRoutes(responses: ResponseService): Hono<EdgeEnv> {
  const app = new Hono<EdgeEnv>();
  app.get('/:id/input_items', queryOf(ItemListQuery), async (c) => c.json(await responses.inputItems(c.get('tenant'), c.req.param('id'), c.req.valid('query'))));
  return app;
}

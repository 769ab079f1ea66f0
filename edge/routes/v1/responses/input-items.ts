// GET /v1/responses/{id}/input_items: the items a response was asked with, paginated like
// OpenAI's (newest first by default), read from its version's items file.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { ItemList, ItemListQuery } from '../../../../shared/responses-api.ts';
import type { EdgeEnv } from '../../../auth.ts';
import { COMMON_ERRORS, errors, json, mount, paramsOf, queryOf } from '../../../openapi.ts';
import type { ResponseService } from '../../../response-service.ts';
import { ResponsePath } from '../responses.ts';

const listInputItems = createRoute({
  method: 'get',
  path: '/{id}/input_items',
  operationId: 'listResponseInputItems',
  tags: ['Responses'],
  summary: 'The items a response was asked with',
  request: { params: ResponsePath, query: ItemListQuery },
  responses: { 200: json(ItemList, 'A page of items'), ...errors(...COMMON_ERRORS, 404) },
});

export function responseInputItemRoutes(responses: ResponseService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();
  mount(app, listInputItems, async (c) => c.json(await responses.inputItems(c.get('tenant'), paramsOf(c, listInputItems).id, queryOf(c, listInputItems))));
  return app;
}

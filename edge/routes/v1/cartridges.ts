// /v1/cartridges: build one from documents (a queued job: 202, then GET or the events stream
// for progress), list, get, delete, and import a `.mstate` as a ready one. A cartridge is
// immutable once ready and scoped to its tenant; sessions, chats and conversations start from it
// (docs/cartridges.md).
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { z } from 'zod';
import { Cartridge, CartridgeDeleted, CartridgeList, CartridgeListQuery, CreateCartridgeRequest, ImportCartridgeQuery } from '../../../shared/cartridges-api.ts';
import { ApiError } from '../../../shared/errors.ts';
import type { EdgeEnv } from '../../auth.ts';
import type { CartridgeService } from '../../cartridge-service.ts';
import type { EdgeDeps } from '../../deps.ts';
import { bodyOf, COMMON_ERRORS, errors, json, jsonBody, mount, paramsOf, queryOf } from '../../openapi.ts';
import { mstateContent } from './sessions/state.ts';

const tags = ['Cartridges'];
export const CartridgePath = z.object({ id: z.string().max(128) });

const createCartridge = createRoute({
  method: 'post',
  path: '/',
  operationId: 'createCartridge',
  tags,
  summary: 'Build a cartridge from documents, text or messages: a queued job (202); follow it with GET or /events',
  request: { body: jsonBody(CreateCartridgeRequest) },
  responses: { 202: json(Cartridge, 'Accepted: the input and the queued cartridge are durable; it builds in the background'), ...errors(...COMMON_ERRORS, 404, 429) },
});

const listCartridges = createRoute({
  method: 'get',
  path: '/',
  operationId: 'listCartridges',
  tags,
  summary: "A page of the tenant's cartridges, newest first",
  request: { query: CartridgeListQuery },
  responses: { 200: json(CartridgeList, 'Cartridges'), ...errors(...COMMON_ERRORS) },
});

const getCartridge = createRoute({
  method: 'get',
  path: '/{id}',
  operationId: 'getCartridge',
  tags,
  summary: 'A cartridge: status and build progress (tokens absorbed of total)',
  request: { params: CartridgePath },
  responses: { 200: json(Cartridge, 'The cartridge'), ...errors(...COMMON_ERRORS, 404) },
});

const deleteCartridge = createRoute({
  method: 'delete',
  path: '/{id}',
  operationId: 'deleteCartridge',
  tags,
  summary: 'Delete a cartridge (a running build stops); sessions started from it keep their own copy',
  request: { params: CartridgePath },
  responses: { 200: json(CartridgeDeleted, 'Deleted'), ...errors(...COMMON_ERRORS, 404) },
});

const importCartridge = createRoute({
  method: 'post',
  path: '/import',
  operationId: 'importCartridge',
  tags,
  summary: "A ready cartridge from a .mstate (a cartridge's or a session's export), checked against the served models first",
  request: { query: ImportCartridgeQuery, body: { required: true, content: mstateContent } },
  responses: { 201: json(Cartridge, 'The cartridge, ready'), ...errors(...COMMON_ERRORS, 404) },
});

export function cartridgeRoutes(deps: EdgeDeps, cartridges: CartridgeService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  mount(app, createCartridge, async (c) => {
    const body = await bodyOf(c, createCartridge);
    const created = await cartridges.create(c.get('tenant'), body);
    c.header('Location', `/v1/cartridges/${created.id}`);
    return c.json(created, 202);
  });

  mount(app, listCartridges, async (c) => {
    const { limit, after } = queryOf(c, listCartridges);
    const page = await cartridges.list(c.get('tenant'), { limit, after });
    const body: CartridgeList = { object: 'list', data: page.data, first_id: page.data[0]?.id ?? null, last_id: page.data.at(-1)?.id ?? null, has_more: page.hasMore };
    return c.json(body);
  });

  mount(
    app,
    importCartridge,
    bodyLimit({
      maxSize: deps.config.MAX_STATE_UPLOAD_BYTES,
      onError: () => {
        throw new ApiError('payload_too_large', `a state upload may be at most ${deps.config.MAX_STATE_UPLOAD_BYTES} bytes`);
      },
    }),
    async (c) => {
      const query = queryOf(c, importCartridge);
      const bytes = new Uint8Array(await c.req.arrayBuffer());
      const created = await cartridges.importState(c.get('tenant'), bytes, { name: query.name, model: query.model });
      c.header('Location', `/v1/cartridges/${created.id}`);
      return c.json(created, 201);
    },
  );

  mount(app, getCartridge, async (c) => c.json(await cartridges.view(c.get('tenant'), paramsOf(c, getCartridge).id)));

  mount(app, deleteCartridge, async (c) => {
    const { id } = paramsOf(c, deleteCartridge);
    await cartridges.delete(c.get('tenant'), id);
    return c.json(CartridgeDeleted.parse({ id, object: 'cartridge.deleted', deleted: true }));
  });

  return app;
}

// The edge's HTTP API as one Hono app, built from its dependencies. No I/O here and nothing
// about the runtime: edge/node.ts serves it with @hono/node-server, edge/lambda.ts with Lambda
// response streaming, and tests call app.request().
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { ApiError } from '../shared/errors.ts';
import { authenticate, type EdgeEnv } from './auth.ts';
import type { EdgeDeps } from './deps.ts';
import { errorResponse, toApiError } from './http-errors.ts';
import { mount, openApiInfo } from './openapi.ts';
import { healthRoutes } from './routes/health.ts';
import { metricsRoutes } from './routes/metrics.ts';
import { playgroundRoutes } from './routes/playground.ts';
import { ConversationService } from './conversation-service.ts';
import { ResponseService } from './response-service.ts';
import { CartridgeService } from './cartridge-service.ts';
import { cartridgeRoutes } from './routes/v1/cartridges.ts';
import { cartridgeEventRoutes } from './routes/v1/cartridges/events.ts';
import { cartridgeStateRoutes } from './routes/v1/cartridges/state.ts';
import { chatCompletionRoutes } from './routes/v1/chat/completions.ts';
import { conversationRoutes } from './routes/v1/conversations.ts';
import { conversationItemRoutes } from './routes/v1/conversations/items.ts';
import { responseRoutes } from './routes/v1/responses.ts';
import { responseInputItemRoutes } from './routes/v1/responses/input-items.ts';
import { modelRoutes } from './routes/v1/models.ts';
import { sessionRoutes } from './routes/v1/sessions.ts';
import { sessionStateRoutes } from './routes/v1/sessions/state.ts';
import { sessionTurnRoutes } from './routes/v1/sessions/turns.ts';
import { SessionService } from './session-service.ts';
import { TurnService } from './turn-service.ts';

const openApiDocument = createRoute({
  method: 'get',
  path: '/openapi.json',
  operationId: 'openApiDocument',
  tags: ['Operations'],
  security: [],
  summary: 'This document: OpenAPI 3.1, generated from the zod schemas the server validates with',
  responses: { 200: { description: 'The OpenAPI document', content: { 'application/json': { schema: z.record(z.string(), z.unknown()) } } } },
});

/** The API's version in the OpenAPI document (the paths carry the major: /v1). */
export const API_VERSION = '1.0.0';

export function createApp(deps: EdgeDeps): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();
  const sessions = new SessionService(deps);
  const turns = new TurnService(deps);
  const cartridges = new CartridgeService(deps, sessions);
  const responses = new ResponseService(deps, sessions, turns, cartridges);
  const conversations = new ConversationService(deps, sessions, turns, cartridges);

  app.onError((err, c) => errorResponse(c, toApiError(err, deps.log)));
  app.notFound((c) => errorResponse(c, new ApiError('route_not_found', `no route ${c.req.method} ${c.req.path}`)));

  app.route('/', healthRoutes(deps));
  app.route('/', metricsRoutes(deps));
  if (deps.config.PLAYGROUND) app.route('/', playgroundRoutes());

  const jsonLimit = bodyLimit({
    maxSize: deps.config.MAX_REQUEST_BYTES,
    onError: () => {
      throw new ApiError('payload_too_large', `request body is larger than ${deps.config.MAX_REQUEST_BYTES} bytes`);
    },
  });
  // State uploads have their own, larger limit (edge/routes/v1/sessions/state.ts, cartridges.ts).
  const stateUpload = (method: string, path: string) => (method === 'PUT' && path.endsWith('/state')) || (method === 'POST' && path === '/v1/cartridges/import');
  app.use('/v1/*', (c, next) => (stateUpload(c.req.method, c.req.path) ? next() : jsonLimit(c, next)));
  app.use('/v1/*', authenticate(deps.apiKeys));

  app.route('/v1/sessions', sessionRoutes(deps, sessions, turns, cartridges));
  app.route('/v1/sessions', sessionStateRoutes(deps, sessions));
  app.route('/v1/sessions', sessionTurnRoutes(deps, sessions, turns));
  app.route('/v1/chat', chatCompletionRoutes(deps, sessions, turns, cartridges));
  app.route('/v1/models', modelRoutes(deps));
  app.route('/v1/responses', responseRoutes(deps, responses, turns));
  app.route('/v1/responses', responseInputItemRoutes(responses));
  app.route('/v1/conversations', conversationRoutes(conversations));
  app.route('/v1/conversations', conversationItemRoutes(conversations));
  app.route('/v1/cartridges', cartridgeRoutes(deps, cartridges));
  app.route('/v1/cartridges', cartridgeStateRoutes(cartridges));
  app.route('/v1/cartridges', cartridgeEventRoutes(deps, cartridges));

  // Built on first request (the routes above are all registered by then), then kept.
  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer', description: 'An API key of API_KEYS (none when the server runs without keys)' });
  let document: unknown;
  mount(app, openApiDocument, (c) => c.json((document ??= app.getOpenAPI31Document(openApiInfo(API_VERSION)))));
  return app;
}

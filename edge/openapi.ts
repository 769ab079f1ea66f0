// The HTTP API's OpenAPI 3.1 description, generated from the zod schemas the routes validate
// with (@hono/zod-openapi builds the document). Every route is declared once with createRoute
// (method, path, parameters, body, answers) and mounted with `mount`, which both registers that
// declaration for the document and routes the handler at the same method and path, so a route
// cannot be served undescribed or described at another path. Handlers read what the
// declaration says through `paramsOf`, `queryOf` and `bodyOf`, with the declaration's schemas.
//
// Why not the library's own `app.openapi(route, handler)`: its JSON body validator answers 415 to
// any other Content-Type (`curl -d` sends a form type, and the README's examples use it) and
// decodes bodies leniently (invalid UTF-8 would reach the tokenizer as U+FFFD); ours is strict
// (edge/request-body.ts) and answers every failure in our error shape.
import { OpenAPIHono, type RouteConfig } from '@hono/zod-openapi';
import type { Context, Env, MiddlewareHandler } from 'hono';
import { z } from 'zod';
import { ErrorResponse } from '../shared/api-schemas.ts';
import { ERROR_STATUS, RETRYABLE_CODES, type ErrorCode } from '../shared/errors.ts';
import { readJsonBody, validationError } from './request-body.ts';

type SchemaOutput<S> = S extends z.ZodType ? z.output<S> : never;
type ParamsOf<R> = R extends { request: { params: infer S } } ? SchemaOutput<S> : never;
type QueryOf<R> = R extends { request: { query: infer S } } ? SchemaOutput<S> : never;
type HeadersOf<R> = R extends { request: { headers: infer S } } ? SchemaOutput<S> : never;
type JsonBodyOf<R> = R extends { request: { body: { content: { 'application/json': { schema: infer S } } } } } ? SchemaOutput<S> : never;

type Handler<E extends Env> = (c: Context<E>) => Response | Promise<Response>;

/** A route's OpenAPI path (`/{id}`) as Hono routes it (`/:id`). */
export function honoPath(openApiPath: string): string {
  return openApiPath.replace(/\{([^}]+)\}/g, ':$1');
}

/** Describe `route` in `app`'s document and serve it with `handler` (after any `middleware`). */
export function mount<E extends Env, R extends RouteConfig>(app: OpenAPIHono<E>, route: R, ...handlers: [...MiddlewareHandler<E>[], Handler<E>]): void {
  app.openAPIRegistry.registerPath(route);
  // Hono's overloads type fixed handler counts only; the handlers are typed by this signature.
  (app.on as (method: string, path: string, ...h: unknown[]) => unknown)(route.method.toUpperCase(), honoPath(route.path), ...handlers);
}

export function paramsOf<R extends RouteConfig>(c: Context, route: R): ParamsOf<R> {
  const schema = route.request?.params as z.ZodType | undefined;
  if (!schema) throw new Error(`route ${route.method} ${route.path} declares no path parameters`);
  const parsed = schema.safeParse(c.req.param());
  if (!parsed.success) throw validationError(parsed.error, 'path');
  return parsed.data as ParamsOf<R>;
}

export function queryOf<R extends RouteConfig>(c: Context, route: R): QueryOf<R> {
  const schema = route.request?.query as z.ZodType | undefined;
  if (!schema) throw new Error(`route ${route.method} ${route.path} declares no query`);
  const parsed = schema.safeParse(c.req.query());
  if (!parsed.success) throw validationError(parsed.error, 'query');
  return parsed.data as QueryOf<R>;
}

/** The request headers the route declares, validated (names lowercase, as declared). */
export function headersOf<R extends RouteConfig>(c: Context, route: R): HeadersOf<R> {
  const schema = route.request?.headers as z.ZodType | undefined;
  if (!schema) throw new Error(`route ${route.method} ${route.path} declares no headers`);
  const parsed = schema.safeParse(c.req.header());
  if (!parsed.success) throw validationError(parsed.error, 'header');
  return parsed.data as HeadersOf<R>;
}

/** The JSON body the route declares, read strictly (edge/request-body.ts). */
export function bodyOf<R extends RouteConfig>(c: Context, route: R): Promise<JsonBodyOf<R>> {
  const schema = (route.request?.body?.content as Record<string, { schema?: unknown }> | undefined)?.['application/json']?.schema;
  if (!(schema instanceof z.ZodType)) throw new Error(`route ${route.method} ${route.path} declares no JSON body`);
  return readJsonBody(c, schema) as Promise<JsonBodyOf<R>>;
}

// ---------------------------------------------------------------------------- building blocks

/**
 * A JSON request body; required unless `{}` would do (an absent body is read as `{}`). Any
 * Content-Type is accepted (README: `curl -d` works without -H).
 */
export function jsonBody<S extends z.ZodType>(schema: S, description?: string) {
  return { required: !schema.safeParse({}).success, ...(description ? { description } : {}), content: { 'application/json': { schema } } } as const;
}

/** A JSON answer. */
export function json<S extends z.ZodType>(schema: S, description: string) {
  return { description, content: { 'application/json': { schema } } } as const;
}

/** An answer that is JSON, or server-sent events when the request asks to stream. */
export function jsonOrEvents<S extends z.ZodType>(schema: S, description: string, events: string) {
  return {
    description,
    content: {
      'application/json': { schema },
      'text/event-stream': { schema: z.string().meta({ description: events }) },
    },
  } as const;
}

/** The error answers of `statuses`, each listing the codes it carries (shared/errors.ts). */
export function errors(...statuses: number[]) {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const [code, status] of Object.entries(ERROR_STATUS) as Array<[ErrorCode, number]>) byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  return Object.fromEntries(
    statuses.map((status) => {
      const codes = byStatus.get(status) ?? [];
      const listed = codes.map((code) => `\`${code}\`${RETRYABLE_CODES.has(code) ? ' (retryable)' : ''}`).join(', ');
      return [status, json(ErrorResponse, `Error (\`x-should-retry\` says whether to retry; \`Retry-After\` how long to wait). Codes with this status: ${listed}.`)];
    }),
  );
}

/** Errors any /v1 route can answer: validation, auth, body size, an outage of Redis or the store. */
export const COMMON_ERRORS = [400, 401, 413, 503] as const;

/** Errors of routes that run a turn: plus busy, queue full, no worker, deadline, failure. */
export const TURN_ERRORS = [...COMMON_ERRORS, 404, 409, 422, 429, 500, 504] as const;

/** The Idempotency-Key header: the same key and body is the same turn (README, "Turns"). */
export const IdempotencyHeader = z.string().max(255).optional().meta({ description: 'The same key with the same body is the same turn, answered from its stored result; another body with it is 422 idempotency_key_reused.' });

export function openApiInfo(version: string) {
  return {
    openapi: '3.1.0',
    info: {
      title: 'mamba-serve',
      version,
      description:
        'Serves Mamba language models to agents: per-session recurrent states checkpointed after every turn, OpenAI-compatible chat, Responses and Conversations APIs, state cartridges and a durable prefix cache. Generated from the zod schemas the server validates with.',
    },
    security: [{ bearer: [] }],
  };
}

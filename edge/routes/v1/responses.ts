// /v1/responses: create (JSON or SSE), retrieve (also as a replayed stream), delete. The
// service (edge/response-service.ts) decides which session version a response continues; the
// events are built in edge/response-events.ts and written through edge/sse.ts.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { z } from 'zod';
import { ApiError, isErrorCode } from '../../../shared/errors.ts';
import { responseObject, viewOfRecord, viewOfResult, type ResponseView } from '../../../shared/response-record.ts';
import { CreateResponseRequest, ResponseDeleted, ResponseObject, RetrieveResponseQuery, type ResponseStreamEvent } from '../../../shared/responses-api.ts';
import type { EdgeEnv } from '../../auth.ts';
import type { EdgeDeps } from '../../deps.ts';
import { toApiError } from '../../http-errors.ts';
import { bodyOf, COMMON_ERRORS, errors, IdempotencyHeader, json, jsonBody, jsonOrEvents, mount, paramsOf, queryOf, TURN_ERRORS } from '../../openapi.ts';
import { ResponseEvents } from '../../response-events.ts';
import type { ResponseService, StartedResponse } from '../../response-service.ts';
import { sseResponse } from '../../sse.ts';
import { idempotencyKey } from '../../turn-params.ts';
import type { SubmittedTurn, TurnService } from '../../turn-service.ts';
import { serverTiming } from './sessions/turns.ts';

const tags = ['Responses'];
export const ResponsePath = z.object({ id: z.string().max(600) });
const EVENTS = 'Responses API events named by their type, each with sequence_number (also the SSE id)';

const createResponse = createRoute({
  method: 'post',
  path: '/',
  operationId: 'createResponse',
  tags,
  summary: 'Generate a response: a new chain, a continuation of previous_response_id, or a turn of a conversation',
  request: {
    headers: z.object({
      'idempotency-key': IdempotencyHeader,
      'last-event-id': z.string().optional().meta({ description: 'With the same Idempotency-Key and stream: resume after this sequence number' }),
    }),
    body: jsonBody(CreateResponseRequest),
  },
  responses: { 200: jsonOrEvents(ResponseObject, 'The response, durable when stored', EVENTS), ...errors(...TURN_ERRORS) },
});

const getResponse = createRoute({
  method: 'get',
  path: '/{id}',
  operationId: 'getResponse',
  tags,
  summary: 'A response (stream=true replays its events)',
  request: { params: ResponsePath, query: RetrieveResponseQuery },
  responses: { 200: jsonOrEvents(ResponseObject, 'The response as it stands', EVENTS), ...errors(...COMMON_ERRORS, 404) },
});

const deleteResponse = createRoute({
  method: 'delete',
  path: '/{id}',
  operationId: 'deleteResponse',
  tags,
  summary: 'Forget a response (its session version stays)',
  request: { params: ResponsePath },
  responses: { 200: json(ResponseDeleted, 'Deleted'), ...errors(...COMMON_ERRORS, 404, 409) },
});

/** Last-Event-ID of a resumed response stream: the sequence number of the last event the client has. */
function lastSequence(c: Context): number | undefined {
  const header = c.req.header('last-event-id');
  if (header === undefined || header === '') return undefined;
  if (!/^\d{1,9}$/.test(header)) throw new ApiError('invalid_request', 'Last-Event-ID of a response stream must be a sequence number', { details: [{ path: 'Last-Event-ID', message: 'not a number' }] });
  return Number(header);
}

export function responseRoutes(deps: EdgeDeps, responses: ResponseService, turns: TurnService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  /** A finished turn's view: a stored response's record (what GET will answer), else the turn's result. */
  async function finished(tenant: string, started: Pick<StartedResponse, 'spec' | 'session'>, turnId: string, result: Parameters<typeof viewOfResult>[3]): Promise<ResponseView> {
    if (started.spec.store) {
      const record = await responses.records.read(tenant, started.spec.id);
      if (record) return viewOfRecord(record);
    }
    return viewOfResult(started.spec, started.session, turnId, result);
  }

  /**
   * The event stream of a response: a running turn followed live (`turn`), or a finished one
   * replayed (`done`). Events numbered up to `after` are skipped (a resumed stream).
   */
  function stream(c: Context<EdgeEnv>, initial: ResponseView, source: { turn: SubmittedTurn } | { done: ResponseView }, after: number | undefined) {
    const events = new ResponseEvents(initial);
    return sseResponse(
      c,
      async (sse) => {
        const emit = async (list: ResponseStreamEvent[]) => {
          for (const e of list) if (after === undefined || e.sequence_number > after) await sse.send(e, { event: e.type, id: String(e.sequence_number) });
        };
        await emit(events.start());
        if ('done' in source) {
          if (source.done.status === 'failed') {
            const code = source.done.error?.code;
            throw new ApiError(isErrorCode(code) ? code : 'turn_failed', source.done.error?.message ?? 'the response failed');
          }
          if (source.done.outputText) await emit([events.delta(source.done.outputText)]);
          await emit(events.finish(source.done));
          return;
        }
        for await (const out of turns.follow(source.turn, { signal: sse.signal })) {
          if (out.type === 'text') await emit([events.delta(out.text)]);
          else await emit(events.finish(await finished(c.get('tenant'), initial, source.turn.turnId, out.result)));
        }
      },
      async (sse, error) => {
        const e = events.fail(toApiError(error, deps.log));
        await sse.send(e, { event: e.type, id: String(e.sequence_number) });
      },
      { keepAliveMs: deps.config.SSE_KEEPALIVE_MS },
    );
  }

  mount(app, createResponse, async (c) => {
    const tenant = c.get('tenant');
    const body = await bodyOf(c, createResponse);
    const started = await responses.create(tenant, body, idempotencyKey(c));
    if (started.session !== null) c.header('X-Session-Id', started.session);
    if (started.record) {
      const view = viewOfRecord(started.record);
      return body.stream ? stream(c, view, { done: view }, lastSequence(c)) : c.json(responseObject(view));
    }
    const turn = started.turn!;
    c.header('X-Turn-Id', turn.turnId);
    const initial: ResponseView = { spec: started.spec, status: 'in_progress', session: started.session, version: null, turnId: turn.turnId };
    if (body.stream) return stream(c, initial, { turn }, lastSequence(c));
    const result = await turns.result(turn, c.req.raw.signal);
    if (result.version !== null) c.header('X-Session-Version', String(result.version));
    const timing = serverTiming(result);
    if (timing) c.header('Server-Timing', timing);
    return c.json(responseObject(await finished(tenant, started, turn.turnId, result)));
  });

  mount(app, getResponse, async (c) => {
    const { view, turn } = await responses.view(c.get('tenant'), paramsOf(c, getResponse).id);
    const q = queryOf(c, getResponse);
    if (q.stream !== 'true') return c.json(responseObject(view));
    const initial: ResponseView = { spec: view.spec, status: 'in_progress', session: view.session, version: null, turnId: view.turnId };
    return stream(c, initial, turn ? { turn } : { done: view }, q.starting_after ?? lastSequence(c));
  });

  mount(app, deleteResponse, async (c) => {
    const id = paramsOf(c, deleteResponse).id;
    await responses.delete(c.get('tenant'), id);
    return c.json({ id, object: 'response' as const, deleted: true as const });
  });

  return app;
}

// POST /v1/sessions/{id}/turns: the native turn. Input on top of the session's head, the reply
// back as JSON, or as SSE `token` events then a `done` event whose data is the JSON answer.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { TurnRequest, TurnResponse, type Message } from '../../../../shared/api-schemas.ts';
import { ApiError } from '../../../../shared/errors.ts';
import type { TurnResult } from '../../../../shared/jobs.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { EdgeDeps } from '../../../deps.ts';
import { toApiError } from '../../../http-errors.ts';
import { requestFingerprint } from '../../../idempotency.ts';
import { bodyOf, errors, headersOf, IdempotencyHeader, jsonBody, jsonOrEvents, mount, paramsOf, TURN_ERRORS } from '../../../openapi.ts';
import type { SessionService } from '../../../session-service.ts';
import { sseResponse } from '../../../sse.ts';
import { checkMaxTokens, idempotencyKey, stopList } from '../../../turn-params.ts';
import type { TurnService } from '../../../turn-service.ts';
import { SessionPath } from '../sessions.ts';

const runTurn = createRoute({
  method: 'post',
  path: '/{id}/turns',
  operationId: 'runTurn',
  tags: ['Sessions'],
  summary: "A turn: input absorbed on top of the session's head, a reply generated, the new state stored as the next version",
  request: {
    params: SessionPath,
    headers: z.object({
      'idempotency-key': IdempotencyHeader,
      'last-event-id': z
        .string()
        .regex(/^\d{1,9}$/, 'must be the id of an event of this stream')
        .optional()
        .meta({ description: 'With the same Idempotency-Key and stream: resume after this event (ids count the characters of the reply sent so far)' }),
    }),
    body: jsonBody(TurnRequest),
  },
  responses: {
    200: jsonOrEvents(TurnResponse, 'The turn, its new version durable before this answer', '`token` events ({text}), then `done` (the JSON answer) or `error`'),
    ...errors(...TURN_ERRORS),
  },
});

export function turnResponse(r: TurnResult): z.output<typeof TurnResponse> {
  if (r.session === null || r.version === null) throw new Error('a session turn produced no version');
  return {
    turn_id: r.turn_id,
    session_id: r.session,
    version: r.version,
    output: r.output,
    finish_reason: r.finish_reason,
    usage: r.usage,
    ...(r.timings ? { timings: r.timings } : {}),
  };
}

/** The worker's timings as a Server-Timing header (browsers' and proxies' standard place for them). */
export function serverTiming(r: TurnResult): string | undefined {
  const t = r.timings;
  if (!t) return undefined;
  return (['queue', 'load', 'prefill', 'decode', 'checkpoint'] as const).map((k) => `${k};dur=${t[`${k}_ms`].toFixed(1)}`).join(', ');
}

export function sessionTurnRoutes(deps: EdgeDeps, sessions: SessionService, turns: TurnService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  mount(app, runTurn, async (c) => {
    const tenant = c.get('tenant');
    const id = paramsOf(c, runTurn).id;
    const body = await bodyOf(c, runTurn);
    const lastEventId = headersOf(c, runTurn)['last-event-id'];
    const afterChars = lastEventId !== undefined ? Number(lastEventId) : undefined;
    checkMaxTokens(body.max_tokens, deps.config, 'max_tokens');
    const { manifest } = await sessions.get(tenant, id);
    const key = idempotencyKey(c);
    const requestHash = requestFingerprint('turn', body);
    // A retry of a turn that already ran is answered from it, before if_version is compared
    // with a head that the turn itself has moved.
    const replayed = await turns.replay({ tenant, session: id, model: manifest.model, idempotencyKey: key, requestHash });
    if (!replayed && body.if_version !== undefined && body.if_version !== manifest.head) {
      throw new ApiError('version_mismatch', `session ${id} is at version ${manifest.head}, not ${body.if_version}`, { details: { head: manifest.head } });
    }
    const messages: Message[] = typeof body.input === 'string' ? [{ role: 'user', content: body.input }] : body.input;
    const turn =
      replayed ??
      (await turns.submit({
        tenant,
        session: id,
        model: manifest.model,
        kind: 'turn',
        base: { kind: 'head', if_version: body.if_version ?? null },
        messages,
        maxTokens: body.max_tokens,
        sampling: { temperature: body.temperature, top_p: body.top_p, top_k: body.top_k, seed: body.seed },
        stop: stopList(body.stop),
        onBusy: body.on_busy,
        incarnation: manifest.incarnation,
        idempotencyKey: key,
        requestHash,
      }));
    c.header('X-Turn-Id', turn.turnId);
    c.header('X-Session-Id', id);
    if (!body.stream) {
      const result = await turns.result(turn, c.req.raw.signal);
      c.header('X-Session-Version', String(result.version));
      const timing = serverTiming(result);
      if (timing) c.header('Server-Timing', timing);
      return c.json(turnResponse(result));
    }
    return sseResponse(
      c,
      async (sse) => {
        for await (const out of turns.follow(turn, { afterChars, signal: sse.signal })) {
          if (out.type === 'text') await sse.send({ text: out.text }, { event: 'token', id: out.id });
          else await sse.send(turnResponse(out.result), { event: 'done', id: out.id });
        }
      },
      async (sse, error) => {
        await sse.send(toApiError(error, deps.log).toBody(), { event: 'error' });
      },
      { keepAliveMs: deps.config.SSE_KEEPALIVE_MS },
    );
  });

  return app;
}

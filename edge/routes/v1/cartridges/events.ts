// GET /v1/cartridges/{id}/events: a cartridge's build as server-sent events: `progress` (the
// cartridge object, whenever its status or tokens absorbed change), then `done` (ready or
// failed), or `error`. The build's progress is polled from Redis; the stream ends by itself at
// the build's deadline (CARTRIDGE_TIMEOUT_MS), and a client that reconnects picks up from now.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { Cartridge } from '../../../../shared/cartridges-api.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { CartridgeService } from '../../../cartridge-service.ts';
import type { EdgeDeps } from '../../../deps.ts';
import { toApiError } from '../../../http-errors.ts';
import { COMMON_ERRORS, errors, mount, paramsOf } from '../../../openapi.ts';
import { sseResponse } from '../../../sse.ts';
import { CartridgePath } from '../cartridges.ts';

/** How often a stream looks at the build's progress. */
export const PROGRESS_POLL_MS = 250;

const cartridgeEvents = createRoute({
  method: 'get',
  path: '/{id}/events',
  operationId: 'cartridgeEvents',
  tags: ['Cartridges'],
  summary: "A cartridge's build progress as server-sent events",
  request: { params: CartridgePath },
  responses: {
    200: {
      description: '`progress` events (the cartridge object), then `done` (ready or failed) or `error`',
      content: { 'text/event-stream': { schema: z.string().meta({ description: `Each event's data is a ${'Cartridge'} object (or an error)` }) } },
    },
    ...errors(...COMMON_ERRORS, 404),
  },
});

export function cartridgeEventRoutes(deps: EdgeDeps, cartridges: CartridgeService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();
  mount(app, cartridgeEvents, async (c) => {
    const tenant = c.get('tenant');
    const { id } = paramsOf(c, cartridgeEvents);
    let view: Cartridge = await cartridges.view(tenant, id); // 404 before the stream starts
    const endAt = Date.now() + deps.config.CARTRIDGE_TIMEOUT_MS + 60_000;
    return sseResponse(
      c,
      async (sse) => {
        let sent = '';
        for (;;) {
          const finished = view.status === 'ready' || view.status === 'failed';
          const now = JSON.stringify(view);
          if (finished) {
            await sse.send(view, { event: 'done' });
            return;
          }
          if (now !== sent) await sse.send(view, { event: 'progress' });
          sent = now;
          if (sse.closed || Date.now() > endAt) return;
          await new Promise((r) => setTimeout(r, PROGRESS_POLL_MS));
          view = await cartridges.view(tenant, id);
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

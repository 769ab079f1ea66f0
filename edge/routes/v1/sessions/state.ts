// /v1/sessions/{id}/state: export a version as `.mstate`, or import one as the new head.
// Memory a client can carry away and bring back; an import is checked (format, checksum,
// model fingerprint and layout) before anything is written.
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { StateImported, StateQuery } from '../../../../shared/api-schemas.ts';
import { ApiError } from '../../../../shared/errors.ts';
import { MSTATE_MEDIA_TYPE } from '../../../../shared/mstate.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { EdgeDeps } from '../../../deps.ts';
import type { SessionService } from '../../../session-service.ts';
import { queryOf, sessionParam } from '../../../validators.ts';

export function sessionStateRoutes(deps: EdgeDeps, sessions: SessionService): Hono<EdgeEnv> {
  const app = new Hono<EdgeEnv>();

  app.get('/:id/state', sessionParam, queryOf(StateQuery), async (c) => {
    const id = c.req.valid('param').id;
    const { bytes, entry } = await sessions.exportState(c.get('tenant'), id, c.req.valid('query').version);
    return c.body(bytes as Uint8Array<ArrayBuffer>, 200, {
      'Content-Type': MSTATE_MEDIA_TYPE,
      'Content-Length': String(bytes.byteLength),
      'Content-Disposition': `attachment; filename="${id}-v${entry.version}.mstate"`,
      'X-Session-Version': String(entry.version),
    });
  });

  app.put(
    '/:id/state',
    sessionParam,
    bodyLimit({
      maxSize: deps.config.MAX_STATE_UPLOAD_BYTES,
      onError: () => {
        throw new ApiError('payload_too_large', `a state upload may be at most ${deps.config.MAX_STATE_UPLOAD_BYTES} bytes`);
      },
    }),
    async (c) => {
      const id = c.req.valid('param').id;
      const bytes = new Uint8Array(await c.req.arrayBuffer());
      const { entry } = await sessions.importState(c.get('tenant'), id, bytes);
      const body = StateImported.parse({ id, version: entry.version, tokens_absorbed: entry.tokens_absorbed, state_bytes: entry.state_bytes });
      return c.json(body, 201);
    },
  );

  return app;
}

// /v1/sessions/{id}/state: export a version as `.mstate`, or import one as the new head.
// Memory a client can carry away and bring back; an import is checked (format, checksum,
// model fingerprint and layout) before anything is written.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { z } from 'zod';
import { StateImported, StateQuery } from '../../../../shared/api-schemas.ts';
import { ApiError } from '../../../../shared/errors.ts';
import { MSTATE_MEDIA_TYPE } from '../../../../shared/mstate.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { EdgeDeps } from '../../../deps.ts';
import { COMMON_ERRORS, errors, json, mount, paramsOf, queryOf } from '../../../openapi.ts';
import type { SessionService } from '../../../session-service.ts';
import { SessionPath } from '../sessions.ts';

const tags = ['Sessions'];

/** A `.mstate` file in a request or answer (shared/mstate.ts). */
export const mstateContent = { [MSTATE_MEDIA_TYPE]: { schema: z.string().meta({ format: 'binary', description: 'A .mstate file (shared/mstate.ts)' }) } };

const exportState = createRoute({
  method: 'get',
  path: '/{id}/state',
  operationId: 'exportSessionState',
  tags,
  summary: "A version's state as .mstate (the head by default)",
  request: { params: SessionPath, query: StateQuery },
  responses: { 200: { description: 'The .mstate bytes; X-Session-Version names the version', content: mstateContent }, ...errors(...COMMON_ERRORS, 404) },
});

const importState = createRoute({
  method: 'put',
  path: '/{id}/state',
  operationId: 'importSessionState',
  tags,
  summary: "Import a .mstate as the session's new head (checked against the session's model first)",
  request: { params: SessionPath, body: { required: true, content: mstateContent } },
  responses: { 201: json(StateImported, 'The new head, durable'), ...errors(...COMMON_ERRORS, 404, 409) },
});

export function sessionStateRoutes(deps: EdgeDeps, sessions: SessionService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  mount(app, exportState, async (c) => {
    const id = paramsOf(c, exportState).id;
    const { bytes, entry } = await sessions.exportState(c.get('tenant'), id, queryOf(c, exportState).version);
    return c.body(bytes as Uint8Array<ArrayBuffer>, 200, {
      'Content-Type': MSTATE_MEDIA_TYPE,
      'Content-Length': String(bytes.byteLength),
      'Content-Disposition': `attachment; filename="${id}-v${entry.version}.mstate"`,
      'X-Session-Version': String(entry.version),
    });
  });

  mount(
    app,
    importState,
    bodyLimit({
      maxSize: deps.config.MAX_STATE_UPLOAD_BYTES,
      onError: () => {
        throw new ApiError('payload_too_large', `a state upload may be at most ${deps.config.MAX_STATE_UPLOAD_BYTES} bytes`);
      },
    }),
    async (c) => {
      const id = paramsOf(c, importState).id;
      const bytes = new Uint8Array(await c.req.arrayBuffer());
      const { entry } = await sessions.importState(c.get('tenant'), id, bytes);
      const body: z.output<typeof StateImported> = StateImported.parse({ id, version: entry.version, tokens_absorbed: entry.tokens_absorbed, state_bytes: entry.state_bytes });
      return c.json(body, 201);
    },
  );

  return app;
}

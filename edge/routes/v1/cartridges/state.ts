// GET /v1/cartridges/{id}/state: a ready cartridge's state as `.mstate`, to carry to another
// deployment (POST /v1/cartridges/import there) or to import as a session's head.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { MSTATE_MEDIA_TYPE } from '../../../../shared/mstate.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { CartridgeService } from '../../../cartridge-service.ts';
import { COMMON_ERRORS, errors, mount, paramsOf } from '../../../openapi.ts';
import { CartridgePath } from '../cartridges.ts';
import { mstateContent } from '../sessions/state.ts';

const exportCartridge = createRoute({
  method: 'get',
  path: '/{id}/state',
  operationId: 'exportCartridgeState',
  tags: ['Cartridges'],
  summary: "A ready cartridge's state as .mstate",
  request: { params: CartridgePath },
  responses: { 200: { description: 'The .mstate bytes', content: mstateContent }, ...errors(...COMMON_ERRORS, 404, 409) },
});

export function cartridgeStateRoutes(cartridges: CartridgeService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();
  mount(app, exportCartridge, async (c) => {
    const { id } = paramsOf(c, exportCartridge);
    const { bytes } = await cartridges.exportState(c.get('tenant'), id);
    return c.body(bytes as Uint8Array<ArrayBuffer>, 200, {
      'Content-Type': MSTATE_MEDIA_TYPE,
      'Content-Length': String(bytes.byteLength),
      'Content-Disposition': `attachment; filename="${id}.mstate"`,
    });
  });
  return app;
}

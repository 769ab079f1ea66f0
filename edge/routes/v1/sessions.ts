// /v1/sessions: create, read, list versions, fork, delete.
import { Hono } from 'hono';
import { CreateSessionRequest, ForkSessionRequest, VersionListQuery, type SessionCreated, type VersionList } from '../../../shared/api-schemas.ts';
import { headEntry, type SessionManifest } from '../../../shared/session-manifest.ts';
import type { EdgeEnv } from '../../auth.ts';
import type { EdgeDeps } from '../../deps.ts';
import { readJsonBody } from '../../request-body.ts';
import { newSessionId, sessionInfo, versionInfo, type SessionService } from '../../session-service.ts';
import type { TurnService } from '../../turn-service.ts';
import { queryOf, sessionParam } from '../../validators.ts';

function created(m: SessionManifest): SessionCreated {
  return { id: m.session, model: m.model, version: m.head, tokens_absorbed: headEntry(m).tokens_absorbed };
}

export function sessionRoutes(deps: EdgeDeps, sessions: SessionService, turns: TurnService): Hono<EdgeEnv> {
  const app = new Hono<EdgeEnv>();

  app.post('/', async (c) => {
    const tenant = c.get('tenant');
    const body = await readJsonBody(c, CreateSessionRequest);
    const id = body.id ?? newSessionId();
    let manifest: SessionManifest;
    if (body.from) {
      manifest = (
        await sessions.fork({ tenant, source: body.from.session_id, version: body.from.version, target: id, model: body.model, metadata: body.metadata ?? {} })
      ).manifest;
    } else {
      const model = await sessions.resolveModel(body.model);
      if (body.system !== undefined) await deps.served.assertRunnable(model, 'absorb the system prompt');
      manifest = (await sessions.create({ tenant, session: id, model, metadata: body.metadata ?? {} })).manifest;
    }
    if (body.system !== undefined) {
      try {
        const turn = await turns.submit({
          tenant,
          session: id,
          model: manifest.model,
          kind: 'absorb',
          base: { kind: 'head', if_version: manifest.head },
          messages: [{ role: 'system', content: body.system }],
          maxTokens: 0,
          sampling: { temperature: 0, top_p: 1, top_k: 0 },
          stop: [],
          onBusy: 'reject',
        });
        await turns.result(turn, c.req.raw.signal);
      } catch (e) {
        // A session that could not take its system prompt is not the session asked for.
        await sessions.delete(tenant, id).catch(() => {});
        throw e;
      }
      manifest = (await sessions.get(tenant, id)).manifest;
    }
    c.header('Location', `/v1/sessions/${id}`);
    return c.json(created(manifest), 201);
  });

  app.get('/:id', sessionParam, async (c) => {
    const { manifest } = await sessions.get(c.get('tenant'), c.req.valid('param').id);
    return c.json(sessionInfo(manifest));
  });

  // Paginated: a long session's older entries live in manifest pages, read only as far as asked.
  app.get('/:id/versions', sessionParam, queryOf(VersionListQuery), async (c) => {
    const tenant = c.get('tenant');
    const { manifest } = await sessions.get(tenant, c.req.valid('param').id);
    const { limit, order, after } = c.req.valid('query');
    const page = await deps.sessions.listVersions(tenant, manifest.session, manifest, { limit, order, ...(after === undefined ? {} : { after }) });
    const body: VersionList = { session_id: manifest.session, head: manifest.head, data: page.data.map(versionInfo), has_more: page.hasMore };
    return c.json(body);
  });

  app.post('/:id/fork', sessionParam, async (c) => {
    const tenant = c.get('tenant');
    const body = await readJsonBody(c, ForkSessionRequest);
    const target = body.id ?? newSessionId();
    const { manifest } = await sessions.fork({
      tenant,
      source: c.req.valid('param').id,
      version: body.version,
      target,
      model: undefined,
      metadata: body.metadata ?? {},
    });
    c.header('Location', `/v1/sessions/${target}`);
    return c.json(created(manifest), 201);
  });

  app.delete('/:id', sessionParam, async (c) => {
    const id = c.req.valid('param').id;
    const removed = await sessions.delete(c.get('tenant'), id);
    return c.json({ id, deleted: true as const, versions_removed: removed });
  });

  return app;
}

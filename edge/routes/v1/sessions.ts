// /v1/sessions: create, read, list versions, fork, delete.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import {
  CreateSessionRequest,
  ForkSessionRequest,
  SessionCreated,
  SessionDeleted,
  SessionId,
  SessionInfo,
  SessionList,
  SessionListQuery,
  VersionList,
  VersionListQuery,
} from '../../../shared/api-schemas.ts';
import { ApiError } from '../../../shared/errors.ts';
import { headEntry, type SessionManifest } from '../../../shared/session-manifest.ts';
import type { EdgeEnv } from '../../auth.ts';
import type { EdgeDeps } from '../../deps.ts';
import { bodyOf, COMMON_ERRORS, errors, json, jsonBody, mount, paramsOf, queryOf, TURN_ERRORS } from '../../openapi.ts';
import { newSessionId, sessionInfo, versionInfo, type SessionService } from '../../session-service.ts';
import type { CartridgeService } from '../../cartridge-service.ts';
import type { TurnService } from '../../turn-service.ts';

const tags = ['Sessions'];
export const SessionPath = z.object({ id: SessionId });

const createSession = createRoute({
  method: 'post',
  path: '/',
  operationId: 'createSession',
  tags,
  summary: 'Create a session (optionally with a system prompt, from another session, or from a cartridge)',
  request: { body: jsonBody(CreateSessionRequest) },
  responses: { 201: json(SessionCreated, 'The session, durable: its head version and tokens absorbed'), ...errors(...TURN_ERRORS) },
});

const listSessions = createRoute({
  method: 'get',
  path: '/',
  operationId: 'listSessions',
  tags,
  summary: "A page of the tenant's sessions, newest first (conversations and response chains are sessions too)",
  request: { query: SessionListQuery },
  responses: { 200: json(SessionList, 'Sessions with their head version, tokens absorbed, state bytes and metadata'), ...errors(...COMMON_ERRORS) },
});

const getSession = createRoute({
  method: 'get',
  path: '/{id}',
  operationId: 'getSession',
  tags,
  summary: 'A session: head version, tokens absorbed, state bytes, metadata',
  request: { params: SessionPath },
  responses: { 200: json(SessionInfo, 'The session'), ...errors(...COMMON_ERRORS, 404) },
});

const listVersions = createRoute({
  method: 'get',
  path: '/{id}/versions',
  operationId: 'listSessionVersions',
  tags,
  summary: "A page of a session's versions",
  request: { params: SessionPath, query: VersionListQuery },
  responses: { 200: json(VersionList, 'Versions in the order asked; has_more: ask again with after = the last one'), ...errors(...COMMON_ERRORS, 404) },
});

const forkSession = createRoute({
  method: 'post',
  path: '/{id}/fork',
  operationId: 'forkSession',
  tags,
  summary: 'A new session holding a copy of a version of this one',
  request: { params: SessionPath, body: jsonBody(ForkSessionRequest) },
  responses: { 201: json(SessionCreated, 'The new session'), ...errors(...COMMON_ERRORS, 404, 409) },
});

const deleteSession = createRoute({
  method: 'delete',
  path: '/{id}',
  operationId: 'deleteSession',
  tags,
  summary: 'Delete a session and every stored version',
  request: { params: SessionPath },
  responses: { 200: json(SessionDeleted, 'Deleted'), ...errors(...COMMON_ERRORS, 404, 409) },
});

function created(m: SessionManifest): z.output<typeof SessionCreated> {
  return { id: m.session, model: m.model, version: m.head, tokens_absorbed: headEntry(m).tokens_absorbed };
}

export function sessionRoutes(deps: EdgeDeps, sessions: SessionService, turns: TurnService, cartridges: CartridgeService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  mount(app, createSession, async (c) => {
    const tenant = c.get('tenant');
    const body = await bodyOf(c, createSession);
    const id = body.id ?? newSessionId();
    let manifest: SessionManifest;
    if (body.from) {
      manifest = (
        await sessions.fork({ tenant, source: body.from.session_id, version: body.from.version, target: id, model: body.model, metadata: body.metadata ?? {} })
      ).manifest;
    } else if (body.cartridge) {
      const { record, bytes } = await cartridges.readyState(tenant, body.cartridge, body.model);
      if (body.system !== undefined) await deps.served.assertRunnable(record.model, 'absorb the system prompt');
      manifest = (await sessions.fromCartridge({ tenant, target: id, cartridge: record, bytes, metadata: body.metadata ?? {} })).manifest;
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
          incarnation: manifest.incarnation,
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

  mount(app, listSessions, async (c) => {
    const tenant = c.get('tenant');
    const { limit, after } = queryOf(c, listSessions);
    let cursor: { session: string; created_at: string } | undefined;
    if (after !== undefined) {
      const found = await deps.sessions.read(tenant, after);
      if (!found) throw new ApiError('invalid_request', `after: session ${after} no longer exists; list again from the start`, { details: [{ path: 'after', message: 'not found' }] });
      cursor = { session: after, created_at: found.manifest.created_at };
    }
    const page = await deps.sessions.listSessions(tenant, { limit, ...(cursor ? { after: cursor } : {}) });
    const data = page.data.map(sessionInfo);
    const body: SessionList = { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: page.hasMore };
    return c.json(body);
  });

  mount(app, getSession, async (c) => {
    const { manifest } = await sessions.get(c.get('tenant'), paramsOf(c, getSession).id);
    return c.json(sessionInfo(manifest));
  });

  // Paginated: a long session's older entries live in manifest pages, read only as far as asked.
  mount(app, listVersions, async (c) => {
    const tenant = c.get('tenant');
    const { manifest } = await sessions.get(tenant, paramsOf(c, listVersions).id);
    const { limit, order, after } = queryOf(c, listVersions);
    const page = await deps.sessions.listVersions(tenant, manifest.session, manifest, { limit, order, ...(after === undefined ? {} : { after }) });
    const body: z.output<typeof VersionList> = { session_id: manifest.session, head: manifest.head, data: page.data.map(versionInfo), has_more: page.hasMore };
    return c.json(body);
  });

  mount(app, forkSession, async (c) => {
    const tenant = c.get('tenant');
    const source = paramsOf(c, forkSession).id;
    const body = await bodyOf(c, forkSession);
    const target = body.id ?? newSessionId();
    const { manifest } = await sessions.fork({
      tenant,
      source,
      version: body.version,
      target,
      model: undefined,
      metadata: body.metadata ?? {},
    });
    c.header('Location', `/v1/sessions/${target}`);
    return c.json(created(manifest), 201);
  });

  mount(app, deleteSession, async (c) => {
    const id = paramsOf(c, deleteSession).id;
    const removed = await sessions.delete(c.get('tenant'), id);
    return c.json({ id, deleted: true as const, versions_removed: removed });
  });

  return app;
}

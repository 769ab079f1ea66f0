// /v1/conversations: create (optionally with items, absorbed at once), retrieve, update
// metadata, delete. A conversation is a session: /v1/sessions/{id} shows the same one.
import { Hono } from 'hono';
import { ConversationDeleted, CreateConversationRequest, UpdateConversationRequest } from '../../../shared/responses-api.ts';
import type { EdgeEnv } from '../../auth.ts';
import { conversationObject, type ConversationService } from '../../conversation-service.ts';
import { readJsonBody } from '../../request-body.ts';

export function conversationRoutes(conversations: ConversationService): Hono<EdgeEnv> {
  const app = new Hono<EdgeEnv>();

  app.post('/', async (c) => {
    const body = await readJsonBody(c, CreateConversationRequest);
    const m = await conversations.create(c.get('tenant'), { items: body.items ?? [], metadata: body.metadata ?? {}, model: body.model }, c.req.raw.signal);
    c.header('X-Session-Id', m.session);
    return c.json(conversationObject(m));
  });

  app.get('/:id', async (c) => c.json(conversationObject((await conversations.get(c.get('tenant'), c.req.param('id'))).manifest)));

  app.post('/:id', async (c) => {
    const body = await readJsonBody(c, UpdateConversationRequest);
    return c.json(conversationObject(await conversations.updateMetadata(c.get('tenant'), c.req.param('id'), body.metadata)));
  });

  app.delete('/:id', async (c) => {
    const id = c.req.param('id');
    await conversations.delete(c.get('tenant'), id);
    return c.json(ConversationDeleted.parse({ id, object: 'conversation.deleted', deleted: true }));
  });

  return app;
}

// /v1/conversations: create (optionally with items, absorbed at once), retrieve, update
// metadata, delete. A conversation is a session: /v1/sessions/{id} shows the same one.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { ConversationDeleted, ConversationObject, CreateConversationRequest, UpdateConversationRequest } from '../../../shared/responses-api.ts';
import type { EdgeEnv } from '../../auth.ts';
import { conversationObject, type ConversationService } from '../../conversation-service.ts';
import { bodyOf, COMMON_ERRORS, errors, json, jsonBody, mount, paramsOf, TURN_ERRORS } from '../../openapi.ts';

const tags = ['Conversations'];
export const ConversationPath = z.object({ id: z.string().max(600) });

const createConversation = createRoute({
  method: 'post',
  path: '/',
  operationId: 'createConversation',
  tags,
  summary: 'Create a conversation (a session), its items absorbed at once',
  request: { body: jsonBody(CreateConversationRequest) },
  responses: { 200: json(ConversationObject, 'The conversation, durable'), ...errors(...TURN_ERRORS) },
});

const getConversation = createRoute({
  method: 'get',
  path: '/{id}',
  operationId: 'getConversation',
  tags,
  summary: 'A conversation',
  request: { params: ConversationPath },
  responses: { 200: json(ConversationObject, 'The conversation'), ...errors(...COMMON_ERRORS, 404) },
});

const updateConversation = createRoute({
  method: 'post',
  path: '/{id}',
  operationId: 'updateConversation',
  tags,
  summary: "Replace a conversation's metadata",
  request: { params: ConversationPath, body: jsonBody(UpdateConversationRequest) },
  responses: { 200: json(ConversationObject, 'The conversation'), ...errors(...COMMON_ERRORS, 404) },
});

const deleteConversation = createRoute({
  method: 'delete',
  path: '/{id}',
  operationId: 'deleteConversation',
  tags,
  summary: 'Delete a conversation: every version, item and response in it',
  request: { params: ConversationPath },
  responses: { 200: json(ConversationDeleted, 'Deleted'), ...errors(...COMMON_ERRORS, 404, 409) },
});

export function conversationRoutes(conversations: ConversationService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  mount(app, createConversation, async (c) => {
    const body = await bodyOf(c, createConversation);
    const m = await conversations.create(c.get('tenant'), { items: body.items ?? [], metadata: body.metadata ?? {}, model: body.model, cartridge: body.cartridge }, c.req.raw.signal);
    c.header('X-Session-Id', m.session);
    return c.json(conversationObject(m));
  });

  mount(app, getConversation, async (c) => c.json(conversationObject((await conversations.get(c.get('tenant'), paramsOf(c, getConversation).id)).manifest)));

  mount(app, updateConversation, async (c) => {
    const { id } = paramsOf(c, updateConversation);
    const body = await bodyOf(c, updateConversation);
    return c.json(conversationObject(await conversations.updateMetadata(c.get('tenant'), id, body.metadata)));
  });

  mount(app, deleteConversation, async (c) => {
    const id = paramsOf(c, deleteConversation).id;
    await conversations.delete(c.get('tenant'), id);
    return c.json(ConversationDeleted.parse({ id, object: 'conversation.deleted', deleted: true }));
  });

  return app;
}

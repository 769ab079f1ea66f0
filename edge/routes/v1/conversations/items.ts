// /v1/conversations/{id}/items: list (paginated, newest first by default), append without
// generating (absorbed into a new version, answered once durable), retrieve one. Deleting an
// item is refused: it is part of every state after it (409 item_immutable).
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { ConversationItem } from '../../../../shared/conversation-items.ts';
import { ApiError } from '../../../../shared/errors.ts';
import { CreateItemsRequest, ItemList, ItemListQuery } from '../../../../shared/responses-api.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { ConversationService } from '../../../conversation-service.ts';
import { itemList } from '../../../item-pages.ts';
import { bodyOf, COMMON_ERRORS, errors, json, jsonBody, mount, paramsOf, queryOf, TURN_ERRORS } from '../../../openapi.ts';
import { ConversationPath } from '../conversations.ts';

const tags = ['Conversations'];
const ItemPath = ConversationPath.extend({ item: z.string().max(600) });

const listItems = createRoute({
  method: 'get',
  path: '/{id}/items',
  operationId: 'listConversationItems',
  tags,
  summary: "A page of a conversation's items (newest first by default)",
  request: { params: ConversationPath, query: ItemListQuery },
  responses: { 200: json(ItemList, 'A page of items'), ...errors(...COMMON_ERRORS, 404) },
});

const appendItems = createRoute({
  method: 'post',
  path: '/{id}/items',
  operationId: 'createConversationItems',
  tags,
  summary: 'Append items without generating (absorbed into a new version, answered once durable)',
  request: { params: ConversationPath, body: jsonBody(CreateItemsRequest) },
  responses: { 200: json(ItemList, 'The items created'), ...errors(...TURN_ERRORS) },
});

const getItem = createRoute({
  method: 'get',
  path: '/{id}/items/{item}',
  operationId: 'getConversationItem',
  tags,
  summary: 'One item',
  request: { params: ItemPath },
  responses: { 200: json(ConversationItem, 'The item'), ...errors(...COMMON_ERRORS, 404) },
});

const deleteItem = createRoute({
  method: 'delete',
  path: '/{id}/items/{item}',
  operationId: 'deleteConversationItem',
  tags,
  summary: 'Refused: a state cannot forget an item it has absorbed (409 item_immutable)',
  request: { params: ItemPath },
  responses: errors(...COMMON_ERRORS, 404, 409),
});

export function conversationItemRoutes(conversations: ConversationService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  mount(app, listItems, async (c) => c.json(await conversations.listItems(c.get('tenant'), paramsOf(c, listItems).id, queryOf(c, listItems))));

  mount(app, appendItems, async (c) => {
    const { id } = paramsOf(c, appendItems);
    const body = await bodyOf(c, appendItems);
    return c.json(itemList(await conversations.append(c.get('tenant'), id, body.items, c.req.raw.signal), false));
  });

  mount(app, getItem, async (c) => {
    const { id, item } = paramsOf(c, getItem);
    return c.json(await conversations.getItem(c.get('tenant'), id, item));
  });

  mount(app, deleteItem, async (c) => {
    const { id, item } = paramsOf(c, deleteItem);
    await conversations.getItem(c.get('tenant'), id, item);
    throw new ApiError(
      'item_immutable',
      `item ${item} cannot be deleted: the conversation's state has absorbed it, and a state cannot forget. Continue from an earlier response (previous_response_id) to branch without it, or delete the conversation.`,
    );
  });

  return app;
}

// /v1/conversations/{id}/items: list (paginated, newest first by default), append without
// generating (absorbed into a new version, answered once durable), retrieve one. Deleting an
// item is refused: it is part of every state after it (409 item_immutable).
import { Hono } from 'hono';
import { ApiError } from '../../../../shared/errors.ts';
import { CreateItemsRequest, ItemListQuery } from '../../../../shared/responses-api.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { ConversationService } from '../../../conversation-service.ts';
import { itemList } from '../../../item-pages.ts';
import { readJsonBody } from '../../../request-body.ts';
import { queryOf } from '../../../validators.ts';

export function conversationItemRoutes(conversations: ConversationService): Hono<EdgeEnv> {
  const app = new Hono<EdgeEnv>();

  app.get('/:id/items', queryOf(ItemListQuery), async (c) => c.json(await conversations.listItems(c.get('tenant'), c.req.param('id'), c.req.valid('query'))));

  app.post('/:id/items', async (c) => {
    const body = await readJsonBody(c, CreateItemsRequest);
    return c.json(itemList(await conversations.append(c.get('tenant'), c.req.param('id'), body.items, c.req.raw.signal), false));
  });

  app.get('/:id/items/:item', async (c) => c.json(await conversations.getItem(c.get('tenant'), c.req.param('id'), c.req.param('item'))));

  app.delete('/:id/items/:item', async (c) => {
    const { id, item } = c.req.param();
    await conversations.getItem(c.get('tenant'), id, item);
    throw new ApiError(
      'item_immutable',
      `item ${item} cannot be deleted: the conversation's state has absorbed it, and a state cannot forget. Continue from an earlier response (previous_response_id) to branch without it, or delete the conversation.`,
    );
  });

  return app;
}

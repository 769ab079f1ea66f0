// Cursor pages of items, as the OpenAI list endpoints answer them: `order` (asc = oldest first),
// `after` (an item id: continue past it), `limit`; `has_more` and `last_id` drive the official
// clients' auto-pagination.
import type { ConversationItem } from '../shared/conversation-items.ts';
import { ApiError } from '../shared/errors.ts';
import type { ItemList, ItemListQuery } from '../shared/responses-api.ts';

export function itemList(data: ConversationItem[], hasMore: boolean): ItemList {
  return { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: hasMore };
}

export function unknownCursor(after: string): ApiError {
  return new ApiError('item_not_found', `after: no item ${after} in this list`, { details: [{ path: 'after', message: 'not found' }] });
}

/** A page of items held in memory, in oldest-first order. */
export function pageOfItems(oldestFirst: readonly ConversationItem[], q: ItemListQuery): ItemList {
  const ordered = q.order === 'asc' ? [...oldestFirst] : [...oldestFirst].reverse();
  let start = 0;
  if (q.after !== undefined) {
    const at = ordered.findIndex((it) => it.id === q.after);
    if (at < 0) throw unknownCursor(q.after);
    start = at + 1;
  }
  return itemList(ordered.slice(start, start + q.limit), ordered.length > start + q.limit);
}

// The Conversations API: a conversation is a session (the native session API sees it, and any
// session can be addressed as a conversation). Its items are those of the versions on its
// head's parent chain, read from each version's items file; appending items absorbs them into
// a new version without generating. Items cannot be deleted: they are part of the state.
import { randomBytes } from 'node:crypto';
import { SessionId } from '../shared/api-schemas.ts';
import { parseItemId, type ConversationItem } from '../shared/conversation-items.ts';
import { ApiError } from '../shared/errors.ts';
import type { ConversationObject, InputItemIn, ItemList, ItemListQuery } from '../shared/responses-api.ts';
import type { ManifestVersion, SessionManifest } from '../shared/session-manifest.ts';
import type { ManifestRead } from '../shared/session-store.ts';
import type { EdgeDeps } from './deps.ts';
import { itemList, unknownCursor } from './item-pages.ts';
import { absorbInput } from './response-input.ts';
import { createdItems } from './response-service.ts';
import type { CartridgeService } from './cartridge-service.ts';
import type { SessionService } from './session-service.ts';
import type { TurnService } from './turn-service.ts';

export function newConversationId(): string {
  return `conv_${randomBytes(16).toString('base64url')}`;
}

export function conversationObject(m: SessionManifest): ConversationObject {
  return { id: m.session, object: 'conversation', created_at: Math.floor(Date.parse(m.created_at) / 1000), metadata: m.metadata };
}

export class ConversationService {
  constructor(
    private readonly deps: EdgeDeps,
    private readonly sessions: SessionService,
    private readonly turns: TurnService,
    private readonly cartridges: CartridgeService,
  ) {}

  async get(tenant: string, id: string): Promise<ManifestRead> {
    const found = SessionId.safeParse(id).success ? await this.deps.sessions.read(tenant, id) : null;
    if (!found) throw new ApiError('conversation_not_found', `conversation ${id} not found`);
    return found;
  }

  async create(
    tenant: string,
    args: { items: InputItemIn[]; metadata: Record<string, string>; model?: string | undefined; cartridge?: string | undefined },
    signal?: AbortSignal,
  ): Promise<SessionManifest> {
    const { items, metadata } = args;
    const input = items.length > 0 ? await absorbInput(items, tenant, this.deps.sessions, 'items') : undefined;
    // From a cartridge: the conversation's first version is a copy of the cartridge's state.
    const start = args.cartridge !== undefined ? await this.cartridges.readyState(tenant, args.cartridge, args.model) : undefined;
    const model = start?.record.model ?? (await this.sessions.resolveModel(args.model));
    if (input) await this.deps.served.assertRunnable(model, 'absorb the items');
    const id = newConversationId();
    const { manifest } = start
      ? await this.sessions.fromCartridge({ tenant, target: id, cartridge: start.record, bytes: start.bytes, metadata })
      : await this.sessions.create({ tenant, session: id, model, metadata });
    if (!input) return manifest;
    try {
      await this.absorb(tenant, id, input, signal);
    } catch (e) {
      // A conversation that could not take its items is not the conversation asked for.
      await this.sessions.delete(tenant, id).catch(() => {});
      throw e;
    }
    return (await this.get(tenant, id)).manifest;
  }

  async updateMetadata(tenant: string, id: string, metadata: Record<string, string>): Promise<SessionManifest> {
    await this.get(tenant, id);
    const updated = await this.deps.sessions.updateManifest(tenant, id, (m) => ({ ...m, metadata }));
    if (!updated) throw new ApiError('conversation_not_found', `conversation ${id} not found`);
    return updated.manifest;
  }

  async delete(tenant: string, id: string): Promise<void> {
    await this.get(tenant, id);
    await this.sessions.delete(tenant, id);
  }

  /** Absorb items into the head (queued behind any running turn); answers once the new version is durable. */
  async append(tenant: string, id: string, items: InputItemIn[], signal?: AbortSignal): Promise<ConversationItem[]> {
    await this.get(tenant, id);
    const input = await absorbInput(items, tenant, this.deps.sessions, 'items');
    return this.absorb(tenant, id, input, signal);
  }

  private async absorb(tenant: string, id: string, input: Awaited<ReturnType<typeof absorbInput>>, signal?: AbortSignal): Promise<ConversationItem[]> {
    const { manifest } = await this.get(tenant, id);
    const turn = await this.turns.submit({
      tenant,
      session: id,
      model: manifest.model,
      kind: 'absorb',
      base: { kind: 'head', if_version: null },
      messages: input.messages,
      maxTokens: 0,
      sampling: { temperature: 0, top_p: 1, top_k: 0 },
      stop: [],
      onBusy: 'queue',
      incarnation: manifest.incarnation,
      itemShapes: input.shapes,
    });
    await this.turns.result(turn, signal);
    return createdItems(id, turn.turnId, input);
  }

  /** The versions with items on the head's parent chain, newest first. */
  private async chain(tenant: string, m: SessionManifest): Promise<ManifestVersion[]> {
    const out: ManifestVersion[] = [];
    for await (const v of this.deps.sessions.versionReader(tenant, m.session, m).ancestry(m.head)) if (v.items && v.turn_id) out.push(v);
    return out;
  }

  async listItems(tenant: string, id: string, q: ItemListQuery): Promise<ItemList> {
    const { manifest } = await this.get(tenant, id);
    const chain = await this.chain(tenant, manifest);
    const versions = q.order === 'asc' ? chain.reverse() : chain;
    let start = 0;
    let cursor: string | undefined;
    if (q.after !== undefined) {
      const ref = parseItemId(q.after);
      start = ref && ref.session === id ? versions.findIndex((v) => v.turn_id === ref.turnId) : -1;
      if (start < 0) throw unknownCursor(q.after);
      cursor = q.after;
    }
    // Item files are read only as far as the page needs.
    const out: ConversationItem[] = [];
    for (let i = start; i < versions.length && out.length <= q.limit; i++) {
      const file = await this.deps.sessions.readItems(tenant, id, versions[i]!.version);
      if (!file) continue;
      let items = [...file.input, ...file.output];
      if (q.order === 'desc') items.reverse();
      if (cursor !== undefined && i === start) {
        const at = items.findIndex((it) => it.id === cursor);
        if (at < 0) throw unknownCursor(cursor);
        items = items.slice(at + 1);
      }
      out.push(...items);
    }
    return itemList(out.slice(0, q.limit), out.length > q.limit);
  }

  async getItem(tenant: string, id: string, itemId: string): Promise<ConversationItem> {
    const { manifest } = await this.get(tenant, id);
    const missing = () => new ApiError('item_not_found', `conversation ${id} has no item ${itemId}`);
    const ref = parseItemId(itemId);
    if (!ref || ref.session !== id) throw missing();
    const version = (await this.chain(tenant, manifest)).find((v) => v.turn_id === ref.turnId);
    const file = version ? await this.deps.sessions.readItems(tenant, id, version.version) : null;
    const item = file && [...file.input, ...file.output].find((it) => it.id === itemId);
    if (!item) throw missing();
    return item;
  }
}

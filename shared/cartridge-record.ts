// A cartridge as it is stored (tenants/{tenant}/cartridges/{id}.json): written `queued` by the
// edge before it acknowledges the request, moved to `building`, then `ready` (or `failed`) by the
// worker that builds it, each time by compare-and-swap on the record's ETag. A ready record
// names the immutable state beside it and never changes again. The public object is a pure
// function of the record and the build's progress (shared/cartridges-api.ts).
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { ModelId } from './api-schemas.ts';
import { CartridgeId, CartridgeStatus, type Cartridge } from './cartridges-api.ts';
import { TenantId } from './session-manifest.ts';

/** 36^9 - 1 ms is the year 3135: the inverted time keeps 9 base-36 digits until then. */
const ID_TIME_CEILING = 36 ** 9 - 1;

/** Newest first in key order: the inverted creation time leads the id (shared/cartridge-store.ts lists by key). */
export function newCartridgeId(now = Date.now()): string {
  return `cart_${(ID_TIME_CEILING - now).toString(36).padStart(9, '0')}${randomBytes(9).toString('base64url')}`;
}

export const CartridgeRecord = z.object({
  format: z.literal(1),
  id: CartridgeId,
  tenant: TenantId,
  name: z.string().nullable(),
  model: ModelId,
  status: CartridgeStatus,
  created_at: z.string(),
  ready_at: z.string().nullable(),
  metadata: z.record(z.string(), z.string()),
  source: z.object({ kind: z.enum(['text', 'messages', 'documents', 'import']), items: z.number().int().nonnegative() }),
  /** Tokens of the whole input (known once the build has tokenized it). */
  tokens_total: z.number().int().nonnegative().nullable(),
  /** Tokens the ready state has absorbed. */
  tokens_absorbed: z.number().int().nonnegative(),
  state_bytes: z.number().int().nonnegative().nullable(),
  /**
   * Transcript hash of the ready state (shared/transcript-hash.ts, from the empty root over its
   * messages): sessions started from it take it as their root, so chats extend it with their own
   * messages, and stateless chats from it are prefix-cached under it.
   */
  transcript_hash: z.string().regex(/^[0-9a-f]{64}$/).nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
});
export type CartridgeRecord = z.infer<typeof CartridgeRecord>;

/** The public object: the record, with a running build's progress (from Redis) when there is one. */
export function cartridgeObject(r: CartridgeRecord, progress?: { tokens_absorbed: number; tokens_total: number | null }): Cartridge {
  const seconds = (iso: string) => Math.floor(Date.parse(iso) / 1000);
  const done = r.status === 'ready';
  return {
    id: r.id,
    object: 'cartridge',
    name: r.name,
    model: r.model,
    status: r.status,
    created_at: seconds(r.created_at),
    ready_at: r.ready_at === null ? null : seconds(r.ready_at),
    metadata: r.metadata,
    source: r.source,
    progress: done
      ? { tokens_absorbed: r.tokens_absorbed, tokens_total: r.tokens_total ?? r.tokens_absorbed }
      : { tokens_absorbed: progress?.tokens_absorbed ?? 0, tokens_total: progress?.tokens_total ?? r.tokens_total },
    state_bytes: r.state_bytes,
    error: r.error,
  };
}

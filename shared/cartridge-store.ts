// Cartridges in the state store, beside the tenant's sessions:
//
//   {prefix}/tenants/{tenant}/cartridges/{id}.json             the record (shared/cartridge-record.ts)
//   {prefix}/tenants/{tenant}/cartridge-inputs/{id}.json       what it is built from, as messages (written before the build is acknowledged)
//   {prefix}/tenants/{tenant}/cartridge-states/{id}.mstate     the built state (immutable)
//
// Records sit alone in their folder and ids begin with the inverted creation time, so one paged
// listing of the folder is the tenant's cartridges newest first.
import { z } from 'zod';
import { Message } from './api-schemas.ts';
import { CartridgeRecord } from './cartridge-record.ts';
import { CorruptManifestError } from './session-store.ts';
import { StorePreconditionError, type StateStore } from './state-store.ts';

const encoder = new TextEncoder();

export const CartridgeInput = z.object({ format: z.literal(1), messages: z.array(Message) });
export type CartridgeInput = z.infer<typeof CartridgeInput>;

export interface RecordRead {
  readonly record: CartridgeRecord;
  readonly etag: string;
}

/** The record changed under a compare-and-swap (or is gone): re-read and decide again. */
export class CartridgeChangedError extends Error {
  constructor(id: string) {
    super(`cartridge ${id} changed or was deleted meanwhile`);
    this.name = 'CartridgeChangedError';
  }
}

export class CartridgeStore {
  constructor(readonly objects: StateStore) {}

  static recordsPrefix(tenant: string): string {
    return `tenants/${tenant}/cartridges/`;
  }
  static recordKey(tenant: string, id: string): string {
    return `${CartridgeStore.recordsPrefix(tenant)}${id}.json`;
  }
  static inputKey(tenant: string, id: string): string {
    return `tenants/${tenant}/cartridge-inputs/${id}.json`;
  }
  static stateKey(tenant: string, id: string): string {
    return `tenants/${tenant}/cartridge-states/${id}.mstate`;
  }

  async read(tenant: string, id: string): Promise<RecordRead | null> {
    const key = CartridgeStore.recordKey(tenant, id);
    const obj = await this.objects.get(key);
    if (!obj) return null;
    const record = parse(key, obj.bytes, CartridgeRecord);
    // The key is derived from tenant and id: a record naming others was put there by hand.
    if (record.id !== id || record.tenant !== tenant) return null;
    return { record, etag: obj.etag };
  }

  /** A new cartridge: its input first, then its record (so a listed cartridge always has its input). */
  async create(record: CartridgeRecord, input: CartridgeInput | null): Promise<void> {
    if (input) await this.objects.putIfAbsent(CartridgeStore.inputKey(record.tenant, record.id), encoder.encode(JSON.stringify(input)));
    await this.objects.putIfAbsent(CartridgeStore.recordKey(record.tenant, record.id), encoder.encode(JSON.stringify(record)));
  }

  /** Replace the record if it is still the one read (CartridgeChangedError otherwise). */
  async replace(read: RecordRead, next: CartridgeRecord): Promise<RecordRead> {
    try {
      const etag = await this.objects.putIfMatch(CartridgeStore.recordKey(next.tenant, next.id), encoder.encode(JSON.stringify(CartridgeRecord.parse(next))), read.etag);
      return { record: next, etag };
    } catch (e) {
      if (e instanceof StorePreconditionError) throw new CartridgeChangedError(next.id);
      throw e;
    }
  }

  async readInput(tenant: string, id: string): Promise<CartridgeInput | null> {
    const key = CartridgeStore.inputKey(tenant, id);
    const obj = await this.objects.get(key);
    return obj ? parse(key, obj.bytes, CartridgeInput) : null;
  }

  /** Store the built state; one already there is a previous attempt's of the same input, kept. */
  async writeState(tenant: string, id: string, bytes: Uint8Array): Promise<void> {
    try {
      await this.objects.putIfAbsent(CartridgeStore.stateKey(tenant, id), bytes);
    } catch (e) {
      if (!(e instanceof StorePreconditionError)) throw e;
    }
  }

  async readState(tenant: string, id: string): Promise<Uint8Array | null> {
    return (await this.objects.get(CartridgeStore.stateKey(tenant, id)))?.bytes ?? null;
  }

  /** A page of the tenant's cartridges, newest first, after the cartridge `after`. */
  async list(tenant: string, options: { limit: number; after?: string | undefined }): Promise<{ data: CartridgeRecord[]; hasMore: boolean }> {
    const prefix = CartridgeStore.recordsPrefix(tenant);
    const page = await this.objects.listPage(prefix, {
      ...(options.after !== undefined ? { startAfter: CartridgeStore.recordKey(tenant, options.after) } : {}),
      limit: options.limit,
    });
    const read = await Promise.all(page.objects.map(({ key }) => this.read(tenant, key.slice(prefix.length, -'.json'.length)).catch(() => null)));
    return { data: read.filter((r): r is RecordRead => r !== null).map((r) => r.record), hasMore: page.hasMore };
  }

  /** The record first (the cartridge is gone at once; a build still running stops at its next check), then its files. */
  async delete(tenant: string, id: string): Promise<void> {
    await this.objects.delete([CartridgeStore.recordKey(tenant, id)]);
    await this.objects.delete([CartridgeStore.stateKey(tenant, id), CartridgeStore.inputKey(tenant, id)]);
  }
}

function parse<S extends z.ZodType>(key: string, bytes: Uint8Array, schema: S): z.output<S> {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new CorruptManifestError(key, 'not JSON');
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new CorruptManifestError(key, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  return parsed.data;
}

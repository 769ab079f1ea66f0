// Wire formats of /v1/cartridges (docs/cartridges.md): a cartridge is a state built once from
// documents and started from many times. Request bodies the edge accepts and the objects it
// answers; the stored record is shared/cartridge-record.ts.
import { z } from 'zod';
import { CartridgeId, Message, Metadata, ModelId, Text } from './api-schemas.ts';

export { CartridgeId };

export const CartridgeDocument = z.strictObject({ title: Text.max(1000).optional(), text: Text.min(1) });

export const CreateCartridgeRequest = z
  .strictObject({
    model: ModelId.optional(),
    /** A label for people; not unique. */
    name: z.string().min(1).max(256).optional(),
    /** One document (absorbed as one system message). */
    text: Text.min(1).optional(),
    /** Messages absorbed as a conversation is (roles system, user, assistant, tool). */
    messages: z.array(Message).min(1).max(100_000).optional(),
    /** Documents, each absorbed as a system message (its title, a blank line, its text). */
    documents: z.array(CartridgeDocument).min(1).max(100_000).optional(),
    metadata: Metadata.optional(),
  })
  .refine((r) => [r.text, r.messages, r.documents].filter((v) => v !== undefined).length === 1, { message: 'give exactly one of text, messages and documents' })
  .meta({ id: 'CreateCartridgeRequest' });
export type CreateCartridgeRequest = z.infer<typeof CreateCartridgeRequest>;

export const CartridgeStatus = z.enum(['queued', 'building', 'ready', 'failed']);
export type CartridgeStatus = z.infer<typeof CartridgeStatus>;

export const Cartridge = z
  .object({
    id: CartridgeId,
    object: z.literal('cartridge'),
    name: z.string().nullable(),
    model: ModelId,
    /** queued → building → ready (or failed); a ready cartridge never changes. */
    status: CartridgeStatus,
    /** Epoch seconds. */
    created_at: z.number().int(),
    ready_at: z.number().int().nullable(),
    metadata: z.record(z.string(), z.string()),
    /** What it was built from: `items` documents or messages (0 for an imported state). */
    source: z.object({ kind: z.enum(['text', 'messages', 'documents', 'import']), items: z.number().int().nonnegative() }),
    /** Tokens absorbed of the total (null until the build has tokenized the input). */
    progress: z.object({ tokens_absorbed: z.number().int().nonnegative(), tokens_total: z.number().int().nonnegative().nullable() }),
    /** Bytes of the built state (null until ready): the same for every cartridge of a model, whatever its length. */
    state_bytes: z.number().int().nonnegative().nullable(),
    error: z.object({ code: z.string(), message: z.string() }).nullable(),
  })
  .meta({ id: 'Cartridge' });
export type Cartridge = z.infer<typeof Cartridge>;

export const CartridgeList = z
  .object({ object: z.literal('list'), data: z.array(Cartridge), first_id: CartridgeId.nullable(), last_id: CartridgeId.nullable(), has_more: z.boolean() })
  .meta({ id: 'CartridgeList' });
export type CartridgeList = z.infer<typeof CartridgeList>;

export const CartridgeListQuery = z.strictObject({
  limit: z.string().regex(/^\d{1,3}$/, 'must be a number from 1 to 100').transform(Number).pipe(z.number().int().min(1).max(100)).optional().default(20),
  /** Continue after this cartridge (the `last_id` of the previous answer). */
  after: CartridgeId.optional(),
});

export const CartridgeDeleted = z.object({ id: CartridgeId, object: z.literal('cartridge.deleted'), deleted: z.literal(true) }).meta({ id: 'CartridgeDeleted' });

export const ImportCartridgeQuery = z.strictObject({
  name: z.string().min(1).max(256).optional(),
  /** The model the state belongs to (default: the served model whose fingerprint the state carries). */
  model: ModelId.optional(),
});

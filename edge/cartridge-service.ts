// Cartridges from the edge's side (docs/cartridges.md): accepting a build (its input and a
// `queued` record durable in the store before the 202, then a `cartridge` job on the model's
// queue), reading records with their build's progress, listing, deleting, export and import of
// the state, and handing a ready cartridge to whatever starts from it (sessions, chats,
// conversations), checked: it exists under this tenant, is ready, and belongs to the model.
import { createHash } from 'node:crypto';
import { Message } from '../shared/api-schemas.ts';
import { cartridgeObject, newCartridgeId, type CartridgeRecord } from '../shared/cartridge-record.ts';
import { CartridgeStore } from '../shared/cartridge-store.ts';
import type { Cartridge, CreateCartridgeRequest } from '../shared/cartridges-api.ts';
import { ApiError } from '../shared/errors.ts';
import { JOB_NAMES, type CartridgeJob } from '../shared/jobs.ts';
import { assertStateImportable, readMStateHeader, StateFormatError } from '../shared/mstate.ts';
import { opaqueTranscriptRoot } from '../shared/transcript-hash.ts';
import type { EdgeDeps } from './deps.ts';
import type { SessionService } from './session-service.ts';

/** What the documents become: messages a state absorbs as it would a conversation's. */
export function cartridgeMessages(body: CreateCartridgeRequest): Message[] {
  if (body.messages) return body.messages;
  const documents = body.documents ?? [{ text: body.text! }];
  return documents.map((d) => ({ role: 'system' as const, content: d.title ? `${d.title}\n\n${d.text}` : d.text }));
}

/** The build job's id: one per cartridge, so a job can never be queued twice for it. */
export function cartridgeJobId(tenant: string, cartridge: string): string {
  return `cb_${createHash('sha256').update(`${tenant}/${cartridge}`).digest('base64url').slice(0, 40)}`;
}

const notFound = (id: string) => new ApiError('cartridge_not_found', `cartridge ${id} not found`);

export class CartridgeService {
  readonly store: CartridgeStore;

  constructor(
    private readonly deps: EdgeDeps,
    private readonly sessions: SessionService,
  ) {
    this.store = new CartridgeStore(deps.sessions.objects);
  }

  async create(tenant: string, body: CreateCartridgeRequest): Promise<Cartridge> {
    const { deps } = this;
    const model = await this.sessions.resolveModel(body.model);
    await deps.served.assertRunnable(model, 'build the cartridge');
    const depth = await deps.queues.depth(model);
    if (depth >= deps.config.MAX_QUEUE_DEPTH) {
      throw new ApiError('queue_full', `${depth} turns and builds are waiting for model ${model} (limit ${deps.config.MAX_QUEUE_DEPTH}); retry later`, {
        retryAfterSeconds: deps.config.RETRY_AFTER_S,
      });
    }
    const messages = cartridgeMessages(body);
    const now = Date.now();
    const id = newCartridgeId(now);
    const record: CartridgeRecord = {
      format: 1,
      id,
      tenant,
      name: body.name ?? null,
      model,
      status: 'queued',
      created_at: new Date(now).toISOString(),
      ready_at: null,
      metadata: body.metadata ?? {},
      source: { kind: body.messages ? 'messages' : body.documents ? 'documents' : 'text', items: messages.length },
      tokens_total: null,
      tokens_absorbed: 0,
      state_bytes: null,
      transcript_hash: null,
      error: null,
    };
    // Durable before acknowledged: the input and the record are stored before the job exists.
    await this.store.create(record, { format: 1, messages });
    try {
      await this.enqueue(record);
    } catch (e) {
      await this.store.delete(tenant, id).catch(() => {});
      throw e;
    }
    return cartridgeObject(record);
  }

  /** Queue the build (a job id per cartridge: queueing it again while it exists is a no-op). */
  private async enqueue(record: CartridgeRecord): Promise<void> {
    const { config, queues } = this.deps;
    const now = Date.now();
    const job: CartridgeJob = { tenant: record.tenant, cartridge: record.id, model: record.model, deadline_ms: now + config.CARTRIDGE_TIMEOUT_MS, enqueued_at: now };
    await queues.of(record.model).add(JOB_NAMES.cartridge, job as never, {
      jobId: cartridgeJobId(record.tenant, record.id),
      attempts: config.TURN_ATTEMPTS,
      backoff: { type: 'exponential', delay: config.TURN_BACKOFF_MS },
      removeOnComplete: { age: config.TURN_RETENTION_S },
      removeOnFail: { age: config.TURN_RETENTION_S },
    });
  }

  /**
   * A cartridge the store says is queued or building whose job the queue no longer knows (Redis
   * lost it, or it ended without marking the record) is queued again: the record and input in
   * the store are what was accepted, and the build starts over from them.
   */
  private async ensureQueued(record: CartridgeRecord): Promise<void> {
    if (record.status !== 'queued' && record.status !== 'building') return;
    const job = await this.deps.queues.getJob(record.model, cartridgeJobId(record.tenant, record.id));
    if (!job) {
      this.deps.log.warn('cartridge build not in the queue: queueing it again', { tenant: record.tenant, cartridge: record.id });
      await this.enqueue(record);
    }
  }

  /** The record, or 404 as if absent (another tenant's id included). */
  async record(tenant: string, id: string): Promise<CartridgeRecord> {
    const read = /^cart_[A-Za-z0-9_-]{16,64}$/.test(id) ? await this.store.read(tenant, id) : null;
    if (!read) throw notFound(id);
    return read.record;
  }

  /** The public object: the record, and while it builds, its progress. */
  async view(tenant: string, id: string): Promise<Cartridge> {
    const record = await this.record(tenant, id);
    await this.ensureQueued(record);
    return cartridgeObject(record, record.status === 'building' ? await this.progress(tenant, id) : undefined);
  }

  async progress(tenant: string, id: string): Promise<{ tokens_absorbed: number; tokens_total: number | null } | undefined> {
    const raw = await this.deps.redis.hgetall(this.deps.keys.cartridgeProgress(tenant, id));
    if (raw['tokens_absorbed'] === undefined) return undefined;
    return { tokens_absorbed: Number(raw['tokens_absorbed']), tokens_total: raw['tokens_total'] === undefined ? null : Number(raw['tokens_total']) };
  }

  async list(tenant: string, options: { limit: number; after?: string | undefined }): Promise<{ data: Cartridge[]; hasMore: boolean }> {
    const page = await this.store.list(tenant, options);
    const data = await Promise.all(page.data.map(async (r) => cartridgeObject(r, r.status === 'building' ? await this.progress(tenant, r.id) : undefined)));
    return { data, hasMore: page.hasMore };
  }

  /** Gone at once; a queued build is dequeued, a running one stops at its next chunk. */
  async delete(tenant: string, id: string): Promise<void> {
    const record = await this.record(tenant, id);
    await this.store.delete(tenant, id);
    const job = await this.deps.queues.getJob(record.model, cartridgeJobId(tenant, id)).catch(() => undefined);
    // An active job is locked by its worker and cannot be removed; it sees the record gone.
    await job?.remove().catch(() => {});
    await this.deps.redis.del(this.deps.keys.cartridgeProgress(tenant, id));
  }

  /** A cartridge ready to start from, with its state's bytes (checked against the model asked for, if any). */
  async readyState(tenant: string, id: string, model?: string): Promise<{ record: CartridgeRecord; bytes: Uint8Array }> {
    const record = await this.ready(tenant, id, model);
    const bytes = await this.store.readState(tenant, id);
    if (!bytes) throw notFound(id);
    return { record, bytes };
  }

  /** A cartridge ready to start from (404 unknown, 409 still building or failed, 409 another model). */
  async ready(tenant: string, id: string, model?: string): Promise<CartridgeRecord> {
    const record = await this.record(tenant, id);
    if (record.status === 'failed') {
      throw new ApiError('cartridge_failed', `cartridge ${id} failed to build (${record.error?.code}: ${record.error?.message}); delete it and build it again`);
    }
    if (record.status !== 'ready' || record.transcript_hash === null) {
      const p = await this.progress(tenant, id);
      throw new ApiError('cartridge_not_ready', `cartridge ${id} is ${record.status}${p ? ` (${p.tokens_absorbed} of ${p.tokens_total ?? '?'} tokens)` : ''}; start from it once it is ready`, {
        details: { status: record.status, ...(p ?? {}) },
      });
    }
    if (model !== undefined && model !== record.model) throw new ApiError('model_mismatch', `cartridge ${id} belongs to model ${record.model}, not ${model}`);
    return record;
  }

  async exportState(tenant: string, id: string): Promise<{ record: CartridgeRecord; bytes: Uint8Array }> {
    return this.readyState(tenant, id);
  }

  /**
   * A ready cartridge from an uploaded `.mstate` (a session's export, or another deployment's
   * cartridge), checked before anything is written: format, checksum, and the fingerprint and
   * layout of a served model (the one named, else the one whose fingerprint the state carries).
   */
  async importState(tenant: string, bytes: Uint8Array, options: { name?: string | undefined; model?: string | undefined; metadata?: Record<string, string> }): Promise<Cartridge> {
    const { models } = this.deps;
    let header;
    let model: string;
    try {
      header = readMStateHeader(bytes).header;
      const candidates = options.model !== undefined ? [await models.get(options.model)] : await models.list();
      const match = candidates.find((m) => m && m.fingerprint === header!.model_fingerprint);
      if (!match) {
        if (options.model !== undefined && !candidates[0]) throw new ApiError('model_not_found', `model ${options.model} has no registered worker (GET /v1/models)`);
        throw new ApiError('state_model_mismatch', `the state belongs to no model served here${options.model !== undefined ? ` (not to ${options.model})` : ''}: its fingerprint is ${header.model_fingerprint}`);
      }
      assertStateImportable(bytes, match.fingerprint, match.layout);
      model = match.id;
    } catch (e) {
      if (e instanceof StateFormatError) throw new ApiError(e.code, e.message);
      throw e;
    }
    const known = header.transcript_hash !== null && /^[0-9a-f]{64}$/.test(header.transcript_hash);
    const checksum = Buffer.from(bytes.subarray(bytes.length - 32)).toString('hex');
    const now = new Date();
    const id = newCartridgeId(now.getTime());
    const record: CartridgeRecord = {
      format: 1,
      id,
      tenant,
      name: options.name ?? null,
      model,
      status: 'ready',
      created_at: now.toISOString(),
      ready_at: now.toISOString(),
      metadata: options.metadata ?? {},
      source: { kind: 'import', items: 0 },
      tokens_total: header.tokens_absorbed,
      tokens_absorbed: header.tokens_absorbed,
      state_bytes: bytes.byteLength,
      // A state whose transcript is unknown starts a chain of its own: chats extend it with all their messages.
      transcript_hash: known ? header.transcript_hash! : opaqueTranscriptRoot(checksum),
      error: null,
    };
    // The state before the record: a listed cartridge is always startable.
    await this.store.writeState(tenant, id, bytes);
    await this.store.create(record, null);
    return cartridgeObject(record);
  }
}

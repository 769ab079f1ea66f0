// The Responses API on top of sessions: every stored response is a session version.
//   - no previous_response_id, no conversation: a new session (one per chain of responses);
//   - previous_response_id: a turn on that response's session from the version it committed,
//     whichever version is the head (continuing an older response branches; turns on one
//     session queue behind each other, so it is never a 409);
//   - conversation: a turn on the conversation's head, which then moves;
//   - store: false: the same turns run on a copy of the state and commit nothing.
// The record mapping the response id to its version is written by the worker with the commit
// (shared/response-record.ts); until then a short-lived Redis entry lets GET see it in progress.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { SessionId } from '../shared/api-schemas.ts';
import type { CartridgeRecord } from '../shared/cartridge-record.ts';
import { buildItemsFile, type ConversationItem } from '../shared/conversation-items.ts';
import { ApiError } from '../shared/errors.ts';
import { decodeFailure, type TurnBase } from '../shared/jobs.ts';
import { newResponseId, responseIdOf, ResponseSpec, viewOfRecord, type ResponseRecord, type ResponseView } from '../shared/response-record.ts';
import { ResponseStore } from '../shared/response-store.ts';
import type { CreateResponseRequest, ItemList, ItemListQuery } from '../shared/responses-api.ts';
import type { CartridgeService } from './cartridge-service.ts';
import type { EdgeDeps } from './deps.ts';
import { requestFingerprint } from './idempotency.ts';
import { pageOfItems } from './item-pages.ts';
import { absorbInput, checkResponseParameters } from './response-input.ts';
import { newSessionId, type SessionService } from './session-service.ts';
import { checkMaxTokens, DEFAULT_MAX_TOKENS } from './turn-params.ts';
import type { SubmittedTurn, TurnService } from './turn-service.ts';

/** A response the edge has started (`turn`), or one an Idempotency-Key names that is already stored (`record`). */
export interface StartedResponse {
  readonly spec: ResponseSpec;
  /** The session it is stored in (null with store: false). */
  readonly session: string | null;
  readonly turn?: SubmittedTurn;
  readonly record?: ResponseRecord;
}

const Pending = z.object({ spec: ResponseSpec, session: SessionId, turn_id: z.string(), deadline_ms: z.number().int() });

const notFound = (id: string) => new ApiError('response_not_found', `response ${id} not found`);

export class ResponseService {
  readonly records: ResponseStore;

  constructor(
    private readonly deps: EdgeDeps,
    private readonly sessions: SessionService,
    private readonly turns: TurnService,
    private readonly cartridges: CartridgeService,
  ) {
    this.records = new ResponseStore(deps.sessions.objects);
  }

  async create(tenant: string, body: CreateResponseRequest, idempotencyKey: string | undefined): Promise<StartedResponse> {
    const { deps } = this;
    checkResponseParameters(body);
    const store = body.store ?? true;
    const maxTokens = checkMaxTokens(body.max_output_tokens ?? Math.min(DEFAULT_MAX_TOKENS, deps.config.MAX_TOKENS_PER_TURN), deps.config, 'max_output_tokens');
    const input = await absorbInput(body.input, tenant, deps.sessions);
    // Under an Idempotency-Key every id is derived from it, so a retried request is the same response.
    const derived = idempotencyKey ? createHash('sha256').update(`${tenant}\0responses\0${idempotencyKey}`).digest('base64url') : undefined;
    const requestHash = idempotencyKey ? requestFingerprint('response', body) : undefined;

    let session: string | null;
    let model: string;
    let base: TurnBase = { kind: 'head', if_version: null };
    let conversation: string | null = null;
    let newChain = false;
    let cartridge: CartridgeRecord | undefined;
    let incarnation: string | undefined;
    const mismatch = (owner: string, actual: string) => {
      if (body.model !== undefined && body.model !== actual) throw new ApiError('model_mismatch', `${owner} belongs to model ${actual}, not ${body.model}`);
    };
    if (body.previous_response_id != null) {
      const previous = await this.records.read(tenant, body.previous_response_id);
      if (!previous) throw new ApiError('response_not_found', `previous_response_id: response ${body.previous_response_id} not found`);
      mismatch(`response ${previous.id}`, previous.model);
      const { manifest } = await this.sessions.get(tenant, previous.session);
      if (!(await deps.sessions.findVersion(tenant, previous.session, manifest, previous.version))) throw notFound(previous.id);
      incarnation = manifest.incarnation;
      session = previous.session;
      model = previous.model;
      base = { kind: 'version', version: previous.version, must_be_head: false };
    } else if (body.conversation != null) {
      const id = typeof body.conversation === 'string' ? body.conversation : body.conversation.id;
      const found = SessionId.safeParse(id).success ? await deps.sessions.read(tenant, id) : null;
      if (!found) throw new ApiError('conversation_not_found', `conversation ${id} not found`);
      mismatch(`conversation ${id}`, found.manifest.model);
      session = id;
      model = found.manifest.model;
      incarnation = found.manifest.incarnation;
      conversation = id;
    } else {
      cartridge = body.cartridge !== undefined ? await this.cartridges.ready(tenant, body.cartridge, body.model) : undefined;
      model = cartridge?.model ?? (await this.sessions.resolveModel(body.model));
      newChain = store;
      session = store ? (derived ? `s_${derived.slice(0, 22)}` : newSessionId()) : null;
    }
    await deps.served.assertRunnable(model);

    const stored = store ? session : null;
    const id = derived ? responseIdOf(stored, derived.slice(22)) : newResponseId(stored);
    const spec: ResponseSpec = {
      id,
      created_at: Math.floor(Date.now() / 1000),
      model,
      instructions: body.instructions ?? null,
      previous_response_id: body.previous_response_id ?? null,
      conversation,
      metadata: body.metadata ?? {},
      store,
      temperature: body.temperature ?? 1,
      top_p: body.top_p ?? 1,
      max_output_tokens: body.max_output_tokens ?? null,
      truncation: body.truncation ?? 'disabled',
      parallel_tool_calls: body.parallel_tool_calls ?? true,
      tool_choice: body.tool_choice === 'none' ? 'none' : 'auto',
      input_items: input.messages.length,
      ...(requestHash ? { request_sha256: requestHash } : {}),
    };
    if (derived && store) {
      // A retry of a finished response: replayed from its turn's token stream while that lasts
      // (the same events, numbered the same, so Last-Event-ID resumes), else from its record.
      const existing = await this.records.read(tenant, id);
      if (existing?.request_sha256 !== undefined && existing.request_sha256 !== requestHash) {
        throw new ApiError('idempotency_key_reused', `Idempotency-Key "${idempotencyKey}" was already used for a different request (response ${id}); use a new key for a new request`);
      }
      if (existing && !(await deps.redis.exists(deps.keys.turnStream(existing.turn_id)))) return { spec: existing, session: existing.session, record: existing };
    }
    if (newChain && session !== null && cartridge) {
      // The chain's session starts as a copy of the cartridge (a retried request finds it made).
      let made = await deps.sessions.read(tenant, session);
      if (!made) {
        const { bytes } = await this.cartridges.readyState(tenant, cartridge.id);
        made = await this.sessions.fromCartridge({ tenant, target: session, cartridge, bytes, metadata: {} }).catch((e: unknown) => {
          if (!(e instanceof ApiError && e.code === 'session_exists')) throw e;
          return this.sessions.get(tenant, session!);
        });
      }
      incarnation = made.manifest.incarnation;
    } else if (newChain && session !== null) {
      incarnation = (await this.sessions.getOrCreate(tenant, session, model)).found.manifest.incarnation;
    }

    const turn = await this.turns.submit({
      tenant,
      session,
      model,
      kind: 'turn',
      base,
      messages: input.messages,
      maxTokens,
      sampling: { temperature: spec.temperature, top_p: spec.top_p, top_k: 0 },
      stop: [],
      // Responses on one session run one after the other; continuing any of them never conflicts.
      onBusy: 'queue',
      incarnation,
      idempotencyKey,
      requestHash,
      instructions: spec.instructions,
      itemShapes: input.shapes,
      ...(store ? { response: spec } : { ephemeral: session !== null }),
      // store: false on a new chain from a cartridge: a stateless turn on a copy of its state.
      ...(session === null && cartridge ? { cartridge: { id: cartridge.id, transcript_hash: cartridge.transcript_hash! } } : {}),
    });
    if (store && session !== null) {
      const pending = { spec, session, turn_id: turn.turnId, deadline_ms: turn.deadlineMs };
      await deps.redis.set(deps.keys.pendingResponse(tenant, id), JSON.stringify(pending), 'EX', deps.config.TURN_RETENTION_S);
    }
    return { spec, session: stored, turn };
  }

  /**
   * A stored response as it stands: finished (its record), or still running or failed (Redis).
   * `turn` is set when its events can be followed from the turn's token stream.
   */
  async view(tenant: string, id: string): Promise<{ view: ResponseView; turn?: SubmittedTurn }> {
    const record = await this.records.read(tenant, id);
    if (record) {
      // While its token stream lasts, a finished response replays from it (exact event numbering).
      const live = await this.deps.redis.exists(this.deps.keys.turnStream(record.turn_id));
      const turn: SubmittedTurn = {
        turnId: record.turn_id,
        model: record.model,
        deadlineMs: Date.now() + this.deps.config.TURN_TIMEOUT_MS,
        replayed: true,
        ref: { tenant, session: record.session, turnId: record.turn_id },
      };
      return { view: viewOfRecord(record), ...(live ? { turn } : {}) };
    }
    const raw = await this.deps.redis.get(this.deps.keys.pendingResponse(tenant, id));
    const parsed = raw ? Pending.safeParse(JSON.parse(raw)) : undefined;
    if (!parsed?.success) throw notFound(id);
    const { spec, session, turn_id: turnId, deadline_ms: deadlineMs } = parsed.data;
    const turn: SubmittedTurn = { turnId, model: spec.model, deadlineMs, replayed: true, ref: { tenant, session, turnId } };
    const outcome = await this.deps.queues.outcome(spec.model, turnId);
    if (outcome?.state === 'completed') {
      // The record is written before the turn completes: read it again (it raced this request).
      // Gone now means deleted since (the response, or its session or conversation).
      const now = await this.records.read(tenant, id);
      if (!now) throw notFound(id);
      return { view: viewOfRecord(now) };
    }
    if (outcome?.state === 'failed') {
      return { view: { spec, status: 'failed', session, version: null, turnId, error: decodeFailure(outcome.failedReason) } };
    }
    return { view: { spec, status: 'in_progress', session, version: null, turnId }, turn };
  }

  async delete(tenant: string, id: string): Promise<void> {
    const { view } = await this.view(tenant, id);
    if (view.status === 'in_progress') throw new ApiError('response_in_progress', `response ${id} is still being generated; delete it when it is done`);
    await this.records.delete(tenant, id);
    await this.deps.redis.del(this.deps.keys.pendingResponse(tenant, id));
  }

  /** The items the response was asked with (not its instructions), from its version's items. */
  async inputItems(tenant: string, id: string, query: ItemListQuery): Promise<ItemList> {
    const { view } = await this.view(tenant, id);
    let items: ConversationItem[];
    if (view.version !== null && view.session !== null) {
      const file = await this.deps.sessions.readItems(tenant, view.session, view.version);
      items = file?.input ?? [];
    } else {
      items = [];
    }
    return pageOfItems(items, query);
  }
}

/** The items a conversation append creates: the same ids and shapes the worker stores. */
export function createdItems(session: string, turnId: string, input: Awaited<ReturnType<typeof absorbInput>>) {
  return buildItemsFile({ session, turnId, messages: input.messages, shapes: input.shapes, instructions: null }).input;
}

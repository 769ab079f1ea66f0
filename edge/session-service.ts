// Session operations the edge performs itself (no model needed): create, fork (a copy of a
// stored version, no worker involved), delete, state import/export, and matching a chat's
// messages to the longest stored version they extend.
import { randomBytes } from 'node:crypto';
import type { Message, SessionInfo, VersionInfo } from '../shared/api-schemas.ts';
import type { CartridgeRecord } from '../shared/cartridge-record.ts';
import { ApiError } from '../shared/errors.ts';
import { assertStateImportable, readMStateHeader, StateFormatError } from '../shared/mstate.ts';
import { headEntry, type ManifestVersion, type SessionManifest } from '../shared/session-manifest.ts';
import { FENCE_GAP_AFTER_REDIS_LOSS, isLease, type SessionLease } from '../shared/session-lease.ts';
import { FencedOutError, SessionExistsError, CommitConflictError, type ManifestRead } from '../shared/session-store.ts';
import { EMPTY_TRANSCRIPT_ROOT, opaqueTranscriptRoot, transcriptPrefixHashes } from '../shared/transcript-hash.ts';
import type { EdgeDeps } from './deps.ts';

export function newSessionId(): string {
  return `s_${randomBytes(16).toString('base64url')}`;
}

export function versionInfo(v: ManifestVersion): VersionInfo {
  return {
    version: v.version,
    parent: v.parent,
    tokens_absorbed: v.tokens_absorbed,
    state_bytes: v.state_bytes,
    created_at: v.created_at,
    origin: v.origin,
  };
}

export function sessionInfo(m: SessionManifest): SessionInfo {
  const head = headEntry(m);
  return {
    id: m.session,
    model: m.model,
    version: m.head,
    tokens_absorbed: head.tokens_absorbed,
    state_bytes: head.state_bytes,
    created_at: m.created_at,
    updated_at: m.updated_at,
    metadata: m.metadata,
    versions: m.versions.length + m.paged_versions,
    cartridge: m.cartridge ?? null,
  };
}

/** The outcome of matching a chat's messages against a session's stored versions. */
export interface ConversationMatch {
  /** The stored version the messages extend (the longest such prefix). */
  readonly version: ManifestVersion;
  /** How many leading messages that version has already absorbed. */
  readonly absorbed: number;
  readonly isHead: boolean;
}

export class SessionService {
  constructor(private readonly deps: EdgeDeps) {}

  /**
   * The model a new session gets: the one named, DEFAULT_MODEL, or the only one registered.
   * A session needs only the model's name; with QUEUE_WITHOUT_WORKERS, DEFAULT_MODEL's
   * sessions are created before any worker has registered it.
   */
  async resolveModel(requested: string | undefined): Promise<string> {
    const { models, config, served } = this.deps;
    const id = requested ?? config.DEFAULT_MODEL;
    if (id) {
      if (!(await served.isServed(id))) throw new ApiError('model_not_found', `model ${id} is not served here (GET /v1/models lists the models)`);
      return id;
    }
    const all = await models.list();
    if (all.length === 1) return all[0]!.id;
    if (all.length === 0) throw new ApiError('no_worker', 'no model is registered yet: start a worker', { retryAfterSeconds: config.RETRY_AFTER_S });
    throw new ApiError('invalid_request', `several models are served (${all.map((m) => m.id).join(', ')}): name one in "model"`);
  }

  async get(tenant: string, session: string): Promise<ManifestRead> {
    const found = await this.deps.sessions.read(tenant, session);
    // Another tenant's session and a missing one answer alike: ids are scoped to the tenant.
    if (!found) throw new ApiError('session_not_found', `session ${session} not found`);
    return found;
  }

  async create(args: {
    tenant: string;
    session: string;
    model: string;
    metadata: Record<string, string>;
    transcriptRoot?: string;
    cartridge?: string;
  }): Promise<ManifestRead> {
    try {
      return await this.deps.sessions.create({
        tenant: args.tenant,
        session: args.session,
        model: args.model,
        metadata: args.metadata,
        transcriptRoot: args.transcriptRoot ?? EMPTY_TRANSCRIPT_ROOT,
        ...(args.cartridge ? { cartridge: args.cartridge } : {}),
      });
    } catch (e) {
      if (e instanceof SessionExistsError) throw new ApiError('session_exists', `session ${args.session} already exists`);
      throw e;
    }
  }

  /** The session, created empty if it does not exist (chat completions naming a new id). */
  async getOrCreate(tenant: string, session: string, model: string): Promise<{ found: ManifestRead; created: boolean }> {
    const found = await this.deps.sessions.read(tenant, session);
    if (found) return { found, created: false };
    try {
      return { found: await this.deps.sessions.create({ tenant, session, model, metadata: {}, transcriptRoot: EMPTY_TRANSCRIPT_ROOT }), created: true };
    } catch (e) {
      if (e instanceof SessionExistsError) return { found: await this.get(tenant, session), created: false };
      throw e;
    }
  }

  /** A new session holding a copy of `source`'s version (its head by default). */
  async fork(args: {
    tenant: string;
    source: string;
    version: number | undefined;
    target: string;
    model: string | undefined;
    metadata: Record<string, string>;
  }): Promise<ManifestRead> {
    const { manifest: src } = await this.get(args.tenant, args.source);
    if (args.model !== undefined && args.model !== src.model) {
      throw new ApiError('model_mismatch', `session ${args.source} belongs to model ${src.model}, not ${args.model}`);
    }
    const entry = await this.version(args.tenant, src, args.version ?? src.head);
    const bytes = entry.state_bytes > 0 ? await this.deps.sessions.readState(args.tenant, args.source, entry.version) : null;
    if (entry.state_bytes > 0 && !bytes) throw new ApiError('version_not_found', `version ${entry.version} of session ${args.source} is gone`);
    const created = await this.create({ tenant: args.tenant, session: args.target, model: src.model, metadata: args.metadata, transcriptRoot: src.transcript_root });
    if (!bytes) return created;
    return this.withLease(args.tenant, args.target, (lease) =>
      this.deps.sessions.commitVersion({
        tenant: args.tenant,
        session: args.target,
        fence: lease.fence,
        state: bytes,
        version: { parent: null, tokens_absorbed: entry.tokens_absorbed, transcript_hash: entry.transcript_hash, origin: 'fork' },
      }),
    );
  }

  /**
   * A new session started from a ready cartridge: version 1 is a copy of the cartridge's state
   * (one read and one write of a fixed-size state, whatever the documents' length), and the
   * cartridge's transcript hash is the session's root, so chats on it send only their own messages.
   */
  async fromCartridge(args: { tenant: string; target: string; cartridge: CartridgeRecord; bytes: Uint8Array; metadata: Record<string, string> }): Promise<ManifestRead> {
    const { tenant, target, cartridge } = args;
    const root = cartridge.transcript_hash!;
    await this.create({ tenant, session: target, model: cartridge.model, metadata: args.metadata, transcriptRoot: root, cartridge: cartridge.id });
    try {
      return await this.withLease(tenant, target, (lease) =>
        this.deps.sessions.commitVersion({
          tenant,
          session: target,
          fence: lease.fence,
          state: args.bytes,
          version: { parent: null, tokens_absorbed: cartridge.tokens_absorbed, transcript_hash: root, origin: 'cartridge' },
        }),
      );
    } catch (e) {
      // A session without its cartridge's state is not the session asked for.
      await this.deps.sessions.delete(tenant, target).catch(() => {});
      throw e;
    }
  }

  /** A version's entry, from the manifest or (an older version) its manifest page. */
  async version(tenant: string, m: SessionManifest, version: number): Promise<ManifestVersion> {
    const entry = await this.deps.sessions.findVersion(tenant, m.session, m, version);
    if (!entry) throw new ApiError('version_not_found', `session ${m.session} has no version ${version}`);
    return entry;
  }

  async exportState(tenant: string, session: string, version: number | undefined): Promise<{ bytes: Uint8Array; entry: ManifestVersion }> {
    const { manifest } = await this.get(tenant, session);
    const entry = await this.version(tenant, manifest, version ?? manifest.head);
    if (entry.state_bytes === 0) {
      throw new ApiError('version_not_found', `version ${entry.version} of session ${session} is the empty state of a new session: nothing is stored until a turn runs`);
    }
    const bytes = await this.deps.sessions.readState(tenant, session, entry.version);
    if (!bytes) throw new ApiError('version_not_found', `version ${entry.version} of session ${session} is gone`);
    return { bytes, entry };
  }

  /** Validate an uploaded `.mstate` against the session's model (format, fingerprint, layout, every tensor) and store it as the new head. */
  async importState(tenant: string, session: string, bytes: Uint8Array): Promise<ManifestRead & { entry: ManifestVersion }> {
    const { manifest } = await this.get(tenant, session);
    let header;
    try {
      header = readMStateHeader(bytes).header;
      // The fingerprint and layout come from the workers' registration: the edge never loads a model.
      const model = await this.deps.models.get(manifest.model);
      if (!model) {
        const start = this.deps.served.queuesWithoutWorkers(manifest.model) ? 'a queued turn starts one' : 'start one';
        throw new ApiError(
          'no_worker',
          `no worker of model ${manifest.model} has registered yet, so its fingerprint is unknown and the state cannot be checked; a worker registers it when it starts (${start}): retry then`,
          { retryAfterSeconds: this.deps.config.RETRY_AFTER_S },
        );
      }
      // Every tensor checked too: a poison state stored here would fail every later turn of the session.
      assertStateImportable(bytes, model.fingerprint, model.layout);
    } catch (e) {
      if (e instanceof StateFormatError) throw new ApiError(e.code, e.message);
      throw e;
    }
    const known = header.transcript_hash !== null && /^[0-9a-f]{64}$/.test(header.transcript_hash);
    // A state whose transcript we cannot know starts a new chain: chats then extend it with all their messages.
    const checksum = Buffer.from(bytes.subarray(bytes.length - 32)).toString('hex');
    const transcript = known ? header.transcript_hash! : opaqueTranscriptRoot(checksum);
    return this.withBusyCheck(tenant, session, 'import', () =>
      this.withLease(tenant, session, async (lease) => {
        const committed = await this.deps.sessions.commitVersion({
          tenant,
          session,
          fence: lease.fence,
          state: bytes,
          version: { parent: null, tokens_absorbed: header.tokens_absorbed, transcript_hash: transcript, origin: 'import' },
        });
        if (known) return committed;
        const rooted = await this.deps.sessions.updateManifest(tenant, session, (m) => ({ ...m, transcript_root: transcript }));
        return { ...committed, ...(rooted ?? {}) };
      }),
    );
  }

  async delete(tenant: string, session: string): Promise<number> {
    await this.get(tenant, session);
    return this.withBusyCheck(tenant, session, 'delete', () => this.withLease(tenant, session, () => this.deps.sessions.delete(tenant, session)));
  }

  /**
   * The longest stored version whose transcript the messages extend, among those the manifest
   * lists: version 0 and the newest MANIFEST_RECENT_VERSIONS (older ones are in manifest
   * pages, which are not searched: a chat that edits a message further back matches version 0
   * and is fed whole). Version 0 is the session's root transcript, so a fresh session always matches.
   */
  matchConversation(m: SessionManifest, messages: readonly Message[]): ConversationMatch | undefined {
    const prefixes = transcriptPrefixHashes(m.transcript_root, messages);
    const byHash = new Map<string, ManifestVersion>();
    for (const v of m.versions) {
      const prior = byHash.get(v.transcript_hash);
      // The head wins a tie; otherwise the newest version.
      if (!prior || v.version === m.head || (prior.version !== m.head && v.version > prior.version)) byHash.set(v.transcript_hash, v);
    }
    for (let k = prefixes.length - 1; k >= 0; k--) {
      const v = byHash.get(prefixes[k]!);
      if (v) return { version: v, absorbed: k, isHead: v.version === m.head };
    }
    return undefined;
  }

  /** Run `fn` holding the session's turn slot, so no turn is admitted meanwhile (409 if one runs). */
  private async withBusyCheck<T>(tenant: string, session: string, what: string, fn: () => Promise<T>): Promise<T> {
    const slot = `${what}_${randomBytes(8).toString('hex')}`;
    const claim = await this.deps.leases.claimTurn(tenant, session, slot, 60_000);
    if (!claim.claimed) {
      throw new ApiError('session_busy', `session ${session} is running a turn (${claim.holder}); retry when it ends`, { details: { turn_id: claim.holder } });
    }
    try {
      return await fn();
    } finally {
      await this.deps.leases.releaseTurn(tenant, session, slot).catch(() => {});
    }
  }

  private async withLease<T>(tenant: string, session: string, fn: (lease: SessionLease) => Promise<T>): Promise<T> {
    const { leases, sessions } = this.deps;
    const owner = `edge-${process.pid}`;
    let got = await leases.tryAcquire(tenant, session, owner);
    // Who holds it (a worker's id: host name and pid) is internal: the client learns only that it is busy.
    if (!isLease(got)) throw new ApiError('session_busy', `session ${session} is being written by a turn; retry shortly`);
    const current = await sessions.read(tenant, session);
    if (current && (got.fresh || current.manifest.fence >= got.fence)) {
      // Redis had no counter, or one behind the store (it lost its data): lift the fence past any handed out before.
      await leases.release(got);
      got = await leases.tryAcquire(tenant, session, owner, current.manifest.fence + FENCE_GAP_AFTER_REDIS_LOSS);
      if (!isLease(got)) throw new ApiError('session_busy', `session ${session} is busy; retry shortly`);
    }
    const lease = got;
    try {
      return await fn(lease);
    } catch (e) {
      if (e instanceof FencedOutError || e instanceof CommitConflictError) throw new ApiError('session_busy', `session ${session} changed concurrently; retry`);
      throw e;
    } finally {
      await leases.release(lease).catch(() => {});
    }
  }
}

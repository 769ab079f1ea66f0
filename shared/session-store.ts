// Sessions in the state store: the layout, the manifest, and the commit that advances a head.
//
//   {prefix}/tenants/{tenant}/sessions/{session}/manifest.json
//   {prefix}/tenants/{tenant}/sessions/{session}/v{version}.mstate            (immutable)
//   {prefix}/tenants/{tenant}/sessions/{session}/manifest-page-{n}.json       (immutable; older version entries)
//   {prefix}/tenants/{tenant}/sessions/{session}/v{version}.items.json         (immutable; what the version absorbed and answered)
//   {prefix}/tenants/{tenant}/sessions/{session}/responses/{nonce}.json        (a Responses API response → version; response-store.ts)
//   {prefix}/tenants/{tenant}/session-index/{inverted ms}-{session}           (one per session: listing, newest first)
//
// A commit writes the new version's file with create-if-absent, then replaces the manifest
// with If-Match on the ETag it read. A crash between the two leaves an unreferenced file and
// the old head: readers never see a head whose state is missing or torn. The writer must
// hold the session's lease; its fencing token is recorded in the manifest and a smaller one
// is refused, so a writer that lost its lease cannot advance the head behind its successor.
//
// A turn's outcome is decided here, by whichever replaces the manifest first: its commit (the
// version, recording the turn's id) or settleTurn (the turn listed as refused). Each refuses
// to act on a manifest that already records the other, and both are compare-and-swaps on the
// same object, so exactly one wins, whatever crashes, retries, zombie attempts, deadlines or
// slow stores do. A turn's deadline is checked by its commit, against every manifest it would
// replace: past it, the commit refuses the turn instead (turn_timeout).
import { randomBytes } from 'node:crypto';
import { ItemsFile } from './conversation-items.ts';
import {
  ManifestPage,
  pageOut,
  REFUSED_TURNS_KEPT,
  SessionManifest,
  VERSIONS_PER_PAGE,
  headEntry,
  type ManifestVersion,
  type RefusedTurn,
} from './session-manifest.ts';
import { StorePreconditionError, type StateStore } from './state-store.ts';

export interface ManifestRead {
  readonly manifest: SessionManifest;
  readonly etag: string;
}

/** A newer lease holder has written this session: the caller's lease is gone. */
export class FencedOutError extends Error {
  readonly code = 'fenced_out';
  constructor(message: string) {
    super(message);
    this.name = 'FencedOutError';
  }
}

/** The session's manifest changed under a commit (a concurrent writer): transient, retry from a fresh read. */
export class CommitConflictError extends Error {
  readonly code = 'commit_conflict';
  constructor(message: string) {
    super(message);
    this.name = 'CommitConflictError';
  }
}

export class SessionExistsError extends Error {
  readonly code = 'session_exists';
  constructor(session: string) {
    super(`session ${session} already exists`);
    this.name = 'SessionExistsError';
  }
}

export class CorruptManifestError extends Error {
  readonly code = 'manifest_corrupt';
  constructor(key: string, why: string) {
    super(`${key}: ${why}`);
    this.name = 'CorruptManifestError';
  }
}

/** How a turn ended, as the session's manifest records it. */
export type TurnOutcome =
  /** Its version is stored and was the head when committed: the turn happened, exactly once. */
  | { readonly state: 'committed'; readonly entry: ManifestVersion }
  /** Decided failed: it has no version and never will. */
  | { readonly state: 'refused'; readonly refusal: RefusedTurn }
  /** The session was deleted (or deleted and created again) since the turn was accepted: it can never commit. */
  | { readonly state: 'gone' };

/** Why a turn is refused: an error code (shared/errors.ts), its message, and the request's fingerprint. */
export interface TurnRefusal {
  readonly code: string;
  readonly message: string;
  readonly request_sha256?: string | undefined;
}

/** The turn a commit belongs to. */
export interface CommitTurn {
  readonly id: string;
  /** The session's incarnation when the turn was accepted: a session deleted and created again since is another session. */
  readonly incarnation: string;
  /** Epoch ms after which the turn is refused (turn_timeout) instead of committed. */
  readonly deadlineMs?: number | undefined;
  /** The request's fingerprint, kept with a refusal. */
  readonly requestSha256?: string | undefined;
}

/** The turn's outcome was already decided (or is decided now, by its deadline): the commit did not happen. */
export class TurnSettledError extends Error {
  readonly code = 'turn_settled';
  constructor(readonly outcome: TurnOutcome) {
    super(`turn already ${outcome.state}`);
    this.name = 'TurnSettledError';
  }
}

/** The outcome `m` records for the turn, if any; `undefined`: not decided yet. Looks only at the manifest's own versions (the newest). */
export function recordedOutcome(m: SessionManifest, turn: { readonly id: string; readonly incarnation: string }): TurnOutcome | undefined {
  if (m.incarnation !== turn.incarnation) return { state: 'gone' };
  const entry = m.versions.find((v) => v.turn_id === turn.id);
  if (entry) return { state: 'committed', entry };
  const refusal = m.refused_turns.find((r) => r.turn_id === turn.id);
  if (refusal) return { state: 'refused', refusal };
  return undefined;
}

export interface NewVersion {
  readonly parent: number | null;
  readonly tokens_absorbed: number;
  readonly transcript_hash: string;
  readonly origin: ManifestVersion['origin'];
  readonly turn_id?: string;
  readonly instructions_sha256?: string | undefined;
}

export interface CommitArgs {
  readonly tenant: string;
  readonly session: string;
  /** Fencing token of the caller's lease. */
  readonly fence: number;
  readonly state: Uint8Array;
  readonly version: NewVersion;
  /** The version's items (`v{N}.items.json`), stored create-if-absent with the state, before the head advances. */
  readonly items?: ItemsFile;
  /** Re-checked against every manifest read (e.g. "the head is still what the turn started from"); throws to abort. */
  readonly precondition?: (manifest: SessionManifest) => void;
  /**
   * The turn this version is the outcome of: the commit happens only while the manifest records
   * no outcome of it (TurnSettledError otherwise), and only before its deadline (past it the
   * turn is refused with turn_timeout, in the same compare-and-swap, and TurnSettledError thrown).
   */
  readonly turn?: CommitTurn;
  readonly now?: () => Date;
}

const encoder = new TextEncoder();

/** Why a commit past its turn's deadline refuses the turn instead. */
const DEADLINE_REFUSAL: TurnRefusal = { code: 'turn_timeout', message: 'the turn did not finish within its deadline; it was not saved' };

/** 10^13 - 1 ms is the year 2286: index names stay 13 digits until then. */
const INDEX_TIME_CEILING = 9_999_999_999_999;

export interface SessionStoreOptions {
  /** Newest versions the manifest keeps besides version 0 (MANIFEST_RECENT_VERSIONS); older ones move to pages. */
  readonly recentVersions?: number;
}

export interface VersionReader {
  get(version: number): Promise<ManifestVersion | undefined>;
  /** `from`, its parent, and so on to the start of the session's history (version 0, or an import or fork). */
  ancestry(from: number): AsyncGenerator<ManifestVersion>;
  /** The version the turn committed (newest pages first). */
  byTurn(turnId: string): Promise<ManifestVersion | undefined>;
}

export interface VersionListing {
  readonly data: ManifestVersion[];
  readonly hasMore: boolean;
}

export class SessionStore {
  /** Pages a commit moves out at most: bounds the cost of the commit that first meets an old, long manifest. */
  static readonly MAX_PAGES_PER_COMMIT = 4;
  static readonly DEFAULT_RECENT_VERSIONS = 64;
  readonly recentVersions: number;

  constructor(
    readonly objects: StateStore,
    options: SessionStoreOptions = {},
  ) {
    this.recentVersions = options.recentVersions ?? SessionStore.DEFAULT_RECENT_VERSIONS;
  }

  static sessionPrefix(tenant: string, session: string): string {
    return `tenants/${tenant}/sessions/${session}/`;
  }
  static manifestKey(tenant: string, session: string): string {
    return `${SessionStore.sessionPrefix(tenant, session)}manifest.json`;
  }
  static versionKey(tenant: string, session: string, version: number): string {
    return `${SessionStore.sessionPrefix(tenant, session)}v${version}.mstate`;
  }
  static manifestPageKey(tenant: string, session: string, page: number): string {
    return `${SessionStore.sessionPrefix(tenant, session)}manifest-page-${page}.json`;
  }
  static itemsKey(tenant: string, session: string, version: number): string {
    return `${SessionStore.sessionPrefix(tenant, session)}v${version}.items.json`;
  }
  static sessionIndexPrefix(tenant: string): string {
    return `tenants/${tenant}/session-index/`;
  }
  /**
   * The session's entry in its tenant's index: named so that key order is newest first (the
   * creation time's milliseconds subtracted from 10^13 - 1, zero-padded), so a listing is one
   * paged LIST of the index, whatever the number of sessions.
   */
  static sessionIndexKey(tenant: string, session: string, createdAt: string): string {
    const inverted = String(INDEX_TIME_CEILING - Date.parse(createdAt)).padStart(13, '0');
    return `${SessionStore.sessionIndexPrefix(tenant)}${inverted}-${session}`;
  }
  /** Response records live inside their session, so deleting the session removes them too. */
  static responseKey(tenant: string, session: string, nonce: string): string {
    return `${SessionStore.sessionPrefix(tenant, session)}responses/${nonce}.json`;
  }

  async read(tenant: string, session: string): Promise<ManifestRead | null> {
    const key = SessionStore.manifestKey(tenant, session);
    const obj = await this.objects.get(key);
    if (!obj) return null;
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(obj.bytes));
    } catch {
      throw new CorruptManifestError(key, 'not JSON');
    }
    const parsed = SessionManifest.safeParse(json);
    if (!parsed.success) throw new CorruptManifestError(key, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    return { manifest: parsed.data, etag: obj.etag };
  }

  /**
   * Create a session at version 0 (`initial` describes its state; no file is stored for it,
   * the worker starts from a zero state). SessionExistsError if the id is taken.
   */
  async create(init: {
    tenant: string;
    session: string;
    model: string;
    metadata: Record<string, string>;
    transcriptRoot: string;
    /** The cartridge the session starts from (its version 1 is then committed by the caller). */
    cartridge?: string;
    now?: Date;
  }): Promise<ManifestRead> {
    const now = (init.now ?? new Date()).toISOString();
    const manifest: SessionManifest = {
      format: 1,
      tenant: init.tenant,
      session: init.session,
      model: init.model,
      incarnation: randomBytes(12).toString('hex'),
      created_at: now,
      updated_at: now,
      metadata: init.metadata,
      transcript_root: init.transcriptRoot,
      ...(init.cartridge ? { cartridge: init.cartridge } : {}),
      head: 0,
      next_version: 1,
      fence: 0,
      versions: [
        { version: 0, parent: null, tokens_absorbed: 0, state_bytes: 0, transcript_hash: init.transcriptRoot, created_at: now, origin: 'created' },
      ],
      paged_below: 0,
      paged_versions: 0,
      refused_turns: [],
    };
    const key = SessionStore.manifestKey(init.tenant, init.session);
    // Files left by a deleted session whose deletion crashed midway would collide with the
    // new session's version numbers; without a manifest they belong to no one.
    if (!(await this.objects.get(key))) {
      const leftovers = await this.objects.list(SessionStore.sessionPrefix(init.tenant, init.session));
      if (leftovers.length > 0) await this.objects.delete(leftovers.filter((k) => k !== key));
    }
    // The index entry first: a crash between the two leaves an entry whose session does not
    // exist (listings skip it), never a session that no listing shows.
    const indexKey = SessionStore.sessionIndexKey(init.tenant, init.session, now);
    await this.objects.putIfAbsent(indexKey, encoder.encode(init.session)).catch((e) => {
      if (!(e instanceof StorePreconditionError)) throw e;
    });
    try {
      const etag = await this.objects.putIfAbsent(key, encoder.encode(JSON.stringify(manifest)));
      return { manifest, etag };
    } catch (e) {
      if (e instanceof StorePreconditionError) {
        await this.objects.delete([indexKey]).catch(() => {});
        throw new SessionExistsError(init.session);
      }
      throw e;
    }
  }

  /**
   * A page of the tenant's sessions, newest first, after the session `after` (its id and
   * creation time, as listed). Index entries whose session is gone or was created again
   * since (another creation time) are skipped.
   */
  async listSessions(tenant: string, options: { limit: number; after?: { session: string; created_at: string } }): Promise<{ data: SessionManifest[]; hasMore: boolean }> {
    const prefix = SessionStore.sessionIndexPrefix(tenant);
    let startAfter = options.after ? SessionStore.sessionIndexKey(tenant, options.after.session, options.after.created_at) : undefined;
    const data: SessionManifest[] = [];
    for (;;) {
      const page = await this.objects.listPage(prefix, { startAfter, limit: options.limit - data.length + 1 });
      const read = await Promise.all(
        page.objects.map(async ({ key }) => {
          const session = key.slice(prefix.length + 14);
          const found = await this.read(tenant, session).catch(() => null);
          return found && SessionStore.sessionIndexKey(tenant, session, found.manifest.created_at) === key ? found.manifest : null;
        }),
      );
      for (const m of read) if (m && data.length <= options.limit) data.push(m);
      if (data.length > options.limit) return { data: data.slice(0, options.limit), hasMore: true };
      if (!page.hasMore) return { data, hasMore: false };
      startAfter = page.objects.at(-1)!.key;
    }
  }

  /** A version's items, or null when it has none (see ManifestVersion.items) or they are gone. */
  async readItems(tenant: string, session: string, version: number): Promise<ItemsFile | null> {
    const key = SessionStore.itemsKey(tenant, session, version);
    const obj = await this.objects.get(key);
    if (!obj) return null;
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(obj.bytes));
    } catch {
      throw new CorruptManifestError(key, 'not JSON');
    }
    const parsed = ItemsFile.safeParse(json);
    if (!parsed.success) throw new CorruptManifestError(key, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    return parsed.data;
  }

  /**
   * A reader of one manifest's version entries that reads each manifest page at most once: for
   * walks over many versions (a head's parent chain, a turn id's version).
   */
  versionReader(tenant: string, session: string, m: SessionManifest): VersionReader {
    const pages = new Map<number, Promise<ManifestPage>>();
    const page = (n: number) => {
      let p = pages.get(n);
      if (!p) pages.set(n, (p = this.readPage(tenant, session, m, n)));
      return p;
    };
    const byNumber = async (version: number) => {
      const inManifest = m.versions.find((v) => v.version === version);
      if (inManifest || version === 0 || version >= m.paged_below) return inManifest;
      return (await page(Math.floor(version / VERSIONS_PER_PAGE))).versions.find((v) => v.version === version);
    };
    return {
      get: byNumber,
      async *ancestry(from: number) {
        for (let v: number | null = from; v !== null; ) {
          const entry = await byNumber(v);
          if (!entry) return;
          yield entry;
          v = entry.parent;
        }
      },
      async byTurn(turnId: string) {
        const recent = m.versions.find((v) => v.turn_id === turnId);
        if (recent) return recent;
        for (let n = m.paged_below / VERSIONS_PER_PAGE - 1; n >= 0; n--) {
          const found = (await page(n)).versions.find((v) => v.turn_id === turnId);
          if (found) return found;
        }
        return undefined;
      },
    };
  }

  /** The `.mstate` bytes of a version, or null when it has no file (the empty state) or is gone. */
  async readState(tenant: string, session: string, version: number): Promise<Uint8Array | null> {
    const obj = await this.objects.get(SessionStore.versionKey(tenant, session, version));
    return obj ? obj.bytes : null;
  }

  /** Store `state` as the next version and make it the head. */
  async commitVersion(args: CommitArgs): Promise<ManifestRead & { entry: ManifestVersion }> {
    const { tenant, session, fence } = args;
    const manifestKey = SessionStore.manifestKey(tenant, session);
    for (let attempt = 0; attempt < 3; attempt++) {
      const current = await this.read(tenant, session);
      if (!current) throw new CommitConflictError(`session ${session} no longer exists`);
      const m = current.manifest;
      if (args.turn) {
        const decided = recordedOutcome(m, args.turn);
        if (decided) throw new TurnSettledError(decided);
      }
      if (m.fence > fence) throw new FencedOutError(`session ${session} was written under lease ${m.fence}; ours is ${fence}`);
      if (args.turn && this.pastDeadline(args.turn)) {
        const refused = await this.refuseOn(current, args.turn.id, { ...DEADLINE_REFUSAL, request_sha256: args.turn.requestSha256 });
        if (refused) throw new TurnSettledError(refused);
        continue;
      }
      args.precondition?.(m);
      const version = m.next_version;
      const versionKey = SessionStore.versionKey(tenant, session, version);
      try {
        await this.objects.putIfAbsent(versionKey, args.state);
        // Written after the state, so a number whose items exist always has its state too (and is skipped below).
        if (args.items) await this.objects.putIfAbsent(SessionStore.itemsKey(tenant, session, version), encoder.encode(JSON.stringify(args.items)));
      } catch (e) {
        if (!(e instanceof StorePreconditionError)) throw e;
        // A file for a version the manifest never took: a commit that crashed (or lost its
        // lease) between its two writes. Skip the number (versions are never reused, and the
        // worker needs no delete permission) and record our fence in the same replace, so that
        // writer can no longer advance the head with the ETag it holds. Its file is tagged for
        // the retention rule like any replaced version.
        await this.objects
          .putIfMatch(manifestKey, encoder.encode(JSON.stringify({ ...m, fence, next_version: version + 1 })), current.etag)
          .catch((err) => {
            if (err instanceof StorePreconditionError) return; // changed under us: the next read sorts it out
            throw err;
          });
        await this.objects.markSuperseded(versionKey).catch(() => {});
        continue;
      }
      const now = (args.now?.() ?? new Date()).toISOString();
      const entry: ManifestVersion = {
        version,
        parent: args.version.parent,
        tokens_absorbed: args.version.tokens_absorbed,
        state_bytes: args.state.byteLength,
        transcript_hash: args.version.transcript_hash,
        created_at: now,
        origin: args.version.origin,
        ...((args.turn?.id ?? args.version.turn_id) ? { turn_id: args.turn?.id ?? args.version.turn_id } : {}),
        ...(args.items ? { items: true as const } : {}),
        ...(args.version.instructions_sha256 ? { instructions_sha256: args.version.instructions_sha256 } : {}),
      };
      // Older entries move to their pages first: a commit that then loses the manifest replace
      // leaves pages that any later commit would write identically.
      const { manifest: next, pages } = pageOut(
        { ...m, head: version, next_version: version + 1, fence, updated_at: now, versions: [...m.versions, entry] },
        this.recentVersions,
        SessionStore.MAX_PAGES_PER_COMMIT,
      );
      for (const { index, page } of pages) await this.writePage(tenant, session, index, page);
      // The state file may have taken long (a slow store): the deadline is checked again at the
      // last moment. Refused now, the file stays unreferenced, like a crashed commit's.
      if (args.turn && this.pastDeadline(args.turn)) {
        const refused = await this.refuseOn(current, args.turn.id, { ...DEADLINE_REFUSAL, request_sha256: args.turn.requestSha256 });
        if (refused) throw new TurnSettledError(refused);
        continue;
      }
      try {
        const etag = await this.objects.putIfMatch(manifestKey, encoder.encode(JSON.stringify(next)), current.etag);
        // The replaced head may now expire under the deployment's retention rule (the new head never does).
        const replaced = m.versions.find((v) => v.version === m.head);
        if (replaced && replaced.state_bytes > 0) {
          await this.objects.markSuperseded(SessionStore.versionKey(tenant, session, replaced.version)).catch(() => {});
        }
        return { manifest: next, etag, entry };
      } catch (e) {
        if (e instanceof StorePreconditionError) {
          // Another writer replaced the manifest meanwhile. For a turn, it may have been a
          // refusal of it (its deadline, decided elsewhere) or an earlier attempt's commit:
          // read again, and report that outcome rather than a conflict.
          if (args.turn) {
            const now = await this.read(tenant, session);
            const decided = now ? recordedOutcome(now.manifest, args.turn) : ({ state: 'gone' } as const);
            if (decided) throw new TurnSettledError(decided);
          }
          throw new CommitConflictError(`session ${session} changed while version ${version} was being committed`);
        }
        throw e;
      }
    }
    throw new CommitConflictError(`session ${session}: could not commit after 3 attempts`);
  }

  private pastDeadline(turn: CommitTurn): boolean {
    return turn.deadlineMs !== undefined && Date.now() > turn.deadlineMs;
  }

  /**
   * List `turnId` as refused in the manifest read as `current`, by compare-and-swap. Returns
   * the outcome, or undefined when the manifest changed meanwhile (read again and retry).
   */
  private async refuseOn(current: ManifestRead, turnId: string, why: TurnRefusal): Promise<TurnOutcome | undefined> {
    const m = current.manifest;
    const refusal: RefusedTurn = {
      turn_id: turnId,
      code: why.code,
      message: why.message.slice(0, 1000),
      at: new Date().toISOString(),
      ...(why.request_sha256 ? { request_sha256: why.request_sha256 } : {}),
    };
    const next: SessionManifest = { ...m, refused_turns: [...m.refused_turns, refusal].slice(-REFUSED_TURNS_KEPT) };
    try {
      await this.objects.putIfMatch(SessionStore.manifestKey(m.tenant, m.session), encoder.encode(JSON.stringify(next)), current.etag);
      return { state: 'refused', refusal };
    } catch (e) {
      if (e instanceof StorePreconditionError) return undefined;
      throw e;
    }
  }

  /**
   * Decide a turn failed, unless it is already decided: the outcome the manifest records (its
   * commit, an earlier refusal, or the session gone), else the turn listed as refused with
   * `why`, after which no attempt of it can commit. Whoever tells a client that a session turn
   * failed calls this first and reports what it returns (a commit, if it finds one).
   * Throws StoreUnavailableError (nothing decided: the caller must not report a failure).
   */
  async settleTurn(tenant: string, session: string, turn: { readonly id: string; readonly incarnation: string }, why: TurnRefusal): Promise<TurnOutcome> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const current = await this.read(tenant, session);
      if (!current) return { state: 'gone' };
      const decided = recordedOutcome(current.manifest, turn);
      if (decided) return decided;
      const refused = await this.refuseOn(current, turn.id, why);
      if (refused) return refused;
    }
    throw new CommitConflictError(`session ${session} kept changing while turn ${turn.id} was being settled`);
  }

  /**
   * The outcome the store records for a turn, or undefined while it has none. With
   * `searchPages`, versions moved to manifest pages are searched too (a replay of an old turn
   * whose job Redis has lost), else only the manifest's newest.
   */
  async findTurn(tenant: string, session: string, turn: { readonly id: string; readonly incarnation?: string | undefined }, options: { searchPages?: boolean } = {}): Promise<TurnOutcome | undefined> {
    const current = await this.read(tenant, session);
    if (!current) return { state: 'gone' };
    const m = current.manifest;
    const recorded = recordedOutcome(m, { id: turn.id, incarnation: turn.incarnation ?? m.incarnation });
    if (recorded || !options.searchPages || m.paged_below === 0) return recorded;
    const entry = await this.versionReader(tenant, session, m).byTurn(turn.id);
    return entry ? { state: 'committed', entry } : undefined;
  }

  /**
   * Record `fence` as the session's last writer's before writing anything else, so that every
   * holder of a smaller fence (an earlier attempt of a turn, still running somewhere after its
   * lease expired) can no longer commit: its compare-and-swap fails and, read again, the
   * manifest fences it out. FencedOutError if a larger fence is already recorded.
   */
  async claimFence(tenant: string, session: string, fence: number): Promise<ManifestRead | null> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const current = await this.read(tenant, session);
      if (!current) return null;
      const m = current.manifest;
      if (m.fence > fence) throw new FencedOutError(`session ${session} was written under lease ${m.fence}; ours is ${fence}`);
      if (m.fence === fence) return current;
      const next: SessionManifest = { ...m, fence };
      try {
        const etag = await this.objects.putIfMatch(SessionStore.manifestKey(tenant, session), encoder.encode(JSON.stringify(next)), current.etag);
        return { manifest: next, etag };
      } catch (e) {
        if (!(e instanceof StorePreconditionError)) throw e;
      }
    }
    throw new CommitConflictError(`session ${session} kept changing while lease ${fence} was being recorded`);
  }

  /** The entry of `version`: in the manifest, or in the page that holds it; undefined if the session has no such version. */
  async findVersion(tenant: string, session: string, m: SessionManifest, version: number): Promise<ManifestVersion | undefined> {
    const inManifest = m.versions.find((v) => v.version === version);
    if (inManifest || version === 0 || version >= m.paged_below) return inManifest;
    const page = await this.readPage(tenant, session, m, Math.floor(version / VERSIONS_PER_PAGE));
    return page.versions.find((v) => v.version === version);
  }

  /**
   * One page of the session's versions in number order (`asc`) or newest first (`desc`),
   * starting after the version `after` in that order: up to `limit` entries, reading only the
   * manifest pages those lie in.
   */
  async listVersions(
    tenant: string,
    session: string,
    m: SessionManifest,
    options: { limit: number; order: 'asc' | 'desc'; after?: number },
  ): Promise<VersionListing> {
    const { limit, order, after } = options;
    const wanted = (v: ManifestVersion) => after === undefined || (order === 'asc' ? v.version > after : v.version < after);
    const out: ManifestVersion[] = [];
    const take = (entries: readonly ManifestVersion[]) => {
      for (const v of order === 'asc' ? entries : [...entries].reverse()) {
        if (out.length > limit) return;
        if (wanted(v)) out.push(v);
      }
    };
    const [first, ...rest] = m.versions;
    const pageCount = m.paged_below / VERSIONS_PER_PAGE;
    if (order === 'asc') {
      take([first!]);
      const from = after === undefined ? 0 : Math.floor((after + 1) / VERSIONS_PER_PAGE);
      for (let n = from; n < pageCount && out.length <= limit; n++) take((await this.readPage(tenant, session, m, n)).versions);
      take(rest);
    } else {
      take(rest);
      const from = after === undefined ? pageCount - 1 : Math.min(pageCount - 1, Math.floor((after - 1) / VERSIONS_PER_PAGE));
      for (let n = from; n >= 0 && out.length <= limit; n--) take((await this.readPage(tenant, session, m, n)).versions);
      take([first!]);
    }
    return { data: out.slice(0, limit), hasMore: out.length > limit };
  }

  private async readPage(tenant: string, session: string, m: SessionManifest, index: number): Promise<ManifestPage> {
    const key = SessionStore.manifestPageKey(tenant, session, index);
    const obj = await this.objects.get(key);
    // The manifest names only pages written before it: one missing was removed by hand or by a half-done delete.
    if (!obj) throw new CorruptManifestError(key, `missing, though the manifest has moved versions below ${m.paged_below} to pages`);
    const page = this.parsePage(key, obj.bytes);
    if (page.incarnation !== m.incarnation) throw new CorruptManifestError(key, 'belongs to an earlier session of the same id');
    return page;
  }

  private parsePage(key: string, bytes: Uint8Array): ManifestPage {
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw new CorruptManifestError(key, 'not JSON');
    }
    const parsed = ManifestPage.safeParse(json);
    if (!parsed.success) throw new CorruptManifestError(key, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    return parsed.data;
  }

  /** Create a page; one already there (a commit that lost its manifest replace wrote it) must say the same. */
  private async writePage(tenant: string, session: string, index: number, page: ManifestPage): Promise<void> {
    const key = SessionStore.manifestPageKey(tenant, session, index);
    const body = JSON.stringify(page);
    try {
      await this.objects.putIfAbsent(key, encoder.encode(body));
    } catch (e) {
      if (!(e instanceof StorePreconditionError)) throw e;
      const existing = await this.objects.get(key);
      if (!existing || JSON.stringify(this.parsePage(key, existing.bytes)) !== body) {
        throw new CorruptManifestError(key, 'exists with other entries than the manifest holds for its range');
      }
    }
  }

  /** Replace the manifest through `mutate` (metadata edits) under the same CAS. */
  async updateManifest(tenant: string, session: string, mutate: (m: SessionManifest) => SessionManifest): Promise<ManifestRead | null> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const current = await this.read(tenant, session);
      if (!current) return null;
      const next = SessionManifest.parse(mutate(current.manifest));
      try {
        const etag = await this.objects.putIfMatch(SessionStore.manifestKey(tenant, session), encoder.encode(JSON.stringify(next)), current.etag);
        return { manifest: next, etag };
      } catch (e) {
        if (!(e instanceof StorePreconditionError)) throw e;
      }
    }
    throw new CommitConflictError(`session ${session}: manifest kept changing`);
  }

  /**
   * Remove a session: the manifest first (the session disappears at once), then every file.
   * Returns how many version files were removed. The caller holds the session's lease.
   */
  async delete(tenant: string, session: string): Promise<number> {
    const manifestKey = SessionStore.manifestKey(tenant, session);
    const createdAt = (await this.read(tenant, session).catch(() => null))?.manifest.created_at;
    await this.objects.delete([manifestKey]);
    const keys = await this.objects.list(SessionStore.sessionPrefix(tenant, session));
    await this.objects.delete(keys);
    // Last: until here a listing shows the session, then skips the entry (its manifest is gone).
    if (createdAt) await this.objects.delete([SessionStore.sessionIndexKey(tenant, session, createdAt)]);
    return keys.filter((k) => k.endsWith('.mstate')).length;
  }
}

export { headEntry };

// The manifest: one small JSON object per session, beside its `.mstate` versions, naming the
// head and describing its versions. The head advances only by a conditional replace of this
// object (If-Match on its ETag), after the new version's file is durable, so a reader sees
// either the old head or the new one, never a head without its state.
//
// Every commit rewrites the manifest, so it must not grow with the session's history: it keeps
// version 0 and the newest versions (the head among them, and what chat prefix matching and a
// retried turn look for), and older entries move to manifest pages. Page n holds the entries
// numbered [n·P, (n+1)·P) (P = VERSIONS_PER_PAGE, version 0 excepted). It is written once,
// create-if-absent, before the manifest that drops those entries, and never changes: a page is
// written only when every number in its range is older than the kept versions, and entries
// are never edited, so any writer that writes it writes the same content.
import { z } from 'zod';
import { ModelId, SessionId, VersionNumber } from './api-schemas.ts';

export const TenantId = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);

export const VersionOrigin = z.enum(['created', 'turn', 'import', 'fork', 'cartridge']);
export type VersionOrigin = z.infer<typeof VersionOrigin>;

export const ManifestVersion = z.object({
  version: VersionNumber,
  parent: VersionNumber.nullable(),
  tokens_absorbed: z.number().int().nonnegative(),
  /** Bytes of `v{version}.mstate`; 0 means no file: the empty state of a new session. */
  state_bytes: z.number().int().nonnegative(),
  /** Transcript hash of what the state has absorbed (see transcript-hash.ts). */
  transcript_hash: z.string().regex(/^[0-9a-f]{64}$/),
  created_at: z.string(),
  origin: VersionOrigin,
  /** The turn that produced it: a retried turn finds its own commit here and does not run twice. */
  turn_id: z.string().optional(),
  /**
   * `v{version}.items.json` holds what this version absorbed and answered, as conversation items
   * (shared/conversation-items.ts). Absent for versions without one (version 0, imports, forks,
   * and turns committed before items were kept).
   */
  items: z.literal(true).optional(),
  /**
   * SHA-256 of the Responses API `instructions` last absorbed on the way to this state: a
   * response given the same instructions again does not feed them again.
   */
  instructions_sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
});
export type ManifestVersion = z.infer<typeof ManifestVersion>;

/**
 * A turn decided failed: it never committed, and no attempt of it ever will (commitVersion
 * refuses a turn listed here, and settleTurn lists a turn only while it has no version). The
 * failure a client was told is thus true for good, and a retry with the same Idempotency-Key
 * finds it here even after Redis lost the turn's job.
 */
export const RefusedTurn = z.object({
  turn_id: z.string().max(100),
  /** An error code of shared/errors.ts. */
  code: z.string().regex(/^[a-z_]{1,64}$/),
  message: z.string().max(1000),
  at: z.string(),
  /** The request's fingerprint (edge/idempotency.ts): the same Idempotency-Key with another request is refused, as for a retained job. */
  request_sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
});
export type RefusedTurn = z.infer<typeof RefusedTurn>;

/** Refused turns a manifest remembers (the newest): a bound on its size, documented in README. */
export const REFUSED_TURNS_KEPT = 32;

export const SessionManifest = z.object({
  format: z.literal(1),
  tenant: TenantId,
  session: SessionId,
  model: ModelId,
  /**
   * Random per creation: a session deleted and created again under the same id is another
   * incarnation, so a worker's cached state of the old one can never be taken for the new.
   */
  incarnation: z.string().regex(/^[0-9a-f]{16,64}$/),
  created_at: z.string(),
  updated_at: z.string(),
  metadata: z.record(z.string(), z.string()),
  /** H_0 of the session's transcript chain. */
  transcript_root: z.string().regex(/^[0-9a-f]{64}$/),
  /** The cartridge the session started from (its version 1 is a copy of the cartridge's state). */
  cartridge: z.string().optional(),
  head: VersionNumber,
  /** Version numbers are never reused, even after a failed commit or a branch. */
  next_version: VersionNumber,
  /** Fencing token of the last lease holder that wrote; a holder with a smaller token is refused. */
  fence: z.number().int().nonnegative(),
  /**
   * Version 0, then the versions numbered from `paged_below` on, in order; the head is the
   * last (every commit makes its version the head).
   */
  versions: z.array(ManifestVersion).min(1),
  /** Versions numbered 1 to paged_below - 1 are in manifest pages; a multiple of VERSIONS_PER_PAGE. 0 = none. */
  paged_below: VersionNumber.default(0),
  /** How many version entries the pages hold: the session has `versions.length + paged_versions` versions. */
  paged_versions: z.number().int().nonnegative().default(0),
  /** The newest REFUSED_TURNS_KEPT turns decided failed (session-store.ts settleTurn), oldest first. */
  refused_turns: z.array(RefusedTurn).max(REFUSED_TURNS_KEPT).default([]),
});
export type SessionManifest = z.infer<typeof SessionManifest>;

/** Version numbers per manifest page: part of the store layout, never changed for existing sessions. */
export const VERSIONS_PER_PAGE = 64;

/** `manifest-page-{n}.json`: the entries numbered [first, end) of one session incarnation. */
export const ManifestPage = z.object({
  format: z.literal(1),
  session: SessionId,
  incarnation: z.string(),
  first: VersionNumber,
  end: VersionNumber,
  versions: z.array(ManifestVersion),
});
export type ManifestPage = z.infer<typeof ManifestPage>;

/**
 * The pages `m` is ready to move out, at most `maxPages` (so a manifest written before pages
 * existed shrinks over a few commits, never in one long one), and the manifest without them.
 * A page is ready once every number in its range is older than the newest `recent` versions.
 */
export function pageOut(m: SessionManifest, recent: number, maxPages: number): { manifest: SessionManifest; pages: Array<{ index: number; page: ManifestPage }> } {
  const rest = m.versions.slice(1);
  if (rest.length <= recent) return { manifest: m, pages: [] };
  const keepFrom = rest[rest.length - recent]!.version;
  const pages: Array<{ index: number; page: ManifestPage }> = [];
  let pagedBelow = m.paged_below;
  while (pages.length < maxPages && pagedBelow + VERSIONS_PER_PAGE <= keepFrom) {
    const first = pagedBelow;
    const end = first + VERSIONS_PER_PAGE;
    const versions = rest.filter((v) => v.version >= first && v.version < end);
    pages.push({ index: first / VERSIONS_PER_PAGE, page: { format: 1, session: m.session, incarnation: m.incarnation, first, end, versions } });
    pagedBelow = end;
  }
  if (pages.length === 0) return { manifest: m, pages };
  const moved = pages.reduce((n, p) => n + p.page.versions.length, 0);
  return {
    manifest: { ...m, versions: [m.versions[0]!, ...rest.filter((v) => v.version >= pagedBelow)], paged_below: pagedBelow, paged_versions: m.paged_versions + moved },
    pages,
  };
}

export function headEntry(m: SessionManifest): ManifestVersion {
  const entry = m.versions.find((v) => v.version === m.head);
  if (!entry) throw new Error(`manifest of ${m.session}: head ${m.head} is not among its versions`);
  return entry;
}

export function findVersion(m: SessionManifest, version: number): ManifestVersion | undefined {
  return m.versions.find((v) => v.version === version);
}

// The manifest: one small JSON object per session, beside its `.mstate` versions, naming the
// head and describing every version. The head advances only by a conditional replace of this
// object (If-Match on its ETag), after the new version's file is durable, so a reader sees
// either the old head or the new one, never a head without its state.
import { z } from 'zod';
import { ModelId, SessionId, VersionNumber } from './api-schemas.ts';

export const TenantId = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);

export const VersionOrigin = z.enum(['created', 'turn', 'import', 'fork']);
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
});
export type ManifestVersion = z.infer<typeof ManifestVersion>;

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
  head: VersionNumber,
  /** Version numbers are never reused, even after a failed commit or a branch. */
  next_version: VersionNumber,
  /** Fencing token of the last lease holder that wrote; a holder with a smaller token is refused. */
  fence: z.number().int().nonnegative(),
  versions: z.array(ManifestVersion).min(1),
});
export type SessionManifest = z.infer<typeof SessionManifest>;

export function headEntry(m: SessionManifest): ManifestVersion {
  const entry = m.versions.find((v) => v.version === m.head);
  if (!entry) throw new Error(`manifest of ${m.session}: head ${m.head} is not among its versions`);
  return entry;
}

export function findVersion(m: SessionManifest, version: number): ManifestVersion | undefined {
  return m.versions.find((v) => v.version === version);
}

// A session turn's one outcome, as the store records it (session-store.ts decides it: the
// turn's commit, or its refusal, whichever replaces the manifest first), turned into what the
// client is answered: the committed version's result, read back from its items file, or the
// failure it was refused with. Edge and worker both answer from here whenever they did not
// see the outcome happen themselves: a retry after the attempt that committed died, a replay
// after Redis lost the turn's job, a deadline passed while the store was slow.
import { ApiError, isErrorCode, type ErrorCode } from './errors.ts';
import type { TurnResult } from './jobs.ts';
import type { ManifestVersion } from './session-manifest.ts';
import type { SessionStore, TurnOutcome } from './session-store.ts';

/** The turn a client asked for on a session: what names it in the store. */
export interface SessionTurnRef {
  readonly tenant: string;
  readonly session: string;
  readonly turnId: string;
  /** The session's incarnation when the turn was accepted (absent in jobs queued before it was recorded). */
  readonly incarnation?: string | undefined;
}

/** The result of a committed turn, from its manifest entry and its items file (reply, finish reason, usage). */
export async function committedResult(sessions: SessionStore, ref: SessionTurnRef, entry: ManifestVersion): Promise<TurnResult> {
  const items = entry.items ? await sessions.readItems(ref.tenant, ref.session, entry.version) : null;
  const reply = items?.output.find((i) => i.type === 'message' && i.role === 'assistant');
  const output = reply && reply.type === 'message' ? reply.content.map((p) => p.text).join('') : '';
  const incomplete = reply?.type === 'message' && reply.status === 'incomplete';
  return {
    turn_id: ref.turnId,
    session: ref.session,
    version: entry.version,
    base_version: entry.parent,
    output,
    finish_reason: items?.result?.finish_reason ?? (incomplete ? 'length' : 'stop'),
    // Versions committed before results were kept in the items file know only their token count.
    usage: items?.result?.usage ?? { input_tokens: 0, output_tokens: 0, cached_tokens: 0, tokens_absorbed: entry.tokens_absorbed },
  };
}

/** The failure a turn that did not commit is answered with. */
export function failureOf(outcome: Exclude<TurnOutcome, { state: 'committed' }>, ref: SessionTurnRef): { code: ErrorCode; message: string } {
  if (outcome.state === 'gone') {
    return { code: 'session_not_found', message: `session ${ref.session} was deleted after turn ${ref.turnId} was accepted; the turn was not saved` };
  }
  const { code, message } = outcome.refusal;
  return isErrorCode(code) ? { code, message } : { code: 'turn_failed', message };
}

/** The outcome as the client sees it: the committed result, or the ApiError of the failure. */
export async function answerOf(sessions: SessionStore, ref: SessionTurnRef, outcome: TurnOutcome): Promise<TurnResult> {
  if (outcome.state === 'committed') return committedResult(sessions, ref, outcome.entry);
  const { code, message } = failureOf(outcome, ref);
  throw new ApiError(code, message);
}

/** Said when the store cannot be asked: a 503 that claims neither outcome. */
export function outcomeUnknown(turnId: string, cause?: unknown): ApiError {
  return new ApiError(
    'unavailable',
    `the state store did not answer, so whether turn ${turnId} was saved is not known yet; retry with the same Idempotency-Key to get its outcome`,
    { retryAfterSeconds: 2, details: { turn_id: turnId }, ...(cause === undefined ? {} : { cause }) },
  );
}

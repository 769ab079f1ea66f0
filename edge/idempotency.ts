// What an Idempotency-Key promises: the same key with the same request is the same turn, and
// its stored result answers a retry; the same key with another request is a client bug, answered
// 422 idempotency_key_reused rather than silently replaying an answer to a different question.
// "The same request" is compared by a fingerprint of what decides the turn: the validated body
// (defaults filled in, so an explicit default equals an omitted one) and the headers that act
// like body fields, never how the answer is delivered (`stream`, `stream_options`: a client may
// resume a streamed turn as JSON or the other way round).
import { createHash } from 'node:crypto';

/** JSON with object keys sorted, so key order does not change the fingerprint. */
function canonical(value: unknown): string {
  if (value === undefined) return 'null';
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
}

const DELIVERY_ONLY = new Set(['stream', 'stream_options']);

/** sha256 hex of the request's turn-deciding parts; `route` keeps a native turn and a chat apart. */
export function requestFingerprint(route: string, body: Record<string, unknown>, extra: Record<string, unknown> = {}): string {
  const decisive = Object.fromEntries(Object.entries(body).filter(([k]) => !DELIVERY_ONLY.has(k)));
  return createHash('sha256').update(route).update('\0').update(canonical({ body: decisive, extra })).digest('hex');
}

// The edge's one error handler: every failure leaves as {"error": {"code", "message"}} with
// the status of shared/errors.ts. Anything that is not an ApiError is a bug or an outage:
// logged with its stack, answered 500 without internals.
import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { ApiError, DEFAULT_RETRY_AFTER_S, RETRYABLE_CODES } from '../shared/errors.ts';
import { StoreUnavailableError } from '../shared/state-store.ts';
import type { Logger } from '../shared/logger.ts';

export function errorResponse(c: Context, error: ApiError): Response {
  // Every error carries its retry hint (shared/errors.ts): the OpenAI clients retry
  // 408/409/429/5xx unless told otherwise, and wait Retry-After when it is given.
  const retryAfter = error.retryAfterSeconds ?? DEFAULT_RETRY_AFTER_S[error.code];
  if (retryAfter !== undefined) c.header('Retry-After', String(retryAfter));
  c.header('x-should-retry', RETRYABLE_CODES.has(error.code) ? 'true' : 'false');
  return c.json(error.toBody(), error.status as ContentfulStatusCode);
}

/** Map any thrown value to the ApiError the client sees. */
export function toApiError(err: unknown, log: Logger): ApiError {
  if (err instanceof ApiError) return err;
  // Outages of what the edge depends on are 503s the client may retry, not 500s.
  if (err instanceof StoreUnavailableError) {
    log.warn('state store unavailable', { error: err.message });
    return new ApiError('unavailable', 'the state store is unavailable; retry shortly', { retryAfterSeconds: 2 });
  }
  if (err instanceof Error && (err.name === 'MaxRetriesPerRequestError' || /ECONNREFUSED|Connection is closed|ETIMEDOUT/.test(err.message))) {
    log.warn('redis unavailable', { error: err.message });
    return new ApiError('unavailable', 'the queue is unavailable; retry shortly', { retryAfterSeconds: 2 });
  }
  if (err instanceof HTTPException) {
    if (err.status === 413) return new ApiError('payload_too_large', err.message || 'request body is too large');
    if (err.status === 401) return new ApiError('unauthorized', err.message || 'unauthorized');
    if (err.status >= 400 && err.status < 500) return new ApiError('invalid_request', err.message || 'bad request');
  }
  log.error('unhandled error', { error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  return new ApiError('internal_error', 'internal error');
}

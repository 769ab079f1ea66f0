// Request details that both turn APIs (native and OpenAI-compatible) read the same way.
import type { Context } from 'hono';
import { ApiError } from '../shared/errors.ts';
import type { EdgeConfig } from '../shared/config.ts';

/** Idempotency-Key: printable ASCII, bounded; the same key on the same session is the same turn. */
export function idempotencyKey(c: Context): string | undefined {
  const key = c.req.header('idempotency-key');
  if (key === undefined || key === '') return undefined;
  if (!/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw new ApiError('invalid_request', 'Idempotency-Key must be 1-255 printable ASCII characters', { details: [{ path: 'Idempotency-Key', message: 'invalid' }] });
  }
  return key;
}

export function checkMaxTokens(value: number, config: EdgeConfig, field: string): number {
  if (value > config.MAX_TOKENS_PER_TURN) {
    throw new ApiError('invalid_request', `${field}: ${value} exceeds this server's limit of ${config.MAX_TOKENS_PER_TURN} tokens per turn`, {
      details: [{ path: field, message: `at most ${config.MAX_TOKENS_PER_TURN}` }],
    });
  }
  return value;
}

export function stopList(stop: string | string[] | null | undefined): string[] {
  if (stop === undefined || stop === null) return [];
  return typeof stop === 'string' ? [stop] : stop;
}

/** Default reply length when a request names none. */
export const DEFAULT_MAX_TOKENS = 256;

// One table of every error the HTTP API can answer: a stable machine-readable code and
// its status. The edge's error handler, the worker (which reports failures through the
// queue by code) and the tests all read this table, so a code never changes meaning.

export const ERROR_STATUS = {
  invalid_request: 400, // body or query failed validation; `details` lists the zod issues
  invalid_json: 400,
  invalid_utf8: 400,
  token_out_of_range: 400,
  tools_unsupported: 400, // tools were given, but the model's chat template cannot render them
  unsupported_parameter: 400, // a Responses API parameter a Mamba model cannot honour (e.g. text.format json_schema)
  unsupported_content: 400, // input content other than text (images, files) or an unknown item type
  state_invalid: 400, // an imported .mstate is truncated, corrupt or fails its checksum
  state_model_mismatch: 400, // an imported .mstate belongs to another model
  input_too_long: 400, // a turn's input is more tokens than MAX_INPUT_TOKENS_PER_TURN, a cartridge's than MAX_CARTRIDGE_TOKENS
  unauthorized: 401,
  session_not_found: 404,
  version_not_found: 404,
  model_not_found: 404,
  route_not_found: 404,
  response_not_found: 404, // unknown, deleted, stored with store: false, or another tenant's
  conversation_not_found: 404,
  item_not_found: 404,
  cartridge_not_found: 404, // unknown, deleted, or another tenant's cartridge
  session_busy: 409, // another turn holds the session
  version_mismatch: 409, // if_version did not match the head
  conversation_diverged: 409, // messages do not extend any stored version
  session_exists: 409,
  model_mismatch: 409, // the session belongs to another model than the request names
  response_in_progress: 409, // the response is still being generated (delete it once it is done)
  item_immutable: 409, // a conversation item is part of the stored states and cannot be taken out
  cartridge_not_ready: 409, // the cartridge is still being built (retryable: it will be ready)
  cartridge_failed: 409, // the cartridge's build failed: nothing can start from it
  cartridge_mismatch: 409, // the session exists and did not start from the cartridge named
  idempotency_key_reused: 422, // an Idempotency-Key already names a request with another body
  payload_too_large: 413,
  queue_full: 429,
  no_worker: 503,
  unavailable: 503,
  turn_timeout: 504,
  shutting_down: 503, // the worker is stopping; the turn was released and will be retried elsewhere
  turn_failed: 500,
  internal_error: 500,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/**
 * Codes a client may usefully retry (the same request can succeed later). Every error answer
 * carries `x-should-retry: true|false` from this set: the official OpenAI clients retry every
 * 408/409/429/5xx unless told not to, which would resend a request that cannot succeed (a 409
 * model_mismatch, a 500 turn_failed after TURN_ATTEMPTS) twice more.
 */
export const RETRYABLE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'session_busy',
  'response_in_progress',
  'cartridge_not_ready',
  'queue_full',
  'no_worker',
  'unavailable',
  'shutting_down',
  'turn_timeout',
  'internal_error',
]);

/**
 * Retry-After (seconds) of retryable errors that do not carry their own: the OpenAI clients
 * wait this long instead of their short exponential backoff. Codes whose wait depends on the
 * deployment (queue_full, no_worker, unavailable) are given RETRY_AFTER_S where they are raised.
 */
export const DEFAULT_RETRY_AFTER_S: Readonly<Partial<Record<ErrorCode, number>>> = {
  session_busy: 1,
  response_in_progress: 1,
  cartridge_not_ready: 5,
  shutting_down: 1,
};

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: unknown };
}

/** An error meant for the client: its code fixes the HTTP status. */
export class ApiError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: unknown;
  /** Seconds, for 429/503 answers. */
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, message: string, opts: { details?: unknown; retryAfterSeconds?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'ApiError';
    this.code = code;
    this.status = ERROR_STATUS[code];
    this.details = opts.details;
    this.retryAfterSeconds = opts.retryAfterSeconds;
  }

  toBody(): ErrorBody {
    const error: ErrorBody['error'] = { code: this.code, message: this.message };
    if (this.details !== undefined) error.details = this.details;
    return { error };
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_STATUS, value);
}

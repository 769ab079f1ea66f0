// The object store under session states: a flat key space with the two conditional writes
// the session store needs. Two implementations (state-store-fs.ts, state-store-s3.ts) keep
// exactly these semantics; session-store.ts builds layout and manifests on top.

export interface StoredObject {
  readonly bytes: Uint8Array;
  /** Opaque; changes whenever the object is replaced. */
  readonly etag: string;
}

export interface StateStore {
  /** Where the objects live, for logs (never contains credentials). */
  readonly description: string;
  get(key: string): Promise<StoredObject | null>;
  /** Create `key` only if it does not exist (S3 If-None-Match: *); StorePreconditionError otherwise. */
  putIfAbsent(key: string, bytes: Uint8Array): Promise<string>;
  /** Replace `key` only if its ETag is still `etag` (S3 If-Match); StorePreconditionError otherwise. */
  putIfMatch(key: string, bytes: Uint8Array, etag: string): Promise<string>;
  /** Remove keys; missing ones are not an error. */
  delete(keys: readonly string[]): Promise<void>;
  /** Every key under `prefix` (which ends with '/'), in no particular order. */
  list(prefix: string): Promise<string[]>;
  /**
   * One page of the objects directly under `prefix` (which ends with '/'; keys with no further
   * '/'), in ascending key order, starting after the key `startAfter`: what listings sorted by
   * key (sessions newest first, cartridges) and the prefix cache's index rebuild read.
   */
  listPage(prefix: string, options: { startAfter?: string | undefined; limit: number }): Promise<ListedPage>;
  /**
   * Mark an object as replaced by a newer one (S3: the tag `mamba-serve:superseded=true`, which
   * the deployment's lifecycle rule expires after a retention period). Best effort; the
   * filesystem store keeps everything.
   */
  markSuperseded(key: string): Promise<void>;
  close(): Promise<void>;
}

export interface ListedObject {
  readonly key: string;
  readonly bytes: number;
}

export interface ListedPage {
  readonly objects: ListedObject[];
  /** More objects follow the last one listed. */
  readonly hasMore: boolean;
}

/** The conditional write lost: the object exists (putIfAbsent) or changed (putIfMatch). */
export class StorePreconditionError extends Error {
  readonly code = 'store_precondition_failed';
  constructor(readonly key: string, message: string) {
    super(message);
    this.name = 'StorePreconditionError';
  }
}

/** The store could not be reached or answered an unexpected error: transient, worth a retry. */
export class StoreUnavailableError extends Error {
  readonly code = 'store_unavailable';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/**
 * Default deadline of one request to the store (STORE_TIMEOUT_MS). A store that hangs (a frozen
 * server, a stalled network path) must not hang every request that reads a session: past this
 * the call fails with StoreUnavailableError, which clients see as a 503 `unavailable`.
 */
export const DEFAULT_STORE_TIMEOUT_MS = 5_000;

/**
 * Run `call` with a deadline: past `ms` it is aborted (its signal fires, for stores that can
 * cancel the request) and a StoreUnavailableError naming `what` is thrown, whether or not the
 * call itself stops. A write whose deadline passed may still land later: callers treat its
 * outcome as unknown (the session store's commit protocol settles it by a later read).
 */
export async function withDeadline<T>(ms: number, what: string, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const abort = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const e = new StoreUnavailableError(`state store ${what}: no answer within ${ms} ms`);
      abort.abort(e);
      reject(e);
    }, ms);
  });
  try {
    return await Promise.race([call(abort.signal), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Keys are built by session-store.ts only; refuse anything that could escape the store's root. */
export function assertSafeKey(key: string): void {
  if (!/^[A-Za-z0-9_.\/-]{1,900}$/.test(key) || key.split('/').some((part) => part === '..' || part === '.' || part === '') ) {
    throw new Error(`state store: unsafe key "${key.slice(0, 100)}"`);
  }
}

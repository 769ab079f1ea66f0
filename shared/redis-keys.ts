// Every Redis key and queue name mamba-serve uses is built here, so edge, worker and the
// queue-metrics publisher can never disagree on one.

/** BullMQ forbids ':' in queue names and job ids; model ids may contain '/', ':' and '.'. */
function safeName(value: string): string {
  return value.replace(/[^A-Za-z0-9_-]/g, '_');
}

export class RedisKeys {
  constructor(readonly prefix: string) {}

  /** BullMQ's own key prefix (it appends `:{queue}:…`). */
  get bullPrefix(): string {
    return `${this.prefix}:bull`;
  }

  /** One queue of turns per model: a worker consumes the queue of the model it has loaded. */
  turnQueue(modelId: string): string {
    return `turns-${safeName(modelId)}`;
  }

  /** Lease (one writer per session): value "{fencingToken}:{owner}", with a TTL. */
  sessionLease(tenant: string, session: string): string {
    return `${this.prefix}:lease:${tenant}:${session}`;
  }

  /** Monotonic fencing counter of a session; survives leases. */
  sessionFence(tenant: string, session: string): string {
    return `${this.prefix}:fence:${tenant}:${session}`;
  }

  /** Redis Stream of one turn's tokens (worker XADDs, edge XREADs); expires after the turn. */
  turnStream(turnId: string): string {
    return `${this.prefix}:stream:${turnId}`;
  }

  /**
   * The turn that owns a session now (queued or running): value = turn id, TTL = the turn's
   * deadline. The edge claims it with SET NX so a second concurrent turn answers 409 at once;
   * the lease above is what actually serializes writers.
   */
  sessionTurn(tenant: string, session: string): string {
    return `${this.prefix}:turn-of:${tenant}:${session}`;
  }

  /**
   * The attempt that owns a turn's stream (shared/turn-stream.ts): only it may append tokens,
   * so an earlier attempt still running somewhere can never interleave its text with it.
   */
  turnStreamOwner(turnId: string): string {
    return `${this.prefix}:stream-owner:${turnId}`;
  }

  /** Set once a turn's outcome has been counted in the metrics: every turn is counted once, whoever reports it and however often. */
  turnCounted(turnId: string): string {
    return `${this.prefix}:turn-counted:${turnId}`;
  }

  /**
   * A stored Responses API response whose turn has not finished yet (JSON: its spec, session,
   * turn id): lets GET /v1/responses/{id} answer `in_progress` (or `failed`) and follow it. The
   * durable record in the state store replaces it once the turn commits.
   */
  pendingResponse(tenant: string, responseId: string): string {
    return `${this.prefix}:response:${tenant}:${responseId}`;
  }

  /**
   * The prefix cache's index of one tenant (shared/prefix-cache.ts): a sorted set of entries
   * scored by last use (LRU), their sizes (hash), the total (counter), and a marker saying the
   * index has been built from the store (after a Redis loss it is rebuilt by listing).
   */
  prefixLru(tenant: string): string {
    return `${this.prefix}:prefix-lru:${tenant}`;
  }
  prefixSizes(tenant: string): string {
    return `${this.prefix}:prefix-sizes:${tenant}`;
  }
  prefixTotal(tenant: string): string {
    return `${this.prefix}:prefix-total:${tenant}`;
  }
  prefixIndexed(tenant: string): string {
    return `${this.prefix}:prefix-indexed:${tenant}`;
  }

  /**
   * A cartridge build's progress (hash: tokens_absorbed, tokens_total), written by the worker
   * after every chunk, read by GET and the events stream; expires a day after the last write.
   */
  cartridgeProgress(tenant: string, cartridge: string): string {
    return `${this.prefix}:cartridge-progress:${tenant}:${cartridge}`;
  }

  /** Hash model id → JSON of what a worker reported about the model it serves (fingerprint, layout). */
  get models(): string {
    return `${this.prefix}:models`;
  }

  /** Hash of cluster-wide metric series (counters and histogram buckets) that /metrics renders. */
  get metrics(): string {
    return `${this.prefix}:metrics`;
  }

  /** Sorted set of live workers for a model, scored by last heartbeat (ms). */
  workers(modelId: string): string {
    return `${this.prefix}:workers:${safeName(modelId)}`;
  }
}

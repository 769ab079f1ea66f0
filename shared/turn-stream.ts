// A turn's events, worker → edge, through one Redis Stream per turn: the worker XADDs, the
// edge XREADs from the last entry it saw (BLOCK), so delivery is exact and an SSE client can
// resume with Last-Event-ID. Entries carry the attempt: a retried turn starts with a new
// `start` event and the reader knows to discard the earlier attempt's partial text.
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { ERROR_STATUS } from './errors.ts';
import { TurnResult } from './jobs.ts';

const ErrorCodeSchema = z.enum(Object.keys(ERROR_STATUS) as [keyof typeof ERROR_STATUS, ...(keyof typeof ERROR_STATUS)[]]);

export const TurnEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), attempt: z.number().int(), base_version: z.number().int().nullable(), cached_tokens: z.number().int() }),
  z.object({ type: z.literal('token'), attempt: z.number().int(), text: z.string() }),
  z.object({ type: z.literal('done'), attempt: z.number().int(), result: TurnResult }),
  /** `final: false`: the attempt failed transiently and the turn will be retried. */
  z.object({ type: z.literal('error'), attempt: z.number().int(), code: ErrorCodeSchema, message: z.string(), final: z.boolean() }),
]);
export type TurnEvent = z.infer<typeof TurnEvent>;

/** Bounds a stream whatever a turn does (one entry per token; max_tokens is bounded separately). */
const STREAM_MAX_ENTRIES = 1_000_000;

export class TurnStreamWriter {
  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    /** The stream outlives its turn by this long, for late readers and Last-Event-ID resumes. */
    private readonly ttlMs: number,
  ) {}

  async append(event: TurnEvent): Promise<string> {
    const [[addErr, id] = [], [expErr] = []] =
      (await this.redis
        .multi()
        .xadd(this.key, 'MAXLEN', '~', String(STREAM_MAX_ENTRIES), '*', 'e', JSON.stringify(event))
        .pexpire(this.key, this.ttlMs)
        .exec()) ?? [];
    if (addErr) throw addErr;
    if (expErr) throw expErr;
    return String(id);
  }
}

export interface StreamEntry {
  readonly id: string;
  readonly event: TurnEvent;
}

/**
 * Yields the turn's events after `fromId` ('0' = from the start) until a `done` or final
 * `error`, or until `deadlineMs` passes (then returns; the caller answers 504). Uses its own
 * connection: XREAD BLOCK holds the connection it runs on.
 */
export async function* readTurnStream(
  redis: Redis,
  key: string,
  options: { fromId?: string; deadlineMs: number; signal?: AbortSignal },
): AsyncGenerator<StreamEntry> {
  let last = options.fromId ?? '0';
  const conn = redis.duplicate();
  // Failures surface through the commands; the connection's own events would be unhandled noise.
  conn.on('error', () => {});
  try {
    for (;;) {
      if (options.signal?.aborted) return;
      const remaining = options.deadlineMs - Date.now();
      if (remaining <= 0) return;
      const reply = (await conn.xread('COUNT', 256, 'BLOCK', Math.max(1, Math.min(remaining, 2000)), 'STREAMS', key, last)) as
        | [string, [string, string[]][]][]
        | null;
      if (!reply) continue;
      for (const [, entries] of reply) {
        for (const [id, fields] of entries) {
          last = id;
          const raw = fields[fields.indexOf('e') + 1];
          const parsed = TurnEvent.safeParse(JSON.parse(raw ?? 'null'));
          if (!parsed.success) continue; // an entry from a newer/older format: skip rather than fail the turn
          yield { id, event: parsed.data };
          if (parsed.data.type === 'done' || (parsed.data.type === 'error' && parsed.data.final)) return;
        }
      }
    }
  } finally {
    conn.disconnect();
  }
}

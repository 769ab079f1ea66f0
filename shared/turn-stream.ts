// A turn's events, worker → edge, through one Redis Stream per turn: the worker XADDs, the
// edge XREADs from the last entry it saw (BLOCK), so delivery is exact.
//
// The reply text in a stream only ever grows, whatever happens to the attempts writing it:
//   - each attempt has a unique id and must claim the stream before it writes (one Lua script
//     makes it the stream's owner and appends its `start`); token appends are refused to any
//     other attempt, so an earlier attempt still running somewhere (its worker frozen, or
//     Redis restarted under it) can never interleave its text with the current one's;
//   - a claiming attempt gets the token ids every earlier attempt streamed and continues from
//     them (worker/generate/sequence.ts forces them), never repeating or contradicting them.
// So the concatenated `token` texts are always a prefix of the reply, a reader forwards them
// as they come, and a client resumes by the count of characters it has (the SSE event ids).
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { ERROR_STATUS } from './errors.ts';
import { TurnResult } from './jobs.ts';
import { RedisScript } from './redis-script.ts';

const ErrorCodeSchema = z.enum(Object.keys(ERROR_STATUS) as [keyof typeof ERROR_STATUS, ...(keyof typeof ERROR_STATUS)[]]);

/** Unique per attempt of a turn (BullMQ's attempt counters restart when Redis loses a job, so they cannot name one). */
export const AttemptId = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/);

export const TurnEvent = z.discriminatedUnion('type', [
  /** An attempt has claimed the stream; it continues the reply the earlier attempts' tokens began. */
  z.object({ type: z.literal('start'), attempt: AttemptId }),
  /** Reply text, and the ids of the tokens generated since the previous token event (what a later attempt replays). */
  z.object({ type: z.literal('token'), attempt: AttemptId, text: z.string(), ids: z.array(z.number().int().nonnegative()) }),
  z.object({ type: z.literal('done'), attempt: AttemptId, result: TurnResult }),
  /** `final: false`: the attempt failed transiently and the turn will be retried. `final: true` is written only once the failure is decided. */
  z.object({ type: z.literal('error'), attempt: AttemptId, code: ErrorCodeSchema, message: z.string(), final: z.boolean() }),
]);
export type TurnEvent = z.infer<typeof TurnEvent>;

/** Bounds a stream whatever a turn does (one entry per token; max_tokens is bounded separately). */
const STREAM_MAX_ENTRIES = 1_000_000;

/** KEYS: stream, owner. ARGV: attempt, ttl ms, start event. → {id of the start entry, previous owner or ''}. */
const claimTurnStream = new RedisScript(
  'claimTurnStream',
  2,
  `
local previous = redis.call('GET', KEYS[2]) or ''
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', '${STREAM_MAX_ENTRIES}', '*', 'e', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {id, previous}
`,
);

/** KEYS: stream, owner. ARGV: attempt, ttl ms, event. → the entry id, or false if another attempt owns the stream. */
const appendOwnedToken = new RedisScript(
  'appendOwnedTurnToken',
  2,
  `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', '${STREAM_MAX_ENTRIES}', '*', 'e', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return id
`,
);

/** What the earlier attempts of a turn streamed: the reply so far and the ids of its tokens. */
export interface StreamedSoFar {
  readonly text: string;
  readonly ids: readonly number[];
  /** Another attempt of the turn had claimed the stream before (it may still be running). */
  readonly earlier: boolean;
}

type Unattributed<E> = E extends unknown ? Omit<E, 'attempt'> : never;

export class TurnStreamWriter {
  constructor(
    private readonly redis: Redis,
    private readonly keys: { readonly stream: string; readonly owner: string },
    /** The stream outlives its turn by this long, for late readers and resumes. */
    private readonly ttlMs: number,
    readonly attempt: string,
  ) {}

  /**
   * Make this attempt the stream's owner and announce it; returns what earlier attempts had
   * streamed, which this attempt must continue (from then on they can append nothing).
   */
  async claim(): Promise<StreamedSoFar> {
    const event: TurnEvent = { type: 'start', attempt: this.attempt };
    const [startId, previous] = (await claimTurnStream.run(this.redis, [this.keys.stream, this.keys.owner], [this.attempt, this.ttlMs, JSON.stringify(event)])) as [
      string,
      string,
    ];
    const entries = (await this.redis.xrange(this.keys.stream, '-', startId)) as [string, string[]][];
    let text = '';
    const ids: number[] = [];
    for (const [, fields] of entries) {
      const parsed = TurnEvent.safeParse(JSON.parse(fields[fields.indexOf('e') + 1] ?? 'null'));
      if (parsed.success && parsed.data.type === 'token') {
        text += parsed.data.text;
        for (const id of parsed.data.ids) ids.push(id);
      }
    }
    return { text, ids, earlier: previous !== '' && previous !== this.attempt };
  }

  /** Append reply text while this attempt owns the stream; false once a later attempt has claimed it. */
  async token(text: string, ids: readonly number[]): Promise<boolean> {
    const event: TurnEvent = { type: 'token', attempt: this.attempt, text, ids: [...ids] };
    const id = await appendOwnedToken.run(this.redis, [this.keys.stream, this.keys.owner], [this.attempt, this.ttlMs, JSON.stringify(event)]);
    return id !== null && id !== undefined;
  }

  /** `done` or `error`, whoever owns the stream: by then the turn's outcome is decided, and every attempt reports the same one. */
  async append(event: Unattributed<Extract<TurnEvent, { type: 'done' | 'error' }>>): Promise<string> {
    const full = { ...event, attempt: this.attempt } as TurnEvent;
    const [[addErr, id] = [], [expErr] = []] =
      (await this.redis
        .multi()
        .xadd(this.keys.stream, 'MAXLEN', '~', String(STREAM_MAX_ENTRIES), '*', 'e', JSON.stringify(full))
        .pexpire(this.keys.stream, this.ttlMs)
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
 * `error`, until `deadlineMs` passes, or until `onIdle` (called whenever `idleMs` pass with
 * nothing new) answers true; then returns, and the caller finds the outcome another way. Uses
 * its own connection: XREAD BLOCK holds the connection it runs on.
 */
export async function* readTurnStream(
  redis: Redis,
  key: string,
  options: { fromId?: string; deadlineMs: number; signal?: AbortSignal; idleMs?: number; onIdle?: () => Promise<boolean> },
): AsyncGenerator<StreamEntry> {
  let last = options.fromId ?? '0';
  const conn = redis.duplicate();
  // Failures surface through the commands; the connection's own events would be unhandled noise.
  conn.on('error', () => {});
  const idleMs = options.idleMs ?? 2000;
  try {
    for (;;) {
      if (options.signal?.aborted) return;
      const remaining = options.deadlineMs - Date.now();
      if (remaining <= 0) return;
      const reply = (await conn.xread('COUNT', 256, 'BLOCK', Math.max(1, Math.min(remaining, idleMs)), 'STREAMS', key, last)) as
        | [string, [string, string[]][]][]
        | null;
      if (!reply) {
        if (options.onIdle && (await options.onIdle())) return;
        continue;
      }
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

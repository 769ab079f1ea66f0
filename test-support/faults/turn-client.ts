// A client of the turn API that behaves as the README tells clients to, and writes down what
// it was told, for the fault suite's checker (ledger-check.ts):
//   - every logical turn (a unique input) is sent with an Idempotency-Key;
//   - an answer that does not settle the turn (503 unavailable, 429, no answer at all, a
//     stream cut off) is retried with the same key (a stream resumes after its last event id),
//     until the turn's outcome is known;
//   - a turn reported failed (turn_failed, turn_timeout) is sent again as a new turn, with a
//     new key, as an agent that must get its instruction absorbed would do: if that failure
//     was not true, the session absorbs the input twice, which the checker finds.
// Turns are native JSON, native SSE, or chat completions in append mode (SSE, the OpenAI
// chunk format), so each API's replay path is exercised.
import { turnIdFor } from '../../edge/turn-service.ts';
import { ERROR_STATUS } from '../../shared/errors.ts';
import { sseEvents } from '../../shared/sse-events.ts';

export type TurnMode = 'json' | 'stream' | 'chat';

/** Codes that say the turn did not happen (and never will): the client sends the input again, as a new turn. */
export const FAILURE_CODES = new Set(['turn_failed', 'turn_timeout']);
/** Codes that leave the turn's outcome to be learned by asking again with the same key. */
export const RETRY_SAME_KEY_CODES = new Set(['unavailable', 'no_worker', 'queue_full', 'session_busy']);

export interface SentKey {
  readonly key: string;
  readonly turnId: string;
  /** What this key's turn was finally answered: acknowledged, reported failed (with the code), or never settled. */
  outcome: { kind: 'ok'; version: number; output: string } | { kind: 'failed'; code: string } | { kind: 'unsettled' };
}

export interface LogicalTurn {
  readonly session: string;
  readonly input: string;
  readonly mode: TurnMode;
  readonly keys: SentKey[];
  /** The reply as the client assembled it from a stream (and its resumes), to compare with what was saved. */
  streamedText?: string;
}

export interface ClientLedger {
  readonly turns: LogicalTurn[];
  /** Answers whose status or error code is outside what the turn routes document for these faults. */
  readonly unexpected: string[];
  /** Streams whose assembled text differs from the turn's final answer. */
  readonly garbled: string[];
}

export function newLedger(): ClientLedger {
  return { turns: [], unexpected: [], garbled: [] };
}

interface Settled {
  readonly kind: 'ok' | 'failed' | 'again';
  readonly code?: string;
  readonly version?: number;
  readonly output?: string;
  readonly text?: string;
}

/** One request's answer, classified; streams report the text they carried and their last event id. */
type Sent = Settled & { readonly lastEventId?: string };

function errorCodeOf(body: unknown): string | undefined {
  const code = (body as { error?: { code?: unknown } } | null)?.error?.code;
  return typeof code === 'string' ? code : undefined;
}

export class TurnClient {
  constructor(
    private readonly url: string,
    private readonly apiKey: string,
    readonly tenant: string,
    private readonly ledger: ClientLedger,
    private readonly options: { readonly keysPerTurn: number; readonly settleWithinMs: number; readonly maxTokens: number },
  ) {}

  /** Run one logical turn to an acknowledged answer, or until its keys or time run out. */
  async run(session: string, input: string, mode: TurnMode): Promise<LogicalTurn> {
    const turn: LogicalTurn = { session, input, mode, keys: [] };
    this.ledger.turns.push(turn);
    for (let k = 1; k <= this.options.keysPerTurn; k++) {
      // Keys are printable ASCII without spaces; the input's first word names the turn.
      const key = `${input.split(' ')[0]!.replace(/[^A-Za-z0-9_.:-]/g, '_')}.k${k}`;
      const sent: SentKey = { key, turnId: turnIdFor(this.tenant, session, key), outcome: { kind: 'unsettled' } };
      turn.keys.push(sent);
      const settled = await this.settle(session, input, mode, key);
      if (settled.kind === 'ok') {
        sent.outcome = { kind: 'ok', version: settled.version!, output: settled.output! };
        if (mode !== 'json') {
          turn.streamedText = settled.text ?? '';
          if (turn.streamedText !== settled.output) this.ledger.garbled.push(`${session} ${key}: streamed ${JSON.stringify(turn.streamedText)}, answer ${JSON.stringify(settled.output)}`);
        }
        return turn;
      }
      if (settled.kind === 'failed') {
        sent.outcome = { kind: 'failed', code: settled.code! };
        continue;
      }
      return turn; // unsettled: the time ran out
    }
    return turn;
  }

  /** Ask with one key until the turn's outcome is known (or settleWithinMs passes). */
  private async settle(session: string, input: string, mode: TurnMode, key: string): Promise<Settled> {
    const until = Date.now() + this.options.settleWithinMs;
    let text = '';
    let lastEventId: string | undefined;
    for (let attempt = 0; Date.now() < until; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.min(2_000, 150 * 2 ** Math.min(attempt, 4)) * (0.5 + Math.random())));
      // A chat stream has no event ids: a resumed one is read from its start again.
      if (mode === 'chat') text = '';
      const sent = await this.send(session, input, mode, key, lastEventId).catch((e: unknown): Sent => ({ kind: 'again', code: `network: ${(e as Error).message}` }));
      if (sent.text) text += sent.text;
      if (sent.lastEventId !== undefined) lastEventId = sent.lastEventId;
      if (sent.kind !== 'again') return { ...sent, text };
    }
    return { kind: 'again' };
  }

  private note(status: number, code: string | undefined, where: string): void {
    const documented = code !== undefined && Object.hasOwn(ERROR_STATUS, code) && ERROR_STATUS[code as keyof typeof ERROR_STATUS] === status;
    if (!documented || !(FAILURE_CODES.has(code!) || RETRY_SAME_KEY_CODES.has(code!))) this.ledger.unexpected.push(`${where}: ${status} ${code ?? '(no error code)'}`);
  }

  private classify(status: number, code: string | undefined, where: string): Sent {
    this.note(status, code, where);
    if (code !== undefined && FAILURE_CODES.has(code)) return { kind: 'failed', code };
    return { kind: 'again', ...(code ? { code } : {}) };
  }

  private async send(session: string, input: string, mode: TurnMode, key: string, lastEventId: string | undefined): Promise<Sent> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.apiKey}`, 'content-type': 'application/json', 'idempotency-key': key };
    const signal = AbortSignal.timeout(120_000);
    if (mode === 'chat') {
      headers['x-session-id'] = session;
      headers['x-session-append'] = 'true';
      const res = await fetch(`${this.url}/v1/chat/completions`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ messages: [{ role: 'user', content: input }], max_tokens: this.options.maxTokens, temperature: 0.7, stream: true, on_busy: 'queue' }),
        signal,
      });
      if (res.status !== 200) return this.classify(res.status, errorCodeOf(await res.json().catch(() => null)), `chat ${key}`);
      let text = '';
      let version: number | undefined;
      for await (const e of sseEvents(res.body!)) {
        if (e.data === '[DONE]') return { kind: 'ok', version: version!, output: text, text };
        const chunk = JSON.parse(e.data) as { error?: { code?: string }; choices?: Array<{ delta?: { content?: string } }>; session_version?: number };
        if (chunk.error) return { ...this.classify(ERROR_STATUS[chunk.error.code as keyof typeof ERROR_STATUS] ?? 0, chunk.error.code, `chat stream ${key}`), text: '' };
        text += chunk.choices?.[0]?.delta?.content ?? '';
        if (chunk.session_version !== undefined) version = chunk.session_version;
      }
      return { kind: 'again', code: 'stream cut' };
    }
    if (mode === 'stream' && lastEventId !== undefined) headers['last-event-id'] = lastEventId;
    const res = await fetch(`${this.url}/v1/sessions/${session}/turns`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ input, max_tokens: this.options.maxTokens, temperature: 0.7, on_busy: 'queue', stream: mode === 'stream' }),
      signal,
    });
    if (res.status !== 200) return this.classify(res.status, errorCodeOf(await res.json().catch(() => null)), `turn ${key}`);
    if (mode === 'json') {
      const body = (await res.json()) as { version: number; output: string };
      return { kind: 'ok', version: body.version, output: body.output };
    }
    let text = '';
    let last: string | undefined;
    try {
      for await (const e of sseEvents(res.body!)) {
        if (e.event === 'token') {
          text += (JSON.parse(e.data) as { text: string }).text;
          last = e.id;
        } else if (e.event === 'done') {
          const body = JSON.parse(e.data) as { version: number; output: string };
          return { kind: 'ok', version: body.version, output: body.output, text };
        } else if (e.event === 'error') {
          const code = errorCodeOf(JSON.parse(e.data));
          return { ...this.classify(ERROR_STATUS[code as keyof typeof ERROR_STATUS] ?? 0, code, `stream ${key}`), text, ...(last ? { lastEventId: last } : {}) };
        }
      }
    } catch {
      // The connection broke (the edge was killed): resume after the last event.
    }
    return { kind: 'again', code: 'stream cut', text, ...(last ? { lastEventId: last } : {}) };
  }
}

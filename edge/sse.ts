// Server-sent events, written in one place. Errors inside a stream are sent as our error
// shape (never an exception's own message: hono's streamSSE onError would leak it), and
// every stream has a hard end: a client that disconnects does not stop a Lambda, so the
// producer loop must end on its own.
//
// A streamed turn can be silent for minutes (queued behind a cold GPU worker, or prefilling a
// long input), and proxies and load balancers close connections idle for 30-60 s. So a stream
// that has written nothing for `keepAliveMs` writes an SSE comment line, which every SSE
// client (EventSource, the OpenAI SDKs) skips.
import type { Context } from 'hono';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import type { ApiError } from '../shared/errors.ts';

export interface SseWriter {
  /** A named event (native API) or unnamed `data:` line (OpenAI). */
  send(data: unknown, options?: { event?: string; id?: string }): Promise<void>;
  /** OpenAI's terminator: `data: [DONE]`. */
  sendRaw(data: string): Promise<void>;
  /** True once the client has gone away. */
  readonly closed: boolean;
  readonly signal: AbortSignal;
}

/** The comment a quiet stream writes: a line starting with ':' then the blank line that ends it. */
export const SSE_KEEPALIVE = ': keep-alive\n\n';

export interface SseOptions {
  /** Write SSE_KEEPALIVE after this long without a write; 0 = never (SSE_KEEPALIVE_MS). */
  readonly keepAliveMs: number;
}

export function sseResponse(
  c: Context,
  produce: (sse: SseWriter) => Promise<void>,
  onError: (sse: SseWriter, error: unknown) => Promise<void>,
  options: SseOptions,
): Response {
  // Proxies (nginx) buffer event streams unless told not to.
  c.header('X-Accel-Buffering', 'no');
  return streamSSE(c, async (stream: SSEStreamingApi) => {
    const abort = new AbortController();
    stream.onAbort(() => abort.abort());
    c.req.raw.signal?.addEventListener?.('abort', () => abort.abort());
    const isClosed = () => stream.aborted || stream.closed;
    // One timer per stream, pushed back by every write: comments go out only while it is quiet.
    // Each write (event or comment) is one chunk, so a comment never lands inside an event.
    let keepAlive: ReturnType<typeof setTimeout> | undefined;
    let ended = false;
    const quiet = () => {
      if (ended || options.keepAliveMs <= 0) return;
      clearTimeout(keepAlive);
      keepAlive = setTimeout(() => {
        if (isClosed()) return;
        void stream.write(SSE_KEEPALIVE).finally(quiet);
      }, options.keepAliveMs);
      keepAlive.unref?.();
    };
    const writer: SseWriter = {
      async send(data, options = {}) {
        if (isClosed()) return;
        await stream.writeSSE({ data: JSON.stringify(data), ...(options.event ? { event: options.event } : {}), ...(options.id ? { id: options.id } : {}) });
        quiet();
      },
      async sendRaw(data) {
        if (isClosed()) return;
        await stream.writeSSE({ data });
        quiet();
      },
      get closed() {
        return isClosed();
      },
      signal: abort.signal,
    };
    quiet();
    try {
      await produce(writer);
    } catch (error) {
      await onError(writer, error).catch(() => {});
    } finally {
      ended = true;
      clearTimeout(keepAlive);
    }
  });
}

export function sseErrorPayload(error: ApiError): unknown {
  return error.toBody();
}

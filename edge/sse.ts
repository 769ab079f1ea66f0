// Server-sent events, written in one place. Errors inside a stream are sent as our error
// shape (never an exception's own message: hono's streamSSE onError would leak it), and
// every stream has a hard end: a client that disconnects does not stop a Lambda, so the
// producer loop must end on its own.
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

export function sseResponse(
  c: Context,
  produce: (sse: SseWriter) => Promise<void>,
  onError: (sse: SseWriter, error: unknown) => Promise<void>,
): Response {
  // Proxies (nginx) buffer event streams unless told not to.
  c.header('X-Accel-Buffering', 'no');
  return streamSSE(c, async (stream: SSEStreamingApi) => {
    const abort = new AbortController();
    stream.onAbort(() => abort.abort());
    c.req.raw.signal?.addEventListener?.('abort', () => abort.abort());
    const writer: SseWriter = {
      async send(data, options = {}) {
        if (stream.aborted || stream.closed) return;
        await stream.writeSSE({ data: JSON.stringify(data), ...(options.event ? { event: options.event } : {}), ...(options.id ? { id: options.id } : {}) });
      },
      async sendRaw(data) {
        if (stream.aborted || stream.closed) return;
        await stream.writeSSE({ data });
      },
      get closed() {
        return stream.aborted || stream.closed;
      },
      signal: abort.signal,
    };
    try {
      await produce(writer);
    } catch (error) {
      await onError(writer, error).catch(() => {});
    }
  });
}

export function sseErrorPayload(error: ApiError): unknown {
  return error.toBody();
}

// Reading a server-sent event stream (a streamed turn, chat completion or response) as events,
// for this project's own clients: the CLI, the benchmarks and the fault suite's test client.
// The parsing is the maintained `eventsource-parser` (the one the Vercel AI SDK reads streams
// with): keep-alive comments skipped, multi-line data joined, ids kept, CRLF and a BOM handled.
import { EventSourceParserStream, type EventSourceMessage } from 'eventsource-parser/stream';

export type SseEvent = EventSourceMessage;

/** The events of an SSE body, in order; leaving the loop early cancels the body. */
export function sseEvents(body: ReadableStream<Uint8Array>): AsyncIterable<SseEvent> {
  return body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
}

// The Responses API's streaming events for one response, numbered by `sequence_number`:
//   response.created, response.in_progress, response.output_item.added,
//   response.content_part.added, response.output_text.delta…, response.output_text.done,
//   response.content_part.done, response.output_item.done, then response.completed
//   (response.incomplete when the reply hit max_output_tokens, response.failed on failure).
// Numbering depends only on the turn's token stream, so a replay numbers every event the same
// and a client resumes after the last one it saw (Last-Event-ID, or `starting_after`).
import { responseObject, replyId, replyItem, type ResponseView } from '../shared/response-record.ts';
import type { ResponseStreamEvent } from '../shared/responses-api.ts';
import type { ApiError } from '../shared/errors.ts';

export class ResponseEvents {
  private seq = 0;
  private text = '';

  constructor(private readonly started: ResponseView) {}

  private next<T extends Omit<ResponseStreamEvent, 'sequence_number'>>(event: T): T & { sequence_number: number } {
    return { ...event, sequence_number: this.seq++ };
  }

  private at() {
    return { item_id: replyId(this.started), output_index: 0, content_index: 0 };
  }

  /** Everything before the first token. */
  start(): ResponseStreamEvent[] {
    const response = responseObject(this.started);
    return [
      this.next({ type: 'response.created', response }),
      this.next({ type: 'response.in_progress', response }),
      this.next({ type: 'response.output_item.added', output_index: 0, item: replyItem(this.started, 'in_progress') }),
      this.next({ type: 'response.content_part.added', ...this.at(), part: { type: 'output_text', text: '', annotations: [], logprobs: [] } }),
    ] as ResponseStreamEvent[];
  }

  delta(text: string): ResponseStreamEvent {
    this.text += text;
    return this.next({ type: 'response.output_text.delta', ...this.at(), delta: text, logprobs: [] }) as ResponseStreamEvent;
  }

  /** The closing events of a finished response (`view` has its final text and usage). */
  finish(view: ResponseView): ResponseStreamEvent[] {
    const text = view.outputText ?? this.text;
    const part = { type: 'output_text' as const, text, annotations: [], logprobs: [] };
    return [
      this.next({ type: 'response.output_text.done', ...this.at(), text, logprobs: [] }),
      this.next({ type: 'response.content_part.done', ...this.at(), part }),
      this.next({ type: 'response.output_item.done', output_index: 0, item: replyItem(view) }),
      this.next({ type: view.status === 'incomplete' ? 'response.incomplete' : 'response.completed', response: responseObject(view) }),
    ] as ResponseStreamEvent[];
  }

  fail(error: ApiError): ResponseStreamEvent {
    const response = responseObject({ ...this.started, status: 'failed', error: { code: error.code, message: error.message } });
    return this.next({ type: 'response.failed', response }) as ResponseStreamEvent;
  }
}

// One reply for one sequence: prefill the prompt, then decode token by token through a
// SequenceDecoder. The CLI uses this; the server's scheduler drives SequenceDecoders itself
// so it can batch many sequences into one engine.decode call.
import type { Engine, StateHandle } from '../engine/engine.ts';
import type { FinishReason, SequenceDecoder } from './sequence.ts';

export type GenerateEvent =
  | { readonly type: 'text'; readonly text: string }
  | {
      readonly type: 'done';
      readonly finishReason: FinishReason;
      /** The whole reply (stop string excluded). */
      readonly text: string;
      readonly promptTokens: number;
      readonly generatedTokens: number;
    };

/**
 * Absorbs `promptTokens` into `state`, then the reply's tokens as they are sampled; yields
 * each non-empty text delta, then one 'done' event. On return `state` has absorbed the
 * prompt and every token of the reply (not the stop token).
 */
export async function* generate(
  engine: Engine,
  state: StateHandle,
  promptTokens: Int32Array,
  decoder: SequenceDecoder,
): AsyncGenerator<GenerateEvent, void, undefined> {
  if (promptTokens.length === 0) throw new RangeError('generate needs at least one prompt token (the logits come from the last one)');
  let logits = (await engine.prefill(state, promptTokens)).data;
  for (;;) {
    const step = decoder.next(logits);
    if (step.text.length > 0) yield { type: 'text', text: step.text };
    if (step.done) {
      yield {
        type: 'done',
        finishReason: step.finishReason,
        text: decoder.text,
        promptTokens: promptTokens.length,
        generatedTokens: decoder.generatedTokens,
      };
      return;
    }
    // Read (decoder.next) before the next decode: the engine may reuse its buffer.
    logits = (await engine.decode([{ state, token: step.token }], { reuseOutput: true })).data;
  }
}

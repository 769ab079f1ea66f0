// The decoding state machine of one reply, driven one step at a time by whoever owns the
// engine: the CLI's single-sequence loop, or the server's scheduler that steps many replies
// with one batched engine.decode. It samples, detokenizes, watches for stop tokens, stop
// strings and the token limit, and releases only text that is final:
//   - never half a UTF-8 character (StreamingDetokenizer);
//   - never text that might turn out to be the start of a stop string ("<|en" is held
//     until the next token shows whether "<|end|>" follows), so a client never sees a
//     stop string or a piece of one.
//
// Protocol: call next(logits) with the logits after the prompt. While it answers
// { done: false, token }, absorb `token` into the state (engine.decode) and call next()
// again with the new logits. A stop token ends the reply without being returned, so it is
// never absorbed. When the token limit is reached, the last token is still returned with
// done false (the state must absorb every token whose text the reply contains) and the next
// call answers done 'length' without sampling. When a stop string completes, the token
// that completed it is not returned; the state holds the tokens before it.
import type { Tokenizer } from '../model/tokenizer.ts';
import { StreamingDetokenizer } from './detokenizer.ts';
import type { Sampler } from './sampling.ts';

export interface SequenceLimits {
  readonly maxTokens: number;
  readonly stop: readonly string[];
  /** Extra ids that end the reply besides the tokenizer's (a chat template's end marker: ChatTemplate.stopTokenIds). */
  readonly stopTokenIds?: readonly number[];
  /**
   * Tokens an earlier attempt of this reply generated and streamed: taken in place of the first
   * sampled ones (the sampler still draws, so its random sequence stays the one the earlier
   * attempt used), so the reply continues exactly what a client has already been sent, even
   * where this attempt's numbers would have sampled differently.
   */
  readonly forced?: readonly number[];
}

export type FinishReason = 'stop' | 'length';

export type StepResult =
  | { done: false; token: number; text: string }
  | { done: true; finishReason: FinishReason; text: string };

export class SequenceDecoder {
  private readonly detok: StreamingDetokenizer;
  private readonly stopIds: ReadonlySet<number>;
  private readonly stops: readonly string[];
  /** Decoded text not yet released: it may be the beginning of a stop string. */
  private held = '';
  private released = '';
  private generated = 0;
  private readonly returned: number[] = [];
  private finished: FinishReason | undefined;

  constructor(
    tokenizer: Tokenizer,
    private readonly sampler: Sampler,
    private readonly limits: SequenceLimits,
  ) {
    if (!Number.isInteger(limits.maxTokens) || limits.maxTokens < 0) throw new RangeError(`maxTokens must be a whole number ≥ 0, got ${limits.maxTokens}`);
    this.detok = new StreamingDetokenizer(tokenizer);
    this.stopIds = new Set([...tokenizer.stopTokenIds, ...(limits.stopTokenIds ?? [])]);
    this.stops = limits.stop.filter((s) => s.length > 0);
  }

  /** The reply so far as released to the client (a stop string is never part of it). */
  get text(): string {
    return this.released;
  }

  /** Tokens of the reply returned for absorbing (stop tokens are not counted). */
  get generatedTokens(): number {
    return this.generated;
  }

  /** The ids of those tokens, in order. */
  get tokenIds(): readonly number[] {
    return this.returned;
  }

  get finishReason(): FinishReason | undefined {
    return this.finished;
  }

  next(logits: Float32Array): StepResult {
    if (this.finished) throw new Error('SequenceDecoder.next() called after the reply finished');
    if (this.generated >= this.limits.maxTokens) return this.finish('length', this.held + this.detok.flush());

    const sampled = this.sampler.sample(logits);
    const forced = this.limits.forced;
    const token = forced && this.generated < forced.length ? forced[this.generated]! : sampled;
    if (this.stopIds.has(token)) return this.finish('stop', this.held + this.detok.flush());
    const pending = this.held + this.detok.push(token);

    const at = this.firstStop(pending);
    if (at !== undefined) return this.finish('stop', pending.slice(0, at), true);
    const hold = this.stopPrefixLength(pending);
    this.held = pending.slice(pending.length - hold);
    const text = pending.slice(0, pending.length - hold);
    this.released += text;
    this.generated++;
    this.returned.push(token);
    return { done: false, token, text };
  }

  private finish(reason: FinishReason, rest: string, stopStringFound = false): StepResult {
    // Text flushed at the end may still hold a stop string (an incomplete character was
    // pending when it completed); cut there too.
    let text = rest;
    if (!stopStringFound) {
      const at = this.firstStop(text);
      if (at !== undefined) {
        text = text.slice(0, at);
        reason = 'stop';
      }
    }
    this.held = '';
    this.released += text;
    this.finished = reason;
    return { done: true, finishReason: reason, text };
  }

  /** Index of the earliest stop string in `s`. */
  private firstStop(s: string): number | undefined {
    let best: number | undefined;
    for (const stop of this.stops) {
      const i = s.indexOf(stop);
      if (i >= 0 && (best === undefined || i < best)) best = i;
    }
    return best;
  }

  /** Length of the longest suffix of `s` that is a proper prefix of some stop string. */
  private stopPrefixLength(s: string): number {
    let longest = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, s.length); n > longest; n--) {
        if (s.endsWith(stop.slice(0, n))) {
          longest = n;
          break;
        }
      }
    }
    return longest;
  }
}

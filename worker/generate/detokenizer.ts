// Token ids in, text out, one token at a time, never half a character. A UTF-8 character
// can span several tokens (byte-level vocabularies: up to four), and some decoders depend on
// the previous token (SentencePiece drops the space of a sequence's first piece), so a token
// cannot be decoded alone. We decode a short window of recent tokens and release the text
// that is new and complete; an incomplete character at the end decodes to U+FFFD, so a
// trailing run of U+FFFD is held until more tokens complete it (or flush() gives up on it).
//
// Special tokens are skipped: they are control, not text (a stop token never reaches here;
// see SequenceDecoder).
import type { Tokenizer } from '../model/tokenizer.ts';

const REPLACEMENT = '\uFFFD';

export class StreamingDetokenizer {
  private readonly ids: number[] = [];
  /** Start of the decoded window: one token before the first one not yet released. */
  private windowStart = 0;
  /** Characters of decode(ids[windowStart..]) already released. */
  private released = 0;

  constructor(private readonly tokenizer: Tokenizer) {}

  /** Add one token; returns the newly completed text ('' while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const text = this.decodeWindow();
    let end = text.length;
    while (end > this.released && text[end - 1] === REPLACEMENT) end--;
    const delta = end > this.released ? text.slice(this.released, end) : '';
    if (end === text.length) {
      // Everything so far is complete: slide the window up to the last token, keeping it as
      // context for the next decode.
      this.windowStart = this.ids.length - 1;
      this.released = this.decodeWindow().length;
    } else {
      this.released = Math.max(this.released, end);
    }
    return delta;
  }

  /** Text still held back (an incomplete character decodes to U+FFFD here); resets nothing else. */
  flush(): string {
    const text = this.decodeWindow();
    const rest = text.length > this.released ? text.slice(this.released) : '';
    this.windowStart = this.ids.length;
    this.released = 0;
    return rest;
  }

  private decodeWindow(): string {
    return this.tokenizer.decode(this.ids.slice(this.windowStart), { skipSpecial: true });
  }
}

// Byte-level tokenizer for models without tokenizer.json (the demo model): ids 0..255 are
// the raw UTF-8 bytes of the text, ids from 256 are the added tokens that
// tokenizer_config.json's added_tokens_decoder lists (<|system|>, <|user|>, <|end|>…).
// Any text round-trips exactly; there is nothing to learn and nothing to download.
import { ModelError } from './errors.ts';
import { stopTokenIdsFor, tokenText, type Tokenizer, type TokenizerConfig } from './tokenizer.ts';

export interface AddedTokenSpec {
  readonly id: number;
  readonly content: string;
  /** Special tokens are matched in text only with allowSpecial; others always (HF's rule). */
  readonly special: boolean;
}

const utf8 = new TextEncoder();
// fatal: false: a byte sequence that is not UTF-8 (a model can emit any byte) decodes to
// U+FFFD instead of throwing; the streaming detokenizer holds back a trailing one.
const utf8Decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** A regex matching any of `contents`, longest first so "<|end|>" never shadows "<|end|>x". */
function alternation(contents: readonly string[]): RegExp | undefined {
  if (contents.length === 0) return undefined;
  const sorted = [...contents].sort((a, b) => b.length - a.length);
  return new RegExp(sorted.map(escapeRegExp).join('|'), 'g');
}

export class ByteTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly stopTokenIds: readonly number[];
  private readonly byId = new Map<number, AddedTokenSpec>();
  private readonly byContent = new Map<string, AddedTokenSpec>();
  private readonly allPattern: RegExp | undefined;
  private readonly plainPattern: RegExp | undefined;

  constructor(added: readonly AddedTokenSpec[], eosToken?: string) {
    for (const t of added) {
      if (!Number.isInteger(t.id) || t.id < 256) {
        throw new ModelError('tokenizer_invalid', `added token ${JSON.stringify(t.content)} has id ${t.id}, but ids 0..255 are the raw bytes`);
      }
      if (this.byId.has(t.id) || this.byContent.has(t.content)) {
        throw new ModelError('tokenizer_invalid', `added token ${JSON.stringify(t.content)} (id ${t.id}) is listed twice`);
      }
      this.byId.set(t.id, t);
      this.byContent.set(t.content, t);
    }
    this.vocabSize = Math.max(256, ...added.map((t) => t.id + 1));
    this.allPattern = alternation(added.map((t) => t.content));
    this.plainPattern = alternation(added.filter((t) => !t.special).map((t) => t.content));
    this.stopTokenIds = stopTokenIdsFor(this, eosToken);
  }

  /** From tokenizer_config.json (already validated); `file` only names it in errors. */
  static fromConfig(config: TokenizerConfig, file: string): ByteTokenizer {
    const added = Object.entries(config.added_tokens_decoder ?? {}).map(([id, t]) => ({
      id: Number(id),
      content: t.content,
      special: t.special,
    }));
    try {
      return new ByteTokenizer(added, tokenText(config.eos_token));
    } catch (error) {
      if (error instanceof ModelError) throw new ModelError(error.code, `${file}: ${error.message}`, { cause: error });
      throw error;
    }
  }

  encode(text: string, opts: { allowSpecial?: boolean } = {}): number[] {
    const pattern = opts.allowSpecial ? this.allPattern : this.plainPattern;
    const ids: number[] = [];
    const pushText = (s: string) => {
      for (const b of utf8.encode(s)) ids.push(b);
    };
    if (!pattern) {
      pushText(text);
      return ids;
    }
    let last = 0;
    for (const m of text.matchAll(pattern)) {
      pushText(text.slice(last, m.index));
      ids.push(this.byContent.get(m[0])!.id);
      last = m.index + m[0].length;
    }
    pushText(text.slice(last));
    return ids;
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    let out = '';
    let bytes: number[] = [];
    const flushBytes = () => {
      if (bytes.length > 0) out += utf8Decoder.decode(Uint8Array.from(bytes));
      bytes = [];
    };
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new ModelError('token_out_of_range', `token id ${id} at position ${i} is outside the tokenizer's vocabulary [0, ${this.vocabSize})`);
      }
      if (id < 256) {
        bytes.push(id);
        continue;
      }
      flushBytes();
      const t = this.byId.get(id);
      // Ids between the bytes and the highest added token that name nothing decode to nothing.
      if (t && !(opts.skipSpecial && t.special)) out += t.content;
    }
    flushBytes();
    return out;
  }

  tokenId(special: string): number | undefined {
    return this.byContent.get(special)?.id;
  }
}

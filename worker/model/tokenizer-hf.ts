// tokenizer.json through @huggingface/tokenizers (the tokenizer code of transformers.js):
// byte-level BPE like GPT-NeoX's (mamba-130m), SentencePiece-style BPE/Unigram, WordPiece.
//
// The library always matches every added token in the input, special or not. For user
// text (allowSpecial false) we run a second instance built without the special added
// tokens, so "<|endoftext|>" typed by a user is tokenized as ordinary characters; this is
// what HF's Rust tokenizer does with `encode_special_tokens = true`, and the tests check
// both modes against its output.
import { Tokenizer as HfLibTokenizer } from '@huggingface/tokenizers';
import { ModelError } from './errors.ts';
import { stopTokenIdsFor, tokenText, type Tokenizer, type TokenizerConfig } from './tokenizer.ts';

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

interface TokenizerJson {
  model: { vocab?: unknown };
  added_tokens?: AddedTokenJson[];
  [key: string]: unknown;
}

function validate(json: unknown, file: string): TokenizerJson {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ModelError('tokenizer_invalid', `${file}: expected a JSON object`);
  }
  const obj = json as Record<string, unknown>;
  if (typeof obj.model !== 'object' || obj.model === null) throw new ModelError('tokenizer_invalid', `${file}: missing "model"`);
  const added = obj.added_tokens ?? [];
  if (!Array.isArray(added)) throw new ModelError('tokenizer_invalid', `${file}: "added_tokens" is not a list`);
  for (const t of added as unknown[]) {
    const a = t as Partial<AddedTokenJson> | null;
    if (!a || !Number.isInteger(a.id) || (a.id as number) < 0 || typeof a.content !== 'string' || a.content.length === 0) {
      throw new ModelError('tokenizer_invalid', `${file}: bad added token ${JSON.stringify(t)}`);
    }
  }
  return obj as TokenizerJson;
}

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly stopTokenIds: readonly number[];
  private readonly addedIds = new Map<string, number>();
  private readonly specialIds = new Set<number>();

  private constructor(
    private readonly full: HfLibTokenizer,
    private readonly plain: HfLibTokenizer,
    added: readonly AddedTokenJson[],
    eosToken: string | undefined,
  ) {
    for (const t of added) {
      this.addedIds.set(t.content, t.id);
      if (t.special) this.specialIds.add(t.id);
    }
    // model.vocab is an id-indexed array once the library has merged the added tokens in.
    const vocab = (full.model as unknown as { vocab: unknown[] }).vocab;
    this.vocabSize = Math.max(vocab.length, ...added.map((t) => t.id + 1));
    this.stopTokenIds = stopTokenIdsFor(this, eosToken);
  }

  /** `json` is tokenizer.json parsed; `config` is tokenizer_config.json (may be `{}`). */
  static fromJson(json: unknown, config: TokenizerConfig, file: string): HfTokenizer {
    const tj = validate(json, file);
    const added = tj.added_tokens ?? [];
    // clean_up_tokenization_spaces (" ." → ".") is off: it is lossy (it rewrites code) and it
    // would make decode(a ++ b) differ from decode(a) + decode(b), which streaming relies on.
    const libConfig = { ...config, clean_up_tokenization_spaces: false };
    try {
      const full = new HfLibTokenizer(tj, libConfig);
      const plain = new HfLibTokenizer({ ...tj, added_tokens: added.filter((t) => !t.special) }, libConfig);
      return new HfTokenizer(full, plain, added, tokenText(config.eos_token));
    } catch (cause) {
      if (cause instanceof ModelError) throw cause;
      throw new ModelError('tokenizer_invalid', `${file}: ${(cause as Error).message}`, { cause });
    }
  }

  encode(text: string, opts: { allowSpecial?: boolean } = {}): number[] {
    if (text.length === 0) return [];
    // add_special_tokens false: BOS/EOS come from the chat template, never implicitly.
    if (opts.allowSpecial) return this.full.encode(text, { add_special_tokens: false }).ids;
    const ids = this.plain.encode(text, { add_special_tokens: false }).ids;
    if (!ids.some((id: number) => this.specialIds.has(id))) return ids;
    // The BPE merged ordinary characters into a piece whose string is a special token's (the
    // vocabulary lists special tokens too): re-encode character by character so the control
    // id can never come out of user text.
    return [...text].flatMap((ch) => {
      const piece = this.plain.encode(ch, { add_special_tokens: false }).ids;
      if (piece.some((id: number) => this.specialIds.has(id))) {
        throw new ModelError('tokenizer_invalid', `the tokenizer maps the plain character ${JSON.stringify(ch)} to a special token`);
      }
      return piece;
    });
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    if (ids.length === 0) return '';
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new ModelError('token_out_of_range', `token id ${id} at position ${i} is outside the tokenizer's vocabulary [0, ${this.vocabSize})`);
      }
    }
    return this.full.decode([...ids], { skip_special_tokens: opts.skipSpecial ?? false, clean_up_tokenization_spaces: false });
  }

  tokenId(special: string): number | undefined {
    return this.addedIds.get(special);
  }
}

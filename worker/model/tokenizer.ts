// The tokenizer every part of the worker codes against, and the one place that decides
// which implementation a model directory gets: its tokenizer.json (through
// @huggingface/tokenizers), or raw UTF-8 bytes for byte-level models that ship none.
//
// Safety rule: special tokens (<|end|>, <|endoftext|>, role markers) come only from the
// chat template. User text is encoded with allowSpecial false, so typing "<|end|>" into a
// message yields the bytes of that string, never the control token.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { ModelError } from './errors.ts';
import { fileExists } from './model-files.ts';
import { ByteTokenizer } from './tokenizer-bytes.ts';
import { HfTokenizer } from './tokenizer-hf.ts';

export interface Tokenizer {
  /** Ids the tokenizer can produce (≤ the model's embedding rows; the rest are padding). */
  readonly vocabSize: number;
  /** Special-token strings become their ids only with allowSpecial (template rendering), never from user text. */
  encode(text: string, opts?: { allowSpecial?: boolean }): number[];
  decode(ids: readonly number[], opts?: { skipSpecial?: boolean }): string;
  /** The id of a special (added) token, e.g. "<|end|>". */
  tokenId(special: string): number | undefined;
  /** Ids that end a reply: eos, and <|end|> where the tokenizer has it. */
  readonly stopTokenIds: readonly number[];
}

/** Rows above this cannot be a byte-level vocabulary (256 bytes + a few specials + padding). */
export const MAX_BYTE_LEVEL_ROWS = 512;

const TokenText = z.union([z.string(), z.object({ content: z.string() }).loose()]).nullable().optional();

/** The fields of tokenizer_config.json we use; HF writes many more. */
export const TokenizerConfigSchema = z
  .object({
    added_tokens_decoder: z
      .record(
        z.string().regex(/^\d+$/, 'keys must be token ids'),
        z.object({ content: z.string().min(1), special: z.boolean().default(true) }).loose(),
      )
      .optional(),
    eos_token: TokenText,
    byte_level: z.boolean().optional(),
    chat_template: z
      .union([z.string(), z.array(z.object({ name: z.string(), template: z.string() }).loose())])
      .nullable()
      .optional(),
  })
  .loose();
export type TokenizerConfig = z.output<typeof TokenizerConfigSchema>;

export function tokenText(value: z.output<typeof TokenText>): string | undefined {
  if (value === null || value === undefined) return undefined;
  return typeof value === 'string' ? value : value.content;
}

/** tokenizer_config.json of `modelDir`, validated; `{}` when the file is absent. */
export async function readTokenizerConfig(modelDir: string): Promise<{ config: TokenizerConfig; raw: Record<string, unknown>; file: string | undefined }> {
  const file = join(modelDir, 'tokenizer_config.json');
  if (!(await fileExists(file))) return { config: {}, raw: {}, file: undefined };
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (cause) {
    throw new ModelError('tokenizer_invalid', `${file}: not valid JSON (${(cause as Error).message})`, { cause });
  }
  const parsed = TokenizerConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const why = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ModelError('tokenizer_invalid', `${file}: ${why}`);
  }
  return { config: parsed.data, raw: raw as Record<string, unknown>, file };
}

/** Names some tokenizers use for "end of reply" when tokenizer_config.json names no eos. */
const END_MARKERS = ['<|end|>', '<|endoftext|>', '<|im_end|>', '<|eot_id|>', '</s>'];

/** eos (from tokenizer_config.json), plus <|end|> when it is a special token: both end a reply. */
export function stopTokenIdsFor(tokenizer: Pick<Tokenizer, 'tokenId'>, eosToken: string | undefined): number[] {
  const ids = new Set<number>();
  const eos = eosToken === undefined ? undefined : tokenizer.tokenId(eosToken);
  if (eos !== undefined) ids.add(eos);
  if (eosToken === undefined) {
    for (const name of END_MARKERS) {
      const id = tokenizer.tokenId(name);
      if (id !== undefined) {
        ids.add(id);
        break;
      }
    }
  }
  const end = tokenizer.tokenId('<|end|>');
  if (end !== undefined) ids.add(end);
  return [...ids].sort((a, b) => a - b);
}

/**
 * The tokenizer of a local model directory. `vocabRows` is the model's embedding rows: a
 * tokenizer that could produce ids past it is refused here, not at the first unlucky turn.
 */
export async function loadTokenizer(modelDir: string, vocabRows: number): Promise<Tokenizer> {
  const { config, file: configFile } = await readTokenizerConfig(modelDir);
  const jsonPath = join(modelDir, 'tokenizer.json');
  let tokenizer: Tokenizer;
  if (await fileExists(jsonPath)) {
    let json: unknown;
    try {
      json = JSON.parse(await readFile(jsonPath, 'utf8'));
    } catch (cause) {
      throw new ModelError('tokenizer_invalid', `${jsonPath}: not valid JSON (${(cause as Error).message})`, { cause });
    }
    tokenizer = HfTokenizer.fromJson(json, config, jsonPath);
  } else {
    // Without tokenizer.json only a byte-level vocabulary makes sense; a 50k-row model that
    // lost its tokenizer.json must not silently be fed raw bytes.
    if (config.byte_level !== true && vocabRows > MAX_BYTE_LEVEL_ROWS) {
      throw new ModelError(
        'tokenizer_invalid',
        `${modelDir}: no tokenizer.json, and the model's ${vocabRows}-row vocabulary is not byte-level (at most ${MAX_BYTE_LEVEL_ROWS} rows, or "byte_level": true in tokenizer_config.json)`,
      );
    }
    tokenizer = ByteTokenizer.fromConfig(config, configFile ?? join(modelDir, 'tokenizer_config.json'));
  }
  if (tokenizer.vocabSize > vocabRows) {
    throw new ModelError(
      'tokenizer_invalid',
      `${modelDir}: the tokenizer produces ids up to ${tokenizer.vocabSize - 1} but the model has only ${vocabRows} embedding rows`,
    );
  }
  return tokenizer;
}

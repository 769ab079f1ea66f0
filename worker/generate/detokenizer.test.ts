import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ByteTokenizer } from '../model/tokenizer-bytes.ts';
import { HfTokenizer } from '../model/tokenizer-hf.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { StreamingDetokenizer } from './detokenizer.ts';

const bytes = new ByteTokenizer([{ id: 256, content: '<|end|>', special: true }], '<|end|>');
const FIXTURE = join(import.meta.dirname, '../model/testing/fixtures/neox-tiny');
const neox = HfTokenizer.fromJson(JSON.parse(readFileSync(join(FIXTURE, 'tokenizer.json'), 'utf8')), {}, 'tokenizer.json');

function stream(t: Tokenizer, ids: readonly number[]): string[] {
  const d = new StreamingDetokenizer(t);
  const out = ids.map((id) => d.push(id));
  out.push(d.flush());
  return out;
}

const TEXTS = ['plain ascii text', 'Zürich 東京 서울 👋🏽✨ 👩‍👩‍👧 done', '€€€', 'tabs\tand\nnewlines  ', 'e\u0301 composed'];

describe('StreamingDetokenizer', () => {
  it.each(TEXTS)('streams %j byte by byte, never releasing half a character', (text) => {
    const pieces = stream(bytes, bytes.encode(text));
    expect(pieces.join('')).toBe(text);
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    // Every piece is whole characters: its UTF-8 round-trips.
    for (const p of pieces) expect(Buffer.from(p, 'utf8').toString('utf8')).toBe(p);
  });

  it('releases a 4-byte character only with its last byte', () => {
    expect(stream(bytes, [...Buffer.from('a😀b')])).toEqual(['a', '', '', '', '😀', 'b', '']);
  });

  it.each(TEXTS)('streams %j through a byte-level BPE exactly as a whole decode', (text) => {
    const ids = neox.encode(text);
    const pieces = stream(neox, ids);
    expect(pieces.join('')).toBe(neox.decode(ids));
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
  });

  it('skips special tokens (control, not text)', () => {
    expect(stream(bytes, [104, 256, 105]).join('')).toBe('hi');
  });

  it('lets bytes that are not UTF-8 through as U+FFFD once they cannot complete', () => {
    // A lone continuation byte, then text: the replacement is final as soon as "a" follows.
    expect(stream(bytes, [0x80, 0x61])).toEqual(['', '\uFFFDa', '']);
    // An unfinished character at the end comes out at flush.
    expect(stream(bytes, [0x61, 0xe2, 0x82])).toEqual(['a', '', '', '\uFFFD']);
    // A broken sequence followed by a complete character.
    expect(stream(bytes, [0xe2, 0x28]).join('')).toBe('\uFFFD(');
  });

  it('keeps context for decoders that depend on the previous token', () => {
    // SentencePiece-style: "▁" becomes a space except at the start of what is decoded.
    const json = {
      version: '1.0',
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false },
      post_processor: null,
      decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false },
      model: { type: 'BPE', vocab: { '▁Hello': 0, '▁world': 1, '!': 2, '▁': 3 }, merges: [], unk_token: null, dropout: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, continuing_subword_prefix: null, end_of_word_suffix: null },
    };
    const sp = HfTokenizer.fromJson(json, {}, 'tokenizer.json');
    const ids = [0, 1, 2, 1];
    expect(stream(sp, ids).join('')).toBe(sp.decode(ids));
    expect(sp.decode(ids)).toBe('Hello world! world');
  });
});

import { describe, expect, it } from 'vitest';
import { ModelError } from './errors.ts';
import { ByteTokenizer } from './tokenizer-bytes.ts';

// The demo model's vocabulary (tools/train/chat_format.py).
const demo = () =>
  ByteTokenizer.fromConfig(
    {
      added_tokens_decoder: {
        '256': { content: '<|system|>', special: true },
        '257': { content: '<|user|>', special: true },
        '258': { content: '<|assistant|>', special: true },
        '259': { content: '<|end|>', special: true },
      },
      eos_token: '<|end|>',
    },
    'tokenizer_config.json',
  );

describe('ByteTokenizer', () => {
  it('encodes text as its UTF-8 bytes and round-trips any text', () => {
    const t = demo();
    expect(t.encode('hi')).toEqual([104, 105]);
    expect(t.encode('é€😀')).toEqual([...Buffer.from('é€😀', 'utf8')]);
    for (const s of ['', 'plain', 'Zürich 東京 👩‍👩‍👧\n\t', '\u0000nul', 'a<|end|>b']) expect(t.decode(t.encode(s))).toBe(s);
  });

  it('has the demo vocabulary: 256 bytes + 4 specials, eos <|end|>', () => {
    const t = demo();
    expect(t.vocabSize).toBe(260);
    expect(t.tokenId('<|system|>')).toBe(256);
    expect(t.tokenId('<|end|>')).toBe(259);
    expect(t.tokenId('<|nope|>')).toBeUndefined();
    expect(t.stopTokenIds).toEqual([259]);
  });

  it('never turns special-token strings in user text into control ids', () => {
    const t = demo();
    const ids = t.encode('x<|end|><|user|>y');
    expect(ids.every((id) => id < 256)).toBe(true);
    expect(t.decode(ids)).toBe('x<|end|><|user|>y');
  });

  it('maps special-token strings to their ids with allowSpecial (template rendering)', () => {
    const t = demo();
    expect(t.encode('<|user|>hi<|end|>\n', { allowSpecial: true })).toEqual([257, 104, 105, 259, 10]);
    expect(t.encode('<|end|><|end|>', { allowSpecial: true })).toEqual([259, 259]);
    // A half marker stays text.
    expect(t.encode('<|end', { allowSpecial: true })).toEqual([...Buffer.from('<|end')]);
  });

  it('decodes specials as their text, or skips them', () => {
    const t = demo();
    const ids = [257, 104, 105, 259];
    expect(t.decode(ids)).toBe('<|user|>hi<|end|>');
    expect(t.decode(ids, { skipSpecial: true })).toBe('hi');
  });

  it('decodes bytes that are not UTF-8 to U+FFFD instead of throwing', () => {
    const t = demo();
    expect(t.decode([0xe2, 0x82])).toBe('\uFFFD');
    expect(t.decode([0x80, 0x61])).toBe('\uFFFDa');
    // A special token between the bytes of a character splits it.
    expect(t.decode([0xc3, 259, 0xa9], { skipSpecial: false })).toBe('\uFFFD<|end|>\uFFFD');
  });

  it('refuses ids outside the vocabulary with token_out_of_range', () => {
    const t = demo();
    for (const bad of [260, 263, -1, 1.5]) {
      try {
        t.decode([104, bad]);
        expect.unreachable();
      } catch (e) {
        expect(e).toBeInstanceOf(ModelError);
        expect((e as ModelError).code).toBe('token_out_of_range');
        expect((e as Error).message).toContain('position 1');
      }
    }
  });

  it('matches the longest added token first', () => {
    const t = new ByteTokenizer([
      { id: 256, content: '<|end|>', special: true },
      { id: 257, content: '<|end|>!', special: true },
    ]);
    expect(t.encode('<|end|>!', { allowSpecial: true })).toEqual([257]);
  });

  it('matches non-special added tokens in any text, as HF does', () => {
    const t = new ByteTokenizer([
      { id: 256, content: '    ', special: false },
      { id: 257, content: '<|end|>', special: true },
    ]);
    expect(t.encode('a    b')).toEqual([97, 256, 98]);
    expect(t.decode([256], { skipSpecial: true })).toBe('    ');
    expect(t.stopTokenIds).toEqual([257]); // no eos named: <|end|> ends a reply
  });

  it('refuses added tokens that collide with the bytes or each other, naming the file', () => {
    const bad = (added: Record<string, { content: string; special: boolean }>) => () =>
      ByteTokenizer.fromConfig({ added_tokens_decoder: added }, '/m/tokenizer_config.json');
    expect(bad({ '65': { content: '<|x|>', special: true } })).toThrow(/tokenizer_config\.json.*ids 0\.\.255 are the raw bytes/);
    expect(bad({ '256': { content: '<|x|>', special: true }, '257': { content: '<|x|>', special: true } })).toThrow(/listed twice/);
  });
});

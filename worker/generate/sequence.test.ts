import { describe, expect, it } from 'vitest';
import { ByteTokenizer } from '../model/tokenizer-bytes.ts';
import { Sampler } from './sampling.ts';
import { SequenceDecoder, type SequenceLimits, type StepResult } from './sequence.ts';

const END = 259;
const tok = new ByteTokenizer(
  [
    { id: 256, content: '<|system|>', special: true },
    { id: 257, content: '<|user|>', special: true },
    { id: 258, content: '<|assistant|>', special: true },
    { id: END, content: '<|end|>', special: true },
  ],
  '<|end|>',
);
const V = 264; // padded rows, as the demo model has

/** Logits whose greedy choice is `id`. */
function oneHot(id: number): Float32Array {
  const l = new Float32Array(V);
  l[id] = 10;
  return l;
}

/** Drives a decoder greedily through `ids` (as an engine would produce them), returning every step. */
function run(ids: readonly number[], limits: SequenceLimits): { steps: StepResult[]; d: SequenceDecoder } {
  const d = new SequenceDecoder(tok, new Sampler({ temperature: 0, topP: 1, topK: 0 }, tok.vocabSize), limits);
  const steps: StepResult[] = [];
  for (const id of ids) {
    const r = d.next(oneHot(id));
    steps.push(r);
    if (r.done) break;
    expect(r.token).toBe(id); // the caller absorbs exactly what it was told
  }
  return { steps, d };
}

const bytesOf = (s: string) => [...Buffer.from(s, 'utf8')];
const texts = (steps: StepResult[]) => steps.map((s) => s.text);

describe('SequenceDecoder', () => {
  it('streams text and stops at a stop token without emitting it', () => {
    const { steps, d } = run([...bytesOf('Hi!'), END, 65], { maxTokens: 100, stop: [] });
    expect(texts(steps)).toEqual(['H', 'i', '!', '']);
    expect(steps.at(-1)).toEqual({ done: true, finishReason: 'stop', text: '' });
    expect(d.text).toBe('Hi!');
    expect(d.generatedTokens).toBe(3);
    expect(d.finishReason).toBe('stop');
    expect(() => d.next(oneHot(65))).toThrow(/after the reply finished/);
  });

  it('returns the last token at the limit so the state absorbs it, then ends with length', () => {
    const { steps, d } = run(bytesOf('abcdef'), { maxTokens: 3, stop: [] });
    expect(steps.map((s) => s.done)).toEqual([false, false, false, true]);
    expect(steps.at(-1)).toMatchObject({ done: true, finishReason: 'length' });
    expect(d.text).toBe('abc');
    expect(d.generatedTokens).toBe(3);
  });

  it('maxTokens 0 ends at once', () => {
    const { steps } = run([65], { maxTokens: 0, stop: [] });
    expect(steps).toEqual([{ done: true, finishReason: 'length', text: '' }]);
  });

  it('holds back a possible stop-string prefix and never emits the stop string', () => {
    const { steps, d } = run(bytesOf('ok<|end|>more'), { maxTokens: 100, stop: ['<|end|>'] });
    expect(texts(steps)).toEqual(['o', 'k', '', '', '', '', '', '', '']);
    expect(steps.at(-1)).toEqual({ done: true, finishReason: 'stop', text: '' });
    expect(d.text).toBe('ok');
    expect(d.generatedTokens).toBe(8); // "ok<|end|" was returned (absorbed); ">", which completed the stop string, was not
  });

  it('releases held text when the stop-string prefix turns out to be something else', () => {
    const { steps, d } = run([...bytesOf('a<|en!'), END], { maxTokens: 100, stop: ['<|end|>'] });
    expect(texts(steps)).toEqual(['a', '', '', '', '', '<|en!', '']);
    expect(d.text).toBe('a<|en!');
  });

  it('flushes held text when a stop token or the limit ends the reply', () => {
    expect(run([...bytesOf('x<|'), END], { maxTokens: 100, stop: ['<|end|>'] }).steps.at(-1)).toEqual({ done: true, finishReason: 'stop', text: '<|' });
    const limited = run(bytesOf('x<|e'), { maxTokens: 3, stop: ['<|end|>'] });
    expect(limited.steps.at(-1)).toEqual({ done: true, finishReason: 'length', text: '<|' });
    expect(limited.d.text).toBe('x<|');
  });

  it('stops at the earliest of several stop strings, even inside one token’s text', () => {
    const { d, steps } = run(bytesOf('abc\nUser: hi'), { maxTokens: 100, stop: ['User:', '\nUser', 'zzz'] });
    expect(d.text).toBe('abc');
    expect(steps.at(-1)).toMatchObject({ done: true, finishReason: 'stop' });
  });

  it('never emits half a UTF-8 character, and a multi-byte stop string works', () => {
    const { steps, d } = run(bytesOf('é€→ end'), { maxTokens: 100, stop: ['→'] });
    for (const s of steps) expect(s.text).not.toContain('\uFFFD');
    expect(d.text).toBe('é€');
    expect(steps.at(-1)).toMatchObject({ done: true, finishReason: 'stop' });
  });

  it('concatenated deltas equal text at every step', () => {
    const { steps, d } = run([...bytesOf('The <|end answer is 😀 <|e'), END], { maxTokens: 100, stop: ['<|end|>'] });
    expect(texts(steps).join('')).toBe(d.text);
    expect(d.text).toBe('The <|end answer is 😀 <|e');
  });

  it('skips non-stop special tokens in the text', () => {
    const { d } = run([104, 257, 105, END], { maxTokens: 100, stop: [] });
    expect(d.text).toBe('hi');
  });

  it('stops at extra stop ids given in the limits (a template end marker)', () => {
    const { steps, d } = run([104, 257, 105], { maxTokens: 100, stop: [], stopTokenIds: [257] });
    expect(steps.at(-1)).toEqual({ done: true, finishReason: 'stop', text: '' });
    expect(d.text).toBe('h');
  });

  it('ignores empty stop strings and rejects a bad maxTokens', () => {
    expect(run(bytesOf('ab'), { maxTokens: 2, stop: [''] }).d.text).toBe('ab');
    expect(() => new SequenceDecoder(tok, new Sampler({ temperature: 0, topP: 1, topK: 0 }, 260), { maxTokens: -1, stop: [] })).toThrow(RangeError);
  });

  it('continues tokens an earlier attempt streamed, whatever it would sample, then samples again', () => {
    const earlier = bytesOf('Hello');
    const d = new SequenceDecoder(tok, new Sampler({ temperature: 0, topP: 1, topK: 0 }, tok.vocabSize), { maxTokens: 8, stop: [], forced: earlier });
    // The logits point elsewhere (this attempt's numbers differ): the forced tokens win.
    const steps: StepResult[] = [];
    for (let i = 0; i < 7; i++) steps.push(d.next(oneHot(bytesOf('x')[0]!)));
    expect(steps.slice(0, 5).map((s) => (s.done ? -1 : s.token))).toEqual(earlier);
    expect(d.text).toBe('Helloxx');
    expect(d.tokenIds).toEqual([...earlier, ...bytesOf('xx')]);
  });

  it('a forced stop id ends the reply as a sampled one would (it is never returned)', () => {
    const d = new SequenceDecoder(tok, new Sampler({ temperature: 0, topP: 1, topK: 0 }, tok.vocabSize), { maxTokens: 8, stop: [], forced: [...bytesOf('a'), END] });
    expect(d.next(oneHot(98))).toMatchObject({ done: false, text: 'a' });
    expect(d.next(oneHot(98))).toMatchObject({ done: true, finishReason: 'stop' });
  });
});

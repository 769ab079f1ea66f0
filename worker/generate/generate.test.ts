import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReferenceEngine } from '../engine/reference/reference-engine.ts';
import { openCheckpoint } from '../model/checkpoint.ts';
import { writeRandomCheckpoint } from '../model/testing/random-checkpoint.ts';
import { ByteTokenizer } from '../model/tokenizer-bytes.ts';
import { argmax, Sampler } from './sampling.ts';
import { generate, type GenerateEvent } from './generate.ts';
import { SequenceDecoder } from './sequence.ts';

let dir: string;
let engine: ReferenceEngine;
const tok = new ByteTokenizer([{ id: 256, content: '<|end|>', special: true }], '<|end|>');

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gen-'));
  await writeRandomCheckpoint(dir, { hiddenSize: 16, numLayers: 2, vocabSize: 264, seed: 4 });
  engine = await ReferenceEngine.load(await openCheckpoint(dir));
});
afterAll(async () => {
  await engine.close();
  await rm(dir, { recursive: true, force: true });
});

/** Records the tokens handed out for absorbing, to check them independently. */
class RecordingDecoder extends SequenceDecoder {
  readonly tokens: number[] = [];
  override next(logits: Float32Array) {
    const r = super.next(logits);
    if (!r.done) this.tokens.push(r.token);
    return r;
  }
}

async function collect(it: AsyncIterable<GenerateEvent>): Promise<GenerateEvent[]> {
  const out: GenerateEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

describe('generate', () => {
  it('greedy: every reply token is the argmax after the prompt and the tokens before it', async () => {
    const prompt = Int32Array.from(tok.encode('hello'));
    const state = await engine.newState();
    const decoder = new RecordingDecoder(tok, new Sampler({ temperature: 0, topP: 1, topK: 0 }, tok.vocabSize), { maxTokens: 12, stop: [] });
    const events = await collect(generate(engine, state, prompt, decoder));
    const done = events.at(-1)!;
    expect(done.type).toBe('done');
    if (done.type !== 'done') return;
    const deltas = events.filter((e) => e.type === 'text').map((e) => (e as { text: string }).text);
    expect(deltas.join('')).toBe(done.text);
    expect(done.promptTokens).toBe(5);
    expect(state.tokensAbsorbed).toBe(prompt.length + done.generatedTokens);

    // Independent check: run prompt + reply tokens in one prefill and re-derive each greedy choice.
    const reply = decoder.tokens;
    expect(reply.length).toBe(done.generatedTokens);
    expect(done.text).toBe(tok.decode(reply, { skipSpecial: true }));
    if (done.finishReason === 'length') expect(reply.length).toBe(12);
    const all = Int32Array.from([...prompt, ...reply]);
    const logits = await engine.prefill(await engine.newState(), all, { allLogits: true });
    for (let i = 0; i < reply.length; i++) {
      const rowAt = prompt.length - 1 + i;
      expect(argmax(logits.data.subarray(rowAt * logits.vocab, (rowAt + 1) * logits.vocab), tok.vocabSize)).toBe(reply[i]);
    }
  });

  it('a seed makes sampled replies reproducible', async () => {
    const once = async (seed: number) => {
      const d = new SequenceDecoder(tok, new Sampler({ temperature: 1.5, topP: 1, topK: 0, seed }, tok.vocabSize), { maxTokens: 8, stop: [] });
      const events = await collect(generate(engine, await engine.newState(), Int32Array.from([1, 2, 3]), d));
      return { text: d.text, tokens: d.generatedTokens, last: events.at(-1) };
    };
    const a = await once(42);
    expect(await once(42)).toEqual(a);
  });

  it('refuses an empty prompt', async () => {
    const d = new SequenceDecoder(tok, new Sampler({ temperature: 0, topP: 1, topK: 0 }, tok.vocabSize), { maxTokens: 1, stop: [] });
    await expect(collect(generate(engine, await engine.newState(), new Int32Array(0), d))).rejects.toThrow(/at least one prompt token/);
  });
});

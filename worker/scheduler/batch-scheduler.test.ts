// Continuous batching on the reference engine (a tiny random model), and on the ORT engine
// with a tiny attention hybrid (sessions at different positions, each with its own ring):
// concurrent replies share decode steps, each reply is exactly what it would be alone,
// prefills interleave with decoding, and an aborted sequence leaves the batch without
// disturbing the others.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTinyModel, type TinyModel } from '../../test-support/tiny-model.ts';
import { createEngine } from '../engine/create-engine.ts';
import type { Engine } from '../engine/engine.ts';
import { Sampler } from '../generate/sampling.ts';
import { SequenceDecoder } from '../generate/sequence.ts';
import { loadTokenizer, type Tokenizer } from '../model/tokenizer.ts';
import { BatchScheduler, WorkAborted } from './batch-scheduler.ts';

const setups = [
  { name: 'a Mamba model, reference engine', options: {}, engine: 'reference' as const },
  { name: 'a hybrid model (window 6), ORT engine', options: { numLayers: 3, hybrid: { attentionLayers: [1], window: 6, heads: 4, kvHeads: 2 } }, engine: 'ort' as const },
];

describe.each(setups)('BatchScheduler on $name', (setup) => {
  let model: TinyModel;
  let engine: Engine;
  let tokenizer: Tokenizer;
  let cacheDir: string;

  beforeAll(async () => {
    model = await writeTinyModel(setup.options);
    cacheDir = await mkdtemp(join(tmpdir(), 'ms-sched-'));
    engine = (await createEngine({ modelDir: model.dir, engine: setup.engine, cacheDir, intraOpThreads: 1 })).engine;
    tokenizer = await loadTokenizer(model.dir, engine.model.vocabRows);
  });
  afterAll(async () => {
    await engine?.close();
    await model?.remove();
    if (cacheDir) await rm(cacheDir, { recursive: true, force: true });
  });

  const decoder = (maxTokens: number, seed: number) =>
    new SequenceDecoder(tokenizer, new Sampler({ temperature: 1, topP: 1, topK: 0, seed }, tokenizer.vocabSize), { maxTokens, stop: [] });

  async function reply(scheduler: BatchScheduler, prompt: string, maxTokens: number, seed: number, signal?: AbortSignal) {
    const state = await engine.newState();
    const logits = await scheduler.prefill(state, Int32Array.from(tokenizer.encode(prompt)), signal);
    const out = await scheduler.decode(state, logits, decoder(maxTokens, seed), () => {}, signal);
    const absorbed = state.tokensAbsorbed;
    engine.freeState(state);
    return { text: out.text, tokens: out.generatedTokens, absorbed };
  }

  it('steps concurrent replies together, each as it would be alone', async () => {
    const prompts = ['alpha', 'a longer second prompt', 'c', 'delta delta'];
    const alone = [];
    for (const [i, p] of prompts.entries()) alone.push(await reply(new BatchScheduler(engine, 4), p, 20, i));

    const shared = new BatchScheduler(engine, 4);
    const together = await Promise.all(prompts.map((p, i) => reply(shared, p, 20, i)));
    expect(together).toEqual(alone);
    // 4 replies of 20 tokens: ~20 shared steps, not 80 one-by-one steps.
    // Every generated token is absorbed by one decode step (the last one too).
    expect(shared.stats.batchedTokens).toBe(together.reduce((n, r) => n + r.tokens, 0));
    expect(shared.stats.steps).toBeLessThan(shared.stats.batchedTokens / 2);
    // Prompts were cut into 4-token chunks.
    expect(shared.stats.prefillChunks).toBe(prompts.reduce((n, p) => n + Math.ceil(p.length / 4), 0));
  });

  it('admits new work between steps, and an aborted reply leaves the others intact', async () => {
    const scheduler = new BatchScheduler(engine, 8);
    const expected = await reply(new BatchScheduler(engine, 8), 'steady one', 40, 9);
    const abort = new AbortController();
    const steady = reply(scheduler, 'steady one', 40, 9);
    const doomed = reply(scheduler, 'doomed', 1000, 3, abort.signal);
    await new Promise((r) => setTimeout(r, 5));
    const late = reply(scheduler, 'late arrival', 5, 4);
    abort.abort('lease lost');
    await expect(doomed).rejects.toBeInstanceOf(WorkAborted);
    expect(await steady).toEqual(expected);
    expect((await late).tokens).toBe(5);
  });
});

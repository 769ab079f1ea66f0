// CPU engine benchmark (ONNX Runtime engine) on a mamba-130m-shaped random model:
// decode tokens/s at batch 1 and 8, prefill tokens/s at L = 512 and 4096, peak RSS, and
// decode's weight bytes read per second as a ratio to the measured memory bandwidth.
//
//   npm run bench:engine            (or: npx tsx bench/engine-cpu.ts [--threads N] [--steps N])
//
// The random checkpoint (~520 MB) is generated once into .cache/bench/.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../worker/engine/create-engine.ts';
import type { Engine } from '../worker/engine/engine.ts';
import { writeRandomCheckpoint } from '../worker/model/testing/random-checkpoint.ts';
import { measureReadBandwidth } from './memory-bandwidth.ts';

const { values: args } = parseArgs({
  options: {
    threads: { type: 'string', default: String(availableParallelism()) },
    steps: { type: 'string', default: '60' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
  },
});
const threads = Number(args.threads);
const steps = Number(args.steps);
const modelDir = join(args['cache-dir'], 'mamba-130m-random');

if (!existsSync(join(modelDir, 'model.safetensors'))) {
  console.log(`generating a mamba-130m-shaped random checkpoint in ${modelDir} (once)…`);
  await writeRandomCheckpoint(modelDir, { hiddenSize: 768, numLayers: 24, vocabSize: 50280, stateSize: 16, convKernel: 4, expand: 2, seed: 130 });
}

let peakRss = 0;
const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 20);

const bandwidth = await measureReadBandwidth(threads);
const loadStarted = performance.now();
const { engine, checkpoint } = await createEngine({ modelDir, engine: 'ort', cacheDir: join(args['cache-dir'], 'graphs'), intraOpThreads: threads });
const loadMs = performance.now() - loadStarted;
const weightBytes = checkpoint.parameterCount * 4;

async function decodeRate(batch: number): Promise<{ msPerStep: number; tokensPerSecond: number }> {
  const states = await Promise.all(Array.from({ length: batch }, () => engine.newState()));
  for (const s of states) await engine.prefill(s, Int32Array.of(1, 2, 3));
  const step = (i: number) => engine.decode(states.map((state, b) => ({ state, token: (i * 31 + b * 7) % 50000 })));
  for (let i = 0; i < 3; i++) await step(i);
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const started = performance.now();
    await step(i);
    times.push(performance.now() - started);
  }
  // The median step: on a shared machine a neighbour's burst inflates a mean.
  times.sort((a, b) => a - b);
  const msPerStep = times[Math.floor(times.length / 2)]!;
  for (const s of states) engine.freeState(s);
  return { msPerStep, tokensPerSecond: (batch * 1000) / msPerStep };
}

async function prefillRate(e: Engine, L: number): Promise<number> {
  const tokens = Int32Array.from({ length: L }, (_, i) => (i * 7919) % 50000);
  await e.prefill(await e.newState(), tokens.subarray(0, 64)); // warm-up
  const state = await e.newState();
  const started = performance.now();
  await e.prefill(state, tokens);
  const seconds = (performance.now() - started) / 1000;
  e.freeState(state);
  return L / seconds;
}

const decode1 = await decodeRate(1);
const decode8 = await decodeRate(8);
const prefill512 = await prefillRate(engine, 512);
const prefill4096 = await prefillRate(engine, 4096);
await engine.close();
clearInterval(sampler);

const gbs = (bytesPerSecond: number) => `${(bytesPerSecond / 1e9).toFixed(1)} GB/s`;
const weightRate = (msPerStep: number) => weightBytes / (msPerStep / 1000);
const rows: [string, string][] = [
  ['model', `mamba-130m-shaped random (hidden 768, 24 layers, vocab 50280, fp32, ${(checkpoint.parameterCount / 1e6).toFixed(1)}M params, ${(weightBytes / 1e6).toFixed(0)} MB)`],
  ['engine', `ort (onnxruntime-node CPU), ${threads} intra-op thread(s); graph load ${(loadMs / 1000).toFixed(1)} s`],
  ['memory read bandwidth (measured: memcmp, median of 5)', `${gbs(bandwidth.bytesPerSecond)} (best ${gbs(bandwidth.bestBytesPerSecond)})`],
  ['decode, batch 1', `${decode1.tokensPerSecond.toFixed(1)} tok/s (${decode1.msPerStep.toFixed(1)} ms/step, median)`],
  ['decode, batch 8', `${decode8.tokensPerSecond.toFixed(1)} tok/s (${decode8.msPerStep.toFixed(1)} ms/step, median)`],
  [
    'decode batch 1: weights read / bandwidth',
    `${gbs(weightRate(decode1.msPerStep))} / ${gbs(bandwidth.bytesPerSecond)} = ${((100 * weightRate(decode1.msPerStep)) / bandwidth.bytesPerSecond).toFixed(0)}%`,
  ],
  [
    'decode batch 8: weights read / bandwidth',
    `${gbs(weightRate(decode8.msPerStep))} / ${gbs(bandwidth.bytesPerSecond)} = ${((100 * weightRate(decode8.msPerStep)) / bandwidth.bytesPerSecond).toFixed(0)}%`,
  ],
  ['prefill, L = 512', `${prefill512.toFixed(0)} tok/s`],
  ['prefill, L = 4096', `${prefill4096.toFixed(0)} tok/s`],
  ['peak RSS', `${(peakRss / 1e6).toFixed(0)} MB`],
];
console.log('\n| measure | value |\n|---|---|');
for (const [k, v] of rows) console.log(`| ${k} | ${v} |`);
console.log(
  JSON.stringify({
    bench: 'engine-cpu',
    threads,
    bandwidth_gbs: bandwidth.bytesPerSecond / 1e9,
    decode_b1_tok_s: decode1.tokensPerSecond,
    decode_b8_tok_s: decode8.tokensPerSecond,
    decode_b1_bandwidth_ratio: weightRate(decode1.msPerStep) / bandwidth.bytesPerSecond,
    prefill_512_tok_s: prefill512,
    prefill_4096_tok_s: prefill4096,
    peak_rss_mb: peakRss / 1e6,
  }),
);

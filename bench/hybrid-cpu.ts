// What the attention hybrid costs on the CPU engine (ONNX Runtime), next to the pure Mamba
// model, in one run: mamba-130m-shaped random checkpoints (hidden 768, 24 layers, vocab
// 50280, fp32), pure, and with 2 of the 24 layers (11 and 23) as sliding-window attention
// (12 query heads, 4 KV heads, head_dim 64) at W = 512 and W = 2048. For each: one session's
// state bytes, decode tokens/s at batch 1 and 8 with every session already past its window
// (a full ring: the steady-state cost), and prefill tokens/s at L = 2048.
//
//   npx tsx bench/hybrid-cpu.ts [--threads N] [--steps N] [--rounds N]
//
// Models are loaded one at a time and measured in interleaved rounds (pure, W512, W2048,
// pure, ...); each figure is the median over rounds of a median step, so a neighbour's burst
// on a shared machine moves no model's figure more than another's. The random checkpoints
// (~520 MB each) are generated once into .cache/bench/.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../worker/engine/create-engine.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../worker/model/testing/random-checkpoint.ts';
import { medianDecodeStepMs, prefillTokensPerSecond } from './engine-timing.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({
  options: {
    threads: { type: 'string', default: String(availableParallelism()) },
    steps: { type: 'string', default: '40' },
    rounds: { type: 'string', default: '3' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
  },
});
const threads = Number(args.threads);
const steps = Number(args.steps);
const rounds = Number(args.rounds);
const SHAPE: RandomCheckpointOptions = { hiddenSize: 768, numLayers: 24, vocabSize: 50280, stateSize: 16, convKernel: 4, expand: 2, seed: 130 };
const PREFILL_L = 2048;

interface Variant {
  readonly name: string;
  readonly dir: string;
  readonly options: RandomCheckpointOptions;
  /** Tokens each decode session absorbs before timing: past the window, so the ring is full. */
  readonly history: number;
}

const hybrid = (window: number): RandomCheckpointOptions => ({
  ...SHAPE,
  hybrid: { attentionLayers: [11, 23], window, heads: 12, kvHeads: 4, headDim: 64 },
});
const variants: Variant[] = [
  { name: 'Mamba (24 layers)', dir: join(args['cache-dir'], 'mamba-130m-random'), options: SHAPE, history: 2048 + 64 },
  { name: 'hybrid, W = 512 (22 Mamba + 2 attention)', dir: join(args['cache-dir'], 'hybrid-130m-w512-random'), options: hybrid(512), history: 512 + 64 },
  { name: 'hybrid, W = 2048 (22 Mamba + 2 attention)', dir: join(args['cache-dir'], 'hybrid-130m-w2048-random'), options: hybrid(2048), history: 2048 + 64 },
];

for (const v of variants) {
  if (!existsSync(join(v.dir, 'model.safetensors'))) {
    console.log(`generating ${v.name} as a random checkpoint in ${v.dir} (once)…`);
    await writeRandomCheckpoint(v.dir, v.options);
  }
}


/** A history of `length` tokens each session reads before the timed steps. */
const historyPrompt = (length: number) => Int32Array.from({ length }, (_, i) => (i * 7919 + 11) % 50000);


interface Figures {
  stateBytes: number;
  b1: number[];
  b8: number[];
  prefill: number[];
}
const figures = new Map<string, Figures>(variants.map((v) => [v.name, { stateBytes: 0, b1: [], b8: [], prefill: [] }]));

for (let round = 0; round < rounds; round++) {
  for (const v of variants) {
    const { engine } = await createEngine({ modelDir: v.dir, engine: 'ort', cacheDir: join(args['cache-dir'], 'graphs'), intraOpThreads: threads });
    const f = figures.get(v.name)!;
    f.stateBytes = engine.model.stateBytes;
    f.b1.push(1000 / (await medianDecodeStepMs(engine, 1, steps, historyPrompt(v.history))));
    f.b8.push((8 * 1000) / (await medianDecodeStepMs(engine, 8, steps, historyPrompt(v.history))));
    f.prefill.push(await prefillTokensPerSecond(engine, PREFILL_L));
    await engine.close();
    console.log(`round ${round + 1}/${rounds}: ${v.name} done`);
  }
}

const base = figures.get(variants[0]!.name)!;
const ratio = (x: number, y: number) => `${(x / y).toFixed(2)}x`;
console.log(
  `\nORT engine (onnxruntime-node CPU), ${threads} intra-op thread(s); median over ${rounds} interleaved rounds of the median of ${steps} decode steps; decode sessions are past their window\n`,
);
console.log('| model | state bytes | decode b1 tok/s | decode b8 tok/s | prefill L=2048 tok/s |\n|---|---|---|---|---|');
for (const v of variants) {
  const f = figures.get(v.name)!;
  const [b1, b8, pf] = [median(f.b1), median(f.b8), median(f.prefill)];
  const rel = v === variants[0] ? '' : ` (${ratio(b1, median(base.b1))})`;
  console.log(
    `| ${v.name} | ${f.stateBytes.toLocaleString('en-US')} (${ratio(f.stateBytes, base.stateBytes)}) | ${b1.toFixed(1)}${rel} | ${b8.toFixed(1)}${v === variants[0] ? '' : ` (${ratio(b8, median(base.b8))})`} | ${pf.toFixed(0)}${v === variants[0] ? '' : ` (${ratio(pf, median(base.prefill))})`} |`,
  );
}
console.log(
  JSON.stringify({
    bench: 'hybrid-cpu',
    threads,
    rounds,
    models: Object.fromEntries(
      [...figures].map(([name, f]) => [name, { state_bytes: f.stateBytes, decode_b1_tok_s: median(f.b1), decode_b8_tok_s: median(f.b8), prefill_2048_tok_s: median(f.prefill) }]),
    ),
  }),
);

// ONNX Runtime's intra-op threads spin-wait between ops and for a while after each run unless
// told not to (ORT_INTRA_OP_SPINNING). Spinning shortens each op's hand-off; the spin left
// behind takes a core from everything else in the process (the event loop, tokenizing,
// BullMQ) and from neighbours. Which wins is decided end to end: one worker serving 1 and 16
// sessions generating at once, with spinning on and off, in interleaved rounds (a fresh
// stack each time).
//
//   npx tsx bench/ort-spinning.ts [--rounds 3] [--tokens 48]
import { parseArgs } from 'node:util';
import { benchModel, createSession, startBenchStack, turn } from './serving-harness.ts';

const { values: args } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, tokens: { type: 'string', default: '48' } } });
const rounds = Number(args.rounds);
const tokens = Number(args.tokens);
const modelDir = await benchModel('serving-medium', { hiddenSize: 384, numLayers: 6, stateSize: 16 });
const LOADS = [1, 16];

async function throughput(spinning: boolean): Promise<number[]> {
  const stack = await startBenchStack(modelDir, { WORKER_CONCURRENCY: '16', MAX_QUEUE_DEPTH: '1000', ORT_INTRA_OP_SPINNING: String(spinning) });
  try {
    const warm = await createSession(stack.url);
    await turn(stack.url, warm, { input: 'warm up', max_tokens: 8 });
    const rates: number[] = [];
    for (const sessions of LOADS) {
      const ids = await Promise.all(Array.from({ length: sessions }, () => createSession(stack.url)));
      const t0 = performance.now();
      const results = await Promise.all(ids.map((id, i) => turn(stack.url, id, { input: `a prompt of a few words for session ${i}`, max_tokens: tokens, temperature: 1, seed: i })));
      rates.push(results.reduce((n, r) => n + r.usage.output_tokens, 0) / ((performance.now() - t0) / 1000));
    }
    return rates;
  } finally {
    await stack.stop();
  }
}

const figures = new Map<boolean, number[][]>([
  [true, []],
  [false, []],
]);
for (let r = 0; r < rounds; r++) {
  for (const spinning of r % 2 === 0 ? [true, false] : [false, true]) figures.get(spinning)!.push(await throughput(spinning));
  console.log(`round ${r + 1}/${rounds} done`);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(`\none worker (ORT engine, model hidden 384 x 6 layers), ${tokens} tokens per turn; median (min–max) over ${rounds} interleaved rounds\n`);
console.log('| concurrent sessions | spinning: tokens/s | no spinning: tokens/s | no spinning ÷ spinning |\n|---|---|---|---|');
LOADS.forEach((sessions, i) => {
  const on = figures.get(true)!.map((r) => r[i]!);
  const off = figures.get(false)!.map((r) => r[i]!);
  const cell = (xs: number[]) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
  console.log(`| ${sessions} | ${cell(on)} | ${cell(off)} | ${(median(off) / median(on)).toFixed(2)} |`);
});
console.log(JSON.stringify({ bench: 'ort-spinning', rounds, tokens, spinning: figures.get(true), no_spinning: figures.get(false) }));

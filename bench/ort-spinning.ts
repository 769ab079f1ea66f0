// ONNX Runtime's intra-op threads spin-wait between ops and, by ORT's default, for a long while
// after each run. Spinning shortens each op's hand-off; the spin left behind takes a core from
// everything else in the process (the event loop, tokenizing, BullMQ) and from neighbours.
// Three settings, decided end to end: one worker serving 1 and 16 sessions generating at once,
// with
//   - "off":     ORT_INTRA_OP_SPINNING=false, ORT_INTRA_OP_SPIN_US=0 (threads sleep at once),
//   - "bounded": ORT_INTRA_OP_SPIN_US=<--spin-us> (spin that long for the next op, then sleep),
//   - "ORT's":   ORT_INTRA_OP_SPINNING=true (ORT's own long spin),
// in interleaved rounds (a fresh stack each time). --neighbour runs a busy process beside the
// stack (one core of a shared machine taken), where the spin left behind hurts most.
//
//   npx tsx bench/ort-spinning.ts [--rounds 3] [--tokens 48] [--spin-us 100] [--neighbour] [--model medium|130m]
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { DEFAULT_ORT_INTRA_OP_SPIN_US } from '../shared/config.ts';
import { benchModel, servedThroughput } from './serving-harness.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '48' },
    'spin-us': { type: 'string', default: String(DEFAULT_ORT_INTRA_OP_SPIN_US) },
    neighbour: { type: 'boolean', default: false },
    /** medium: hidden 384 x 6 layers (a step is mostly overhead); 130m: mamba-130m's shape with a byte vocabulary. */
    model: { type: 'string', default: 'medium' },
  },
});
const rounds = Number(args.rounds);
const tokens = Number(args.tokens);
const modelDir =
  args.model === '130m'
    ? await benchModel('serving-130m', { hiddenSize: 768, numLayers: 24, stateSize: 16 })
    : await benchModel('serving-medium', { hiddenSize: 384, numLayers: 6, stateSize: 16 });
const LOADS = [1, 16];
const SETTINGS: [string, Record<string, string>][] = [
  ['off', { ORT_INTRA_OP_SPINNING: 'false', ORT_INTRA_OP_SPIN_US: '0' }],
  [`bounded ${args['spin-us']} µs`, { ORT_INTRA_OP_SPINNING: 'false', ORT_INTRA_OP_SPIN_US: args['spin-us'] }],
  ["ORT's", { ORT_INTRA_OP_SPINNING: 'true' }],
];

/** A neighbour that keeps one core busy (a plain spin loop in its own process). */
function startNeighbour(): () => void {
  const child = spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' });
  return () => child.kill('SIGKILL');
}


const stopNeighbour = args.neighbour ? startNeighbour() : undefined;
const figures = new Map<string, number[][]>(SETTINGS.map(([name]) => [name, []]));
try {
  for (let r = 0; r < rounds; r++) {
    // Rotate the order so no setting always runs first (or always after the same one).
    const order = SETTINGS.map((_, i) => SETTINGS[(i + r) % SETTINGS.length]!);
    for (const [name, env] of order) figures.get(name)!.push(await servedThroughput(modelDir, env, LOADS, tokens));
    console.log(`round ${r + 1}/${rounds} done`);
  }
} finally {
  stopNeighbour?.();
}
const shape = args.model === '130m' ? 'mamba-130m shape (hidden 768 x 24 layers), byte vocabulary' : 'hidden 384 x 6 layers';
console.log(`\none worker (ORT engine, f32, ${shape}), ${tokens} tokens per turn${args.neighbour ? ', a busy neighbour process on one core' : ''}; tokens/s, median (min–max) over ${rounds} interleaved rounds\n`);
console.log(`| concurrent sessions | ${SETTINGS.map(([n]) => n).join(' | ')} |\n|---|${SETTINGS.map(() => '---').join('|')}|`);
const cell = (xs: number[]) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
LOADS.forEach((sessions, i) => {
  console.log(`| ${sessions} | ${SETTINGS.map(([name]) => cell(figures.get(name)!.map((r) => r[i]!))).join(' | ')} |`);
});
console.log(JSON.stringify({ bench: 'ort-spinning', rounds, tokens, neighbour: args.neighbour, model: args.model, settings: Object.fromEntries(figures) }));

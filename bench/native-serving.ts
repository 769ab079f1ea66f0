// The native kernels end to end: one worker serving 1 and 16 sessions generating at once, f32,
// int8 and int4 weights (--dtypes), on ONNX Runtime's graph (ORT_NATIVE_KERNELS=off) or on the
// native kernels (on), a fresh stack per setting, in interleaved rounds. The engine-level
// figures are bench/engine-cpu.ts's -native variants; this is what a client sees, with prefill,
// sampling, the queue and checkpointing around every step.
//
//   npx tsx bench/native-serving.ts [--rounds 3] [--tokens 48] [--dtypes int8,int4,f32]
//
// Needs the native kernels built (npm run build:cpu) and a CPU it runs on; says so and
// stops otherwise. The model is mamba-130m's shape with a byte vocabulary (the LM head is small,
// so the projections are nearly all of a step).
import { parseArgs } from 'node:util';
import { nativeKernelsUnavailable } from '../worker/engine/ort/testing/native-availability.ts';
import { benchModel, servedThroughput } from './serving-harness.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({
  options: { rounds: { type: 'string', default: '3' }, tokens: { type: 'string', default: '48' }, dtypes: { type: 'string', default: 'int8,int4,f32' } },
});
const dtypes = args.dtypes.split(',');
for (const d of dtypes) if (!['f32', 'int8', 'int4'].includes(d)) throw new Error(`--dtypes takes f32, int8 and int4, not ${d}`);
const rounds = Number(args.rounds);
const tokens = Number(args.tokens);

const unavailable = nativeKernelsUnavailable();
if (unavailable) {
  console.log(`bench/native-serving.ts: skipped, the native kernels cannot run here: ${unavailable}`);
  process.exit(0);
}
const modelDir = await benchModel('serving-130m', { hiddenSize: 768, numLayers: 24, stateSize: 16 });
const LOADS = [1, 16];
const SETTINGS: [string, Record<string, string>][] = dtypes.flatMap((dtype): [string, Record<string, string>][] => [
  [`${dtype} graph`, { WEIGHTS_DTYPE: dtype, ORT_NATIVE_KERNELS: 'off' }],
  [`${dtype} native`, { WEIGHTS_DTYPE: dtype, ORT_NATIVE_KERNELS: 'on' }],
]);

const figures = new Map<string, number[][]>(SETTINGS.map(([name]) => [name, []]));
for (let r = 0; r < rounds; r++) {
  // Rotate the order so no setting always runs first (or always after the same one).
  const order = SETTINGS.map((_, i) => SETTINGS[(i + r) % SETTINGS.length]!);
  for (const [name, env] of order) figures.get(name)!.push(await servedThroughput(modelDir, env, LOADS, tokens));
  console.log(`round ${r + 1}/${rounds} done`);
}
console.log(`\none worker (ORT engine, mamba-130m shape (hidden 768 x 24 layers), byte vocabulary), ${tokens} tokens per turn; tokens/s, median (min–max) over ${rounds} interleaved rounds\n`);
console.log(`| concurrent sessions | ${SETTINGS.map(([n]) => n).join(' | ')} | native ÷ graph, ${dtypes.join(' / ')} |\n|---|${SETTINGS.map(() => '---').join('|')}|---|`);
const cell = (xs: number[]) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
const at = (name: string, i: number) => figures.get(name)!.map((r) => r[i]!);
LOADS.forEach((sessions, i) => {
  const ratio = (dtype: string) => (median(at(`${dtype} native`, i)) / median(at(`${dtype} graph`, i))).toFixed(2);
  console.log(`| ${sessions} | ${SETTINGS.map(([name]) => cell(at(name, i))).join(' | ')} | ${dtypes.map(ratio).join(' / ')} |`);
});
console.log(JSON.stringify({ bench: 'native-serving', rounds, tokens, settings: Object.fromEntries(figures) }));

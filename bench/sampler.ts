// The sampler's cost a draw (worker/generate/sampling.ts): it runs on the worker's main thread,
// once per sequence and step, in series with the decode steps. Rows of a 50k vocabulary (a flat
// random row and a heavy-tailed Zipf row), the API's usual settings, on the native addon's row
// passes (native-exp.ts: rowMax, expRow) and on the JavaScript path (Math.exp and loops).
//
//   npx tsx bench/sampler.ts [--rounds 5] [--draws 2000]
//
// Each figure is the median over rounds of a round's mean time a draw; the paths alternate
// within a round. Each (setting, path) gets a Sampler and a call site of its own, as a worker
// has one kind of row pass for its life.
import { parseArgs } from 'node:util';
import { nativeExpUnavailable } from '../worker/generate/native-exp.ts';
import { Sampler, type SamplerOptions, type SamplingParams } from '../worker/generate/sampling.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, draws: { type: 'string', default: '2000' } } });
const rounds = Number(args.rounds);
const draws = Number(args.draws);
const V = 50280;

/** A row from a fixed LCG: logits uniform in [−10, 10). */
function flatRow(): Float32Array {
  let s = 1;
  return Float32Array.from({ length: V }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 20 - 10);
}

/** A heavy-tailed row: probabilities ∝ 1 / rank (Zipf, exponent 1), ranks shuffled over the ids. */
function zipfRow(): Float32Array {
  const row = Float32Array.from({ length: V }, (_, i) => -Math.log(i + 1));
  let s = 7;
  for (let i = V - 1; i > 0; i--) {
    const j = (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % (i + 1);
    [row[i], row[j]] = [row[j]!, row[i]!];
  }
  return row;
}

const SETTINGS: [string, SamplingParams, Float32Array][] = [
  ['greedy', { temperature: 0, topP: 1, topK: 0 }, flatRow()],
  ['temperature 1', { temperature: 1, topP: 1, topK: 0, seed: 1 }, flatRow()],
  ['temperature 0.7, top_p 0.9, top_k 40', { temperature: 0.7, topP: 0.9, topK: 40, seed: 1 }, flatRow()],
  ['temperature 1, top_p 0.95, Zipf row', { temperature: 1, topP: 0.95, topK: 0, seed: 1 }, zipfRow()],
];
const PATHS: [string, SamplerOptions][] = [
  ['native row passes', {}],
  ['JavaScript', { expRow: null, rowMax: null }],
];

const native = nativeExpUnavailable();
if (native) console.log(`the native row passes cannot run here (${native}): both columns are the JavaScript path`);

/**
 * A fresh timing loop per (setting, path): V8 then specializes each loop's call site to one
 * Sampler, as a worker's is.
 */
const timer = () =>
  new Function('sampler', 'row', 'n', 'for (let i = 0; i < 200; i++) sampler.sample(row); const t = performance.now(); for (let i = 0; i < n; i++) sampler.sample(row); return (performance.now() - t) / n;') as (
    sampler: Sampler,
    row: Float32Array,
    n: number,
  ) => number;

const cases = SETTINGS.flatMap(([setting, params, row]) => PATHS.map(([path, options]) => ({ setting, path, row, sampler: new Sampler(params, V, options), time: timer() })));
const figures = new Map(cases.map((c) => [`${c.setting}|${c.path}`, [] as number[]]));
for (let r = 0; r < rounds; r++) {
  for (const c of r % 2 === 0 ? cases : [...cases].reverse()) figures.get(`${c.setting}|${c.path}`)!.push(1000 * c.time(c.sampler, c.row, draws));
}

console.log(`\nµs a draw over ${V} logits, median of ${rounds} rounds of ${draws} draws\n`);
console.log(`| setting | ${PATHS.map(([p]) => p).join(' | ')} | JavaScript ÷ native |\n|---|${PATHS.map(() => '---').join('|')}|---|`);
for (const [setting] of SETTINGS) {
  const [a, b] = PATHS.map(([p]) => median(figures.get(`${setting}|${p}`)!));
  console.log(`| ${setting} | ${a!.toFixed(1)} | ${b!.toFixed(1)} | ${(b! / a!).toFixed(1)}x |`);
}
console.log(JSON.stringify({ bench: 'sampler', vocab: V, rounds, draws, figures: Object.fromEntries(figures) }));

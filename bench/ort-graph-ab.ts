// Two builds of the ORT graph, A and B, decode step against decode step: both sessions in one
// process, runs alternating (A B, B A, …) so that a shared machine's slow spells fall on both
// alike, and the median step of each at batch 1 and 8. This is how a graph change is judged:
// separate runs of bench/engine-cpu.ts on this VM differ by 20–30 % from hour to hour, more
// than most graph changes.
//
//   npx tsx bench/ort-graph-ab.ts A/model.onnx B/model.onnx [--steps 200] [--threads 2] [--spin-us 100] [--prefill 256 --prefill-runs 20]
//
// --prefill L adds alternating prefills of L tokens (one sequence, last position's logits).
//
// Builds live in MODEL_CACHE_DIR/ort/<key>/ (meta.json names the checkpoint, dtype and graph
// version); an older GRAPH_VERSION's build is kept there until removed. Pure Mamba graphs only
// (a hybrid's rings, mask and RoPE inputs are not fed).
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { DEFAULT_ORT_INTRA_OP_SPIN_US } from '../shared/config.ts';
import { intraOpSpin } from '../worker/engine/ort/ort-engine.ts';
import { median } from './stats.ts';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    steps: { type: 'string', default: '200' },
    threads: { type: 'string', default: '2' },
    'spin-us': { type: 'string', default: String(DEFAULT_ORT_INTRA_OP_SPIN_US) },
    prefill: { type: 'string', default: '0' },
    'prefill-runs': { type: 'string', default: '20' },
  },
});
if (positionals.length !== 2) throw new Error('usage: npx tsx bench/ort-graph-ab.ts A/model.onnx B/model.onnx');
const steps = Number(args.steps);
const spinUs = Number(args['spin-us']);
const options: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: Number(args.threads),
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
  extra: { session: { intra_op: intraOpSpin({ intraOpSpinMicros: spinUs }) } },
};
const [a, b] = await Promise.all(positionals.map((p) => ort.InferenceSession.create(p, options)));

/** The state inputs' fixed dims ([batch, K|N, D]) from the graph's own metadata. */
function stateShapes(s: ort.InferenceSession): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  for (const m of s.inputMetadata) {
    if (!/^(conv|ssm)_state_\d+$/.test(m.name)) continue;
    if (!m.isTensor) throw new Error(`${m.name} is not a tensor`);
    shapes.set(m.name, m.shape.slice(1).map(Number));
  }
  if (s.inputNames.some((n) => n.startsWith('attn_'))) throw new Error('a hybrid graph: bench/ort-graph-ab.ts feeds pure Mamba graphs only');
  return shapes;
}
const shapesA = stateShapes(a!);
const shapesB = stateShapes(b!);
if (JSON.stringify([...shapesA]) !== JSON.stringify([...shapesB])) throw new Error('A and B are graphs of different models');

function feeds(batch: number, step: number, length = 1): Record<string, ort.Tensor> {
  const f: Record<string, ort.Tensor> = {
    tokens: new ort.Tensor('int64', BigInt64Array.from({ length: batch * length }, (_, i) => BigInt((i * 7919 + step * 31) % 50000)), [batch, length]),
    logits_start: new ort.Tensor('int64', BigInt64Array.of(BigInt(length - 1)), [1]),
  };
  for (const [name, dims] of shapesA) {
    const n = batch * dims.reduce((x, y) => x * y, 1);
    f[name] = new ort.Tensor('float32', new Float32Array(n).fill(0.1), [batch, ...dims]);
  }
  return f;
}

console.log(`A: ${positionals[0]}\nB: ${positionals[1]}\n${args.threads} intra-op threads, spin ${spinUs} µs; ${steps} alternating decode steps each\n`);
console.log('| batch | A, median ms a step | B, median ms a step | B ÷ A |\n|---|---|---|---|');
/** Median ms of a run of `feedsAt(i)` on A and on B, alternating which goes first. */
async function alternate(runs: number, warmups: number, feedsAt: (i: number) => Record<string, ort.Tensor>): Promise<[number, number]> {
  const times = { a: [] as number[], b: [] as number[] };
  for (let i = 0; i < warmups; i++) for (const s of [a!, b!]) await s.run(feedsAt(i));
  for (let i = 0; i < runs; i++) {
    const f = feedsAt(i);
    const order: ['a' | 'b', ort.InferenceSession][] = i % 2 ? [['a', a!], ['b', b!]] : [['b', b!], ['a', a!]];
    for (const [side, s] of order) {
      const started = performance.now();
      await s.run(f);
      times[side].push(performance.now() - started);
    }
  }
  return [median(times.a), median(times.b)];
}

for (const batch of [1, 8]) {
  const [ma, mb] = await alternate(steps, 10, (i) => feeds(batch, i));
  console.log(`| ${batch} | ${ma.toFixed(2)} | ${mb.toFixed(2)} | ${(mb / ma).toFixed(3)} |`);
}
const L = Number(args.prefill);
if (L > 1) {
  const [ma, mb] = await alternate(Number(args['prefill-runs']), 2, (i) => feeds(1, i, L));
  console.log(`\n| prefill L = ${L} | A, median ms | B, median ms | B ÷ A |\n|---|---|---|---|`);
  console.log(`| tokens/s A ${((L * 1000) / ma).toFixed(0)}, B ${((L * 1000) / mb).toFixed(0)} | ${ma.toFixed(1)} | ${mb.toFixed(1)} | ${(mb / ma).toFixed(3)} |`);
}
await Promise.all([a!.release(), b!.release()]);

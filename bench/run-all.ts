// `npm run bench`: every benchmark, one after another, each in its own process so one's
// memory and threads do not disturb the next. Each prints its own figures; each is also
// runnable alone (npx tsx bench/<name>.ts). GPU benchmarks run only where a GPU is
// (npm run bench:gpu).
import { spawnSync } from 'node:child_process';

const BENCHMARKS = [
  'bench/memory-bandwidth.ts', // the read bandwidth the engine's ratios are against
  'bench/engine-cpu.ts', // the ORT engine alone, per weights dtype
  'bench/packed-weights-sharing.ts', // engine processes on one host sharing the packed-weights file
  'bench/quantized-accuracy.ts', // what int8 / int4 weights cost in logits and loss
  'bench/vs-llama-cpp.ts', // the same weights in llama.cpp (installs node-llama-cpp into .cache/bench once)
  'bench/ort-scan-formulations.ts', // why the prefill scan is formulated as it is
  'bench/ort-fused-ops.ts', // ORT's fused Mamba-family kernels against the standard ops the graph uses
  'bench/ort-matmul-rates.ts', // how fast ORT's matmul kernels read weights, apart from the rest of a step
  'bench/native-kernels.ts', // our own kernels' decode step and prefill against the ORT engine's graph (builds with g++; skips without)
  'bench/serving-overhead.ts',
  'bench/serving-throughput.ts',
  'bench/ort-spinning.ts', // ORT's intra-op spinning on and off, end to end
  'bench/native-serving.ts', // f32 / int8 / int4 served on the native kernels and on the graph, end to end
  'bench/resume-cost.ts',
  'bench/prefix-cache.ts', // stateless chats: a 4k-token history cold, reused, after a restart
  'bench/cartridges.ts', // N sessions from one 32k-token cartridge vs each re-reading it
];

let failed = 0;
for (const script of BENCHMARKS) {
  console.log(`\n=== ${script} ===`);
  const run = spawnSync(process.execPath, ['--import', 'tsx', script], { stdio: 'inherit' });
  if (run.status !== 0) {
    failed++;
    console.log(`!!! ${script} failed (${run.signal ?? run.status})`);
  }
}
process.exit(failed === 0 ? 0 : 1);

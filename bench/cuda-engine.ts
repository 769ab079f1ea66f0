// CUDA engine benchmark on a mamba-130m-shaped random model (GPU machine only; see
// docs/cuda-engine.md and tools/gpu/runbook.sh):
//   - decode step at batch 1, 8, 64: device ms per step (CUDA-graph replay, timed with events),
//     end-to-end ms through engine.decode (logits to the host) and engine.decodeGreedy (argmax
//     on the device), tokens/s, and the ratio to the bound set by reading the weights once per
//     step (plus each session's state in and out) at the measured copy bandwidth;
//   - prefill tokens/s at L = 2048 (one session, last-position logits).
//
//   npm run bench:gpu -- [--dtype BF16|F16|F32] [--copy-gbs N] [--steps N] [--json FILE]
//
// --copy-gbs: device-to-device copy bandwidth (bytes read + written) from scan_bench's first
// lines; without it the bound is not printed as a ratio. Not run yet: no GPU was lent to the
// session that wrote it.
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cudaAvailability } from '../worker/engine/cuda/cuda-addon.ts';
import { CudaEngine } from '../worker/engine/cuda/cuda-engine.ts';
import type { NativeDType } from '../worker/engine/cuda/cuda-addon.ts';
import type { StateHandle } from '../worker/engine/engine.ts';
import { openCheckpoint } from '../worker/model/checkpoint.ts';
import { writeRandomCheckpoint } from '../worker/model/testing/random-checkpoint.ts';

const { values: args } = parseArgs({
  options: {
    dtype: { type: 'string', default: 'BF16' },
    'copy-gbs': { type: 'string' },
    steps: { type: 'string', default: '50' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
    json: { type: 'string' },
  },
});
const dtype = args.dtype as NativeDType;
if (!['BF16', 'F16', 'F32'].includes(dtype)) throw new Error(`--dtype must be BF16, F16 or F32`);
const steps = Number(args.steps);
const copyGbs = args['copy-gbs'] !== undefined ? Number(args['copy-gbs']) : undefined;

const availability = cudaAvailability();
if (!availability.ok) {
  console.error(`bench:gpu: the cuda engine cannot run here: ${availability.reason}`);
  process.exit(1);
}

const modelDir = join(args['cache-dir'], 'mamba-130m-random');
if (!existsSync(join(modelDir, 'model.safetensors'))) {
  console.log(`generating a mamba-130m-shaped random checkpoint in ${modelDir} (once)…`);
  await writeRandomCheckpoint(modelDir, { hiddenSize: 768, numLayers: 24, vocabSize: 50280, stateSize: 16, convKernel: 4, expand: 2, seed: 130 });
}
const ckpt = await openCheckpoint(modelDir);
const loadStarted = performance.now();
const engine = await CudaEngine.load(ckpt, { dtype, maxBatch: 64, maxSlots: 80 });
const loadMs = performance.now() - loadStarted;
const info = engine.info();
const V = engine.model.vocabRows;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
async function wallMs(fn: () => Promise<unknown>, reps: number): Promise<number> {
  for (let i = 0; i < 3; i++) await fn();
  const ms: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

interface DecodeRow {
  batch: number;
  deviceMs: number;
  logitsMs: number;
  greedyMs: number;
  boundMs: number | undefined;
}
const decodeRows: DecodeRow[] = [];
for (const batch of [1, 8, 64]) {
  const states: StateHandle[] = [];
  for (let i = 0; i < batch; i++) {
    const s = await engine.newState();
    await engine.prefill(s, Int32Array.from({ length: 8 }, (_, k) => (i * 131 + k * 17) % V));
    states.push(s);
  }
  const stepsOf = (k: number) => states.map((state, i) => ({ state, token: (i * 7 + k) % V }));
  const deviceMs = await engine.timeDecode(stepsOf(0), steps);
  let k = 0;
  const logitsMs = await wallMs(() => engine.decode(stepsOf(++k)), Math.max(10, Math.floor(steps / 2)));
  const greedyMs = await wallMs(() => engine.decodeGreedy(stepsOf(++k)), Math.max(10, Math.floor(steps / 2)));
  // Fewest bytes a step must move: every weight once, each session's state read and written.
  const bytes = info.weightBytes + batch * 2 * engine.model.stateBytes;
  // The copy figure counts bytes read plus written: the memory's total rate, which a read-mostly
  // step can use whole.
  const boundMs = copyGbs !== undefined ? bytes / copyGbs / 1e6 : undefined;
  decodeRows.push({ batch, deviceMs, logitsMs, greedyMs, boundMs });
  for (const s of states) engine.freeState(s);
}

const L = 2048;
const prompt = Int32Array.from({ length: L }, (_, i) => (i * 7919) % V);
const prefillMs = await wallMs(async () => {
  const s = await engine.newState();
  await engine.prefill(s, prompt);
  engine.freeState(s);
}, 5);
await engine.close();

const fmt = (v: number | undefined, d = 3) => (v === undefined ? '-' : v.toFixed(d));
console.log(`\nGPU: ${info.deviceName} (sm_${info.computeCapability.replace('.', '')}), ${info.gemmBackend}`);
console.log(`model: mamba-130m-shaped random, ${dtype} weights/activations, fp32 state; weights on device ${(info.weightBytes / 2 ** 20).toFixed(1)} MiB; load ${loadMs.toFixed(0)} ms`);
console.log(`copy bandwidth: ${copyGbs !== undefined ? `${copyGbs} GB/s (bytes read + written)` : 'not given (--copy-gbs)'}`);
console.log(`command: npm run bench:gpu -- --dtype ${dtype}${copyGbs !== undefined ? ` --copy-gbs ${copyGbs}` : ''}\n`);
console.log('batch  device ms/step  tok/s (device)  bound ms  device/bound  e2e logits ms  e2e greedy ms  tok/s (greedy)');
for (const r of decodeRows) {
  console.log(
    `${String(r.batch).padStart(5)}  ${fmt(r.deviceMs).padStart(14)}  ${(r.batch / (r.deviceMs / 1000)).toFixed(0).padStart(14)}  ${fmt(r.boundMs).padStart(8)}  ${
      r.boundMs ? (r.deviceMs / r.boundMs).toFixed(2).padStart(11) + 'x' : '-'.padStart(12)
    }  ${fmt(r.logitsMs).padStart(13)}  ${fmt(r.greedyMs).padStart(13)}  ${(r.batch / (r.greedyMs / 1000)).toFixed(0).padStart(14)}`,
  );
}
console.log(`\nprefill L=${L}: ${prefillMs.toFixed(2)} ms, ${(L / (prefillMs / 1000)).toFixed(0)} tokens/s (one session, last-position logits)`);

if (args.json) {
  await writeFile(args.json, JSON.stringify({ device: info.deviceName, gemm: info.gemmBackend, dtype, copyGbs, weightBytes: info.weightBytes, decode: decodeRows, prefill: { L, ms: prefillMs } }, null, 2));
}

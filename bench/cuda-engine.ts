// CUDA engine benchmark on mamba-130m-shaped random models (GPU machine only; see
// docs/cuda-engine.md and tools/gpu/runbook.sh), the pure model and attention hybrids in one run:
//   - pure: hidden 768, 24 layers, d_state 16, vocab 50280;
//   - hybrid-w512 / hybrid-w2048: the same with layers 7 and 15 (2 of 24) as sliding-window
//     attention, 12 query heads of head_dim 64 over 4 key/value heads (grouped-query: the
//     rings, i.e. the state, are a third of what 12 KV heads would cost), W = 512 and 2048;
// and for each:
//   - state bytes per session (what a checkpoint of it costs; fp32);
//   - decode step at batch 1, 8, 64: device ms per step (CUDA-graph replay, timed with events),
//     end-to-end ms through engine.decode (logits to the host) and engine.decodeGreedy (argmax
//     on the device), tokens/s, and the ratio to the bound set by moving the fewest bytes a
//     step must (every weight once, each session's Mamba state read and written, its rings
//     read) at the measured copy bandwidth. Sessions sit at position 100,000, so every
//     attention layer reads a full window;
//   - prefill tokens/s at L = 2048 (one session, last-position logits): from a fresh session,
//     and for hybrids also at position 100,000 (every query then sees a full window).
//
//   npm run bench:gpu -- [--dtype BF16|F16|F32] [--models pure,hybrid-w512,hybrid-w2048]
//                        [--copy-gbs N] [--steps N] [--json FILE]
//
// --copy-gbs: device-to-device copy bandwidth (bytes read + written) from scan_bench's first
// lines; without it the bound is not printed as a ratio. Not run yet: no GPU was lent to the
// sessions that wrote it.
import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { cudaAvailability } from '../worker/engine/cuda/cuda-addon.ts';
import { CudaEngine } from '../worker/engine/cuda/cuda-engine.ts';
import type { NativeDType } from '../worker/engine/cuda/cuda-addon.ts';
import type { StateHandle } from '../worker/engine/engine.ts';
import { exportHostState, stateSizes, zeroHostState } from '../worker/engine/host-state.ts';
import { openCheckpoint } from '../worker/model/checkpoint.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../worker/model/testing/random-checkpoint.ts';
import { median } from './stats.ts';

const MODELS = ['pure', 'hybrid-w512', 'hybrid-w2048'] as const;
type ModelName = (typeof MODELS)[number];

const { values: args } = parseArgs({
  options: {
    dtype: { type: 'string', default: 'BF16' },
    models: { type: 'string', default: MODELS.join(',') },
    'copy-gbs': { type: 'string' },
    steps: { type: 'string', default: '50' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
    json: { type: 'string' },
  },
});
const dtype = args.dtype as NativeDType;
if (!['BF16', 'F16', 'F32'].includes(dtype)) throw new Error(`--dtype must be BF16, F16 or F32`);
const models = args.models.split(',').map((m) => m.trim()) as ModelName[];
for (const m of models) if (!MODELS.includes(m)) throw new Error(`--models: unknown model "${m}" (known: ${MODELS.join(', ')})`);
const steps = Number(args.steps);
const copyGbs = args['copy-gbs'] !== undefined ? Number(args['copy-gbs']) : undefined;

const availability = cudaAvailability();
if (!availability.ok) {
  console.error(`bench:gpu: the cuda engine cannot run here: ${availability.reason}`);
  process.exit(1);
}

const BASE: RandomCheckpointOptions = { hiddenSize: 768, numLayers: 24, vocabSize: 50280, stateSize: 16, convKernel: 4, expand: 2, seed: 130 };
const HYBRID = { attentionLayers: [7, 15], heads: 12, kvHeads: 4, headDim: 64 } as const;
/** Sessions are put this far in before decode timing: every ring is full (W <= 2048). */
const FAR = 100_000;

/** The model's directory, generated once. The two hybrids share weights: only config.json differs. */
async function modelDir(name: ModelName): Promise<string> {
  const cache = args['cache-dir'];
  if (name === 'pure') {
    const dir = join(cache, 'mamba-130m-random');
    if (!existsSync(join(dir, 'model.safetensors'))) {
      console.log(`generating a mamba-130m-shaped random checkpoint in ${dir} (once)…`);
      await writeRandomCheckpoint(dir, BASE);
    }
    return dir;
  }
  const base = join(cache, 'mamba-130m-hybrid-random');
  if (!existsSync(join(base, 'model.safetensors'))) {
    console.log(`generating a mamba-130m-shaped hybrid random checkpoint in ${base} (once)…`);
    await writeRandomCheckpoint(base, { ...BASE, hybrid: { ...HYBRID, window: 512 } });
  }
  const W = name === 'hybrid-w512' ? 512 : 2048;
  const dir = join(cache, `mamba-130m-hybrid-w${W}`);
  if (!existsSync(join(dir, 'model.safetensors'))) {
    await mkdir(dir, { recursive: true });
    const config = JSON.parse(await readFile(join(base, 'config.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...config, sliding_window: W }, null, 2));
    await symlink(resolve(base, 'model.safetensors'), join(dir, 'model.safetensors'));
  }
  return dir;
}

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
interface ModelResult {
  model: ModelName;
  device: string;
  gemm: string;
  window: number | null;
  weightBytes: number;
  stateBytes: number;
  loadMs: number;
  decode: DecodeRow[];
  prefill: { L: number; freshMs: number; farMs: number | undefined };
}

/** A session at position `far` (a zero state that counted that many tokens), then 8 real tokens. */
async function farSession(engine: CudaEngine, far: number, seed: number): Promise<StateHandle> {
  const zero = zeroHostState('cuda', engine.model);
  zero.tokensAbsorbed = far;
  const { state } = await engine.importState(exportHostState(engine.model, zero, { parentVersion: null, transcriptHash: null }));
  const V = engine.model.vocabRows;
  await engine.prefill(state, Int32Array.from({ length: 8 }, (_, k) => (seed * 131 + k * 17) % V));
  return state;
}

async function benchModel(name: ModelName): Promise<ModelResult> {
  const ckpt = await openCheckpoint(await modelDir(name));
  const hybrid = ckpt.config.hybrid;
  const loadStarted = performance.now();
  const engine = await CudaEngine.load(ckpt, { dtype, maxBatch: 64, maxSlots: 80 });
  const loadMs = performance.now() - loadStarted;
  const info = engine.info();
  const V = engine.model.vocabRows;
  const sizes = stateSizes(engine.model.layout);
  // A step reads and writes each Mamba state and reads each ring whole (writing one row).
  const stepStateBytes = 4 * (2 * (sizes.conv + sizes.ssm) + 2 * sizes.attn);
  const decode: DecodeRow[] = [];
  for (const batch of [1, 8, 64]) {
    const states: StateHandle[] = [];
    for (let i = 0; i < batch; i++) states.push(await farSession(engine, FAR, i));
    const stepsOf = (k: number) => states.map((state, i) => ({ state, token: (i * 7 + k) % V }));
    const deviceMs = await engine.timeDecode(stepsOf(0), steps);
    let k = 0;
    const logitsMs = await wallMs(() => engine.decode(stepsOf(++k)), Math.max(10, Math.floor(steps / 2)));
    const greedyMs = await wallMs(() => engine.decodeGreedy(stepsOf(++k)), Math.max(10, Math.floor(steps / 2)));
    const bytes = info.weightBytes + batch * stepStateBytes;
    // The copy figure counts bytes read plus written: the memory's total rate, which a read-mostly
    // step can use whole.
    const boundMs = copyGbs !== undefined ? bytes / copyGbs / 1e6 : undefined;
    decode.push({ batch, deviceMs, logitsMs, greedyMs, boundMs });
    for (const s of states) engine.freeState(s);
  }
  const L = 2048;
  const prompt = Int32Array.from({ length: L }, (_, i) => (i * 7919) % V);
  const freshMs = await wallMs(async () => {
    const s = await engine.newState();
    await engine.prefill(s, prompt);
    engine.freeState(s);
  }, 5);
  const farMs = hybrid
    ? await wallMs(async () => {
        const s = await farSession(engine, FAR, 1);
        await engine.prefill(s, prompt);
        engine.freeState(s);
      }, 5)
    : undefined;
  await engine.close();
  return {
    model: name,
    device: `${info.deviceName} (sm_${info.computeCapability.replace('.', '')})`,
    gemm: info.gemmBackend,
    window: hybrid?.window ?? null,
    weightBytes: info.weightBytes,
    stateBytes: engine.model.stateBytes,
    loadMs,
    decode,
    prefill: { L, freshMs, farMs },
  };
}

const results: ModelResult[] = [];
for (const name of models) results.push(await benchModel(name));
const { device, gemm } = results[0]!;

const fmt = (v: number | undefined, d = 3) => (v === undefined ? '-' : v.toFixed(d));
const mib = (b: number) => (b / 2 ** 20).toFixed(2);
console.log(`\nGPU: ${device}, ${gemm}`);
console.log(`models: mamba-130m-shaped random; hybrids: layers ${HYBRID.attentionLayers.join(', ')} of 24 attention, ${HYBRID.heads} heads x ${HYBRID.headDim}, ${HYBRID.kvHeads} KV heads`);
console.log(`${dtype} weights/activations, fp32 state; decode sessions at position ${FAR} (full windows)`);
console.log(`copy bandwidth: ${copyGbs !== undefined ? `${copyGbs} GB/s (bytes read + written)` : 'not given (--copy-gbs)'}`);
console.log(`command: npm run bench:gpu -- --dtype ${dtype} --models ${models.join(',')}${copyGbs !== undefined ? ` --copy-gbs ${copyGbs}` : ''}\n`);
console.log('model          state MiB  weights MiB  batch  device ms/step  tok/s (device)  bound ms  device/bound  e2e logits ms  e2e greedy ms  tok/s (greedy)');
for (const r of results) {
  for (const d of r.decode) {
    console.log(
      `${r.model.padEnd(13)}  ${mib(r.stateBytes).padStart(9)}  ${mib(r.weightBytes).padStart(11)}  ${String(d.batch).padStart(5)}  ${fmt(d.deviceMs).padStart(14)}  ${(
        d.batch /
        (d.deviceMs / 1000)
      )
        .toFixed(0)
        .padStart(14)}  ${fmt(d.boundMs).padStart(8)}  ${d.boundMs ? (d.deviceMs / d.boundMs).toFixed(2).padStart(11) + 'x' : '-'.padStart(12)}  ${fmt(d.logitsMs).padStart(13)}  ${fmt(
        d.greedyMs,
      ).padStart(13)}  ${(d.batch / (d.greedyMs / 1000)).toFixed(0).padStart(14)}`,
    );
  }
}
console.log('\nprefill L=2048 (one session, last-position logits)');
for (const r of results) {
  const far = r.prefill.farMs !== undefined ? `; at position ${FAR}: ${r.prefill.farMs.toFixed(2)} ms, ${(r.prefill.L / (r.prefill.farMs / 1000)).toFixed(0)} tokens/s` : '';
  console.log(`${r.model.padEnd(13)}  fresh: ${r.prefill.freshMs.toFixed(2)} ms, ${(r.prefill.L / (r.prefill.freshMs / 1000)).toFixed(0)} tokens/s${far}`);
}

if (args.json) {
  await writeFile(args.json, JSON.stringify({ device, gemm, dtype, copyGbs, hybrid: HYBRID, decodePosition: FAR, results }, null, 2));
}

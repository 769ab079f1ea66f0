// The native kernels alone (worker/native-cpu/src/mamba_cpu.h, which the ORT engine runs pure
// Mamba builds on: ORT_NATIVE_KERNELS), apart from Node and the engine:
// bench/native-kernels/kernels.cpp runs a whole mamba-130m-shaped decode step (24 Mamba-1
// layers and the LM head), and a prefill, on them over random weights of the int8, int4 and
// f32 builds' shapes. This script builds it with the machine's g++, checks it (the step against the
// program's float64 scalar reference, the prefill against as many steps), and times it against
// the ORT engine's graph (ORT_NATIVE_KERNELS=off) in alternating runs, decode steps each against
// the read bandwidth measured between them by the project's WebAssembly probe and by the
// program's own vector loads (512-bit; 256-bit in the AVX2 build). (bench/engine-cpu.ts times the engine on the kernels: its
// int8-native / int4-native variants.)
//
//   npx tsx bench/native-kernels.ts [--rounds 3] [--steps 100] [--threads 2] [--isa avx512|avx2] [--dtypes int8,int4,f32]
//
// It needs Linux on x86-64 with AVX-512 VNNI (--isa avx2: AVX2 and FMA) and g++ (said and skipped otherwise). The
// executable is built with -march=native into .cache/bench/native-kernels/ (once per source).
// The ORT side uses bench/engine-cpu.ts's random checkpoint and graph builds (.cache/bench/),
// made here when missing.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createEngine } from '../worker/engine/create-engine.ts';
import type { Engine } from '../worker/engine/engine.ts';
import { ensureGraphBuild } from '../worker/engine/ort/graph-cache.ts';
import { openCheckpoint } from '../worker/model/checkpoint.ts';
import { writeRandomCheckpoint } from '../worker/model/testing/random-checkpoint.ts';
import { gppMissing, NATIVE_CPU_WARNING_FLAGS } from '../worker/native-cpu/build.ts';
import { NATIVE_CPU_BUILDS, nativeCpuBuildsRunnable, nativeCpuPlatformUnsupported } from '../worker/native-cpu/support.ts';
import { medianDecodeStepMs, prefillTokensPerSecond } from './engine-timing.ts';
import { measureReadBandwidth } from './memory-bandwidth.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    steps: { type: 'string', default: '100' },
    threads: { type: 'string', default: String(Math.min(2, availableParallelism())) },
    /** avx512 (the default) or avx2: which of the engine's kernel builds to time. */
    isa: { type: 'string', default: 'avx512' },
    dtypes: { type: 'string', default: 'int8,int4,f32' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
  },
});
if (args.isa !== 'avx512' && args.isa !== 'avx2') throw new Error(`--isa is avx512 or avx2, not ${args.isa}`);
const rounds = Number(args.rounds);
const steps = Number(args.steps);
const threads = Number(args.threads);
const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, 'native-kernels', 'kernels.cpp');
const kernels = join(here, '..', 'worker', 'native-cpu', 'src', 'mamba_cpu.h'); // the engine's kernels it includes

type Dtype = 'int8' | 'int4' | 'f32';
const DTYPES = args.dtypes.split(',') as Dtype[];
for (const d of DTYPES) if (!['int8', 'int4', 'f32'].includes(d)) throw new Error(`--dtypes takes int8, int4 and f32, not ${d}`);
const BATCHES = [1, 8];
/** The prompt each prefill round absorbs (from a fresh state, logits of the last token). */
const PREFILL_TOKENS = 512;


/** Why the --isa build cannot run here (support.ts's CPU checks, then g++), or undefined. */
function unsupportedReason(): string | undefined {
  const platform = nativeCpuPlatformUnsupported();
  if (platform) return platform;
  if (!nativeCpuBuildsRunnable().some((b) => b.isa === args.isa)) {
    return `this CPU lacks some of ${NATIVE_CPU_BUILDS.find((b) => b.isa === args.isa)!.cpuFlags.join(', ')} (the ${args.isa} build's instructions)`;
  }
  return gppMissing();
}

/** The executable for this source, built once (-march=native: it runs where it was built). */
function buildNative(): string {
  const hash = createHash('sha256').update(readFileSync(source)).update(readFileSync(kernels)).digest('hex').slice(0, 12);
  const dir = join(args['cache-dir'], 'native-kernels');
  const exe = join(dir, `kernels-${args.isa}-${hash}`);
  if (existsSync(exe)) return exe;
  mkdirSync(dir, { recursive: true });
  console.log(`building ${exe} with g++ (once)…`);
  const tmp = `${exe}.tmp-${process.pid}`;
  const isaFlags = args.isa === 'avx2' ? ['-mavx2', '-mfma', '-mtune=native', '-DMAMBA_CPU_AVX2'] : ['-march=native'];
  const flags = ['-O3', ...isaFlags, '-fopenmp', '-std=c++17', ...NATIVE_CPU_WARNING_FLAGS];
  execFileSync('g++', [...flags, '-o', tmp, source], { stdio: 'inherit' });
  renameSync(tmp, exe);
  return exe;
}

// The team spins between the step's phases and between steps, as ORT's does while it runs.
const nativeEnv = { ...process.env, OMP_WAIT_POLICY: 'active', OMP_NUM_THREADS: String(threads) };

function runNative(exe: string, argv: string[]): Record<string, number> {
  const out = execFileSync(exe, argv, { env: nativeEnv, encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()!) as Record<string, number>;
}

/**
 * The kernels against the float64 reference; throws when they disagree. The matmuls multiply
 * exactly what the reference multiplies (the same int8 activation codes), so they differ only
 * by float32 rounding. A step's float32 arithmetic now and then moves an activation across a
 * rounding boundary of the next quantization, a difference of one code, and through 24 random
 * layers those compound to the size of what quantizing the activations does at all; through 2
 * layers they stay rare, and any error in the conv, the scan, the norms or the gating would
 * show at the size of the logits. f32 has no codes to round: its step is held to 1e-6 of the
 * largest logit.
 */
function checkNative(exe: string): string[] {
  const lines: string[] = [];
  for (const dtype of DTYPES) {
    for (const [layers, batch, tolerance] of [
      [2, 1, 0.2],
      [2, 3, 0.2],
      [24, 3, 1.5],
    ] as const) {
      const r = runNative(exe, ['--dtype', dtype, '--batch', String(batch), '--layers', String(layers), '--check']);
      // f32 quantizes nothing: its step differs from float64 by float32 rounding alone.
      const stepOk = dtype === 'f32' ? r.stepLogitError! <= 1e-6 * r.maxLogit! : r.stepLogitError! <= tolerance * r.activationQuantEffect!;
      const line =
        `${dtype}, ${layers} layers, batch ${batch}: matmuls ${r.matmulRelError!.toExponential(1)} of the largest output; a step's logits ${r.stepLogitError!.toExponential(1)} ` +
        `(largest ${r.maxLogit!.toFixed(0)}), ${dtype === 'f32' ? 'within 1e-6 of it' : `against ${r.activationQuantEffect!.toFixed(3)} from quantizing the activations`}`;
      lines.push(line);
      if (!(r.matmulRelError! < 1e-5) || !stepOk) {
        throw new Error(`native kernels disagree with the float64 reference: ${line}`);
      }
    }
    // Prefill is the step's arithmetic token for token (mamba_cpu.h): over 300 tokens (chunks of
    // 128 and a rest) it must leave the logits and states of 300 steps, to float32 rounding.
    const p = runNative(exe, ['--dtype', dtype, '--prefill', '300', '--check']);
    const line = `${dtype}, prefill of 300 tokens against 300 steps: logits ${p.logitsRelError!.toExponential(1)}, conv states ${p.convRelError!.toExponential(1)}, ssm states ${p.ssmRelError!.toExponential(1)} (relative)`;
    lines.push(line);
    if (!(Math.max(p.logitsRelError!, p.convRelError!, p.ssmRelError!) < 1e-6)) throw new Error(`native prefill disagrees with native steps: ${line}`);
  }
  return lines;
}

async function ortEngine(dtype: Dtype): Promise<{ engine: Engine; weightBytes: number }> {
  const modelDir = join(args['cache-dir'], 'mamba-130m-random');
  if (!existsSync(join(modelDir, 'model.safetensors'))) {
    console.log(`generating a mamba-130m-shaped random checkpoint in ${modelDir} (once)…`);
    await writeRandomCheckpoint(modelDir, { hiddenSize: 768, numLayers: 24, vocabSize: 50280, stateSize: 16, convKernel: 4, expand: 2, seed: 130 });
  }
  const graphsDir = join(args['cache-dir'], 'graphs');
  const build = await ensureGraphBuild(await openCheckpoint(modelDir), graphsDir, { dtype });
  const { engine } = await createEngine({ modelDir, engine: 'ort', cacheDir: graphsDir, intraOpThreads: threads, weightsDtype: dtype, nativeKernels: 'off' });
  return { engine, weightBytes: statSync(join(dirname(build.modelPath), 'weights.bin')).size };
}


const reason = unsupportedReason();
if (reason) {
  console.log(`bench/native-kernels.ts: skipped: ${reason}.`);
  process.exit(0);
}
const exe = buildNative();
console.log('check against the float64 reference (bench/native-kernels/kernels.cpp --check):');
for (const line of checkNative(exe)) console.log(`  ${line}`);

const engines = new Map<Dtype, Engine>();
const ortBytes = new Map<Dtype, number>();
for (const dtype of DTYPES) {
  const { engine, weightBytes } = await ortEngine(dtype);
  engines.set(dtype, engine);
  ortBytes.set(dtype, weightBytes);
}

const key = (engine: 'ort' | 'native', dtype: Dtype, batch: number) => `${engine} ${dtype} b${batch}`;
/** Decode step ms and prefill tok/s, by what was measured, one figure a round. */
const measured = new Map<string, number[]>();
const record = (k: string, v: number) => measured.set(k, [...(measured.get(k) ?? []), v]);
const nativeBytes = new Map<Dtype, number>();
const nativePeak = new Map<Dtype, number>(); // the native process's peak RSS, its largest over the runs
const bandwidth = { vector: [] as number[], native: [] as number[] };
for (let round = 0; round < rounds; round++) {
  bandwidth.vector.push((await measureReadBandwidth(threads)).bytesPerSecond);
  bandwidth.native.push(runNative(exe, ['--bandwidth', '--threads', String(threads)]).bytesPerSecond!);
  for (const dtype of DTYPES) {
    for (const batch of BATCHES) {
      // Alternate which goes first: a neighbour's burst then falls on both over the rounds.
      const order = round % 2 === 0 ? (['ort', 'native'] as const) : (['native', 'ort'] as const);
      for (const which of order) {
        if (which === 'ort') record(key('ort', dtype, batch), await medianDecodeStepMs(engines.get(dtype)!, batch, steps));
        else {
          const r = runNative(exe, ['--dtype', dtype, '--batch', String(batch), '--steps', String(steps), '--threads', String(threads)]);
          nativeBytes.set(dtype, r.weightBytes!);
          nativePeak.set(dtype, Math.max(nativePeak.get(dtype) ?? 0, r.peakRssBytes!));
          record(key('native', dtype, batch), r.medianMs!);
        }
      }
    }
    const order = round % 2 === 0 ? (['ort', 'native'] as const) : (['native', 'ort'] as const);
    for (const which of order) {
      if (which === 'ort') record(`ort ${dtype} prefill`, await prefillTokensPerSecond(engines.get(dtype)!, PREFILL_TOKENS, 3));
      else record(`native ${dtype} prefill`, runNative(exe, ['--dtype', dtype, '--prefill', String(PREFILL_TOKENS), '--steps', '3', '--threads', String(threads)]).medianTokPerS!);
    }
  }
  console.log(`round ${round + 1}/${rounds} done`);
}
for (const engine of engines.values()) await engine.close();

const bw = { vector: median(bandwidth.vector), native: median(bandwidth.native) };
/** The width of the native program's probe loads: its vectors. */
const loadBits = args.isa === 'avx2' ? 256 : 512;
const gbs = (b: number) => `${(b / 1e9).toFixed(1)} GB/s`;
console.log(
  `\nmamba-130m-shaped decode, native kernels built for ${args.isa}, ${threads} thread(s), ${rounds} alternating rounds of ${steps} steps (medians). Read bandwidth, median of the rounds: ` +
    `${gbs(bw.vector)} (bench/memory-bandwidth.ts, WebAssembly 128-bit loads), ${gbs(bw.native)} (the native program's ${loadBits}-bit loads)\n`,
);
console.log(`| decode step | ORT engine | native kernels | ORT ÷ native (time) | batch 1, weight bytes ÷ time ÷ bandwidth (WebAssembly probe / ${loadBits}-bit probe): ORT, native |`);
console.log('|---|---|---|---|---|');
const json: Record<string, unknown>[] = [];
const share = (bytes: number, stepMs: number) => {
  const rate = bytes / (stepMs / 1000);
  return { wasm: rate / bw.vector, native: rate / bw.native, text: `${((100 * rate) / bw.vector).toFixed(0)} / ${((100 * rate) / bw.native).toFixed(0)} %` };
};
for (const dtype of DTYPES) {
  for (const batch of BATCHES) {
    const ort = median(measured.get(key('ort', dtype, batch))!);
    const native = median(measured.get(key('native', dtype, batch))!);
    const ortShare = share(ortBytes.get(dtype)!, ort);
    const nativeShare = share(nativeBytes.get(dtype)!, native);
    const shares = batch === 1 ? `${ortShare.text}, ${nativeShare.text}` : '—';
    const perStep = (t: number) => `${t.toFixed(2)} ms (${((1000 * batch) / t).toFixed(0)} tok/s)`;
    console.log(`| ${dtype}, batch ${batch} | ${perStep(ort)} | ${perStep(native)} | ${(ort / native).toFixed(2)} | ${shares} |`);
    json.push({
      dtype,
      batch,
      ort_ms: ort,
      native_ms: native,
      ort_weight_bytes: ortBytes.get(dtype),
      native_weight_bytes: nativeBytes.get(dtype),
      ...(batch === 1 ? { ort_bandwidth_share_wasm: ortShare.wasm, ort_bandwidth_share_512: ortShare.native, native_bandwidth_share_wasm: nativeShare.wasm, native_bandwidth_share_512: nativeShare.native } : {}),
    });
  }
}
console.log(`\n| prefill of ${PREFILL_TOKENS} tokens | ORT engine | native kernels | native ÷ ORT |\n|---|---|---|---|`);
for (const dtype of DTYPES) {
  const ort = median(measured.get(`ort ${dtype} prefill`)!);
  const native = median(measured.get(`native ${dtype} prefill`)!);
  console.log(`| ${dtype} | ${ort.toFixed(0)} tok/s | ${native.toFixed(0)} tok/s | ${(native / ort).toFixed(2)} |`);
  json.push({ dtype, prefill_tokens: PREFILL_TOKENS, ort_prefill_tok_s: ort, native_prefill_tok_s: native });
}
for (const dtype of DTYPES) {
  const weights = nativeBytes.get(dtype)!;
  console.log(`native ${dtype}: peak RSS ${(nativePeak.get(dtype)! / 1e6).toFixed(0)} MB for ${(weights / 1e6).toFixed(0)} MB of weights (goal: 1.2 × weights + 200 MB = ${((1.2 * weights + 200e6) / 1e6).toFixed(0)} MB)`);
}
console.log(JSON.stringify({ bench: 'native-kernels', threads, rounds, steps, bandwidth_wasm_gbs: bw.vector / 1e9, bandwidth_512_gbs: bw.native / 1e9, native_peak_rss_bytes: Object.fromEntries(nativePeak), results: json }));

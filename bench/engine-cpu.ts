// CPU engine benchmark (ONNX Runtime engine) on a mamba-130m-shaped random model, per weights
// dtype (f32, int8, int4): decode tokens/s at batch 1 and 8, prefill tokens/s at L = 512 and
// 4096, memory (resident after load, split into anonymous and file-backed pages, and the
// process's peak), and decode's weight bytes read per second as a ratio to the measured read
// bandwidth (bench/memory-bandwidth.ts, vector loads on all threads).
//
//   npm run bench:engine            (or: npx tsx bench/engine-cpu.ts [--dtypes f32,int8,int4] [--threads N] [--steps N])
//
// f32 is served with its packed weights mapped from a file made once (ORT_PACKED_WEIGHTS_FILE,
// worker/engine/ort/packed-weights.ts); `f32-pack-at-load` is f32 with that file off (ONNX
// Runtime packs into the process's memory at every load), `f32-unpacked` f32 with
// ORT_PREPACK_WEIGHTS=false (the weights held once, as the mapped build file, unpacked).
// "Resident at the end" shows what each keeps, the peak what loading cost.
//
// f32, int8 and int4 run on ONNX Runtime's graph (ORT_NATIVE_KERNELS=off); f32-native /
// int8-native / int4-native on the native kernels, prefill and decode (ORT_NATIVE_KERNELS=on;
// `npm run build:cpu`), with no ONNX Runtime session in the process.
//
// Each variant runs in a process of its own, so its peak RSS is its own. The random checkpoint
// (~520 MB) is generated once into .cache/bench/.
import { fork } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createEngine } from '../worker/engine/create-engine.ts';
import { ensureGraphBuild } from '../worker/engine/ort/graph-cache.ts';
import { ensurePackedModel } from '../worker/engine/ort/packed-weights.ts';
import type { WeightsDtype } from '../worker/engine/ort/quantize.ts';
import { openCheckpoint } from '../worker/model/checkpoint.ts';
import { writeRandomCheckpoint } from '../worker/model/testing/random-checkpoint.ts';
import { nativeKernelsUnavailable } from '../worker/engine/ort/testing/native-availability.ts';
import { medianDecodeStepMs, prefillTokensPerSecond } from './engine-timing.ts';
import { measureReadBandwidth } from './memory-bandwidth.ts';
import { median } from './stats.ts';

const { values: args } = parseArgs({
  options: {
    threads: { type: 'string', default: String(availableParallelism()) },
    steps: { type: 'string', default: '60' },
    /**
     * Variants: a weights dtype, f32-pack-at-load (ORT_PACKED_WEIGHTS_FILE=false), f32-unpacked
     * (ORT_PREPACK_WEIGHTS=false), f32-native / int8-native / int4-native (ORT_NATIVE_KERNELS=on). Default: all
     * of them, the native ones where the native kernels are built and run here.
     */
    dtypes: { type: 'string' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
    /** Internal: measure this one dtype and send the figures to the parent. */
    child: { type: 'string' },
  },
});
const threads = Number(args.threads);
const steps = Number(args.steps);
const modelDir = join(args['cache-dir'], 'mamba-130m-random');
const graphsDir = join(args['cache-dir'], 'graphs');

type Variant = WeightsDtype | 'f32-pack-at-load' | 'f32-unpacked' | 'f32-native' | 'int8-native' | 'int4-native';
/** A variant's weights: the name up to its first '-' (f32-unpacked → f32, int4-native → int4). */
const dtypeOf = (v: Variant): WeightsDtype => v.split('-')[0] as WeightsDtype;

interface Figures {
  dtype: Variant;
  weightBytes: number;
  loadMs: number;
  afterLoad: { anon: number; file: number };
  decode1Ms: number;
  decode8Ms: number;
  prefill512: number;
  prefill4096: number;
  peakRss: number;
  atEnd: { anon: number; file: number };
}

function memory(): { anon: number; file: number; peak: number } {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { anon: kb('RssAnon'), file: kb('RssFile'), peak: kb('VmHWM') };
}



async function measure(variant: Variant): Promise<Figures> {
  const dtype = dtypeOf(variant);
  const loadStarted = performance.now();
  const { engine, checkpoint } = await createEngine({
    modelDir,
    engine: 'ort',
    cacheDir: graphsDir,
    intraOpThreads: threads,
    weightsDtype: dtype,
    prepackWeights: variant !== 'f32-unpacked',
    packedWeightsFile: variant !== 'f32-pack-at-load',
    // f32 / int8 / int4 on ONNX Runtime's graph; the -native variants on the native kernels
    // (ORT_NATIVE_KERNELS=on: they fail where it cannot run; npm run build:cpu builds it).
    nativeKernels: variant.endsWith('-native') ? 'on' : 'off',
  });
  const loadMs = performance.now() - loadStarted;
  const afterLoad = memory();
  const build = await ensureGraphBuild(checkpoint, graphsDir, { dtype }); // found again, not rebuilt: for its weights file's size
  const figures: Figures = {
    dtype: variant,
    weightBytes: statSync(join(dirname(build.modelPath), 'weights.bin')).size,
    loadMs,
    afterLoad: { anon: afterLoad.anon, file: afterLoad.file },
    decode1Ms: await medianDecodeStepMs(engine, 1, steps),
    decode8Ms: await medianDecodeStepMs(engine, 8, steps),
    prefill512: await prefillTokensPerSecond(engine, 512),
    prefill4096: await prefillTokensPerSecond(engine, 4096),
    peakRss: 0,
    atEnd: { anon: 0, file: 0 },
  };
  const atEnd = memory();
  figures.atEnd = { anon: atEnd.anon, file: atEnd.file };
  await engine.close();
  figures.peakRss = memory().peak;
  return figures;
}

if (args.child) {
  process.send!(await measure(args.child as Variant));
  process.exit(0);
}

if (!existsSync(join(modelDir, 'model.safetensors'))) {
  console.log(`generating a mamba-130m-shaped random checkpoint in ${modelDir} (once)…`);
  await writeRandomCheckpoint(modelDir, { hiddenSize: 768, numLayers: 24, vocabSize: 50280, stateSize: 16, convKernel: 4, expand: 2, seed: 130 });
}
const nativeSkip = nativeKernelsUnavailable();
if (!args.dtypes && nativeSkip) console.log(`(no -native variants: ${nativeSkip}; npm run build:cpu builds the native kernels)`);
const dtypes = (args.dtypes ?? `f32,f32-pack-at-load,f32-unpacked,int8,int4${nativeSkip ? '' : ',f32-native,int8-native,int4-native'}`).split(',') as Variant[];
// Builds first (a build's own memory is not the engine's).
const ckpt = await openCheckpoint(modelDir);
for (const dtype of new Set(dtypes.map(dtypeOf))) {
  const build = await ensureGraphBuild(ckpt, graphsDir, { dtype });
  // f32's packed-weights file too (made once, in a process of its own): a load maps it.
  if (dtype === 'f32' && dtypes.includes('f32')) await ensurePackedModel(build.modelPath);
}

// The bandwidth before each dtype and after the last: a shared machine's neighbours move it,
// so the ratios use the median of these.
const bandwidths: number[] = [];
const memcmp = await measureReadBandwidth(threads, { method: 'memcmp' });
const results: Figures[] = [];
for (const dtype of dtypes) {
  bandwidths.push((await measureReadBandwidth(threads)).bytesPerSecond);
  const child = fork(fileURLToPath(import.meta.url), ['--child', dtype, '--threads', String(threads), '--steps', String(steps), '--cache-dir', args['cache-dir']], {
    execArgv: ['--import', 'tsx'],
  });
  results.push(
    await new Promise<Figures>((resolve, reject) => {
      child.once('message', (m) => resolve(m as Figures));
      child.once('exit', (code) => reject(new Error(`${dtype}: exited ${code}`)));
    }),
  );
}

bandwidths.push((await measureReadBandwidth(threads)).bytesPerSecond);
const bandwidth = { bytesPerSecond: median(bandwidths) };
const gbs = (bytesPerSecond: number) => `${(bytesPerSecond / 1e9).toFixed(1)} GB/s`;
const MB = (b: number) => `${(b / 1e6).toFixed(0)} MB`;
const cols = (f: (r: Figures) => string) => results.map(f).join(' | ');
console.log(
  `\nmamba-130m-shaped random model (hidden 768, 24 layers, vocab 50280, ${(ckpt.parameterCount / 1e6).toFixed(1)}M parameters); ` +
    `ORT engine (onnxruntime-node CPU), ${threads} intra-op thread(s); read bandwidth ${gbs(bandwidth.bytesPerSecond)} with vector loads ` +
    `(median of ${bandwidths.length} probes between the runs; memcmp: ${gbs(memcmp.bytesPerSecond)})\n`,
);
console.log(`| measure | ${dtypes.join(' | ')} |\n|---|${dtypes.map(() => '---').join('|')}|`);
const rows: [string, (r: Figures) => string][] = [
  ['weights (bytes a decode step reads)', (r) => MB(r.weightBytes)],
  ['graph load', (r) => `${(r.loadMs / 1000).toFixed(1)} s`],
  ['resident after load: anonymous + file-backed', (r) => `${MB(r.afterLoad.anon)} + ${MB(r.afterLoad.file)}`],
  ['decode, batch 1', (r) => `${(1000 / r.decode1Ms).toFixed(1)} tok/s (${r.decode1Ms.toFixed(1)} ms)`],
  ['decode, batch 8', (r) => `${(8000 / r.decode8Ms).toFixed(1)} tok/s (${r.decode8Ms.toFixed(1)} ms)`],
  ['**decode batch 1: weight bytes read per second / bandwidth**', (r) => `**${((100 * r.weightBytes) / (r.decode1Ms / 1000) / bandwidth.bytesPerSecond).toFixed(0)} %**`],
  ['prefill, L = 512', (r) => `${r.prefill512.toFixed(0)} tok/s`],
  ['prefill, L = 4096', (r) => `${r.prefill4096.toFixed(0)} tok/s`],
  ['resident at the end: anonymous + file-backed', (r) => `${MB(r.atEnd.anon)} + ${MB(r.atEnd.file)}`],
  ['peak RSS (the process, load included)', (r) => MB(r.peakRss)],
];
for (const [name, f] of rows) console.log(`| ${name} | ${cols(f)} |`);
console.log(
  JSON.stringify({
    bench: 'engine-cpu',
    threads,
    bandwidth_gbs: bandwidth.bytesPerSecond / 1e9,
    memcmp_bandwidth_gbs: memcmp.bytesPerSecond / 1e9,
    results: results.map((r) => ({
      dtype: r.dtype,
      weight_bytes: r.weightBytes,
      decode_b1_tok_s: 1000 / r.decode1Ms,
      decode_b8_tok_s: 8000 / r.decode8Ms,
      decode_b1_bandwidth_ratio: r.weightBytes / (r.decode1Ms / 1000) / bandwidth.bytesPerSecond,
      prefill_512_tok_s: r.prefill512,
      prefill_4096_tok_s: r.prefill4096,
      rss_after_load_anon_mb: r.afterLoad.anon / 1e6,
      rss_after_load_file_mb: r.afterLoad.file / 1e6,
      rss_end_anon_mb: r.atEnd.anon / 1e6,
      rss_end_file_mb: r.atEnd.file / 1e6,
      peak_rss_mb: r.peakRss / 1e6,
    })),
  }),
);

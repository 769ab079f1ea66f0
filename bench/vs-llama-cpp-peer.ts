// One side of bench/vs-llama-cpp.ts, in a process of its own so each engine's peak RSS is its
// own: `ours` (the ORT engine on a graph build of the checkpoint) or `llama` (llama.cpp through
// node-llama-cpp on the GGUF of the same weights). The parent sends one measurement at a time
// (never both sides at once) and gets figures back:
//
//   { op: 'logits', tokens }            -> { logits: number[] }  (last position, full vocabulary)
//   { op: 'prefill', length }           -> { ms }                (a fresh session absorbs `length` tokens, logits of the last)
//   { op: 'decode', batch, steps }      -> { stepsMs: number[] }  (`batch` sessions, one token each per step)
//   { op: 'rss' }                       -> { peakRssBytes, rssBytes }
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createEngine } from '../worker/engine/create-engine.ts';
import type { Engine, StateHandle } from '../worker/engine/engine.ts';
import type { WeightsDtype } from '../worker/engine/ort/quantize.ts';
import { NATIVE_CPU_BUILDS } from '../worker/native-cpu/support.ts';

/** The native kernels' build of this instruction set. */
function nativeCpuBuildOf(isa: string) {
  const build = NATIVE_CPU_BUILDS.find((b) => b.isa === isa);
  if (!build) throw new Error(`--isa is one of ${NATIVE_CPU_BUILDS.map((b) => b.isa).join(', ')}, not ${isa}`);
  return build;
}

const { values: args } = parseArgs({
  options: {
    side: { type: 'string' },
    model: { type: 'string' }, // ours: checkpoint directory; llama: GGUF file
    dtype: { type: 'string', default: 'f32' },
    threads: { type: 'string', default: '2' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
    'llama-module': { type: 'string' },
    spinning: { type: 'boolean', default: false },
    /** ours: the native kernels' build to run (avx512 or avx2); default the one this CPU runs. */
    isa: { type: 'string' },
  },
});
const threads = Number(args.threads);
/** Tokens each decode session absorbs before it is timed. */
const HISTORY = 64;
const VOCAB_USED = 50000;
const tokenAt = (i: number, salt: number) => (i * 7919 + salt * 104729 + 11) % VOCAB_USED;
const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => tokenAt(i, salt));

interface Side {
  logits(tokens: number[]): Promise<number[]>;
  prefill(length: number): Promise<number>;
  decode(batch: number, steps: number): Promise<number[]>;
}

function rss(): { peakRssBytes: number; rssBytes: number } {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { peakRssBytes: kb('VmHWM'), rssBytes: kb('VmRSS') };
}

async function timeSteps(steps: number, step: (i: number) => Promise<unknown>): Promise<number[]> {
  for (let i = 0; i < 3; i++) await step(i);
  const out: number[] = [];
  for (let i = 0; i < steps; i++) {
    const started = performance.now();
    await step(i + 3);
    out.push(performance.now() - started);
  }
  return out;
}

async function oursSide(): Promise<Side> {
  const { engine } = await createEngine({
    modelDir: args.model!,
    engine: 'ort',
    cacheDir: resolve(args['cache-dir'], 'graphs'),
    intraOpThreads: threads,
    intraOpSpinning: args.spinning,
    weightsDtype: args.dtype as WeightsDtype,
    ...(args.isa ? { nativeKernels: 'on' as const, nativeKernelsAddon: nativeCpuBuildOf(args.isa).addon } : {}),
  });
  const sessions = new Map<number, StateHandle[]>();
  const sessionsOf = async (e: Engine, batch: number) => {
    let s = sessions.get(batch);
    if (!s) {
      s = [];
      for (let b = 0; b < batch; b++) {
        const state = await e.newState();
        await e.prefill(state, Int32Array.from(prompt(HISTORY, b)));
        s.push(state);
      }
      sessions.set(batch, s);
    }
    return s;
  };
  return {
    async logits(tokens) {
      const state = await engine.newState();
      const out = await engine.prefill(state, Int32Array.from(tokens));
      engine.freeState(state);
      return [...out.data];
    },
    async prefill(length) {
      const state = await engine.newState();
      const started = performance.now();
      await engine.prefill(state, Int32Array.from(prompt(length, 7)));
      const ms = performance.now() - started;
      engine.freeState(state);
      return ms;
    },
    async decode(batch, steps) {
      const states = await sessionsOf(engine, batch);
      // As the scheduler decodes: the logits are read before the next step (reuseOutput), as
      // llama.cpp's context keeps its logits in a buffer of its own.
      return timeSteps(steps, (i) => engine.decode(states.map((state, b) => ({ state, token: tokenAt(i, b + 1) })), { reuseOutput: true }));
    },
  };
}

async function llamaSide(): Promise<Side> {
  // node-llama-cpp lives in the bench's cache folder, never in this project's dependencies.
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(resolve(args['llama-module']!)).href);
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false, maxThreads: threads });
  const model = await llama.loadModel({ modelPath: resolve(args.model!), gpuLayers: 0 });
  // One context, as a server would hold: 8 decode sequences and one for the prefills, each with
  // room for 2560 tokens; llama.cpp's default micro-batch (512). node-llama-cpp's state
  // checkpoints (it keeps some for recurrent models) are off: they are the wrapper's, not
  // llama.cpp's, and cost memory.
  const context = await model.createContext({ contextSize: 9 * 2560, batchSize: 512, threads, sequences: 9 });
  const noCheckpoints = { checkpoints: { max: 1, interval: false as const } };
  const decodeSeqs = Array.from({ length: 8 }, () => context.getSequence(noCheckpoints));
  const prefillSeq = context.getSequence(noCheckpoints);
  const primed = new Set<number>();
  // Feeding the last token with generateNext makes llama.cpp compute that position's logits
  // (as our prefill does); without it the head would be skipped entirely.
  const last = (tokens: number[], next: Record<string, unknown>) => tokens.map((t, i) => (i === tokens.length - 1 ? [t, { generateNext: next }] : t));
  return {
    async logits(tokens) {
      await prefillSeq.clearHistory();
      const res = await prefillSeq.controlledEvaluate(last(tokens, { logits: true }));
      const map: Map<number, number> = res[tokens.length - 1].next.logits;
      const out = new Array<number>(map.size).fill(NaN);
      for (const [token, value] of map) out[token] = value;
      return out;
    },
    async prefill(length) {
      await prefillSeq.clearHistory();
      const started = performance.now();
      await prefillSeq.controlledEvaluate(last(prompt(length, 7), { token: true }));
      return performance.now() - started;
    },
    async decode(batch, steps) {
      const seqs = decodeSeqs.slice(0, batch);
      for (const [b, s] of seqs.entries()) {
        if (primed.has(b)) continue;
        await s.evaluateWithoutGeneratingNewTokens(prompt(HISTORY, b));
        primed.add(b);
      }
      // The sequences' evaluations queued in one tick go to llama.cpp as one batch.
      return timeSteps(steps, (i) => Promise.all(seqs.map((s, b) => s.controlledEvaluate([[tokenAt(i, b + 1), { generateNext: { token: true } }]]))));
    },
  };
}

const side = args.side === 'ours' ? await oursSide() : await llamaSide();
process.on('message', (msg: { op: string; tokens?: number[]; length?: number; batch?: number; steps?: number }) => {
  const run = async () => {
    switch (msg.op) {
      case 'logits':
        return { logits: await side.logits(msg.tokens!) };
      case 'prefill':
        return { ms: await side.prefill(msg.length!) };
      case 'decode':
        return { stepsMs: await side.decode(msg.batch!, msg.steps!) };
      case 'rss':
        return rss();
      case 'exit':
        process.exit(0);
    }
    throw new Error(`unknown op ${msg.op}`);
  };
  run().then(
    (result) => process.send!({ ok: true, result }),
    (err: unknown) => process.send!({ ok: false, error: String((err as Error)?.stack ?? err) }),
  );
});
process.send!({ ok: true, result: { ready: true, ...rss() } });

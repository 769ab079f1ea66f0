// How much arithmetic this machine gives us right now: the companion of memory-bandwidth.ts's
// read probe. On a shared VM the two move apart: host F (2026-12-01) had an hour when prefill,
// which is bound by arithmetic, ran 20–30 % slow while the read probe read as usual, and a
// decode step, which also spends ~0.3 ms of arithmetic beside its weight read, fell with it.
// A read probe alone then blames the engine. This probe runs, on every thread at once, eight
// independent chains of 16-bit integer dot products (WebAssembly's i32x4.dot_i16x8_s, which
// V8 compiles to pmaddwd: the instruction family the kernels' int8 products come from) on
// values held in registers, and reports dot products per second.
//
//   npx tsx bench/compute-probe.ts
import { leb, timeOnThreads, wasmName as name, wasmSection as section } from './probe-threads.ts';


/** Independent dependency chains (enough to keep the vector units busy) and their steps a loop trip. */
export const CHAINS = 8;
export const UNROLL = 4;

/**
 * A WebAssembly module exporting `spin(trips) -> i32`: CHAINS accumulators, each stepped
 * UNROLL times a trip by acc = acc + dot_i16x8(acc, y), so every step depends on the one
 * before it in its chain (nothing to hoist out of the loop) and the chains on nothing else.
 * Returns a lane of their XOR, so no step can be optimized away.
 */
export function computeModule(): Uint8Array {
  const [V128, I32] = [0x7b, 0x7f];
  const SIMD = 0xfd;
  const SPLAT_I32X4 = [0x11];
  const XOR = [0x51];
  const EXTRACT_I32X4 = [0x1b];
  const DOT_I16X8_S = leb(0xba);
  const ADD_I32X4 = leb(0xae);
  const [GET, SET] = [0x20, 0x21];
  const trips = 0;
  const acc = Array.from({ length: CHAINS }, (_, i) => 1 + i);
  const y = 1 + CHAINS;
  const body: number[] = [];
  // y = splat(0x00030001): 16-bit lanes 1, 3, 1, 3, …; acc_k = splat(k + 1).
  body.push(0x41, ...[0x81, 0x80, 0x0c] /* i32.const 0x30001 */, SIMD, ...SPLAT_I32X4, SET, y);
  for (const a of acc) body.push(0x41, a, SIMD, ...SPLAT_I32X4, SET, a);
  body.push(0x03, 0x40); // loop
  for (let u = 0; u < UNROLL; u++) {
    for (const a of acc) body.push(GET, a, GET, a, GET, y, SIMD, ...DOT_I16X8_S, SIMD, ...ADD_I32X4, SET, a);
  }
  // trips -= 1; continue while trips != 0
  body.push(GET, trips, 0x41, 0x01, 0x6b /* i32.sub */, 0x22 /* local.tee */, trips, 0x0d, 0x00 /* br_if loop */, 0x0b);
  body.push(GET, acc[0]!);
  for (const a of acc.slice(1)) body.push(GET, a, SIMD, ...XOR);
  body.push(SIMD, ...EXTRACT_I32X4, 0, 0x0b);
  const code = [0x01, ...leb(CHAINS + 1), V128, ...body]; // one local declaration: CHAINS + 1 v128
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [0x01, 0x60, 0x01, I32, 0x01, I32]), // type: (i32) -> i32
    ...section(3, [0x01, 0x00]),
    ...section(7, [0x01, ...name('spin'), 0x00, 0x00]),
    ...section(10, [0x01, ...leb(code.length), ...code]),
  ]);
}

const THREAD_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
const { exports } = new WebAssembly.Instance(new WebAssembly.Module(workerData.wasm));
let sink = 0;
exports.spin(1000); // compiled and warm
parentPort.on('message', (trips) => { sink ^= exports.spin(trips); parentPort.postMessage(sink & 1); });
parentPort.postMessage('ready');
`;

export interface ComputeResult {
  readonly threads: number;
  /** Median of the repetitions, 16-bit dot products (8 multiply-adds each) a second, all threads together. */
  readonly dotsPerSecond: number;
  readonly bestDotsPerSecond: number;
}

/** The rate of the probe's dot products on `threads` threads at once: `repetitions` runs of `trips` loop trips each. */
export async function measureComputeRate(threads: number, options: { trips?: number; repetitions?: number } = {}): Promise<ComputeResult> {
  // 2M trips: 64M dot products a thread, ~10–20 ms on the 2-vCPU hosts of docs/cpu-engine.md.
  const trips = options.trips ?? 2_000_000;
  const repetitions = options.repetitions ?? 7;
  if (!Number.isInteger(trips) || trips < 1 || trips > 2 ** 31 - 1) throw new RangeError(`trips must be an integer in 1..2^31-1, not ${trips}`);
  const seconds = await timeOnThreads(THREAD_CODE, { wasm: computeModule() }, threads, repetitions, trips);
  const rates = seconds.map((t) => (threads * trips * CHAINS * UNROLL) / t).sort((a, b) => a - b);
  return { threads, dotsPerSecond: rates[Math.floor(rates.length / 2)]!, bestDotsPerSecond: rates[rates.length - 1]! };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { availableParallelism } = await import('node:os');
  for (const threads of [...new Set([1, availableParallelism()])]) {
    const r = await measureComputeRate(threads);
    console.log(`compute probe, ${threads} thread(s): median ${(r.dotsPerSecond / 1e9).toFixed(2)} G dot products/s, best ${(r.bestDotsPerSecond / 1e9).toFixed(2)}`);
  }
}

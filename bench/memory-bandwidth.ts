// This machine's memory read bandwidth: the bound a memory-bound decode step is compared to.
// Two probes, each on all threads at once, each thread reading its own buffer far larger
// than any cache:
//
// - `vector`: a loop of 128-bit vector loads (WebAssembly SIMD, which V8 compiles to SSE/AVX
//   loads), four independent accumulators, 256 bytes a trip: how the engine's kernels read
//   weights. This is the figure the benchmarks' ratios use.
// - `memcmp`: glibc's memcmp of two buffers (Buffer.compare). Kept for comparison: it reads
//   about half as fast here (it was README's bound before; the ratios against it were too
//   kind by about 2x).
//
//   npx tsx bench/memory-bandwidth.ts
import { leb, timeOnThreads, wasmName as name, wasmSection as section } from './probe-threads.ts';

export type BandwidthMethod = 'vector' | 'memcmp';


/**
 * A WebAssembly module exporting `mem` and `read(ptr, end) -> i64`: XOR of every 16-byte word
 * in [ptr, end) (end - ptr a multiple of 256), so no load can be optimized away.
 */
export function vectorReadModule(): Uint8Array {
  const [V128, I32, I64] = [0x7b, 0x7f, 0x7e];
  const SIMD = 0xfd;
  const [LOAD, XOR, EXTRACT_I64] = [0x00, 0x51, 0x1d];
  const [GET, SET, TEE] = [0x20, 0x21, 0x22];
  const [ptr, end] = [0, 1];
  const acc = [2, 3, 4, 5];
  const body: number[] = [0x03, 0x40]; // loop
  for (let i = 0; i < 16; i++) {
    const a = acc[i % 4]!;
    body.push(GET, a, GET, ptr, SIMD, LOAD, 4, ...leb(16 * i), SIMD, XOR, SET, a);
  }
  body.push(GET, ptr, 0x41, ...leb(256), 0x6a /* i32.add */, TEE, ptr, GET, end, 0x49 /* i32.lt_u */, 0x0d, 0 /* br_if loop */, 0x0b);
  body.push(GET, acc[0]!, GET, acc[1]!, SIMD, XOR, GET, acc[2]!, SIMD, XOR, GET, acc[3]!, SIMD, XOR, SIMD, EXTRACT_I64, 0, 0x0b);
  const code = [0x01, 0x04, V128, ...body]; // one local declaration: 4 x v128
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [0x01, 0x60, 0x02, I32, I32, 0x01, I64]), // type: (i32, i32) -> i64
    ...section(3, [0x01, 0x00]), // one function of type 0
    ...section(5, [0x01, 0x00, 0x01]), // one memory, 1 page to start (grown by the caller)
    ...section(7, [0x02, ...name('mem'), 0x02, 0x00, ...name('read'), 0x00, 0x00]),
    ...section(10, [0x01, ...leb(code.length), ...code]),
  ]);
}

const THREAD_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
const { bytes, method, wasm } = workerData;
let run;
if (method === 'vector') {
  const { exports } = new WebAssembly.Instance(new WebAssembly.Module(wasm));
  exports.mem.grow(Math.ceil(bytes / 65536));
  new Uint8Array(exports.mem.buffer, 0, bytes).fill(1); // real pages, not the shared zero page
  let sink = 0n;
  run = (reps) => { for (let i = 0; i < reps; i++) sink ^= exports.read(0, bytes); return Number(sink & 1n); };
} else {
  const a = Buffer.alloc(bytes, 1);
  const b = Buffer.alloc(bytes, 1);
  run = (reps) => { for (let i = 0; i < reps; i++) Buffer.compare(a, b); return 0; };
}
run(1); // warm: compiled, pages faulted in
parentPort.on('message', (reps) => parentPort.postMessage(run(reps)));
parentPort.postMessage('ready');
`;

export interface BandwidthResult {
  readonly method: BandwidthMethod;
  readonly threads: number;
  /** Median of the repetitions, bytes read per second (a shared machine's best run flatters it). */
  readonly bytesPerSecond: number;
  readonly bestBytesPerSecond: number;
}

export async function measureReadBandwidth(
  threads: number,
  options: { method?: BandwidthMethod; bytesPerThread?: number; repetitions?: number } = {},
): Promise<BandwidthResult> {
  const method = options.method ?? 'vector';
  const bytesPerThread = options.bytesPerThread ?? 256 * 1024 * 1024;
  const repetitions = options.repetitions ?? 7;
  // memcmp reads two buffers of half the size: the same bytes read per thread either way.
  const bytes = method === 'memcmp' ? bytesPerThread / 2 : bytesPerThread;
  // Two passes over its buffer a thread a repetition.
  const perRound = 2;
  const seconds = await timeOnThreads(THREAD_CODE, { bytes, method, wasm: vectorReadModule() }, threads, repetitions, perRound);
  const rates = seconds.map((t) => (threads * perRound * bytesPerThread) / t).sort((a, b) => a - b);
  return { method, threads, bytesPerSecond: rates[Math.floor(rates.length / 2)]!, bestBytesPerSecond: rates[rates.length - 1]! };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { availableParallelism } = await import('node:os');
  const all = availableParallelism();
  for (const method of ['vector', 'memcmp'] as const) {
    for (const threads of [...new Set([1, all])]) {
      const r = await measureReadBandwidth(threads, { method });
      console.log(`read bandwidth, ${method}, ${threads} thread(s): median ${(r.bytesPerSecond / 1e9).toFixed(1)} GB/s, best ${(r.bestBytesPerSecond / 1e9).toFixed(1)} GB/s`);
    }
  }
}

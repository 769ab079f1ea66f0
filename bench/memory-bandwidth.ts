// This machine's memory read bandwidth, the bound a memory-bound decode step is compared
// to. Each thread memcmp's its own two buffers (far larger than any cache): glibc's vector
// memcmp is as close to a pure streaming read as Node can issue, so this is an upper bound
// (ONNX Runtime's own ReduceSum over 1 GiB reads ~20% slower here).
import { Worker } from 'node:worker_threads';

const THREAD_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
const a = Buffer.alloc(workerData.bytes, 1);
const b = Buffer.alloc(workerData.bytes, 1);
parentPort.on('message', (reps) => {
  for (let i = 0; i < reps; i++) Buffer.compare(a, b);
  parentPort.postMessage('done');
});
parentPort.postMessage('ready');
`;

export interface BandwidthResult {
  readonly threads: number;
  /** Median of the repetitions, bytes read per second (a shared machine's best run flatters it). */
  readonly bytesPerSecond: number;
  readonly bestBytesPerSecond: number;
}

export async function measureReadBandwidth(threads: number, bytesPerBuffer = 256 * 1024 * 1024, repetitions = 5): Promise<BandwidthResult> {
  const workers = Array.from({ length: threads }, () => new Worker(THREAD_CODE, { eval: true, workerData: { bytes: bytesPerBuffer } }));
  const next = (w: Worker) => new Promise((resolve) => w.once('message', resolve));
  try {
    await Promise.all(workers.map(next));
    const rates: number[] = [];
    const perRound = 2;
    for (let r = 0; r < repetitions; r++) {
      const started = performance.now();
      await Promise.all(
        workers.map((w) => {
          const done = next(w);
          w.postMessage(perRound);
          return done;
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      rates.push((threads * perRound * 2 * bytesPerBuffer) / seconds);
    }
    rates.sort((a, b) => a - b);
    return { threads, bytesPerSecond: rates[Math.floor(rates.length / 2)]!, bestBytesPerSecond: rates[rates.length - 1]! };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const threads of [1, 2]) {
    const r = await measureReadBandwidth(threads);
    console.log(`read bandwidth, ${threads} thread(s): median ${(r.bytesPerSecond / 1e9).toFixed(1)} GB/s, best ${(r.bestBytesPerSecond / 1e9).toFixed(1)} GB/s`);
  }
}

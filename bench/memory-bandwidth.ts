// This machine's memory read bandwidth, the bound a memory-bound decode step is compared
// to. Each thread memcmp's its own two buffers (far larger than any cache); memcmp is as
// close to a pure streaming read as Node can issue.
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
  /** Best of the repetitions, bytes read per second. */
  readonly bytesPerSecond: number;
}

export async function measureReadBandwidth(threads: number, bytesPerBuffer = 256 * 1024 * 1024, repetitions = 5): Promise<BandwidthResult> {
  const workers = Array.from({ length: threads }, () => new Worker(THREAD_CODE, { eval: true, workerData: { bytes: bytesPerBuffer } }));
  const next = (w: Worker) => new Promise((resolve) => w.once('message', resolve));
  try {
    await Promise.all(workers.map(next));
    let best = 0;
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
      best = Math.max(best, (threads * perRound * 2 * bytesPerBuffer) / seconds);
    }
    return { threads, bytesPerSecond: best };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const threads of [1, 2]) {
    const r = await measureReadBandwidth(threads);
    console.log(`read bandwidth, ${threads} thread(s): ${(r.bytesPerSecond / 1e9).toFixed(1)} GB/s`);
  }
}

// What the machine probes (memory-bandwidth.ts, compute-probe.ts) share: the bytes of a
// hand-written WebAssembly module, and timing one piece of work on several threads at once.
import { Worker } from 'node:worker_threads';

/** unsigned LEB128 */
export function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** A module section: its id, then its body's length and the body. */
export const wasmSection = (id: number, body: number[]) => [id, ...leb(body.length), ...body];
/** A name as the module's export section writes it. */
export const wasmName = (s: string) => [...leb(s.length), ...Buffer.from(s)];

/**
 * Start `threads` workers running `threadCode` (CommonJS, given `workerData`; it posts 'ready'
 * once set up, then answers every message `work` with a message when it has done that work),
 * and time `repetitions` rounds of all of them doing `work` at once. Returns each round's
 * seconds, in order.
 */
export async function timeOnThreads(threadCode: string, workerData: unknown, threads: number, repetitions: number, work: unknown): Promise<number[]> {
  const workers = Array.from({ length: threads }, () => new Worker(threadCode, { eval: true, workerData }));
  const next = (w: Worker) => new Promise((resolve, reject) => w.once('message', resolve).once('error', reject));
  try {
    await Promise.all(workers.map(next));
    const seconds: number[] = [];
    for (let r = 0; r < repetitions; r++) {
      const started = performance.now();
      await Promise.all(
        workers.map((w) => {
          const done = next(w);
          w.postMessage(work);
          return done;
        }),
      );
      seconds.push((performance.now() - started) / 1000);
    }
    return seconds;
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

// The sampler's passes over a row on the native CPU addon (worker/native-cpu/src/softmax_exp.h),
// where the addon is built for this CPU and current; elsewhere the sampler runs them in
// JavaScript. They ran once per sampled token, in series with the decode steps, on host F:
// - expRow, the softmax numerators exp((logit − max) / temperature) for a whole row in float64
//   vectors: 0.54 ms for a row of 50k in JavaScript, as much as a third of an int4 decode step
//   (docs/cpu-engine.md, "The native kernels"). Both give the same numbers to ~3e-16, so a
//   seeded draw is the same either way unless it lands within that of a boundary between two
//   tokens.
// - rowMax, the first pass: the largest logit, where it is, and whether the row holds a NaN:
//   ~60 µs for 50k in JavaScript (a third of a draw at temperature 1, all of a greedy one),
//   exactly what the JavaScript loop finds.
import { createRequire } from 'node:module';
import { nativeCpuAddonReady } from '../native-cpu/support.ts';

/** out[i] = exp((logits[i] − max) · invT) for i < n; their sum, and how many are above 0. */
export type ExpRow = (logits: Float32Array, n: number, max: number, invT: number, out: Float64Array) => { total: number; positive: number };

/** The largest of logits[0, n) that is not NaN (−∞ for none), the lowest index holding it (0 for none), the lowest index of a NaN (−1 for none). */
export type RowMax = (logits: Float32Array, n: number) => { max: number; at: number; nanAt: number };

interface NativeRows {
  expRow: ExpRow | undefined;
  rowMax: RowMax | undefined;
  reason?: string;
}

let loaded: NativeRows | undefined;

/** The addon's expRow, loaded once; undefined (with the reason in nativeExpUnavailable) where it cannot run. */
export function nativeExpRow(): ExpRow | undefined {
  loaded ??= load();
  return loaded.expRow;
}

/** The addon's rowMax, loaded once; undefined where it cannot run (as nativeExpRow). */
export function nativeRowMax(): RowMax | undefined {
  loaded ??= load();
  return loaded.rowMax;
}

/** Why nativeExpRow() and nativeRowMax() are undefined here, or undefined when they run. */
export function nativeExpUnavailable(): string | undefined {
  loaded ??= load();
  return loaded.reason;
}

function load(): NativeRows {
  const ready = nativeCpuAddonReady();
  if ('reason' in ready) return { expRow: undefined, rowMax: undefined, reason: ready.reason };
  try {
    const native = createRequire(import.meta.url)(ready.build.addon) as {
      expRow(logits: Float32Array, n: number, max: number, invT: number, out: Float64Array): [number, number];
      rowMax(logits: Float32Array, n: number): [number, number, number];
    };
    return {
      expRow: (logits, n, max, invT, out) => {
        const [total, positive] = native.expRow(logits, n, max, invT, out);
        return { total, positive };
      },
      rowMax: (logits, n) => {
        const [max, at, nanAt] = native.rowMax(logits, n);
        return { max, at, nanAt };
      },
    };
  } catch (err) {
    const reason = `the native addon did not load: ${err instanceof Error ? err.message : String(err)}`;
    return { expRow: undefined, rowMax: undefined, reason };
  }
}

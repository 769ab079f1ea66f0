// The sampler's softmax numerators on the native CPU addon (worker/native-cpu/src/softmax_exp.h):
// exp((logit − max) / temperature) for a whole row in float64 vectors, where the addon is built
// for this CPU and current; elsewhere the sampler computes them with Math.exp. A row of 50k
// took 0.54 ms in JavaScript on host F, as much as a third of an int4 decode step, once per
// sampled token and in series with the steps (docs/cpu-engine.md, "The native kernels").
// Both give the same numbers to ~3e-16, so a seeded draw is the same either way unless it lands
// within that of a boundary between two tokens.
import { createRequire } from 'node:module';
import { nativeCpuAddonReady } from '../native-cpu/support.ts';

/** out[i] = exp((logits[i] − max) · invT) for i < n; their sum, and how many are above 0. */
export type ExpRow = (logits: Float32Array, n: number, max: number, invT: number, out: Float64Array) => { total: number; positive: number };

let loaded: { expRow: ExpRow | undefined; reason?: string } | undefined;

/** The addon's expRow, loaded once; undefined (with the reason in nativeExpUnavailable) where it cannot run. */
export function nativeExpRow(): ExpRow | undefined {
  loaded ??= load();
  return loaded.expRow;
}

/** Why nativeExpRow() is undefined here, or undefined when it runs. */
export function nativeExpUnavailable(): string | undefined {
  loaded ??= load();
  return loaded.reason;
}

function load(): { expRow: ExpRow | undefined; reason?: string } {
  const ready = nativeCpuAddonReady();
  if ('reason' in ready) return { expRow: undefined, reason: ready.reason };
  try {
    const native = createRequire(import.meta.url)(ready.build.addon) as { expRow(logits: Float32Array, n: number, max: number, invT: number, out: Float64Array): [number, number] };
    return {
      expRow: (logits, n, max, invT, out) => {
        const [total, positive] = native.expRow(logits, n, max, invT, out);
        return { total, positive };
      },
    };
  } catch (err) {
    return { expRow: undefined, reason: `the native addon did not load: ${err instanceof Error ? err.message : String(err)}` };
  }
}

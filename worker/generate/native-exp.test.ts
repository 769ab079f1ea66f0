// The sampler's native softmax numerators (native-exp.ts, worker/native-cpu/src/softmax_exp.h)
// against Math.exp, and the sampler's draws with them against its Math.exp path.
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { testableNativeBuilds } from '../engine/ort/testing/native-availability.ts';
import { nativeCpuBuildFor } from '../native-cpu/support.ts';
import { nativeExpRow, nativeExpUnavailable } from './native-exp.ts';
import { Sampler } from './sampling.ts';

const skip = nativeExpUnavailable();
if (skip) console.warn(`native sampler exp tests skip: ${skip}`);

/** A row of n logits from a fixed LCG: most in [−spread, 0], a few near the top. */
function logitsRow(n: number, spread: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  return Float32Array.from({ length: n }, () => (next() < 0.01 ? 10 + 5 * next() : -spread * next()));
}

describe.skipIf(skip)('native softmax numerators', () => {
  /** Each build this CPU runs (an AVX-512 CPU also runs the AVX2 one). */
  const builds = testableNativeBuilds().map((b) => [b.isa, (createRequire(import.meta.url)(b.addon) as { expRow: (...a: unknown[]) => [number, number] }).expRow] as const);

  it.each(builds)('%s build: equal Math.exp to 3e-16 relative, down through the subnormals to 0, with the same sum and count above 0', (_isa, native) => {
    const expRow = (x: Float32Array, n: number, max: number, invT: number, out: Float64Array) => {
      const [total, positive] = native(x, n, max, invT, out);
      return { total, positive };
    };
    // Spreads that reach exp's underflow (−745) at temperatures 0.5, 1 and 2.3; odd lengths
    // leave a tail the vectors do not take.
    for (const [n, spread, invT] of [[50277, 40, 1], [50280, 900, 1], [1001, 400, 2], [37, 2000, 1 / 2.3]] as const) {
      const x = logitsRow(n, spread, n);
      const max = x.reduce((m, v) => Math.max(m, v), -Infinity);
      const out = new Float64Array(n);
      const { total, positive } = expRow(x, n, max, invT, out);
      let want = 0;
      let wantPositive = 0;
      for (let i = 0; i < n; i++) {
        const p = Math.exp((x[i]! - max) * invT);
        want += p;
        if (p > 0) wantPositive++;
        if (p > 1e-300) expect(Math.abs(out[i]! - p) / p).toBeLessThan(3e-16);
        else expect(Math.abs(out[i]! - p)).toBeLessThanOrEqual(1e-300 * 3e-16 + 1e-323);
      }
      // Summed in 8 (or 4) lanes and then across them, not in order: rounding of ~sqrt(n) ulps.
      expect(Math.abs(total - want) / want).toBeLessThan(1e-12);
      expect(positive).toBe(wantPositive);
    }
  });

  it('the sampler draws the same tokens with them (this CPU\'s build) as with Math.exp, seed for seed', () => {
    expect(nativeExpRow()).toBeDefined();
    const V = 50280;
    const x = logitsRow(V, 30, 7);
    for (const params of [
      { temperature: 1, topP: 1, topK: 0 },
      { temperature: 0.7, topP: 0.9, topK: 0 },
      { temperature: 1.3, topP: 1, topK: 40 },
    ]) {
      const native = new Sampler({ ...params, seed: 11 }, V);
      const js = new Sampler({ ...params, seed: 11 }, V, { expRow: null });
      const a = Array.from({ length: 300 }, () => native.sample(x));
      const b = Array.from({ length: 300 }, () => js.sample(x));
      expect(a).toEqual(b);
      expect(new Set(a).size).toBeGreaterThan(1);
    }
  });

  it('refuses bad arguments with a code', () => {
    const cpu = nativeCpuBuildFor();
    if ('reason' in cpu) throw new Error(cpu.reason);
    const addon = createRequire(import.meta.url)(cpu.build.addon) as { expRow: (...a: unknown[]) => unknown };
    const x = new Float32Array(8);
    const out = new Float64Array(8);
    for (const args of [
      [x, 8, 0, 1],
      [new Float64Array(8), 8, 0, 1, out],
      [x, 8, 0, 1, new Float32Array(8)],
      [x, 9, 0, 1, out],
      [x, 8, 0, 0, out],
      [x, 8, Infinity, 1, out],
    ]) {
      expect(() => addon.expRow(...args)).toThrow(expect.objectContaining({ code: 'native_decode_invalid' }));
    }
  });
});

// The sampler's native row passes (native-exp.ts, worker/native-cpu/src/softmax_exp.h): the
// softmax numerators against Math.exp, the first pass (largest, where, first NaN) against the
// JavaScript loop, and the sampler's draws with them against its JavaScript path.
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { testableNativeBuilds } from '../engine/ort/testing/native-availability.ts';
import { nativeCpuBuildFor } from '../native-cpu/support.ts';
import { nativeExpRow, nativeExpUnavailable, nativeRowMax } from './native-exp.ts';
import { argmax, rowMaxLoop, Sampler } from './sampling.ts';

const skip = nativeExpUnavailable();
if (skip) console.warn(`native sampler exp tests skip: ${skip}`);

/** A row of n logits from a fixed LCG: most in [−spread, 0], a few near the top. */
function logitsRow(n: number, spread: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  return Float32Array.from({ length: n }, () => (next() < 0.01 ? 10 + 5 * next() : -spread * next()));
}

type Addon = { expRow: (...a: unknown[]) => [number, number]; rowMax: (...a: unknown[]) => [number, number, number] };

/** Rows for the first pass: ties, ±0, ±∞, NaN anywhere, subnormals, nothing above −∞, every length up to a few vectors. */
function awkwardRows(): Float32Array[] {
  let s = 99;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const pick = <T,>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)]!;
  const specials = [0, -0, Infinity, -Infinity, NaN, 1e-45, -1e-45, 3.5, 3.5, -2];
  const rows: Float32Array[] = [];
  for (let n = 0; n <= 70; n++) {
    for (let k = 0; k < 6; k++) rows.push(Float32Array.from({ length: n }, () => (next() < 0.3 ? pick(specials) : Math.round(next() * 8) - 4)));
  }
  rows.push(new Float32Array(33).fill(-Infinity), new Float32Array(33).fill(NaN), Float32Array.of(-0, 0, -0), Float32Array.of(0, -0));
  const big = logitsRow(50280, 30, 3);
  big[40000] = NaN;
  big[45000] = big.reduce((m, v) => Math.max(m, v), -Infinity);
  rows.push(logitsRow(50280, 30, 4), big);
  return rows;
}

describe.skipIf(skip)('native softmax numerators', () => {
  /** Each build this CPU runs (an AVX-512 CPU also runs the AVX2 one). */
  const addons = testableNativeBuilds().map((b) => [b.isa, createRequire(import.meta.url)(b.addon) as Addon] as const);
  const builds = addons.map(([isa, addon]) => [isa, addon.expRow] as const);

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

  it.each(addons)('%s build: rowMax finds what the JavaScript loop finds (the largest, its lowest index, the first NaN)', (_isa, addon) => {
    for (const x of awkwardRows()) {
      for (const n of new Set([x.length, Math.max(0, x.length - 5)])) {
        const [max, at, nanAt] = addon.rowMax(x, n);
        const want = rowMaxLoop(x, n);
        // The sign of a zero maximum is not promised (MAXPS keeps either): equal as numbers.
        expect(max === want.max, `n ${n} of [${Array.from(x.subarray(0, 12)).join(', ')}…]: ${max} vs ${want.max}`).toBe(true);
        expect([at, nanAt]).toEqual([want.at, want.nanAt]);
        expect(at).toBe(argmax(x, n));
      }
    }
  });

  it('the sampler draws the same tokens with them (this CPU\'s build) as with Math.exp and its loops, seed for seed', () => {
    expect(nativeExpRow()).toBeDefined();
    expect(nativeRowMax()).toBeDefined();
    const V = 50280;
    const x = logitsRow(V, 30, 7);
    for (const params of [
      { temperature: 1, topP: 1, topK: 0 },
      { temperature: 0.7, topP: 0.9, topK: 0 },
      { temperature: 1.3, topP: 1, topK: 40 },
      { temperature: 0, topP: 1, topK: 0 },
    ]) {
      const native = new Sampler({ ...params, seed: 11 }, V);
      const js = new Sampler({ ...params, seed: 11 }, V, { expRow: null, rowMax: null });
      const a = Array.from({ length: 300 }, () => native.sample(x));
      const b = Array.from({ length: 300 }, () => js.sample(x));
      expect(a).toEqual(b);
      expect(new Set(a).size).toBeGreaterThan(params.temperature === 0 ? 0 : 1);
    }
    // A NaN is refused either way, naming the same logit; greedy skips it, as argmax does.
    const withNaN = x.slice();
    withNaN[123] = NaN;
    withNaN[77] = NaN;
    for (const options of [{}, { expRow: null, rowMax: null }]) {
      expect(() => new Sampler({ temperature: 1, topP: 1, topK: 0, seed: 1 }, V, options).sample(withNaN)).toThrow('logit 77 is NaN');
      expect(new Sampler({ temperature: 0, topP: 1, topK: 0 }, V, options).sample(withNaN)).toBe(argmax(withNaN, V));
    }
  });

  it('refuses bad arguments with a code', () => {
    const cpu = nativeCpuBuildFor();
    if ('reason' in cpu) throw new Error(cpu.reason);
    const addon = createRequire(import.meta.url)(cpu.build.addon) as Addon;
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
    for (const args of [[x], [new Float64Array(8), 8], [x, 9], [x, -1], [x, '8']]) {
      expect(() => addon.rowMax(...args)).toThrow(expect.objectContaining({ code: 'native_decode_invalid' }));
    }
  });
});

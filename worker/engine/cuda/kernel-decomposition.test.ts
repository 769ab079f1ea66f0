// The index and chunking algebra of the CUDA kernels (worker/native/src/kernels), mirrored in
// float64 and held to the plain recurrences: not an emulation of the kernels (no threads, no
// fp32), but the decomposition they rely on, checked where it can be checked without a GPU.
//   - selective_scan.cu: chunks of kThreads*kItems steps; per thread a serial scan of its
//     kItems (decay, input) maps; a block-wide exclusive scan of the thread totals seeded with
//     the carry; carry(chunk 0) = (1, saved state); steps past the end are the identity map.
//   - conv1d.cu: out[t] reads x_ext[t-(K-1)+k] with x_ext[-j] = state[K-j]; the new state is
//     x_ext[L-K+k].
// If a kernel's decomposition changes, change its mirror here.
import { describe, expect, it } from 'vitest';
import { Rng } from '../../../shared/rng.ts';

type Map2 = [number, number]; // h -> a*h + b
const compose = (x: Map2, y: Map2): Map2 => [x[0] * y[0], y[0] * x[1] + y[1]]; // x first, then y

/** The kernel's decomposition for one channel and one state index: returns h per step and the carry. */
function chunkedScan(a: number[], b: number[], h0: number, threads: number, items: number): { h: number[]; final: number } {
  const L = a.length;
  const chunk = threads * items;
  const h = new Array<number>(L).fill(NaN);
  let carry: Map2 = [1, h0];
  for (let c0 = 0; c0 < L; c0 += chunk) {
    // Per thread: its items as maps (identity past the end), and their serial composition.
    const threadItems: Map2[][] = [];
    const totals: Map2[] = [];
    for (let t = 0; t < threads; t++) {
      const t0 = c0 + t * items;
      const valid = Math.max(0, Math.min(items, L - t0));
      const its: Map2[] = [];
      for (let i = 0; i < items; i++) its.push(i < valid ? [a[t0 + i]!, b[t0 + i]!] : [1, 0]);
      threadItems.push(its);
      totals.push(its.reduce((acc, m) => compose(acc, m), [1, 0] as Map2));
    }
    // Exclusive block scan of the totals, seeded with the carry (CUB's prefix callback).
    let running = carry;
    for (let t = 0; t < threads; t++) {
      let acc = running;
      const t0 = c0 + t * items;
      threadItems[t]!.forEach((m, i) => {
        acc = compose(acc, m);
        if (t0 + i < L) h[t0 + i] = acc[1]; // the map applied to 0
      });
      running = compose(running, totals[t]!);
    }
    carry = running;
  }
  return { h, final: carry[1] };
}

function sequential(a: number[], b: number[], h0: number): number[] {
  const out: number[] = [];
  let h = h0;
  for (let t = 0; t < a.length; t++) out.push((h = a[t]! * h + b[t]!));
  return out;
}

function randomProblem(rng: Rng, L: number): { a: number[]; b: number[] } {
  // a = exp(dt * A) in (0, 1], b = dt * B * u: the shapes the kernel sees.
  const a = Array.from({ length: L }, () => Math.exp(-rng.next() * 2));
  const b = Array.from({ length: L }, () => rng.normal() * 0.1);
  return { a, b };
}

const close = (x: number[], y: number[]) => {
  expect(x.length).toBe(y.length);
  x.forEach((v, i) => expect(Math.abs(v - y[i]!)).toBeLessThan(1e-12));
};

describe('selective scan decomposition', () => {
  const shapes: [number, number, number][] = [
    // [threads, items, L]: several chunks with a ragged tail, shorter than one chunk, exact
    // multiples, and the kernel's own 128 x 8.
    [4, 2, 37],
    [4, 2, 3],
    [4, 2, 16],
    [3, 5, 100],
    [128, 8, 2500],
  ];
  it.each(shapes)('threads %i, items %i, L %i: equals the recurrence from a saved state', (threads, items, L) => {
    const rng = new Rng(threads * 1000 + L);
    const { a, b } = randomProblem(rng, L);
    const h0 = rng.normal();
    const { h, final } = chunkedScan(a, b, h0, threads, items);
    const want = sequential(a, b, h0);
    close(h, want);
    expect(Math.abs(final - want[L - 1]!)).toBeLessThan(1e-12);
  });

  it('two resumed calls (final state of the first seeds the second) equal one call', () => {
    const rng = new Rng(7);
    const { a, b } = randomProblem(rng, 53);
    const h0 = rng.normal();
    const whole = chunkedScan(a, b, h0, 4, 2);
    const first = chunkedScan(a.slice(0, 24), b.slice(0, 24), h0, 4, 2);
    const second = chunkedScan(a.slice(24), b.slice(24), first.final, 4, 2);
    close([...first.h, ...second.h], whole.h);
  });
});

/** conv1d.cu's prefill indexing: outputs (pre-activation) and the new rolling state. */
function convPrefillMirror(x: number[], state: number[], w: number[]): { out: number[]; next: number[] } {
  const K = w.length;
  const L = x.length;
  const at = (j: number) => (j >= 0 ? x[j]! : state[K + j]!);
  const out = x.map((_, t) => w.reduce((acc, wk, k) => acc + wk * at(t - (K - 1) + k), 0));
  const next = w.map((_, k) => at(L - K + k));
  return { out, next };
}

/** The reference engine's step: shift left, append, dot. */
function convSteps(x: number[], state: number[], w: number[]): { out: number[]; next: number[] } {
  const s = state.slice();
  const out = x.map((v) => {
    s.copyWithin(0, 1);
    s[s.length - 1] = v;
    return w.reduce((acc, wk, k) => acc + wk * s[k]!, 0);
  });
  return { out, next: s };
}

describe('conv1d prefill indexing', () => {
  it.each([
    [4, 1],
    [4, 2],
    [4, 3],
    [4, 4],
    [4, 29],
    [3, 2],
    [2, 7],
  ])('d_conv %i, L %i: prefill from a saved state equals step by step', (K, L) => {
    const rng = new Rng(K * 100 + L);
    const x = Array.from({ length: L }, () => rng.normal());
    const state = Array.from({ length: K }, () => rng.normal());
    const w = Array.from({ length: K }, () => rng.normal());
    const got = convPrefillMirror(x, state, w);
    const want = convSteps(x, state, w);
    close(got.out, want.out);
    close(got.next, want.next);
  });
});

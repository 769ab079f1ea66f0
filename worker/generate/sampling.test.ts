import { describe, expect, it } from 'vitest';
import { argmax, headOf, Sampler, SamplingParamsError, selectFirst } from './sampling.ts';

const row = (...v: number[]) => Float32Array.from(v);

function histogram(s: Sampler, logits: Float32Array, n: number): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[s.sample(logits)]!++;
  return counts;
}

describe('Sampler', () => {
  it('greedy picks the argmax, ties to the lowest id', () => {
    const s = new Sampler({ temperature: 0, topP: 1, topK: 0 }, 5);
    expect(s.sample(row(0, 3, 1, 3, 2))).toBe(1);
    expect(s.sample(row(-5, -1, -1, -9, -2))).toBe(1);
    expect(argmax(row(2, 2, 2), 3)).toBe(0);
  });

  it('never picks a padding row (ids ≥ vocabSize), however large its logit', () => {
    const greedy = new Sampler({ temperature: 0, topP: 1, topK: 0 }, 3);
    expect(greedy.sample(row(0, 1, 0.5, 100, 100))).toBe(1);
    const hot = new Sampler({ temperature: 5, topP: 1, topK: 0, seed: 1 }, 3);
    const counts = histogram(hot, row(0, 0, 0, 100, 100), 2000);
    expect(counts[3]! + counts[4]!).toBe(0);
  });

  it('is reproducible from a seed and differs across seeds', () => {
    const logits = Float32Array.from({ length: 100 }, (_, i) => Math.sin(i));
    const draw = (seed: number) => {
      const s = new Sampler({ temperature: 1, topP: 0.95, topK: 50, seed }, 100);
      return Array.from({ length: 64 }, () => s.sample(logits));
    };
    expect(draw(7)).toEqual(draw(7));
    expect(draw(7)).not.toEqual(draw(8));
  });

  it('samples in proportion to softmax(logits / temperature)', () => {
    // p ∝ [1, 2, 4, 1] at T=1 (logits are logs); 20k draws: each frequency within 2%.
    const logits = row(0, Math.log(2), Math.log(4), 0);
    const counts = histogram(new Sampler({ temperature: 1, topP: 1, topK: 0, seed: 3 }, 4), logits, 20000);
    const expected = [1 / 8, 2 / 8, 4 / 8, 1 / 8];
    counts.forEach((c, i) => expect(Math.abs(c / 20000 - expected[i]!)).toBeLessThan(0.02));
    // T=2 flattens: p ∝ sqrt([1,2,4,1]).
    const flat = histogram(new Sampler({ temperature: 2, topP: 1, topK: 0, seed: 4 }, 4), logits, 20000);
    const z = 1 + Math.SQRT2 + 2 + 1;
    [1 / z, Math.SQRT2 / z, 2 / z, 1 / z].forEach((p, i) => expect(Math.abs(flat[i]! / 20000 - p)).toBeLessThan(0.02));
  });

  it('top-k keeps only the k most likely tokens (ties to the lowest id)', () => {
    const s = new Sampler({ temperature: 1, topP: 1, topK: 2, seed: 5 }, 5);
    const counts = histogram(s, row(1, 3, 2, 3, 0), 3000);
    expect(counts[0]! + counts[2]! + counts[4]!).toBe(0);
    expect(counts[1]).toBeGreaterThan(1000);
    expect(counts[3]).toBeGreaterThan(1000);
    // Ties at the cut: ids 1 and 2 share the 2nd place; only id 1 survives.
    const tie = histogram(new Sampler({ temperature: 1, topP: 1, topK: 2, seed: 6 }, 4), row(5, 1, 1, 0), 2000);
    expect(tie[2]! + tie[3]!).toBe(0);
    expect(tie[1]).toBeGreaterThan(0);
  });

  it('top-p keeps the smallest set whose probability reaches p', () => {
    // p = [0.5, 0.25, 0.125, 0.125]: top_p 0.7 keeps ids 0 and 1 (0.75 ≥ 0.7).
    const logits = row(Math.log(4), Math.log(2), 0, 0);
    const counts = histogram(new Sampler({ temperature: 1, topP: 0.7, topK: 0, seed: 9 }, 4), logits, 6000);
    expect(counts[2]! + counts[3]!).toBe(0);
    expect(Math.abs(counts[0]! / 6000 - 2 / 3)).toBeLessThan(0.03);
    // A tiny top_p always keeps the single most likely token.
    const one = histogram(new Sampler({ temperature: 1, topP: 1e-6, topK: 0, seed: 9 }, 4), logits, 200);
    expect(one[0]).toBe(200);
  });

  it('top-k and top-p together: top-p applies within the top k', () => {
    // Within top-2 of p ∝ [4, 2, 1, 1]: [2/3, 1/3]; top_p 0.5 then keeps only id 0.
    const counts = histogram(new Sampler({ temperature: 1, topP: 0.5, topK: 2, seed: 2 }, 4), row(Math.log(4), Math.log(2), 0, 0), 500);
    expect(counts[0]).toBe(500);
  });

  it('ignores -Infinity logits (masked tokens) and rejects NaN', () => {
    const s = new Sampler({ temperature: 1, topP: 0.9, topK: 0, seed: 1 }, 3);
    const counts = histogram(s, row(-Infinity, 0, -Infinity), 100);
    expect(counts).toEqual([0, 100, 0]);
    expect(() => s.sample(row(0, NaN, 1))).toThrow(/NaN/);
    expect(() => s.sample(row(-Infinity, -Infinity, -Infinity))).toThrow(/-Infinity/);
  });

  it('rejects bad parameters with a typed error', () => {
    const bad = [
      { temperature: -1, topP: 1, topK: 0 },
      { temperature: 1, topP: 0, topK: 0 },
      { temperature: 1, topP: 1.5, topK: 0 },
      { temperature: 1, topP: 1, topK: 1.5 },
      { temperature: NaN, topP: 1, topK: 0 },
      { temperature: 1, topP: 1, topK: 0, seed: -3 },
    ];
    for (const p of bad) expect(() => new Sampler(p, 10)).toThrow(SamplingParamsError);
    expect(() => new Sampler({ temperature: 1, topP: 1, topK: 0 }, 10).sample(new Float32Array(5))).toThrow(/fewer than/);
  });

  it('keeps exactly the top-p nucleus of a peaked 50k distribution (the head is found by lowering a floor)', () => {
    // Zipf-like, as LM outputs are: logit = -1.2·ln(rank) plus noise, ranks shuffled over the ids.
    // The nucleus at top_p 0.95 holds a few hundred ids, past the first probability floor.
    const V = 50280;
    const vocab = 50277;
    const logits = Float32Array.from({ length: V }, (_, i) => -1.2 * Math.log(1 + ((i * 7919) % V)) + 0.3 * Math.sin(i));
    const T = 0.8;
    const order = Array.from({ length: vocab }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
    const max = logits[order[0]!]!;
    const p = (i: number) => Math.exp((logits[i]! - max) / T);
    const total = order.reduce((acc, i) => acc + p(i), 0);
    const nucleus = new Set<number>();
    for (let acc = 0, j = 0; acc < 0.95 * total; j++) {
      nucleus.add(order[j]!);
      acc += p(order[j]!);
    }
    expect(nucleus.size).toBeGreaterThan(100);
    const s = new Sampler({ temperature: T, topP: 0.95, topK: 0, seed: 1 }, vocab);
    const seen = new Set<number>();
    for (let i = 0; i < 400; i++) {
      const id = s.sample(logits);
      expect(nucleus.has(id)).toBe(true);
      seen.add(id);
    }
    expect(seen.size).toBeGreaterThan(20);
  });

  it('keeps exactly the top-p mass of a flat distribution, where the head is the whole vocabulary', () => {
    // Flat logits defeat the probability floor: the whole vocabulary is the head.
    const V = 3000;
    const flat = Float32Array.from({ length: V }, (_, i) => Math.sin(i * 12.9898) * 0.1);
    const s = new Sampler({ temperature: 1, topP: 0.5, topK: 0, seed: 11 }, V);
    const counts = histogram(s, flat, 400);
    // Exactly the most likely half of the mass is eligible: every drawn id is above the median logit.
    const sorted = Array.from(flat).sort((a, b) => b - a);
    let acc = 0;
    const total = sorted.reduce((a, v) => a + Math.exp(v), 0);
    let cut = 0;
    while (acc < 0.5 * total) acc += Math.exp(sorted[cut++]!);
    const threshold = sorted[cut - 1]!;
    counts.forEach((c, i) => {
      if (c > 0) expect(flat[i]!).toBeGreaterThanOrEqual(threshold);
    });
  });

  it('does not hang when low temperature underflows most probabilities to zero', () => {
    const logits = Float32Array.from({ length: 1000 }, (_, i) => i);
    const s = new Sampler({ temperature: 0.001, topP: 0.9, topK: 40, seed: 1 }, 1000);
    expect(s.sample(logits)).toBe(999);
  });
});

describe('selectFirst (the kept tokens of top_k / top_p)', () => {
  /** What sorting keeps: the first m in order of p (ties: lowest id), m as selectFirst defines it. */
  function bySort(ids: number[], p: Float64Array, limit: number, target: number): number[] {
    const order = [...ids].sort((a, b) => p[b]! - p[a]! || a - b);
    let acc = 0;
    let m = 0;
    while (m < Math.min(limit, order.length)) {
      acc += p[order[m]!]!;
      m++;
      if (acc >= target) break;
    }
    return order.slice(0, m).sort((a, b) => a - b);
  }

  it('keeps the set a sort keeps, with ties, at any top_k and top_p mass', () => {
    let s = 12345;
    const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    for (let trial = 0; trial < 300; trial++) {
      const n = 1 + Math.floor(next() * 200);
      // Dyadic probabilities, many equal: every sum is exact, so the boundary is one answer.
      const p = Float64Array.from({ length: n + 5 }, () => 2 ** -Math.floor(next() * 6));
      const ids = Array.from({ length: n }, (_, i) => i + (trial % 5)); // a head need not start at 0
      const total = ids.reduce((t, id) => t + p[id]!, 0);
      const limit = next() < 0.3 ? n : 1 + Math.floor(next() * n);
      const target = next() < 0.2 ? Infinity : next() * total;
      const arr = Int32Array.from(ids);
      const m = selectFirst(arr, n, p, limit, target);
      const want = bySort(ids, p, limit, target);
      expect(m).toBe(want.length);
      expect([...arr.subarray(0, m)].sort((a, b) => a - b)).toEqual(want);
      // Nothing lost or repeated: the rest are the others.
      expect([...arr].sort((a, b) => a - b)).toEqual([...ids].sort((a, b) => a - b));
    }
  });
});

describe('headOf (where the kept tokens are looked for)', () => {
  it('holds every token top_k and top_p keep, and every token at least as likely as any it holds, over 1e-300 and below', () => {
    let s = 777;
    const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    for (let trial = 0; trial < 200; trial++) {
      const V = 1 + Math.floor(next() * 3000);
      // The most likely token is 1, as the sampler scales them; the rest spread over 2^-1070..1
      // (subnormals included), some 0, or (every third row) peaked within 1e-3 of it.
      const p = Float64Array.from({ length: V }, () => (next() < 0.05 ? 0 : trial % 3 === 0 ? 1 - next() * 0.999 : 2 ** (-next() * 1070)));
      p[Math.floor(next() * V)] = 1;
      const positive = p.filter((v) => v > 0).length;
      const total = p.reduce((t, v) => t + v, 0);
      const need = next() < 0.5 ? 0 : 1 + Math.floor(next() * positive);
      const target = next() < 0.3 ? 0 : next() * total;
      const out = new Int32Array(V);
      const n = headOf(p, V, need, target, out);
      const head = new Set(out.subarray(0, n));
      const least = Math.min(...[...head].map((i) => p[i]!));
      for (let i = 0; i < V; i++) if (p[i]! > 0 && p[i]! >= least) expect(head.has(i)).toBe(true);
      expect([...head].every((i) => p[i]! > 0)).toBe(true);
      const inHead = [...head].reduce((t, i) => t + p[i]!, 0);
      expect(n).toBeGreaterThanOrEqual(Math.max(need, 1));
      expect(inHead).toBeGreaterThanOrEqual(target);
    }
  });
});

// The host side of the ORT engine's attention layers: the window mask against the definition
// written out by position, the ring writes, the prefill piece size, and the RoPE tables against
// angles reduced exactly (BigInt fixed point), far beyond where fp32 angles fall apart.
import { describe, expect, it } from 'vitest';
import { hybridPrefillChunk, ropeAngle, ropeInvFreq, ropeTables, swapRingAxes, windowMask, writeRing } from './window-inputs.mjs';

/** 2*pi to 60 decimals. */
const TWO_PI_DIGITS = 6283185307179586476925286766559005768394338798750211641949889n; // x 10^-60
const FRAC_BITS = 160n;
const TWO_PI_FIXED = (TWO_PI_DIGITS << FRAC_BITS) / 10n ** 60n;

/** cos and sin of t * f with the product formed and reduced mod 2*pi exactly (f as the float64 it is). */
function exactCosSin(t: number, f: number): [number, number] {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, f);
  const bits = view.getBigUint64(0);
  const exponent = Number((bits >> 52n) & 0x7ffn) - 1075; // f = mantissa * 2^exponent
  const mantissa = (bits & ((1n << 52n) - 1n)) | (1n << 52n);
  const shift = BigInt(exponent) + FRAC_BITS;
  expect(shift >= 0n).toBe(true);
  const fixed = (BigInt(t) * mantissa) << shift; // t * f * 2^FRAC_BITS, exactly
  const reduced = Number(fixed % TWO_PI_FIXED) / 2 ** Number(FRAC_BITS);
  return [Math.cos(reduced), Math.sin(reduced)];
}

describe('RoPE tables', () => {
  it('match exactly reduced angles at positions up to 2^52, fp32 products do not', () => {
    const hd = 64;
    const inv = ropeInvFreq(10000, hd);
    expect(inv[0]).toBe(1);
    expect(inv[1]).toBeCloseTo(Math.pow(10000, -2 / 64), 15);
    let worstOurs = 0;
    let worstFp32 = 0;
    for (const t of [0, 10, 4095, 1_000_003, 10_000_000, 123_456_789, 2 ** 40 + 17, 2 ** 52 - 3]) {
      const { cos, sin } = ropeTables(inv, [t], 1);
      for (let i = 0; i < hd / 2; i++) {
        const [c, s] = exactCosSin(t, inv[i]!);
        worstOurs = Math.max(worstOurs, Math.abs(cos[i]! - c), Math.abs(sin[i]! - s), Math.abs(cos[hd / 2 + i]! - c));
        if (t === 10_000_000) worstFp32 = Math.max(worstFp32, Math.abs(Math.cos(Math.fround(Math.fround(t) * Math.fround(inv[i]!))) - c));
      }
    }
    expect(worstOurs).toBeLessThan(2e-7); // fp32 rounding of the result only
    expect(worstFp32).toBeGreaterThan(1e-2);
  });

  it('reduces angles to [-pi, pi]', () => {
    for (const t of [3, 1e6, 1e12]) {
      const a = ropeAngle(t, 0.7);
      expect(Math.abs(a)).toBeLessThanOrEqual(Math.PI + 1e-12);
    }
  });

  it('lays out [B, L, hd] rows with emb = concat(angle, angle)', () => {
    const inv = ropeInvFreq(100, 4);
    const { cos, sin } = ropeTables(inv, [5, 0], 2);
    expect(cos.length).toBe(2 * 2 * 4);
    // row (b=0, l=1) is position 6; row (b=1, l=0) is position 0
    expect(cos[4 + 1]).toBeCloseTo(Math.cos(6 * inv[1]!), 6);
    expect(cos[4 + 3]).toBeCloseTo(Math.cos(6 * inv[1]!), 6);
    expect(sin[8]).toBe(0);
    expect(cos[8]).toBe(1);
  });
});

describe('window mask', () => {
  /** Which absolute position each key column holds, by the definition (ring slot p mod W, then the new keys). */
  function expected(W: number, start: number, L: number): boolean[][] {
    const held: (number | null)[] = [];
    for (let s = 0; s < W; s++) {
      let p: number | null = null;
      for (let q = start - 1; q >= Math.max(0, start - W); q--) if (q % W === s) p = q;
      held.push(p);
    }
    for (let m = 0; m < L; m++) held.push(start + m);
    return Array.from({ length: L }, (_, l) => held.map((p) => p !== null && p <= start + l && start + l - p < W));
  }

  it.each([
    [5, 0, 3],
    [5, 3, 4],
    [5, 5, 1],
    [5, 17, 12],
    [1, 9, 3],
    [64, 10, 5],
    [3, 10_000_000, 4],
  ])('W %i, start %i, L %i: keys at p-W < j <= p are 0, the rest -inf', (W, start, L) => {
    const mask = windowMask(W, [start], L);
    const want = expected(W, start, L);
    for (let l = 0; l < L; l++) {
      for (let s = 0; s < W + L; s++) expect(mask[l * (W + L) + s] === 0).toBe(want[l]![s]);
    }
    // Every query sees itself, so no softmax row is all -inf.
    for (let l = 0; l < L; l++) expect(mask[l * (W + L) + W + l]).toBe(0);
  });

  it('builds one row block per batch member at its own position', () => {
    const mask = windowMask(4, [0, 9], 1);
    expect(Array.from(mask.subarray(0, 5))).toEqual([-Infinity, -Infinity, -Infinity, -Infinity, 0]);
    // position 9 sees 6..9: slots 0, 2, 3 hold positions 8, 6, 7; slot 1 holds 5, out of the window
    expect(Array.from(mask.subarray(5, 10))).toEqual([0, -Infinity, 0, 0, 0]);
  });
});

describe('ring writes', () => {
  it('put position p in slot p mod W of every KV head and keep only the last W', () => {
    const W = 3;
    const kvHeads = 2;
    const hd = 2;
    const ring = new Float32Array(kvHeads * W * hd);
    // rows = positions 7..11, each [KV, hd]: head 0 holds 10*p, head 1 holds 10*p + 1
    const fresh = Float32Array.from({ length: 5 * kvHeads * hd }, (_, i) => 10 * (7 + Math.floor(i / 4)) + (Math.floor(i / 2) % 2));
    writeRing(ring, fresh, W, kvHeads, hd, 7);
    // positions 9, 10, 11 survive in slots 0, 1, 2; the ring is [KV, W, hd]
    expect(Array.from(ring)).toEqual([90, 90, 100, 100, 110, 110, 91, 91, 101, 101, 111, 111]);
    writeRing(ring, Float32Array.of(5, 5, 6, 6), W, kvHeads, hd, 12); // position 12 -> slot 0
    expect(Array.from(ring)).toEqual([5, 5, 100, 100, 110, 110, 6, 6, 101, 101, 111, 111]);
  });

  it('converts between the .mstate layout [W, KV, hd] and the engine layout [KV, W, hd], per layer', () => {
    const layers = 2;
    const W = 3;
    const kv = 2;
    const hd = 2;
    const mstate = Float32Array.from({ length: layers * W * kv * hd }, (_, i) => i);
    const graph = swapRingAxes(mstate, layers, W, kv, hd);
    // layer 0, head 1, slot 2 = mstate [0][2][1] = (2 * 2 + 1) * 2 = 10
    expect(Array.from(graph.subarray((1 * W + 2) * hd, (1 * W + 2) * hd + hd))).toEqual([10, 11]);
    expect(Array.from(swapRingAxes(graph, layers, kv, W, hd))).toEqual(Array.from(mstate));
  });
});

describe('hybrid prefill pieces', () => {
  it('bound the attention scores and never exceed the configured chunk', () => {
    for (const [H, W] of [[4, 256], [12, 512], [12, 2048], [32, 4096]] as const) {
      const L = hybridPrefillChunk(H, W, 2048);
      expect(L).toBeGreaterThanOrEqual(64);
      if (L > 64) expect(4 * H * L * (W + L)).toBeLessThanOrEqual(64 * 1024 * 1024);
    }
    expect(hybridPrefillChunk(1, 8, 2048)).toBe(2048);
    expect(hybridPrefillChunk(4, 8, 3)).toBe(3);
  });
});

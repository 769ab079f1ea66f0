// The algebra of the hybrid's attention kernels (worker/native/src/kernels/window_attention.cu
// and rope_ring.cu), mirrored in float64 and held to the plain masked softmax: not an emulation
// of the kernels (no threads, no fp32), but the decomposition they rely on, checked where it
// can be checked without a GPU.
//   - prefill: query rows (token l, head in group g) flattened as l*G + g, blocks of kRows rows
//     of one KV head; keys max(0, first query - W + 1) .. last query in tiles; a key below
//     `start` from ring row (position mod W), the rest from the call's own k/v rows; mask
//     j <= p, p - j < W; online softmax in base 2 on queries pre-scaled by log2(e)/sqrt(hd);
//   - the ring write after prefill: only the last min(L, W) new rows;
//   - decode: the live positions max(0, t-W+1)..t cut into balanced splits, each split's keys
//     dealt to warps in groups, merged per warp, per block, then across splits;
//   - qkv_prep: biases, then RoPE on (i, i + hd/2) pairs over q heads and k heads lying back to
//     back in the row.
// The ring and mask formulation is also checked against the ORT engine's (window-inputs.mjs).
// If a kernel's decomposition changes, change its mirror here.
import { describe, expect, it } from 'vitest';
import { Rng } from '../../../shared/rng.ts';
import { ropeInvFreq, ropeTables, windowMask } from '../ort/window-inputs.mjs';

interface Shape {
  W: number;
  H: number;
  KV: number;
  hd: number;
}

/** One prefill call: a session at `start` with its ring, and L new rows of q | k | v (rotated). */
interface Prefill extends Shape {
  start: number;
  L: number;
  ringK: Float64Array; // [W][KV][hd]
  ringV: Float64Array;
  qkv: Float64Array; // [L][H*hd + 2*KV*hd]
}

const widths = (s: Shape) => ({ G: s.H / s.KV, Q: s.H * s.hd, KVW: s.KV * s.hd, ld: s.H * s.hd + 2 * s.KV * s.hd });

function randomPrefill(rng: Rng, shape: Shape, start: number, L: number, zeroRing = false): Prefill {
  const { KVW, ld } = widths(shape);
  // Scores of several units: the softmax is far from uniform, so a wrong mask shows.
  const gen = (n: number, scale: number) => Float64Array.from({ length: n }, () => (zeroRing ? 0 : rng.normal() * scale));
  const ringK = gen(shape.W * KVW, 1.5);
  const ringV = gen(shape.W * KVW, 1);
  const qkv = Float64Array.from({ length: L * ld }, () => rng.normal() * 1.5);
  return { ...shape, start, L, ringK, ringV, qkv };
}

/** The plain masked softmax, the reference engine's way: a key list, filtered per query. */
function plainPrefill(pb: Prefill): Float64Array {
  const { W, hd, start, L } = pb;
  const { G, Q, KVW, ld } = widths(pb);
  const keys: { pos: number; k: Float64Array; v: Float64Array }[] = [];
  for (let p = start - Math.min(start, W - 1); p < start; p++) {
    keys.push({ pos: p, k: pb.ringK.slice((p % W) * KVW, (p % W + 1) * KVW), v: pb.ringV.slice((p % W) * KVW, (p % W + 1) * KVW) });
  }
  for (let l = 0; l < L; l++) {
    keys.push({ pos: start + l, k: pb.qkv.slice(l * ld + Q, l * ld + Q + KVW), v: pb.qkv.slice(l * ld + Q + KVW, l * ld + Q + 2 * KVW) });
  }
  const out = new Float64Array(L * Q);
  for (let l = 0; l < L; l++) {
    const p = start + l;
    const visible = keys.filter((e) => e.pos <= p && p - e.pos < W);
    for (let h = 0; h < pb.H; h++) {
      const kv = Math.floor(h / G);
      const scores = visible.map((e) => {
        let dot = 0;
        for (let c = 0; c < hd; c++) dot += pb.qkv[l * ld + h * hd + c]! * e.k[kv * hd + c]!;
        return dot / Math.sqrt(hd);
      });
      const max = Math.max(...scores);
      const w = scores.map((s) => Math.exp(s - max));
      const total = w.reduce((a, b) => a + b, 0);
      visible.forEach((e, j) => {
        for (let c = 0; c < hd; c++) out[l * Q + h * hd + c] = out[l * Q + h * hd + c]! + (w[j]! / total) * e.v[kv * hd + c]!;
      });
    }
  }
  return out;
}

/** Where the prefill kernel reads key position kp of KV head kvh from. */
function keySource(pb: Prefill, kp: number): { from: 'ring' | 'new'; index: number } {
  return kp < pb.start ? { from: 'ring', index: kp % pb.W } : { from: 'new', index: kp - pb.start };
}

/** window_attention_prefill_kernel's decomposition. Returns the output and the keys each row saw. */
function kernelPrefill(pb: Prefill, kRows: number, kTileKeys: number): { out: Float64Array; seen: Map<string, Set<string>> } {
  const { W, hd, start, L } = pb;
  const { G, Q, KVW, ld } = widths(pb);
  const out = new Float64Array(L * Q).fill(NaN);
  const seen = new Map<string, Set<string>>(); // (l, head) -> "ring:s" | "new:m"
  const scaleLog2 = Math.LOG2E / Math.sqrt(hd);
  const totalRows = L * G;
  for (let kvh = 0; kvh < pb.KV; kvh++) {
    for (let row0 = 0; row0 < totalRows; row0 += kRows) {
      const lFirst = Math.floor(row0 / G);
      const lLast = Math.floor(Math.min(totalRows - 1, row0 + kRows - 1) / G);
      const keyLo = Math.max(0, start + lFirst - W + 1);
      const keyHi = start + lLast;
      const rows = Array.from({ length: kRows }, (_, r) => {
        const gr = row0 + r;
        const l = Math.floor(gr / G);
        const head = kvh * G + (gr % G);
        const valid = gr < totalRows;
        const q = Float64Array.from({ length: hd }, (_, c) => (valid ? pb.qkv[l * ld + head * hd + c]! * scaleLog2 : 0));
        return { valid, l, head, qpos: start + l, q, m: -Infinity, lsum: 0, acc: new Float64Array(hd) };
      });
      for (let k0 = keyLo; k0 <= keyHi; k0 += kTileKeys) {
        const tile = Array.from({ length: kTileKeys }, (_, k) => {
          const kp = k0 + k;
          if (kp > keyHi) return { kp, k: new Float64Array(hd), v: new Float64Array(hd), src: '' };
          const src = keySource(pb, kp);
          const at = src.from === 'ring' ? src.index * KVW + kvh * hd : src.index * ld + Q + kvh * hd;
          const kArr = src.from === 'ring' ? pb.ringK : pb.qkv;
          const vArr = src.from === 'ring' ? pb.ringV : pb.qkv;
          const vAt = src.from === 'ring' ? at : at + KVW;
          return { kp, k: kArr.slice(at, at + hd), v: vArr.slice(vAt, vAt + hd), src: `${src.from}:${src.index}` };
        });
        const nkeys = Math.min(kTileKeys, keyHi - k0 + 1);
        for (const row of rows) {
          const s = tile.map((t) => {
            const visible = row.valid && t.kp <= row.qpos && row.qpos - t.kp < W;
            if (!visible) return -Infinity;
            const key = `${row.l}:${row.head}`;
            if (!seen.has(key)) seen.set(key, new Set());
            seen.get(key)!.add(t.src);
            let dot = 0;
            for (let c = 0; c < hd; c++) dot += row.q[c]! * t.k[c]!;
            return dot;
          });
          const mNew = Math.max(row.m, ...s);
          let alpha = 1;
          let prob = s.map(() => 0);
          if (mNew !== -Infinity) {
            prob = s.map((x) => 2 ** (x - mNew));
            alpha = 2 ** (row.m - mNew);
          }
          row.lsum = row.lsum * alpha + prob.reduce((a, b) => a + b, 0);
          row.m = mNew;
          for (let c = 0; c < hd; c++) row.acc[c] = row.acc[c]! * alpha;
          for (let k = 0; k < nkeys; k++) for (let c = 0; c < hd; c++) row.acc[c] = row.acc[c]! + prob[k]! * tile[k]!.v[c]!;
        }
      }
      for (const row of rows) {
        if (!row.valid) continue;
        for (let c = 0; c < hd; c++) out[row.l * Q + row.head * hd + c] = row.acc[c]! / row.lsum;
      }
    }
  }
  return { out, seen };
}

/** ring_write_kernel: the last min(L, W) new rows into ring row (position mod W). */
function kernelRingWrite(pb: Prefill): { k: Float64Array; v: Float64Array } {
  const { W, start, L } = pb;
  const { Q, KVW, ld } = widths(pb);
  const k = pb.ringK.slice();
  const v = pb.ringV.slice();
  const n = Math.min(L, W);
  for (let i = 0; i < n * KVW; i++) {
    const m = L - n + Math.floor(i / KVW);
    const c = i % KVW;
    const at = ((start + m) % W) * KVW + c;
    k[at] = pb.qkv[m * ld + Q + c]!;
    v[at] = pb.qkv[m * ld + Q + KVW + c]!;
  }
  return { k, v };
}

/** The reference engine's ring update: every key of the list, oldest first, the last W surviving. */
function referenceRingWrite(pb: Prefill): { k: Float64Array; v: Float64Array } {
  const { W, start, L } = pb;
  const { Q, KVW, ld } = widths(pb);
  const k = pb.ringK.slice();
  const v = pb.ringV.slice();
  const entries: { pos: number; k: Float64Array; v: Float64Array }[] = [];
  for (let p = start - Math.min(start, W - 1); p < start; p++) {
    entries.push({ pos: p, k: pb.ringK.slice((p % W) * KVW, (p % W + 1) * KVW), v: pb.ringV.slice((p % W) * KVW, (p % W + 1) * KVW) });
  }
  for (let l = 0; l < L; l++) entries.push({ pos: start + l, k: pb.qkv.slice(l * ld + Q, l * ld + Q + KVW), v: pb.qkv.slice(l * ld + Q + KVW, l * ld + Q + 2 * KVW) });
  for (const e of entries.slice(-W)) {
    k.set(e.k, (e.pos % W) * KVW);
    v.set(e.v, (e.pos % W) * KVW);
  }
  return { k, v };
}

const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Number.isNaN(a[i]!) || Number.isNaN(b[i]!) ? Infinity : Math.abs(a[i]! - b[i]!));
  return m;
};

describe('window attention prefill decomposition', () => {
  // [W, H, KV, hd, start, L, kRows, kTileKeys]: the kernel's own 16 x 32, and small blocks and
  // tiles (many blocks, many tiles, ragged ends); positions below W, at W, after many wraps,
  // the first call of a session, W = 1, W larger than everything, far positions.
  const cases: [number, number, number, number, number, number, number, number][] = [
    [5, 4, 2, 8, 0, 17, 16, 32],
    [5, 4, 2, 8, 0, 17, 4, 3],
    [5, 4, 2, 8, 3, 2, 4, 3],
    [5, 4, 2, 8, 12, 37, 4, 3],
    [5, 3, 1, 6, 5, 5, 5, 2],
    [1, 2, 2, 4, 6, 4, 16, 32],
    [64, 2, 1, 16, 0, 37, 16, 32],
    [64, 2, 1, 16, 40, 37, 16, 32],
    [4, 2, 1, 16, 10_000_000, 9, 16, 32],
    [300, 6, 3, 4, 1000, 70, 16, 32],
  ];
  it.each(cases)('W %i, H %i, KV %i, hd %i, start %i, L %i, rows/block %i, keys/tile %i: equals the masked softmax', (W, H, KV, hd, start, L, kRows, kTile) => {
    const rng = new Rng(W * 7 + start + L * 13 + kRows);
    const pb = randomPrefill(rng, { W, H, KV, hd }, start, L);
    expect(maxDiff(kernelPrefill(pb, kRows, kTile).out, plainPrefill(pb))).toBeLessThan(1e-12);
  });

  it('a zero state that has counted P tokens treats its zero rows as live keys, like the reference', () => {
    const rng = new Rng(5);
    const pb = randomPrefill(rng, { W: 6, H: 2, KV: 1, hd: 8 }, 10_000_000, 4, true);
    expect(maxDiff(kernelPrefill(pb, 16, 32).out, plainPrefill(pb))).toBeLessThan(1e-12);
  });

  it('each query sees exactly the ring rows and new keys the ORT engine\'s window mask allows', () => {
    for (const [W, start, L] of [
      [5, 0, 7],
      [5, 3, 2],
      [5, 12, 9],
      [7, 7, 3],
      [4, 10_000_001, 6],
    ] as const) {
      const rng = new Rng(W + start);
      const pb = randomPrefill(rng, { W, H: 4, KV: 2, hd: 2 }, start, L);
      const { seen } = kernelPrefill(pb, 4, 3);
      const mask = windowMask(W, [start], L);
      for (let l = 0; l < L; l++) {
        const want = new Set<string>();
        for (let s = 0; s < W; s++) if (mask[l * (W + L) + s] === 0) want.add(`ring:${s}`);
        for (let m = 0; m < L; m++) if (mask[l * (W + L) + W + m] === 0) want.add(`new:${m}`);
        for (let h = 0; h < 4; h++) expect([...(seen.get(`${l}:${h}`) ?? [])].sort()).toEqual([...want].sort());
      }
    }
  });

  it.each([
    [5, 0, 3],
    [5, 3, 4],
    [5, 12, 37],
    [5, 4, 5],
    [64, 10, 37],
    [1, 9, 3],
  ])('W %i, start %i, L %i: the ring after the write equals the reference engine\'s', (W, start, L) => {
    const pb = randomPrefill(new Rng(W + start + L), { W, H: 2, KV: 1, hd: 4 }, start, L);
    const got = kernelRingWrite(pb);
    const want = referenceRingWrite(pb);
    expect(maxDiff(got.k, want.k)).toBe(0);
    expect(maxDiff(got.v, want.v)).toBe(0);
  });

  it('a prompt in two calls (ring written between) equals one call: the engine\'s prefill chunks', () => {
    const rng = new Rng(17);
    const shape = { W: 5, H: 4, KV: 2, hd: 8 };
    const whole = randomPrefill(rng, shape, 3, 29);
    const { ld, Q } = widths(shape);
    const split = 11;
    const first: Prefill = { ...whole, L: split, qkv: whole.qkv.slice(0, split * ld) };
    const ring = kernelRingWrite(first);
    const second: Prefill = { ...whole, start: whole.start + split, L: whole.L - split, ringK: ring.k, ringV: ring.v, qkv: whole.qkv.slice(split * ld) };
    const joined = new Float64Array(whole.L * Q);
    joined.set(kernelPrefill(first, 16, 32).out, 0);
    joined.set(kernelPrefill(second, 16, 32).out, split * Q);
    expect(maxDiff(joined, plainPrefill(whole))).toBeLessThan(1e-12);
    const ringWhole = kernelRingWrite(whole);
    expect(maxDiff(kernelRingWrite(second).k, ringWhole.k)).toBe(0);
  });
});

/** One decode row: its ring already holds the new key at row t mod W (qkv_prep wrote it). */
interface DecodeRow extends Shape {
  t: number;
  ringK: Float64Array;
  ringV: Float64Array;
  q: Float64Array; // [H*hd], rotated
}

/** The reference engine's attentionStep: ring rows 0 .. min(t+1, W)-1, plain softmax. */
function plainDecode(r: DecodeRow): Float64Array {
  const { W, H, hd } = r;
  const { G, KVW } = widths(r);
  const live = Math.min(r.t + 1, W);
  const out = new Float64Array(H * hd);
  for (let h = 0; h < H; h++) {
    const kv = Math.floor(h / G);
    const scores = Array.from({ length: live }, (_, s) => {
      let dot = 0;
      for (let c = 0; c < hd; c++) dot += r.q[h * hd + c]! * r.ringK[s * KVW + kv * hd + c]!;
      return dot / Math.sqrt(hd);
    });
    const max = Math.max(...scores);
    const w = scores.map((x) => Math.exp(x - max));
    const total = w.reduce((a, b) => a + b, 0);
    for (let s = 0; s < live; s++) for (let c = 0; c < hd; c++) out[h * hd + c] = out[h * hd + c]! + (w[s]! / total) * r.ringV[s * KVW + kv * hd + c]!;
  }
  return out;
}

/** attention_decode_splits and the engine's balanced split size. */
function splitsOf(W: number, splitKeysOption: number): { splits: number; splitKeys: number } {
  const splits = splitKeysOption <= 0 || splitKeysOption >= W ? 1 : Math.ceil(W / splitKeysOption);
  return { splits, splitKeys: Math.ceil(W / splits) };
}

interface Partial3 {
  acc: Float64Array;
  m: number;
  l: number;
}

/** window_attention_decode_kernel + window_attention_combine_kernel for one row. */
function kernelDecode(r: DecodeRow, splitKeysOption: number, warps = 4, group = 4): Float64Array {
  const { W, H, hd, t } = r;
  const { G, KVW } = widths(r);
  const { splits, splitKeys } = splitsOf(W, splitKeysOption);
  expect(splits * splitKeys).toBeGreaterThanOrEqual(W);
  const scaleLog2 = Math.LOG2E / Math.sqrt(hd);
  const out = new Float64Array(H * hd);
  const lo = Math.max(0, t - W + 1);
  for (let head = 0; head < H; head++) {
    const kvh = Math.floor(head / G);
    const q = Float64Array.from({ length: hd }, (_, c) => r.q[head * hd + c]! * scaleLog2);
    const parts: Partial3[] = [];
    for (let split = 0; split < splits; split++) {
      const sLo = lo + split * splitKeys;
      const sHi = Math.min(t, sLo + splitKeys - 1);
      const perWarp: Partial3[] = [];
      for (let w = 0; w < warps; w++) {
        let m = -Infinity;
        let l = 0;
        const acc = new Float64Array(hd);
        for (let k0 = sLo + w * group; k0 <= sHi; k0 += warps * group) {
          const keys = Array.from({ length: group }, (_, g) => k0 + g);
          const s = keys.map((kp) => {
            if (kp > sHi) return -Infinity;
            let dot = 0;
            for (let c = 0; c < hd; c++) dot += q[c]! * r.ringK[(kp % W) * KVW + kvh * hd + c]!;
            return dot;
          });
          const mNew = Math.max(m, ...s);
          const alpha = 2 ** (m - mNew);
          l *= alpha;
          for (let c = 0; c < hd; c++) acc[c] = acc[c]! * alpha;
          keys.forEach((kp, g) => {
            const p = 2 ** (s[g]! - mNew);
            l += p;
            if (kp <= sHi) for (let c = 0; c < hd; c++) acc[c] = acc[c]! + p * r.ringV[(kp % W) * KVW + kvh * hd + c]!;
          });
          m = mNew;
        }
        perWarp.push({ acc, m, l });
      }
      // The block's merge in shared memory; a warp that saw no key adds nothing.
      const M = Math.max(...perWarp.map((p) => p.m));
      const scale = perWarp.map((p) => (p.m === -Infinity ? 0 : 2 ** (p.m - M)));
      const L = perWarp.reduce((a, p, w) => a + p.l * scale[w]!, 0);
      const A = Float64Array.from({ length: hd }, (_, c) => perWarp.reduce((a, p, w) => a + p.acc[c]! * scale[w]!, 0));
      parts.push({ acc: A, m: M, l: L });
    }
    if (splits === 1) {
      for (let c = 0; c < hd; c++) out[head * hd + c] = parts[0]!.acc[c]! / parts[0]!.l;
      continue;
    }
    // The combine kernel: empty splits (m = -inf) are skipped.
    const M = Math.max(...parts.map((p) => p.m));
    let L = 0;
    const A = new Float64Array(hd);
    for (const p of parts) {
      if (p.m === -Infinity) continue;
      const f = 2 ** (p.m - M);
      L += p.l * f;
      for (let c = 0; c < hd; c++) A[c] = A[c]! + p.acc[c]! * f;
    }
    for (let c = 0; c < hd; c++) out[head * hd + c] = A[c]! / L;
  }
  return out;
}

describe('window attention decode decomposition', () => {
  // [W, H, KV, hd, t, split keys option]: short histories (trailing splits empty), exactly W,
  // many wraps, far positions, one split and many, warps with no keys.
  const cases: [number, number, number, number, number, number][] = [
    [5, 4, 2, 8, 0, 0],
    [5, 4, 2, 8, 1, 2],
    [5, 4, 2, 8, 3, 2],
    [5, 4, 2, 8, 4, 2],
    [5, 4, 2, 8, 12, 2],
    [5, 4, 2, 8, 12, 3],
    [5, 4, 2, 8, 10_000_000, 2],
    [37, 4, 2, 6, 100, 8],
    [37, 4, 2, 6, 20, 8],
    [2048, 3, 1, 4, 5000, 256],
    [2048, 3, 1, 4, 700, 256],
    [512, 2, 2, 4, 511, 0],
    [1, 2, 1, 4, 9, 256],
  ];
  it.each(cases)('W %i, H %i, KV %i, hd %i, t %i, split keys %i: equals the softmax over the live ring rows', (W, H, KV, hd, t, splitKeys) => {
    const rng = new Rng(W + t + splitKeys);
    const KVW = KV * hd;
    const row: DecodeRow = {
      W,
      H,
      KV,
      hd,
      t,
      ringK: Float64Array.from({ length: W * KVW }, () => rng.normal() * 1.5),
      ringV: Float64Array.from({ length: W * KVW }, () => rng.normal()),
      q: Float64Array.from({ length: H * hd }, () => rng.normal() * 1.5),
    };
    expect(maxDiff(kernelDecode(row, splitKeys), plainDecode(row))).toBeLessThan(1e-12);
  });

  it('balanced splits always cover the window', () => {
    for (const W of [1, 2, 5, 255, 256, 257, 512, 2048, 4097]) {
      for (const keys of [0, 1, 2, 3, 256, 5000]) {
        const { splits, splitKeys } = splitsOf(W, keys);
        expect(splits * splitKeys).toBeGreaterThanOrEqual(W);
        expect((splits - 1) * splitKeys).toBeLessThan(W); // no split starts past the window
      }
    }
  });
});

describe('qkv_prep indexing', () => {
  it('bias, then RoPE on (i, i + hd/2) pairs of q heads and k heads back to back, equals x*cos + rotate_half(x)*sin', () => {
    const rng = new Rng(3);
    const H = 4;
    const KV = 2;
    const hd = 8;
    const half = hd / 2;
    const Q = H * hd;
    const KVW = KV * hd;
    const invFreq = ropeInvFreq(10000, hd);
    for (const pos of [0, 1, 7, 4097, 10_000_000]) {
      const raw = Float64Array.from({ length: Q + 2 * KVW }, () => rng.normal());
      const bias = Float64Array.from({ length: Q + 2 * KVW }, () => rng.normal() * 0.1);
      const { cos, sin } = ropeTables(invFreq, [pos], 1);
      // The kernel's loop: idx over (q heads + k heads) * half, head j starting at j * hd.
      const got = raw.slice();
      for (let idx = 0; idx < (H + KV) * half; idx++) {
        const head = Math.floor(idx / half);
        const i = idx % half;
        const lo = head * hd + i;
        const hi = lo + half;
        const a = raw[lo]! + bias[lo]!;
        const b = raw[hi]! + bias[hi]!;
        got[lo] = a * cos[i]! - b * sin[i]!;
        got[hi] = b * cos[i]! + a * sin[i]!;
      }
      for (let idx = 0; idx < KVW; idx++) got[Q + KVW + idx] = raw[Q + KVW + idx]! + bias[Q + KVW + idx]!;
      // The definition, head by head: x*cos(emb) + rotate_half(x)*sin(emb), emb = concat(angle, angle).
      const want = raw.map((v, i) => v + bias[i]!);
      for (let head = 0; head < H + KV; head++) {
        const x = want.slice(head * hd, (head + 1) * hd);
        const rot = Float64Array.from({ length: hd }, (_, c) => (c < half ? -x[c + half]! : x[c - half]!));
        for (let c = 0; c < hd; c++) want[head * hd + c] = x[c]! * cos[c]! + rot[c]! * sin[c]!;
      }
      expect(maxDiff(got, want)).toBeLessThan(1e-12);
    }
  });
});

// Host-side inputs of a hybrid's attention layers in the ONNX graph (see attention-graph.ts):
// the RoPE tables and the window mask for a call, and the ring update after it. Everything
// that depends on a session's absolute position is computed here, so the graph never
// multiplies a large position in fp32 (at position 10^7 an fp32 angle t * inv_freq is off by
// tenths of a radian). Angles are formed and reduced mod 2*pi in double-double (ropeAngle),
// so the tables are exact to fp32 rounding at any position below 2^53.
//
// Plain JavaScript: the ORT thread (ort-thread.mjs) imports it, and a worker thread does not
// inherit the TypeScript loader of every runner.

/**
 * inv_freq[i] = theta^(-2i/hd), i < hd/2, in float64.
 * @param {number} theta
 * @param {number} hd
 */
export function ropeInvFreq(theta, hd) {
  return Float64Array.from({ length: hd / 2 }, (_, i) => Math.pow(theta, (-2 * i) / hd));
}

// 2*pi as the sum of two doubles (hi + lo), for reducing angles without losing their low bits.
const TWO_PI_HI = 6.283185307179586;
const TWO_PI_LO = 2.4492935982947064e-16;

/** a * b = p + e exactly (Dekker's product; the operands split into 26-bit halves). */
function twoProduct(a, b) {
  const p = a * b;
  const split = (x) => {
    const c = 134217729 * x; // 2^27 + 1
    const hi = c - (c - x);
    return [hi, x - hi];
  };
  const [ah, al] = split(a);
  const [bh, bl] = split(b);
  const e = ah * bh - p + ah * bl + al * bh + al * bl;
  return [p, e];
}

/**
 * t * f reduced to about [-pi, pi], with the product and the reduction carried in double-double:
 * as exact at t = 10^12 as at t = 10 (a plain float64 product is off by ~1e-4 rad at 10^12).
 */
export function ropeAngle(t, f) {
  const [p, e] = twoProduct(t, f);
  const k = Math.round(p / TWO_PI_HI);
  const [q, qe] = twoProduct(k, TWO_PI_HI);
  return p - q + (e - qe) - k * TWO_PI_LO; // p - q is exact: the two are within a few ulps of each other
}

/**
 * cos and sin of emb = concat(angle, angle), angle = t * inv_freq, for positions
 * starts[b] .. starts[b] + L - 1 of each batch row: [B, L, hd] each.
 * @param {Float64Array} invFreq
 * @param {readonly number[]} starts
 * @param {number} L
 */
export function ropeTables(invFreq, starts, L) {
  const half = invFreq.length;
  const hd = 2 * half;
  const cos = new Float32Array(starts.length * L * hd);
  const sin = new Float32Array(starts.length * L * hd);
  starts.forEach((start, b) => {
    for (let l = 0; l < L; l++) {
      const t = start + l;
      const row = (b * L + l) * hd;
      for (let i = 0; i < half; i++) {
        const angle = ropeAngle(t, invFreq[i]);
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        cos[row + i] = c;
        cos[row + half + i] = c;
        sin[row + i] = s;
        sin[row + half + i] = s;
      }
    }
  });
  return { cos, sin };
}

/**
 * The additive mask [B, L, W + L] of a call: keys are the ring's W slots, then the call's L new
 * keys. Query l of row b sits at position p = starts[b] + l and sees keys at p - W < j <= p:
 * ring slot s holds position starts[b] - 1 - ((starts[b] - 1 - s) mod W) (live only when that is
 * >= 0: a session's first tokens have fewer predecessors), new key m holds starts[b] + m.
 * @param {number} W
 * @param {readonly number[]} starts
 * @param {number} L
 */
export function windowMask(W, starts, L) {
  const S = W + L;
  const mask = new Float32Array(starts.length * L * S).fill(-Infinity);
  starts.forEach((start, b) => {
    for (let l = 0; l < L; l++) {
      const p = start + l;
      const row = (b * L + l) * S;
      for (let s = 0; s < W; s++) {
        const held = start - 1 - ((((start - 1 - s) % W) + W) % W);
        if (held >= 0 && p - held < W) mask[row + s] = 0;
      }
      for (let m = Math.max(0, l - W + 1); m <= l; m++) mask[row + W + m] = 0;
    }
  });
  return mask;
}

/**
 * Write a call's new keys (or values) of one batch row into its ring: position start + m goes
 * to slot (start + m) mod W of every KV head; only the last W of them survive. The ring is
 * KV-major [KV, W, hd] (each head's window contiguous, as the graph's MatMuls read it); the
 * new rows come as the graph returns them, [L, KV, hd].
 * @param {Float32Array} ring [KV * W * hd]
 * @param {Float32Array} fresh [L * KV * hd] (this row's new keys, rotated)
 * @param {number} W
 * @param {number} kvHeads
 * @param {number} hd
 * @param {number} start absolute position of fresh's first row
 */
export function writeRing(ring, fresh, W, kvHeads, hd, start) {
  const width = kvHeads * hd;
  const L = fresh.length / width;
  for (let m = Math.max(0, L - W); m < L; m++) {
    const slot = (start + m) % W;
    for (let kv = 0; kv < kvHeads; kv++) {
      ring.set(fresh.subarray(m * width + kv * hd, m * width + (kv + 1) * hd), (kv * W + slot) * hd);
    }
  }
}

/**
 * Swap a ring's first two axes, layer by layer: [layers, a, b, hd] -> [layers, b, a, hd].
 * The `.mstate` layout is [W, KV, hd] per layer (slot-major, like a KV cache); the ORT engine
 * keeps [KV, W, hd]; import and export convert.
 * @param {Float32Array} data
 * @param {number} layers
 * @param {number} a
 * @param {number} b
 * @param {number} hd
 */
export function swapRingAxes(data, layers, a, b, hd) {
  const out = new Float32Array(data.length);
  const layer = a * b * hd;
  for (let l = 0; l < layers; l++) {
    for (let i = 0; i < a; i++) {
      for (let j = 0; j < b; j++) {
        out.set(data.subarray(l * layer + (i * b + j) * hd, l * layer + (i * b + j + 1) * hd), l * layer + (j * a + i) * hd);
      }
    }
  }
  return out;
}

/** Bytes the scores of one attention layer may take in one prefill call. */
const SCORE_BUDGET_BYTES = 64 * 1024 * 1024;

/**
 * The longest prefill piece (<= maxChunk, >= 64) whose attention scores [H, L, W + L] stay within
 * SCORE_BUDGET_BYTES: a prompt runs in such pieces, the state carrying between them.
 * @param {number} H
 * @param {number} W
 * @param {number} maxChunk
 */
export function hybridPrefillChunk(H, W, maxChunk) {
  let L = maxChunk;
  while (L > 64 && 4 * H * L * (W + L) > SCORE_BUDGET_BYTES) L = Math.floor(L / 2);
  return Math.max(Math.min(L, maxChunk), 1);
}

// Picks the next token from one row of logits: greedy, or temperature + top-k + top-p
// sampling with a seedable RNG (a seed makes a reply reproducible). Ids at or above the
// tokenizer's vocabSize are the embedding's padding rows (50277 → 50280 for GPT-NeoX
// vocabularies): they decode to nothing and are never picked.
import { Rng } from '../../shared/rng.ts';
import { nativeExpRow, nativeRowMax, type ExpRow, type RowMax } from './native-exp.ts';

export interface SamplingParams {
  /** 0 = greedy (argmax, ties to the lowest id). */
  temperature: number;
  /** Nucleus: keep the smallest set of most likely tokens whose probability reaches topP (1 = off). */
  topP: number;
  /** Keep only the K most likely tokens (0 = off). */
  topK: number;
  seed?: number;
}

export class SamplingParamsError extends Error {
  readonly code = 'invalid_request' as const;
  constructor(message: string) {
    super(message);
    this.name = 'SamplingParamsError';
  }
}

export function validateSamplingParams(p: SamplingParams): void {
  if (!Number.isFinite(p.temperature) || p.temperature < 0) throw new SamplingParamsError(`temperature must be ≥ 0, got ${p.temperature}`);
  if (!Number.isFinite(p.topP) || p.topP <= 0 || p.topP > 1) throw new SamplingParamsError(`top_p must be in (0, 1], got ${p.topP}`);
  if (!Number.isInteger(p.topK) || p.topK < 0) throw new SamplingParamsError(`top_k must be a whole number ≥ 0, got ${p.topK}`);
  if (p.seed !== undefined && (!Number.isInteger(p.seed) || p.seed < 0 || p.seed > 0xffffffff)) {
    throw new SamplingParamsError(`seed must be a whole number in [0, 2^32), got ${p.seed}`);
  }
}

// Scratch buffers shared by every Sampler: sample() is synchronous and never re-entered,
// and a scheduler holds one Sampler per active sequence (hundreds × a 50k vocabulary would
// otherwise keep ~0.6 MB each).
let scratchCand = new Int32Array(0);
let scratchProbs = new Float64Array(0);

export interface SamplerOptions {
  /**
   * The softmax numerators of a row: by default the native addon's where it runs here
   * (native-exp.ts), else Math.exp; null: always Math.exp.
   */
  readonly expRow?: ExpRow | null;
  /** A row's largest logit, where it is and its first NaN: by default the native addon's where it runs here, else a loop; null: always the loop. */
  readonly rowMax?: RowMax | null;
}

export class Sampler {
  private readonly rng: Rng;
  private readonly expRow: ExpRow | undefined;
  private readonly rowMax: RowMax;

  constructor(
    readonly params: SamplingParams,
    readonly vocabSize: number,
    options: SamplerOptions = {},
  ) {
    validateSamplingParams(params);
    this.expRow = options.expRow === undefined ? nativeExpRow() : (options.expRow ?? undefined);
    this.rowMax = (options.rowMax === undefined ? nativeRowMax() : options.rowMax) ?? rowMaxLoop;
    if (!Number.isInteger(vocabSize) || vocabSize <= 0) throw new SamplingParamsError(`vocabSize must be a positive whole number, got ${vocabSize}`);
    // Unseeded samplers still use our RNG (seeded from Math.random) so there is one code path.
    this.rng = new Rng(params.seed ?? Math.floor(Math.random() * 0x100000000));
  }

  /** One token id from `logits` (one row; entries from vocabSize on are ignored). */
  sample(logits: Float32Array): number {
    const V = this.vocabSize;
    if (logits.length < V) throw new SamplingParamsError(`logits row has ${logits.length} entries, fewer than the vocabulary's ${V}`);
    // Greedy: the first pass alone (a NaN is skipped, as argmax skips it).
    if (this.params.temperature === 0) return this.rowMax(logits, V).at;

    // Unnormalized probabilities by id, relative to the most likely token.
    if (scratchProbs.length < V) {
      scratchProbs = new Float64Array(V);
      scratchCand = new Int32Array(V);
    }
    const probs = scratchProbs;
    const { max, at, nanAt } = this.rowMax(logits, V);
    if (nanAt >= 0) throw new Error(`logit ${nanAt} is NaN`);
    if (max === -Infinity) throw new Error('every logit is -Infinity: nothing can be sampled');
    if (max === Infinity) return at;
    const invT = 1 / this.params.temperature;
    let total = 0;
    let finite = 0; // a token whose probability underflows to 0 cannot be drawn anyway
    if (this.expRow) {
      ({ total, positive: finite } = this.expRow(logits, V, max, invT, probs));
    } else {
      for (let i = 0; i < V; i++) {
        const p = Math.exp((logits[i]! - max) * invT);
        probs[i] = p;
        total += p;
        if (p > 0) finite++;
      }
    }
    const { topK, topP } = this.params;
    if (!((topK > 0 && topK < finite) || topP < 1)) {
      let u = this.rng.next() * total;
      let last = 0;
      for (let i = 0; i < V; i++) {
        if (probs[i] === 0) continue;
        last = i;
        u -= probs[i]!;
        if (u < 0) return i;
      }
      return last; // rounding left u a hair above zero
    }

    // Truncation keeps the most likely tokens (ties: lowest id first), from a head that
    // provably holds them: every token above a floor under which there are top_k tokens and
    // the top_p mass (headOf).
    const target = topP * total;
    const need = topK > 0 ? Math.min(topK, finite) : 0;
    const cand = scratchCand;
    const n = headOf(probs, V, need, topP < 1 ? target : 0, cand);
    // The kept tokens: the head's first in order of probability (ties: lowest id first), as
    // many as top_k allows and no more than the top_p mass needs (at least one). Selected,
    // not sorted: a heavy-tailed row's head is most of the vocabulary (a Zipf row of 50k at
    // top_p 0.95 kept ~30k), and sorting it took 16 ms a draw.
    const keep = selectFirst(cand, n, probs, need > 0 ? Math.min(need, n) : n, topP < 1 ? target : Infinity);
    let sum = 0;
    for (let j = 0; j < keep; j++) sum += probs[cand[j]!]!;
    let u = this.rng.next() * sum;
    for (let j = 0; j < keep; j++) {
      u -= probs[cand[j]!]!;
      if (u < 0) return cand[j]!;
    }
    return cand[keep - 1]!;
  }
}

/** Buckets by binary exponent (headOf): tokens, and their mass. */
const bucketCount = new Int32Array(2048);
const bucketMass = new Float64Array(2048);
const littleEndian = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/**
 * The head of a row of probabilities p[0, V) (the largest 1, some above 0) that holds its first
 * `need` tokens and `target` of its mass: into out, the ids of every p at or above a floor;
 * returns how many. First the tokens above 1e-3, one pass, enough for a peaked row. Else two
 * passes: one counts tokens and mass by binary exponent (read from the float64's bits), one
 * collects those at or above the highest exponent that holds enough. (A floor lowered tenfold
 * until the head was big enough took a pass per step: 7 ms a draw at temperature 0.02 with
 * top_k 1000, whose 1000th token is ~1e-300 of the first.)
 */
export function headOf(p: Float64Array, V: number, need: number, target: number, out: Int32Array): number {
  // The mass is summed in another order than the draw's, so ask for a hair more: at worst a
  // few more tokens in the head.
  const want = target * (1 + 1e-12);
  let n = 0;
  let mass = 0;
  for (let i = 0; i < V; i++) {
    const v = p[i]!;
    if (v >= 1e-3) {
      out[n++] = i;
      mass += v;
    }
  }
  if (n > 0 && n >= need && mass >= want) return n;
  bucketCount.fill(0);
  bucketMass.fill(0);
  const bits = new Uint32Array(p.buffer, p.byteOffset, 2 * V);
  const hiWord = littleEndian ? 1 : 0;
  for (let i = 0; i < V; i++) {
    const v = p[i]!;
    if (v > 0) {
      const e = (bits[2 * i + hiWord]! >>> 20) & 0x7ff;
      bucketCount[e]!++;
      bucketMass[e]! += v;
    }
  }
  let floor = 0;
  let count = 0;
  mass = 0;
  for (let e = 2047; e >= 0; e--) {
    count += bucketCount[e]!;
    mass += bucketMass[e]!;
    if (count > 0 && count >= need && mass >= want) {
      floor = e;
      break;
    }
  }
  n = 0;
  for (let i = 0; i < V; i++) if (p[i]! > 0 && ((bits[2 * i + hiWord]! >>> 20) & 0x7ff) >= floor) out[n++] = i;
  return n;
}

/**
 * Rearranges ids[0, n) so that ids[0, m) are the first m of them in order of p (descending;
 * ties: lowest id first), for the smallest m >= 1 with m = limit or their p summing to at least
 * `target` (m = min(limit, n) when the sum never gets there); returns m. The m come in no
 * particular order. A quickselect that carries the mass of what it keeps: each round splits the
 * range around a pivot in that order and keeps or drops the side before it whole, so a draw
 * costs a few passes over the ids, not a sort.
 */
export function selectFirst(ids: Int32Array, n: number, p: Float64Array, limit: number, target: number): number {
  // ids[0, lo) are kept (their mass `mass`, below target, lo below limit); m lies in (lo, hi].
  let lo = 0;
  let hi = n;
  let mass = 0;
  while (lo < hi) {
    const mid = lo + ((hi - lo) >> 1);
    const pivot = ids[mid]!;
    const pp = p[pivot]!;
    ids[mid] = ids[hi - 1]!;
    ids[hi - 1] = pivot;
    let w = lo;
    let before = 0;
    for (let k = lo; k < hi - 1; k++) {
      const id = ids[k]!;
      const pi = p[id]!;
      if (pi > pp || (pi === pp && id < pivot)) {
        ids[k] = ids[w]!;
        ids[w++] = id;
        before += pi;
      }
    }
    ids[hi - 1] = ids[w]!;
    ids[w] = pivot;
    if (w >= limit || mass + before >= target) {
      hi = w; // m is among those before the pivot (there are some: lo < limit and mass < target)
      continue;
    }
    mass += before + pp;
    lo = w + 1;
    if (lo >= limit || mass >= target) return lo;
  }
  return lo;
}

/** rowMax in JavaScript (native-exp.ts, RowMax): the largest entry that is not NaN (−∞ for none), its lowest index (0 for none), the first NaN's (−1 for none). */
export function rowMaxLoop(logits: Float32Array, n: number): { max: number; at: number; nanAt: number } {
  let max = -Infinity;
  let at = 0;
  let nanAt = -1;
  for (let i = 0; i < n; i++) {
    const v = logits[i]!;
    if (v > max) {
      max = v;
      at = i;
    } else if (nanAt < 0 && Number.isNaN(v)) {
      nanAt = i;
    }
  }
  return { max, at, nanAt };
}

/** Index of the largest of the first `n` entries (NaN skipped); the lowest index on ties, 0 when none is above −∞. */
export function argmax(logits: Float32Array, n: number): number {
  return rowMaxLoop(logits, n).at;
}

// The sampler's passes over a row of float32 logits in vectors (worker/generate/sampling.ts):
// its first pass (rowMax: the largest logit, where, the first NaN), on mamba_cpu.h's float
// vectors, and its softmax numerators p[i] = exp((x[i] − max) · invT) in float64 and their
// sum (expRow), 8 (AVX-512) or 4 (AVX2) lanes at a time. In JavaScript, on host F, the row's
// 50k `Math.exp` calls took 0.5 ms of a temperature draw (a 1.5 ms int4 decode step beside it).
//
// exp(v) = 2^k · e^r with k = round(v / ln 2) and r = v − k · ln 2 (ln 2 in two parts, so r is
// exact to ~1e-19), e^r by its Taylor series to r^13 (|r| <= ln 2 / 2: the next term is below
// 2e-17 of the sum). 2^k is applied in two halves, so results down to the subnormals come out
// as `Math.exp` gives them; below −745.2 both are 0. Measured against `Math.exp` over the range
// a softmax meets ([−745, 0]): within 3e-16 relative (worker/generate/native-exp.test.ts).
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "mamba_cpu.h"

namespace mamba_cpu {

struct ExpRowResult {
  double total = 0;     // Σ p, in lanes, then across them
  int64_t positive = 0; // how many p are above 0 (not underflowed)
};

#if !defined(MAMBA_CPU_AVX2)
using DVec = __m512d;
constexpr int kDLanes = 8;
inline DVec dSet1(double v) { return _mm512_set1_pd(v); }
inline DVec dLoadFloats(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
inline DVec dAdd(DVec a, DVec b) { return _mm512_add_pd(a, b); }
inline DVec dSub(DVec a, DVec b) { return _mm512_sub_pd(a, b); }
inline DVec dMul(DVec a, DVec b) { return _mm512_mul_pd(a, b); }
inline DVec dFma(DVec a, DVec b, DVec c) { return _mm512_fmadd_pd(a, b, c); }
inline DVec dFnma(DVec a, DVec b, DVec c) { return _mm512_fnmadd_pd(a, b, c); }
inline DVec dMax(DVec a, DVec b) { return _mm512_max_pd(a, b); }
inline DVec dRound(DVec v) { return _mm512_roundscale_pd(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/** p · 2^k for integral k in [−1076, 1024] (two steps, each exact while the result is normal). */
inline DVec dScale2(DVec p, DVec k) {
  const DVec half = dRound(dMul(k, dSet1(0.5)));
  return _mm512_scalef_pd(_mm512_scalef_pd(p, half), dSub(k, half));
}
inline void dStore(double* p, DVec v) { _mm512_storeu_pd(p, v); }
inline int64_t dPositives(DVec v) { return __builtin_popcount(unsigned(_mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_GT_OQ))); }
inline double dSum(DVec v) { return _mm512_reduce_add_pd(v); }
#else
using DVec = __m256d;
constexpr int kDLanes = 4;
inline DVec dSet1(double v) { return _mm256_set1_pd(v); }
inline DVec dLoadFloats(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
inline DVec dAdd(DVec a, DVec b) { return _mm256_add_pd(a, b); }
inline DVec dSub(DVec a, DVec b) { return _mm256_sub_pd(a, b); }
inline DVec dMul(DVec a, DVec b) { return _mm256_mul_pd(a, b); }
inline DVec dFma(DVec a, DVec b, DVec c) { return _mm256_fmadd_pd(a, b, c); }
inline DVec dFnma(DVec a, DVec b, DVec c) { return _mm256_fnmadd_pd(a, b, c); }
inline DVec dMax(DVec a, DVec b) { return _mm256_max_pd(a, b); }
inline DVec dRound(DVec v) { return _mm256_round_pd(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/** 2^k for integral k in [−1022, 1023], from its exponent bits. */
inline DVec dPow2(DVec k) {
  const __m128i ki = _mm256_cvtpd_epi32(k);
  const __m256i bits = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(ki), _mm256_set1_epi64x(1023)), 52);
  return _mm256_castsi256_pd(bits);
}
/** p · 2^k for integral k in [−1076, 1024] (two steps, each exact while the result is normal). */
inline DVec dScale2(DVec p, DVec k) {
  const DVec half = dRound(dMul(k, dSet1(0.5)));
  return dMul(dMul(p, dPow2(half)), dPow2(dSub(k, half)));
}
inline void dStore(double* p, DVec v) { _mm256_storeu_pd(p, v); }
inline int64_t dPositives(DVec v) { return __builtin_popcount(unsigned(_mm256_movemask_pd(_mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_GT_OQ)))); }
inline double dSum(DVec v) {
  const __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}
#endif

/** e^v for v <= 0 (a lane below −745.2 gives 0, as Math.exp does). */
inline DVec dExpNonPositive(DVec v) {
  const DVec lo = dSet1(-746.0);
  v = dMax(v, lo);
  const DVec k = dRound(dMul(v, dSet1(1.4426950408889634)));
  // ln 2 = hi + lo: hi has its last 11 bits 0, so k · hi is exact for |k| < 2^11.
  DVec r = dFnma(k, dSet1(6.93147180369123816490e-01), v);
  r = dFnma(k, dSet1(1.90821492927058770002e-10), r);
  // Horner from 1/13! down to 1.
  static constexpr double kInvFactorial[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320, 1.0 / 362880,
                                              1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800};
  DVec p = dSet1(kInvFactorial[13]);
  for (int i = 12; i >= 0; i--) p = dFma(p, r, dSet1(kInvFactorial[i]));
  return dScale2(p, k);
}

/**
 * out[i] = exp((x[i] − max) · invT) for i < n (max is at least every x[i], invT > 0), in
 * float64; returns their sum and how many are above 0. x has no NaN (the sampler checks).
 */
inline ExpRowResult expRow(const float* x, int64_t n, double max, double invT, double* out) {
  const DVec vmax = dSet1(max), vinv = dSet1(invT);
  DVec total = dSet1(0.0);
  ExpRowResult r;
  int64_t i = 0;
  for (; i + kDLanes <= n; i += kDLanes) {
    const DVec p = dExpNonPositive(dMul(dSub(dLoadFloats(x + i), vmax), vinv));
    dStore(out + i, p);
    total = dAdd(total, p);
    r.positive += dPositives(p);
  }
  r.total = dSum(total);
  for (; i < n; i++) {
    const double p = std::exp((double(x[i]) - max) * invT);
    out[i] = p;
    r.total += p;
    if (p > 0) r.positive++;
  }
  return r;
}

struct RowMaxResult {
  float max = -INFINITY;  // the largest value that is not NaN (−∞ for none)
  int64_t at = 0;         // the lowest index holding it; 0 when max is −∞
  int64_t nanAt = -1;     // the lowest index of a NaN; −1 for none
};

/**
 * The sampler's first pass over a row (worker/generate/sampling.ts): its largest value that is
 * not NaN, the lowest index holding it (ties between −0 and +0 count as equal, as `>` does in
 * JavaScript), and the lowest index of a NaN. Two passes over n floats, in vectors: in
 * JavaScript the same loop took ~60 µs for a row of 50k on host F, a third of a draw.
 */
inline RowMaxResult rowMax(const float* x, int64_t n) {
  RowMaxResult r;
  V::F vmax = V::set1(-INFINITY);
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) {
    const V::F v = V::load(x + i);
    if (r.nanAt < 0) {
      const unsigned nan = V::nanMask(v);
      if (nan) r.nanAt = i + __builtin_ctz(nan);
    }
    // MAXPS returns its second operand where either is NaN: a NaN lane of v keeps vmax.
    vmax = V::max(v, vmax);
  }
  float max = V::maxOf(vmax);
  for (; i < n; i++) {
    if (std::isnan(x[i])) {
      if (r.nanAt < 0) r.nanAt = i;
    } else if (x[i] > max) {
      max = x[i];
    }
  }
  r.max = max;
  if (max == -INFINITY) return r;  // nothing above −∞: index 0, as the sampler's argmax gives
  const V::F vm = V::set1(max);
  for (i = 0; i + V::W <= n; i += V::W) {
    const unsigned eq = V::eqMask(V::load(x + i), vm);
    if (eq) {
      r.at = i + __builtin_ctz(eq);
      return r;
    }
  }
  for (; i < n; i++) {
    if (x[i] == max) {
      r.at = i;
      return r;
    }
  }
  return r;  // not reached: max is one of the values
}

}  // namespace mamba_cpu

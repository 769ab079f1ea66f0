// What a hybrid's attention layer does to q, k and v between the projection and the attention:
// the q/k/v biases, RoPE, and the writes into the per-session key/value rings.
//
// RoPE (HF LLaMA, rotate-half): for i < hd/2, angle = position * inv_freq[i] and
//   x'[i]        = x[i] * cos - x[i + hd/2] * sin
//   x'[i + hd/2] = x[i + hd/2] * cos + x[i] * sin
// which is x * cos(emb) + rotate_half(x) * sin(emb) with emb = concat(angle, angle).
//
// The angle is computed in float64 on the device, from the int64 position and a float64
// inv_freq table (uploaded once at load). Why not fp32: at position 10^7 the fp32 product
// t * inv_freq is off by up to ~0.5 radian (its ulp at 10^7 is 1). Why not host tables: the
// position already goes up as one int64 per row (the ring row and the window mask need it),
// and a decode step replayed from a CUDA graph reads it from a fixed device buffer; host
// tables would add a [rows][hd] upload per step and per prefill chunk. The product and its
// reduction mod 2*pi are carried in double-double (rope_angle, the device twin of
// window-inputs.mjs' ropeAngle): exact to ~1e-16 rad at any position below 2^53, and sincos
// then takes its fast path (a small argument: no Payne-Hanek reduction, no local memory).
// The float64 cost is a dozen fp64 operations and one sincos per (token, i), shared by every
// head through shared memory: 32k per 2048-token chunk at hd 64, microseconds even at the
// 1/64 fp64 rate of sm_86/sm_89. The rotation itself runs in fp32 on cos/sin rounded to fp32
// (relative error ~1e-7).
#include <algorithm>

#include "dtype.cuh"
#include "kernels.h"

namespace mamba {
namespace {

constexpr int kPrepThreads = 128;

// 2*pi as hi + lo (two doubles), for reductions that keep the low bits of the angle.
constexpr double kTwoPiHi = 6.283185307179586;
constexpr double kTwoPiLo = 2.4492935982947064e-16;

// t * f reduced to about [-pi, pi]. t * f = p + e exactly (the fma gives the product's rounding
// error), k = nearest multiple of 2*pi, and (p - k*hi) is exact because the two are within a
// few ulps of each other (Sterbenz); the lower-order terms are added after.
__device__ __forceinline__ double rope_angle(double t, double f) {
  const double p = t * f;
  const double e = fma(t, f, -p);
  const double k = rint(p / kTwoPiHi);
  const double q = k * kTwoPiHi;
  const double qe = fma(k, kTwoPiHi, -q);
  return (p - q) + (e - qe) - k * kTwoPiLo;
}

// One block per row (token). Threads first compute the row's cos/sin table, then walk the
// rotation pairs of every q and k head, then the v elements.
__global__ void __launch_bounds__(kPrepThreads) qkv_prep_kernel(const QkvPrepParams p) {
  __shared__ float cos_s[kAttnMaxHeadDim / 2];
  __shared__ float sin_s[kAttnMaxHeadDim / 2];
  const int r = blockIdx.x;
  const bool to_ring = p.ring_k != nullptr;
  const int slot = to_ring ? p.slots[r] : 0;
  if (slot < 0) return;  // decode padding row; block-uniform, so before any barrier
  const int64_t pos = p.positions != nullptr ? p.positions[r] : p.start + r;
  const int hd = p.head_dim, half = hd / 2;
  const int Q = p.heads * hd, KVW = p.kv_heads * hd;
  const bool rope = p.inv_freq != nullptr;
  if (rope) {
    for (int i = threadIdx.x; i < half; i += kPrepThreads) {
      double s, c;
      sincos(rope_angle(static_cast<double>(pos), p.inv_freq[i]), &s, &c);
      cos_s[i] = static_cast<float>(c);
      sin_s[i] = static_cast<float>(s);
    }
    __syncthreads();
  }
  float* row = p.qkv + r * p.qkv_row_stride;
  float* ring_k = nullptr;
  float* ring_v = nullptr;
  if (to_ring) {
    const int64_t at = static_cast<int64_t>(slot) * p.ring_slot_stride + (pos % p.window) * KVW;
    ring_k = p.ring_k + at;
    ring_v = p.ring_v + at;
  }
  // q heads then k heads lie back to back in the row, so head j of either starts at j * hd.
  const int qk_heads = p.heads + p.kv_heads;
  if (rope) {
    for (int idx = threadIdx.x; idx < qk_heads * half; idx += kPrepThreads) {
      const int head = idx / half, i = idx % half;
      const int lo = head * hd + i, hi = lo + half;
      float a = row[lo], b = row[hi];
      if (p.bias != nullptr) {
        a += p.bias[lo];
        b += p.bias[hi];
      }
      const float c = cos_s[i], s = sin_s[i];
      const float ra = fmaf(a, c, -b * s);
      const float rb = fmaf(b, c, a * s);
      row[lo] = ra;
      row[hi] = rb;
      if (to_ring && head >= p.heads) {
        ring_k[lo - Q] = ra;
        ring_k[hi - Q] = rb;
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < Q + KVW; idx += kPrepThreads) {
      float v = row[idx];
      if (p.bias != nullptr) v += p.bias[idx];
      row[idx] = v;
      if (to_ring && idx >= Q) ring_k[idx - Q] = v;
    }
  }
  for (int idx = threadIdx.x; idx < KVW; idx += kPrepThreads) {
    float v = row[Q + KVW + idx];
    if (p.bias != nullptr) v += p.bias[Q + KVW + idx];
    row[Q + KVW + idx] = v;
    if (to_ring) ring_v[idx] = v;
  }
}

// Prefill: only the last min(L, W) new rows survive in a ring of W rows. The earlier ones must
// not be written at all: row m and row m + W land in the same ring row, and two threads of one
// launch writing it would race.
__global__ void ring_write_kernel(const RingWriteParams p) {
  const int n = min(p.L, p.window);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(n) * p.kv_width) return;
  const int m = p.L - n + static_cast<int>(i / p.kv_width);
  const int c = static_cast<int>(i % p.kv_width);
  const int64_t at = ((p.start + m) % p.window) * p.kv_width + c;
  p.ring_k[at] = p.k[m * p.row_stride + c];
  p.ring_v[at] = p.v[m * p.row_stride + c];
}

}  // namespace

void launch_qkv_prep(const QkvPrepParams& p, cudaStream_t stream) {
  if (p.rows <= 0) return;
  MAMBA_REQUIRE(p.head_dim > 0 && p.head_dim <= kAttnMaxHeadDim && (p.inv_freq == nullptr || p.head_dim % 2 == 0),
                "invalid_argument", "qkv_prep: head_dim must be in 1..256 (and even with RoPE)");
  qkv_prep_kernel<<<p.rows, kPrepThreads, 0, stream>>>(p);
  MAMBA_CUDA_CHECK_LAUNCH();
}

void launch_ring_write(const RingWriteParams& p, cudaStream_t stream) {
  if (p.L <= 0) return;
  const int64_t n = static_cast<int64_t>(std::min(p.L, p.window)) * p.kv_width;
  ring_write_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(p);
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba

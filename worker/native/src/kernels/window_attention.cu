// Sliding-window attention of a hybrid's attention layers: a prefill chunk over [ring | its own
// keys], and one decode step for a batch of sessions over their rings.
//
// Both run the softmax online (flash-attention style): keys are visited in tiles; per query
// row the kernel keeps the running maximum m, the running sum l of exp(score - m) and the
// running weighted sum of values acc; a tile with a larger maximum m' rescales l and acc by
// exp(m - m') first. The scores of a whole window never exist in memory. Queries are scaled
// by log2(e)/sqrt(hd) when loaded, so every exponential is one exp2 of a difference.
// Everything accumulates in fp32; the output is stored in the storage type for o_proj.
// worker/engine/cuda/window-attention-decomposition.test.ts mirrors the tiling, the masks
// and both merges in float64 against the plain masked softmax.
#include <cmath>
#include <string>
#include <type_traits>

#include "dtype.cuh"
#include "kernels.h"

namespace mamba {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// ---- prefill -----------------------------------------------------------------------------------
//
// Grid (ceil(L*G / kRows), kv_heads), G = heads / kv_heads. A block owns kRows query rows of
// one key/value head: rows are (token l, head in group g) flattened as l*G + g, so the G heads
// that read the same keys share every key tile a block loads. Warp w owns rows w, w+4, w+8,
// w+12 (kRowsPerWarp); in the score phase lane j is key j of the tile, in the value phase lane
// j owns dimensions j, j+32, ... of the output.
//
// Keys of the block: positions max(0, first query - W + 1) .. last query, in tiles of 32.
// Position j < start comes from the ring (row j mod W: the ring holds start-W+1 .. start-1,
// and its rows for positions < 0 are never read), j >= start from this call's k/v rows.
// Mask per (query at p, key at j): j <= p and p - j < W.
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;
constexpr int kTileKeys = 32;

std::size_t prefill_smem_bytes(int hd) {
  const int kstride = hd | 1;  // odd: lane j's key row starts in bank j*kstride mod 32, all distinct
  return static_cast<std::size_t>(kRows * hd + kTileKeys * kstride + kTileKeys * hd) * sizeof(float);
}

template <typename T, int kMaxHd>
__global__ void __launch_bounds__(kThreads)
    window_attention_prefill_kernel(const AttnPrefillParams p, float scale_log2) {
  constexpr int kDims = kMaxHd / 32;
  extern __shared__ float smem[];
  const int hd = p.head_dim, W = p.window;
  const int G = p.heads / p.kv_heads;
  const int kvh = blockIdx.y;
  const int kstride = hd | 1;
  float* q_s = smem;                         // [kRows][hd], scaled
  float* k_s = q_s + kRows * hd;             // [kTileKeys][kstride]
  float* v_s = k_s + kTileKeys * kstride;    // [kTileKeys][hd]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int total_rows = p.L * G;
  const int row0 = blockIdx.x * kRows;
  const int Q = p.heads * hd, KVW = p.kv_heads * hd;
  const int64_t ld = p.qkv_row_stride;

  for (int idx = threadIdx.x; idx < kRows * hd; idx += kThreads) {
    const int gr = row0 + idx / hd, c = idx % hd;
    float v = 0.f;
    if (gr < total_rows) v = p.qkv[(gr / G) * ld + (kvh * G + gr % G) * hd + c] * scale_log2;
    q_s[idx] = v;
  }

  int64_t qpos[kRowsPerWarp];
  bool valid[kRowsPerWarp];
  float m[kRowsPerWarp], lsum[kRowsPerWarp], acc[kRowsPerWarp][kDims];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int gr = row0 + warp + kWarps * i;
    valid[i] = gr < total_rows;
    qpos[i] = p.start + gr / G;
    m[i] = -INFINITY;
    lsum[i] = 0.f;
#pragma unroll
    for (int j = 0; j < kDims; ++j) acc[i][j] = 0.f;
  }

  const int l_first = row0 / G;
  const int l_last = min(total_rows - 1, row0 + kRows - 1) / G;
  const int64_t key_lo = max(static_cast<int64_t>(0), p.start + l_first - W + 1);
  const int64_t key_hi = p.start + l_last;
  const float* k_new = p.qkv + Q + kvh * hd;
  const float* v_new = p.qkv + Q + KVW + kvh * hd;
  const float* k_ring = p.ring_k + kvh * hd;
  const float* v_ring = p.ring_v + kvh * hd;

  for (int64_t k0 = key_lo; k0 <= key_hi; k0 += kTileKeys) {
    __syncthreads();  // the previous tile is consumed (and, the first time, q_s is complete)
    for (int idx = threadIdx.x; idx < kTileKeys * hd; idx += kThreads) {
      const int k = idx / hd, c = idx % hd;
      const int64_t kp = k0 + k;
      float kv = 0.f, vv = 0.f;
      if (kp <= key_hi) {
        if (kp < p.start) {
          const int64_t at = (kp % W) * KVW + c;
          kv = k_ring[at];
          vv = v_ring[at];
        } else {
          const int64_t at = (kp - p.start) * ld + c;
          kv = k_new[at];
          vv = v_new[at];
        }
      }
      k_s[k * kstride + c] = kv;
      v_s[k * hd + c] = vv;
    }
    __syncthreads();

    // Scores: lane = key; the warp's rows read q broadcast.
    float s[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) s[i] = 0.f;
    const float* krow = k_s + lane * kstride;
    for (int c = 0; c < hd; ++c) {
      const float kc = krow[c];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) s[i] = fmaf(q_s[(warp + kWarps * i) * hd + c], kc, s[i]);
    }
    const int64_t kp = k0 + lane;
    float prob[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const bool visible = valid[i] && kp <= qpos[i] && qpos[i] - kp < W;
      const float si = visible ? s[i] : -INFINITY;
      const float m_new = fmaxf(m[i], warp_max(si));
      // m_new is warp-uniform; -inf means no key of this row has been visible yet.
      float alpha = 1.f;
      prob[i] = 0.f;
      if (m_new != -INFINITY) {
        prob[i] = exp2f(si - m_new);
        alpha = exp2f(m[i] - m_new);
      }
      lsum[i] = fmaf(lsum[i], alpha, warp_sum(prob[i]));
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < kDims; ++j) acc[i][j] *= alpha;
    }

    // Values: lane = output dimension; the probabilities come from the lane that owns the key.
    const int nkeys = static_cast<int>(min(static_cast<int64_t>(kTileKeys), key_hi - k0 + 1));
    for (int k = 0; k < nkeys; ++k) {
      float pk[kRowsPerWarp];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) pk[i] = __shfl_sync(kFull, prob[i], k);
#pragma unroll
      for (int j = 0; j < kDims; ++j) {
        const int c = lane + 32 * j;
        if (c < hd) {
          const float vk = v_s[k * hd + c];
#pragma unroll
          for (int i = 0; i < kRowsPerWarp; ++i) acc[i][j] = fmaf(pk[i], vk, acc[i][j]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    if (!valid[i]) continue;
    const int gr = row0 + warp + kWarps * i;
    T* o = static_cast<T*>(p.out) + static_cast<int64_t>(gr / G) * p.out_row_stride + (kvh * G + gr % G) * hd;
    const float inv = 1.f / lsum[i];  // > 0: every query sees at least its own key
#pragma unroll
    for (int j = 0; j < kDims; ++j) {
      const int c = lane + 32 * j;
      if (c < hd) o[c] = from_f32<T>(acc[i][j] * inv);
    }
  }
}

// ---- decode ------------------------------------------------------------------------------------
//
// Grid (heads, batch, splits). Row b's token sits at position t (its key already written to
// ring row t mod W by qkv_prep); it attends to positions max(0, t-W+1) .. t, all in the ring.
// Split s takes positions lo + s*split_keys .. lo + (s+1)*split_keys - 1 (clipped to t), so a
// long window runs on several blocks (flash-decoding) and short histories leave trailing
// splits empty. Inside a block warp w takes groups of kGroup consecutive keys, w, w+4, ...
// groups apart; lane j owns dimensions j, j+32, ... (a key row is read with coalesced loads),
// and the dot products are warp sums. The kGroup keys of a group are loaded and reduced
// together (independent shuffles overlap) and merged into (m, l, acc) with one rescale. The
// warps' partial states merge in shared memory; with splits > 1 the block's merged state goes
// to `partial` and decode_combine merges the splits.
constexpr int kGroup = 4;

template <typename T, int kMaxHd>
__global__ void __launch_bounds__(kThreads)
    window_attention_decode_kernel(const AttnDecodeParams p, float scale_log2) {
  constexpr int kDims = kMaxHd / 32;
  __shared__ float warp_acc[kWarps][kMaxHd];
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  const int head = blockIdx.x, b = blockIdx.y, split = blockIdx.z;
  const int hd = p.head_dim, W = p.window;
  const int kvh = head / (p.heads / p.kv_heads);
  const int KVW = p.kv_heads * hd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slot = p.slots[b];
  T* out = static_cast<T*>(p.out) + b * p.out_row_stride + head * hd;
  if (slot < 0) {  // padding row, block-uniform; with splits the combine writes its zeros
    if (p.splits == 1)
      for (int c = threadIdx.x; c < hd; c += kThreads) out[c] = from_f32<T>(0.f);
    return;
  }
  const int64_t t = p.positions[b];
  const int64_t lo = max(static_cast<int64_t>(0), t - W + 1);
  const int64_t s_lo = lo + static_cast<int64_t>(split) * p.split_keys;
  const int64_t s_hi = min(t, s_lo + p.split_keys - 1);  // < s_lo: an empty split

  float q[kDims];
  const float* qrow = p.q + b * p.q_row_stride + head * hd;
#pragma unroll
  for (int j = 0; j < kDims; ++j) {
    const int c = lane + 32 * j;
    q[j] = c < hd ? qrow[c] * scale_log2 : 0.f;
  }
  const int64_t ring_at = static_cast<int64_t>(slot) * p.ring_slot_stride + kvh * hd;
  const float* kr = p.ring_k + ring_at;
  const float* vr = p.ring_v + ring_at;

  float m = -INFINITY, l = 0.f, acc[kDims];
#pragma unroll
  for (int j = 0; j < kDims; ++j) acc[j] = 0.f;
  for (int64_t k0 = s_lo + warp * kGroup; k0 <= s_hi; k0 += kWarps * kGroup) {
    float s[kGroup], v[kGroup][kDims];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int64_t kp = k0 + g;
      const bool live = kp <= s_hi;  // warp-uniform
      const int64_t row = (kp % W) * KVW;
      float dot = 0.f;
#pragma unroll
      for (int j = 0; j < kDims; ++j) {
        const int c = lane + 32 * j;
        v[g][j] = 0.f;
        if (live && c < hd) {
          dot = fmaf(q[j], kr[row + c], dot);
          v[g][j] = vr[row + c];
        }
      }
      s[g] = warp_sum(dot);
      if (!live) s[g] = -INFINITY;
    }
    float gmax = s[0];  // key k0 is live: k0 <= s_hi
#pragma unroll
    for (int g = 1; g < kGroup; ++g) gmax = fmaxf(gmax, s[g]);
    const float m_new = fmaxf(m, gmax);
    const float alpha = exp2f(m - m_new);  // m = -inf the first time: 0, and l, acc are 0 anyway
    l *= alpha;
#pragma unroll
    for (int j = 0; j < kDims; ++j) acc[j] *= alpha;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float pg = exp2f(s[g] - m_new);
      l += pg;
#pragma unroll
      for (int j = 0; j < kDims; ++j) acc[j] = fmaf(pg, v[g][j], acc[j]);
    }
    m = m_new;
  }

  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < kDims; ++j) {
    warp_acc[warp][lane + 32 * j] = acc[j];
  }
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, warp_m[w]);
  float scale[kWarps], L = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    scale[w] = warp_m[w] == -INFINITY ? 0.f : exp2f(warp_m[w] - M);  // a warp with no keys adds nothing
    L = fmaf(warp_l[w], scale[w], L);
  }
  float* part = p.splits == 1 ? nullptr
                              : p.partial + ((static_cast<int64_t>(b) * p.heads + head) * p.splits + split) * (hd + 2);
  for (int c = threadIdx.x; c < hd; c += kThreads) {
    float a = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) a = fmaf(warp_acc[w][c], scale[w], a);
    if (part == nullptr) out[c] = from_f32<T>(a / L);  // L > 0: the row's own key is in split 0
    else part[c] = a;
  }
  if (part != nullptr && threadIdx.x == 0) {
    part[hd] = M;  // -inf for an empty split
    part[hd + 1] = L;
  }
}

// Grid (heads, batch): merges the splits' (acc, m, l) of one row and head.
template <typename T>
__global__ void __launch_bounds__(kThreads) window_attention_combine_kernel(const AttnDecodeParams p) {
  const int head = blockIdx.x, b = blockIdx.y;
  const int hd = p.head_dim, S = p.splits;
  T* out = static_cast<T*>(p.out) + b * p.out_row_stride + head * hd;
  if (p.slots[b] < 0) {
    for (int c = threadIdx.x; c < hd; c += kThreads) out[c] = from_f32<T>(0.f);
    return;
  }
  const float* part = p.partial + (static_cast<int64_t>(b) * p.heads + head) * S * (hd + 2);
  float M = -INFINITY;
  for (int s = 0; s < S; ++s) M = fmaxf(M, part[s * (hd + 2) + hd]);
  float L = 0.f;
  for (int s = 0; s < S; ++s) {
    const float ms = part[s * (hd + 2) + hd];
    if (ms != -INFINITY) L = fmaf(part[s * (hd + 2) + hd + 1], exp2f(ms - M), L);
  }
  for (int c = threadIdx.x; c < hd; c += kThreads) {
    float a = 0.f;
    for (int s = 0; s < S; ++s) {
      const float ms = part[s * (hd + 2) + hd];
      if (ms != -INFINITY) a = fmaf(part[s * (hd + 2) + c], exp2f(ms - M), a);
    }
    out[c] = from_f32<T>(a / L);
  }
}

template <typename F>
void by_type(DType t, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
  }
}

// The smallest of 32/64/128/256 that holds head_dim: registers per lane scale with it.
template <typename F>
void by_head_dim(int hd, F&& f) {
  MAMBA_REQUIRE(hd > 0 && hd <= kAttnMaxHeadDim, "invalid_argument",
                "attention: head_dim " + std::to_string(hd) + " is outside 1..256");
  if (hd <= 32) return f(std::integral_constant<int, 32>{});
  if (hd <= 64) return f(std::integral_constant<int, 64>{});
  if (hd <= 128) return f(std::integral_constant<int, 128>{});
  return f(std::integral_constant<int, 256>{});
}

float scale_log2_of(int hd) { return static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(hd))); }

void require_heads(int heads, int kv_heads) {
  MAMBA_REQUIRE(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "invalid_argument",
                "attention: heads must be a positive multiple of kv_heads");
}

}  // namespace

int attention_decode_splits(int window, int split_keys) {
  if (split_keys <= 0 || split_keys >= window) return 1;
  return (window + split_keys - 1) / split_keys;
}

void launch_window_attention_prefill(const AttnPrefillParams& p, DType t, cudaStream_t stream) {
  if (p.L <= 0) return;
  require_heads(p.heads, p.kv_heads);
  const int rows = p.L * (p.heads / p.kv_heads);
  const dim3 grid((rows + kRows - 1) / kRows, p.kv_heads);
  const std::size_t smem = prefill_smem_bytes(p.head_dim);
  by_type(t, [&](auto tag) {
    using T = decltype(tag);
    by_head_dim(p.head_dim, [&](auto hd_tag) {
      constexpr int kMaxHd = decltype(hd_tag)::value;
      auto kernel = window_attention_prefill_kernel<T, kMaxHd>;
      // head_dim 256 needs 82 KB: above the default 48 KB, within every target's opt-in limit
      // (99 KB on sm_86/sm_89). Set per launch: the attribute is per device, and prefill is
      // never captured into a graph.
      if (smem > 48 * 1024) {
        MAMBA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      }
      kernel<<<grid, kThreads, smem, stream>>>(p, scale_log2_of(p.head_dim));
    });
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void launch_window_attention_decode(const AttnDecodeParams& p, DType t, cudaStream_t stream) {
  if (p.batch <= 0) return;
  require_heads(p.heads, p.kv_heads);
  MAMBA_REQUIRE(p.splits >= 1 && (p.splits == 1 || p.partial != nullptr) &&
                    static_cast<int64_t>(p.splits) * p.split_keys >= p.window,
                "invalid_argument", "attention decode: splits * split_keys must cover the window");
  by_type(t, [&](auto tag) {
    using T = decltype(tag);
    by_head_dim(p.head_dim, [&](auto hd_tag) {
      constexpr int kMaxHd = decltype(hd_tag)::value;
      window_attention_decode_kernel<T, kMaxHd>
          <<<dim3(p.heads, p.batch, p.splits), kThreads, 0, stream>>>(p, scale_log2_of(p.head_dim));
    });
    MAMBA_CUDA_CHECK_LAUNCH();
    if (p.splits > 1) {
      window_attention_combine_kernel<T><<<dim3(p.heads, p.batch), kThreads, 0, stream>>>(p);
    }
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba

// Causal depthwise conv1d with Mamba's rolling conv state, fused with the SiLU that follows it.
//
// conv_state[d][k] holds the last `width` raw inputs of channel d, oldest first (what HF's
// MambaMixer keeps; after a prompt shorter than width it is left-padded with zeros). Write the
// sequence the state continues as x_ext, with x_ext[-j] = state[width - j] for j = 1..width-1.
// Then out[t] = silu(bias + sum_k w[k] * x_ext[t - (width-1) + k]), and afterwards
// state[k] = x_ext[L - width + k].
#include "dtype.cuh"
#include "kernels.h"

namespace mamba {
namespace {

constexpr int kConvThreads = 256;

template <typename T, int kWidth>
__global__ void __launch_bounds__(kConvThreads) conv1d_prefill_kernel(const ConvParams p) {
  const int t = blockIdx.x * kConvThreads + threadIdx.x;
  const int d = blockIdx.y;
  const int b = blockIdx.z;
  const int L = p.seqlen;
  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + static_cast<int64_t>(d) * p.x_dim_stride;
  T* out = static_cast<T*>(p.out) + b * p.out_batch_stride + static_cast<int64_t>(d) * p.out_dim_stride;
  float* state = p.state + static_cast<int64_t>(p.slots[b]) * p.state_slot_stride + static_cast<int64_t>(d) * kWidth;

  float w[kWidth];
#pragma unroll
  for (int k = 0; k < kWidth; ++k) w[k] = p.weight[d * kWidth + k];

  // Only block 0 of a channel reads the old state (its threads cover t < width-1 since
  // kConvThreads >= width), and block 0 is also the one that rewrites it, after a barrier.
  if (t < L) {
    float acc = p.bias != nullptr ? p.bias[d] : 0.f;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const int j = t - (kWidth - 1) + k;
      const float v = j >= 0 ? to_f32(x[j]) : state[kWidth + j];
      acc = fmaf(w[k], v, acc);
    }
    out[t] = from_f32<T>(silu_f32(acc));
  }

  if (blockIdx.x == 0) {
    // Read the new state's values before anyone overwrites the old state: new[k] may come from
    // old[k + L] when the prompt is shorter than the window.
    float next = 0.f;
    if (threadIdx.x < kWidth) {
      const int j = L - kWidth + static_cast<int>(threadIdx.x);
      next = j >= 0 ? to_f32(x[j]) : state[kWidth + j];
    }
    __syncthreads();
    if (threadIdx.x < kWidth) state[threadIdx.x] = next;
  }
}

constexpr int kStepThreads = 256;

template <typename T, int kWidth>
__global__ void __launch_bounds__(kStepThreads) conv1d_step_kernel(const ConvStepParams p) {
  const int d = blockIdx.x * kStepThreads + threadIdx.x;
  const int b = blockIdx.y;
  if (d >= p.dim) return;
  T* out = static_cast<T*>(p.out) + b * p.out_row_stride + d;
  const int slot = p.slots[b];
  if (slot < 0) {  // padding row of a decode bucket
    *out = from_f32<T>(0.f);
    return;
  }
  float* state = p.state + static_cast<int64_t>(slot) * p.state_slot_stride + static_cast<int64_t>(d) * kWidth;
  const float xv = to_f32(static_cast<const T*>(p.x)[b * p.x_row_stride + d]);
  float window[kWidth];
#pragma unroll
  for (int k = 0; k < kWidth - 1; ++k) window[k] = state[k + 1];
  window[kWidth - 1] = xv;
  float acc = p.bias != nullptr ? p.bias[d] : 0.f;
#pragma unroll
  for (int k = 0; k < kWidth; ++k) {
    acc = fmaf(p.weight[d * kWidth + k], window[k], acc);
    state[k] = window[k];
  }
  *out = from_f32<T>(silu_f32(acc));
}

template <typename T, int kWidth>
void prefill_typed(const ConvParams& p, cudaStream_t stream) {
  dim3 grid((p.seqlen + kConvThreads - 1) / kConvThreads, p.dim, p.batch);
  conv1d_prefill_kernel<T, kWidth><<<grid, kConvThreads, 0, stream>>>(p);
  MAMBA_CUDA_CHECK_LAUNCH();
}

template <typename T, int kWidth>
void step_typed(const ConvStepParams& p, cudaStream_t stream) {
  dim3 grid((p.dim + kStepThreads - 1) / kStepThreads, p.batch);
  conv1d_step_kernel<T, kWidth><<<grid, kStepThreads, 0, stream>>>(p);
  MAMBA_CUDA_CHECK_LAUNCH();
}

// d_conv is 4 in every published Mamba; 2 and 3 cost nothing to keep (mamba_ssm's
// causal_conv1d supports 2..4 too).
template <template <typename, int> class F, typename P>
void dispatch(const P& p, DType t, cudaStream_t stream) {
  auto by_type = [&](auto tag) {
    using T = decltype(tag);
    switch (p.width) {
      case 2: return F<T, 2>::run(p, stream);
      case 3: return F<T, 3>::run(p, stream);
      case 4: return F<T, 4>::run(p, stream);
    }
    throw NativeError("invalid_argument", "conv1d: d_conv must be 2, 3 or 4, got " + std::to_string(p.width));
  };
  switch (t) {
    case DType::F32: return by_type(float{});
    case DType::F16: return by_type(__half{});
    case DType::BF16: return by_type(__nv_bfloat16{});
  }
}

template <typename T, int W>
struct PrefillOp {
  static void run(const ConvParams& p, cudaStream_t s) { prefill_typed<T, W>(p, s); }
};
template <typename T, int W>
struct StepOp {
  static void run(const ConvStepParams& p, cudaStream_t s) { step_typed<T, W>(p, s); }
};

}  // namespace

void launch_conv1d_prefill(const ConvParams& p, DType t, cudaStream_t stream) {
  if (p.seqlen <= 0 || p.batch <= 0) return;
  dispatch<PrefillOp>(p, t, stream);
}

void launch_conv1d_step(const ConvStepParams& p, DType t, cudaStream_t stream) {
  if (p.batch <= 0) return;
  dispatch<StepOp>(p, t, stream);
}

}  // namespace mamba

// The small kernels around the projections: RMSNorm over the fp32 residual stream, the
// embedding gather, bias adds, weight conversion at load time, and greedy argmax.
#include <algorithm>
#include <cfloat>

#include "dtype.cuh"
#include "kernels.h"

namespace mamba {
namespace {

constexpr int kNormThreads = 256;

__device__ __forceinline__ float block_sum(float v, float* scratch /* [32] */) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = lane < warps ? scratch[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // every thread holds the total
}

// One block per row. HF's MambaRMSNorm computes the mean square in fp32 and scales in fp32;
// the residual stream stays fp32 here whatever the weights' type (residual_in_fp32).
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(float* residual, const float* add_bias, const float* weight, T* out, int64_t out_row_stride, int d,
                   float eps) {
  __shared__ float scratch[32];
  float* row = residual + static_cast<int64_t>(blockIdx.x) * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += kNormThreads) {
    float v = row[i];
    if (add_bias != nullptr) {
      v += add_bias[i];
      row[i] = v;
    }
    ss = fmaf(v, v, ss);
  }
  const float total = block_sum(ss, scratch);
  const float scale = rsqrtf(total / static_cast<float>(d) + eps);
  T* o = out + static_cast<int64_t>(blockIdx.x) * out_row_stride;
  for (int i = threadIdx.x; i < d; i += kNormThreads) o[i] = from_f32<T>(weight[i] * (row[i] * scale));
}

template <typename T>
__global__ void embed_kernel(const int* tokens, int rows, const T* emb, int d, float* residual) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * d) return;
  const int r = static_cast<int>(i / d), c = static_cast<int>(i % d);
  residual[i] = to_f32(emb[static_cast<int64_t>(tokens[r]) * d + c]);
}

template <typename T>
__global__ void add_bias_kernel(T* data, int rows, int cols, int64_t ld, const float* bias, bool per_row) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * cols) return;
  const int r = static_cast<int>(i / cols), c = static_cast<int>(i % cols);
  T* e = data + r * ld + c;
  *e = from_f32<T>(to_f32(*e) + bias[per_row ? r : c]);
}

template <typename S, typename D>
__global__ void convert_kernel(const S* src, D* dst, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f32<D>(to_f32(src[i]));
}

__global__ void prepare_A_kernel(const float* A_log, float* A2, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // A = -exp(A_log) in fp32 as HF does, then the log2(e) factor for exp2.
  if (i < n) A2[i] = -expf(A_log[i]) * 1.4426950408889634f;
}

constexpr int kArgmaxThreads = 512;

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const float* logits, int cols, int* out) {
  __shared__ float best_v[32];
  __shared__ int best_i[32];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * cols;
  float v = -FLT_MAX;
  int idx = 0x7fffffff;
  for (int c = threadIdx.x; c < cols; c += kArgmaxThreads) {
    const float x = row[c];
    if (x > v) { v = x; idx = c; }  // strided walk visits ascending c: ties keep the first
  }
  // Reduce (value desc, index asc): NaN logits compare false and never win.
  auto better = [](float va, int ia, float vb, int ib) { return vb > va || (vb == va && ib < ia); };
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (better(v, idx, ov, oi)) { v = ov; idx = oi; }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
  __syncthreads();
  if (warp == 0) {
    v = lane < kArgmaxThreads / 32 ? best_v[lane] : -FLT_MAX;
    idx = lane < kArgmaxThreads / 32 ? best_i[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
      if (better(v, idx, ov, oi)) { v = ov; idx = oi; }
    }
    if (lane == 0) out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
  }
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

template <typename F>
void by_type(DType t, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
  }
}

}  // namespace

void launch_rmsnorm(float* residual, const float* add_bias, const float* weight, void* out, int64_t out_row_stride,
                    int rows, int d, float eps, DType t, cudaStream_t stream) {
  if (rows <= 0) return;
  by_type(t, [&](auto tag) {
    using T = decltype(tag);
    rmsnorm_kernel<T><<<rows, kNormThreads, 0, stream>>>(residual, add_bias, weight, static_cast<T*>(out),
                                                         out_row_stride, d, eps);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void launch_embed(const int* tokens, int rows, const void* embeddings, int d, float* residual, DType t,
                  cudaStream_t stream) {
  if (rows <= 0) return;
  by_type(t, [&](auto tag) {
    using T = decltype(tag);
    embed_kernel<T><<<blocks_for(static_cast<int64_t>(rows) * d, 256), 256, 0, stream>>>(
        tokens, rows, static_cast<const T*>(embeddings), d, residual);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void launch_add_bias(void* data, int rows, int cols, int64_t ld, const float* bias, bool per_row, DType t,
                     cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  by_type(t, [&](auto tag) {
    using T = decltype(tag);
    add_bias_kernel<T><<<blocks_for(static_cast<int64_t>(rows) * cols, 256), 256, 0, stream>>>(
        static_cast<T*>(data), rows, cols, ld, bias, per_row);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void launch_convert(const void* src, DType src_t, void* dst, DType dst_t, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(blocks_for(n, 256), 65535));
  by_type(src_t, [&](auto s_tag) {
    using S = decltype(s_tag);
    by_type(dst_t, [&](auto d_tag) {
      using D = decltype(d_tag);
      convert_kernel<S, D><<<blocks, 256, 0, stream>>>(static_cast<const S*>(src), static_cast<D*>(dst), n);
    });
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void launch_prepare_A(const float* A_log, float* A2, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  prepare_A_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(A_log, A2, n);
  MAMBA_CUDA_CHECK_LAUNCH();
}

void launch_argmax(const float* logits, int rows, int cols, int* out, cudaStream_t stream) {
  if (rows <= 0) return;
  argmax_kernel<<<rows, kArgmaxThreads, 0, stream>>>(logits, cols, out);
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba

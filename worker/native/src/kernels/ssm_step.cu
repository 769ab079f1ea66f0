// The decode step's state update for a whole batch of sessions in one launch:
//   dt = softplus(dt_proj(x_proj(x)[:dt_rank]) + bias)        (dt_proj fused here)
//   h  = exp(dt * A) * h + dt * B * x                         (fp32 state, in place)
//   y  = (C · h + D * x) * silu(z)
//
// Decode is a string of small kernels whose launch gaps rival their work at batch 1, so
// dt_proj (a [dim, dt_rank] matvec per row) is folded in here instead of costing a GEMM launch
// per layer; its weights are 1% of a layer's bytes.
//
// Thread layout: kN/4 consecutive threads own one channel of one row; each loads and stores
// four state values as one float4, so a warp touches contiguous 64-byte rows of the state
// pool (the state dominates the bytes of a decode step at large batch).
#include "dtype.cuh"
#include "kernels.h"

namespace mamba {
namespace {

constexpr int kStepThreads = 128;

template <typename T, int kN>
__global__ void __launch_bounds__(kStepThreads) ssm_step_kernel(const SsmStepParams p) {
  constexpr int kTpc = kN / 4;  // threads per channel
  static_assert(kN % 4 == 0 && 32 % kTpc == 0, "a channel's threads must tile a warp");
  constexpr int kChannelsPerBlock = kStepThreads / kTpc;

  const int b = blockIdx.y;
  const int slot = p.slots[b];
  const int sub = threadIdx.x % kTpc;
  const int d = blockIdx.x * kChannelsPerBlock + threadIdx.x / kTpc;
  const bool active = d < p.dim;
  T* out = static_cast<T*>(p.out) + b * p.out_row_stride;
  if (slot < 0) {  // padding row: uniform over the block, so the early exit cannot split a warp
    if (active && sub == 0) out[d] = from_f32<T>(0.f);
    return;
  }
  // Inactive threads (past the last channel) still take part in the shuffles below, on a
  // clamped channel, and write nothing.
  const int dc = active ? d : p.dim - 1;
  const float* xdbl = p.xdbl + b * p.xdbl_row_stride;
  const int R = p.dt_rank;

  float dt_acc = 0.f;
  for (int r = sub; r < R; r += kTpc) dt_acc = fmaf(p.dt_weight[static_cast<int64_t>(dc) * R + r], xdbl[r], dt_acc);
#pragma unroll
  for (int o = kTpc / 2; o > 0; o >>= 1) dt_acc += __shfl_xor_sync(0xffffffffu, dt_acc, o);
  const float dt = softplus_f32(dt_acc + p.dt_bias[dc]);

  const float xv = to_f32(static_cast<const T*>(p.x)[b * p.x_row_stride + dc]);
  const int n0 = sub * 4;
  float4* hp = reinterpret_cast<float4*>(p.state + static_cast<int64_t>(slot) * p.state_slot_stride +
                                         static_cast<int64_t>(dc) * kN + n0);
  float4 h = *hp;
  const float* Bv = xdbl + R + n0;
  const float* Cv = xdbl + R + kN + n0;
  const float* A2 = p.A2 + static_cast<int64_t>(dc) * kN + n0;
  const float dtx = dt * xv;
  h.x = fmaf(exp2f(dt * A2[0]), h.x, dtx * Bv[0]);
  h.y = fmaf(exp2f(dt * A2[1]), h.y, dtx * Bv[1]);
  h.z = fmaf(exp2f(dt * A2[2]), h.z, dtx * Bv[2]);
  h.w = fmaf(exp2f(dt * A2[3]), h.w, dtx * Bv[3]);
  if (active) *hp = h;
  float y = h.x * Cv[0] + h.y * Cv[1] + h.z * Cv[2] + h.w * Cv[3];
#pragma unroll
  for (int o = kTpc / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);

  if (active && sub == 0) {
    if (p.D != nullptr) y = fmaf(p.D[d], xv, y);
    if (p.z != nullptr) y *= silu_f32(to_f32(static_cast<const T*>(p.z)[b * p.z_row_stride + d]));
    out[d] = from_f32<T>(y);
  }
}

// Any other d_state (e.g. 5 in small test models): one thread per channel, scalar state
// accesses. Correct for every size; the vectorized kernel above serves the published models.
__global__ void __launch_bounds__(kStepThreads) ssm_step_generic_kernel(const SsmStepParams p, DType t) {
  const int d = blockIdx.x * kStepThreads + threadIdx.x;
  const int b = blockIdx.y;
  if (d >= p.dim) return;
  const int slot = p.slots[b];
  const int N = p.dstate, R = p.dt_rank;
  auto load = [t](const void* base, int64_t i) {
    switch (t) {
      case DType::F16: return to_f32(static_cast<const __half*>(base)[i]);
      case DType::BF16: return to_f32(static_cast<const __nv_bfloat16*>(base)[i]);
      default: return static_cast<const float*>(base)[i];
    }
  };
  auto store = [t](void* base, int64_t i, float v) {
    switch (t) {
      case DType::F16: static_cast<__half*>(base)[i] = from_f32<__half>(v); break;
      case DType::BF16: static_cast<__nv_bfloat16*>(base)[i] = from_f32<__nv_bfloat16>(v); break;
      default: static_cast<float*>(base)[i] = v;
    }
  };
  const int64_t o = b * p.out_row_stride + d;
  if (slot < 0) {
    store(p.out, o, 0.f);
    return;
  }
  const float* xdbl = p.xdbl + b * p.xdbl_row_stride;
  float dt_acc = p.dt_bias[d];
  for (int r = 0; r < R; ++r) dt_acc = fmaf(p.dt_weight[static_cast<int64_t>(d) * R + r], xdbl[r], dt_acc);
  const float dt = softplus_f32(dt_acc);
  const float xv = load(p.x, b * p.x_row_stride + d);
  float* h = p.state + static_cast<int64_t>(slot) * p.state_slot_stride + static_cast<int64_t>(d) * N;
  float y = 0.f;
  for (int n = 0; n < N; ++n) {
    const float hn = fmaf(exp2f(dt * p.A2[static_cast<int64_t>(d) * N + n]), h[n], dt * xdbl[R + n] * xv);
    h[n] = hn;
    y = fmaf(hn, xdbl[R + N + n], y);
  }
  if (p.D != nullptr) y = fmaf(p.D[d], xv, y);
  if (p.z != nullptr) y *= silu_f32(load(p.z, b * p.z_row_stride + d));
  store(p.out, o, y);
}

template <typename T, int kN>
void launch_typed(const SsmStepParams& p, cudaStream_t stream) {
  constexpr int kChannelsPerBlock = kStepThreads / (kN / 4);
  dim3 grid((p.dim + kChannelsPerBlock - 1) / kChannelsPerBlock, p.batch);
  ssm_step_kernel<T, kN><<<grid, kStepThreads, 0, stream>>>(p);
  MAMBA_CUDA_CHECK_LAUNCH();
}

template <typename T>
void by_state(const SsmStepParams& p, cudaStream_t stream) {
  switch (p.dstate) {
    case 4: return launch_typed<T, 4>(p, stream);
    case 8: return launch_typed<T, 8>(p, stream);
    case 16: return launch_typed<T, 16>(p, stream);
    case 32: return launch_typed<T, 32>(p, stream);
    case 64: return launch_typed<T, 64>(p, stream);
  }
}

}  // namespace

void launch_ssm_step(const SsmStepParams& p, DType t, cudaStream_t stream) {
  if (p.batch <= 0) return;
  if (p.dstate != 4 && p.dstate != 8 && p.dstate != 16 && p.dstate != 32 && p.dstate != 64) {
    dim3 grid((p.dim + kStepThreads - 1) / kStepThreads, p.batch);
    ssm_step_generic_kernel<<<grid, kStepThreads, 0, stream>>>(p, t);
    MAMBA_CUDA_CHECK_LAUNCH();
    return;
  }
  switch (t) {
    case DType::F32: return by_state<float>(p, stream);
    case DType::F16: return by_state<__half>(p, stream);
    case DType::BF16: return by_state<__nv_bfloat16>(p, stream);
  }
}

}  // namespace mamba

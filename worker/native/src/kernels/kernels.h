// Host-side launchers of the addon's CUDA kernels. Plain C++ (no device code, no cuBLAS), so
// the engine and the standalone benchmarks include it from .cpp files.
//
// Layouts. Prefill works channel-major: a [rows][ld] buffer whose rows are channels and whose
// columns are time steps, so that one channel's sequence is contiguous (the scan walks it with
// 16-byte loads). The projections write that layout directly (cuBLAS transposes for free).
// Decode works token-major: one row per session. States live in a slot pool:
//   conv_state  [slot][layer][d_inner][d_conv]   the last d_conv raw conv inputs, oldest first
//   ssm_state   [slot][layer][d_inner][d_state]  fp32
// and kernels address them as base + slots[b] * slot_stride, so a batch of unrelated sessions
// runs in one launch. A slot index < 0 marks a padding row of a decode bucket: its outputs are
// zero and no state is touched.
#pragma once

#include <cstdint>

#include "../common.h"

namespace mamba {

// ---- selective scan (prefill) -------------------------------------------------------------

struct ScanParams {
  int batch = 0, dim = 0, seqlen = 0, dstate = 0;
  // u, z, out: storage type; rows [batch][dim] of seqlen steps, unit stride along time.
  const void* u = nullptr;
  int64_t u_batch_stride = 0, u_dim_stride = 0;
  const float* delta = nullptr;  // dt before bias and softplus
  int64_t delta_batch_stride = 0, delta_dim_stride = 0;
  const float* A2 = nullptr;  // [dim][dstate]: A * log2(e), A = -exp(A_log)
  const float* B = nullptr;   // [batch][dstate][seqlen] (strides below)
  int64_t B_batch_stride = 0, B_state_stride = 0;
  const float* C = nullptr;
  int64_t C_batch_stride = 0, C_state_stride = 0;
  const float* D = nullptr;           // [dim] skip, may be null
  const float* delta_bias = nullptr;  // [dim], may be null
  const void* z = nullptr;            // gate, may be null (then out = y + D*u)
  int64_t z_batch_stride = 0, z_dim_stride = 0;
  void* out = nullptr;
  int64_t out_batch_stride = 0, out_dim_stride = 0;
  // State read at the start (a session's saved state) and overwritten with the final state.
  float* state = nullptr;  // points at [layer] inside slot 0; + slots[b] * state_slot_stride
  int64_t state_slot_stride = 0;
  const int* slots = nullptr;  // [batch], device memory
};

// The alignment the scan's vector loads need: row strides (in elements) must be multiples of
// this, and row starts 16-byte aligned. Engines allocate prefill buffers with ld = round_up(L, 8).
constexpr int kScanAlign = 8;
constexpr int kScanMaxState = 64;

// channels_per_block: 1, 2 or 4 (how many channels one block scans at once, sharing B and C
// loads); 0 picks the default. The benchmark times all three.
void launch_selective_scan(const ScanParams& p, DType t, int channels_per_block, cudaStream_t stream);
int selective_scan_default_channels(int dim);

// ---- causal depthwise conv1d ----------------------------------------------------------------

struct ConvParams {
  int batch = 0, dim = 0, seqlen = 0, width = 0;
  const void* x = nullptr;  // [batch][dim][seqlen] channel-major, storage type
  int64_t x_batch_stride = 0, x_dim_stride = 0;
  const float* weight = nullptr;  // [dim][width]
  const float* bias = nullptr;    // [dim], may be null
  void* out = nullptr;            // silu(conv(x)), storage type, same layout as x
  int64_t out_batch_stride = 0, out_dim_stride = 0;
  float* state = nullptr;  // conv_state [dim][width] at [layer] of slot 0; + slots[b] * slot stride
  int64_t state_slot_stride = 0;
  const int* slots = nullptr;
};
// Prefill: the window of step t reaches back into the saved conv state; the state is then
// replaced by the last `width` raw inputs.
void launch_conv1d_prefill(const ConvParams& p, DType t, cudaStream_t stream);

struct ConvStepParams {
  int batch = 0, dim = 0, width = 0;
  const void* x = nullptr;  // [batch] rows, row stride below, storage type
  int64_t x_row_stride = 0;
  const float* weight = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;
  int64_t out_row_stride = 0;
  float* state = nullptr;
  int64_t state_slot_stride = 0;
  const int* slots = nullptr;
};
// Decode: shift the rolling state left, append x, output silu(w · state + b).
void launch_conv1d_step(const ConvStepParams& p, DType t, cudaStream_t stream);

// ---- selective state update (decode) --------------------------------------------------------

struct SsmStepParams {
  int batch = 0, dim = 0, dstate = 0, dt_rank = 0;
  const void* x = nullptr;  // conv output [batch][row stride], storage type
  int64_t x_row_stride = 0;
  const float* xdbl = nullptr;  // x_proj output [batch][dt_rank + 2*dstate]: dt_low | B | C
  int64_t xdbl_row_stride = 0;
  const float* dt_weight = nullptr;  // [dim][dt_rank]: dt_proj is fused into this kernel
  const float* dt_bias = nullptr;    // [dim]
  const float* A2 = nullptr;         // [dim][dstate]
  const float* D = nullptr;          // may be null
  const void* z = nullptr;           // may be null
  int64_t z_row_stride = 0;
  void* out = nullptr;
  int64_t out_row_stride = 0;
  float* state = nullptr;
  int64_t state_slot_stride = 0;
  const int* slots = nullptr;
};
void launch_ssm_step(const SsmStepParams& p, DType t, cudaStream_t stream);

// ---- norms, embeddings, small helpers ---------------------------------------------------------

// residual[rows][d] (fp32, token-major, row stride d). If add_bias is non-null it is added to
// every row first and the sum written back (a previous layer's out_proj bias). Then
// out[r] = weight * residual[r] / sqrt(mean(residual[r]^2) + eps), in the storage type.
void launch_rmsnorm(float* residual, const float* add_bias, const float* weight, void* out, int64_t out_row_stride,
                    int rows, int d, float eps, DType t, cudaStream_t stream);

// residual[r][:] = embeddings[tokens[r]][:] as fp32. Tokens were range-checked on the host.
void launch_embed(const int* tokens, int rows, const void* embeddings, int d, float* residual, DType t,
                  cudaStream_t stream);

// data[r][c] += bias[per_row ? r : c] for r < rows, c < cols, storage type, row stride ld.
void launch_add_bias(void* data, int rows, int cols, int64_t ld, const float* bias, bool per_row, DType t,
                     cudaStream_t stream);

// dst[i] = src[i] converted between storage types (weights arrive in the checkpoint's dtype).
void launch_convert(const void* src, DType src_t, void* dst, DType dst_t, int64_t n, cudaStream_t stream);

// A2[i] = -exp(A_log[i]) * log2(e): the scan uses exp2 of dt * A2, one multiply fewer per step.
void launch_prepare_A(const float* A_log, float* A2, int64_t n, cudaStream_t stream);

// out[r] = argmax_c logits[r][c] (first index on ties), for greedy sampling without copying
// the logits to the host.
void launch_argmax(const float* logits, int rows, int cols, int* out, cudaStream_t stream);

}  // namespace mamba

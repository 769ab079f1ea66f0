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

// ---- sliding-window attention (a hybrid's attention layers) ----------------------------------
//
// Layouts. q, k and v come from one projection into fp32 token-major rows
//   qkv [rows][Q | K | V]    Q = heads * head_dim, K = V = kv_heads * head_dim
// (fp32 whatever the storage type: the rings they feed are fp32, and RoPE at large positions
// wants the unrounded values). Each attention layer keeps, per slot, a ring of the last
// `window` rotated keys and values:
//   ring_k, ring_v [slot][attn layer][window][kv_heads][head_dim]   fp32
// the token at absolute position p in ring row p mod window. Positions are int64 (sessions
// outlive 2^31 tokens in principle) and are the session's tokens_absorbed before the token.
// Query head h reads key/value head h / (heads / kv_heads). A slot index < 0 marks a decode
// padding row: its output is zero and no ring is touched.

// The largest head_dim the attention kernels take (registers and shared memory are sized by it).
constexpr int kAttnMaxHeadDim = 256;

struct QkvPrepParams {
  int rows = 0, heads = 0, kv_heads = 0, head_dim = 0, window = 0;
  float* qkv = nullptr;  // [rows][row stride], updated in place
  int64_t qkv_row_stride = 0;
  const float* bias = nullptr;      // [Q + 2K] (q | k | v biases), may be null
  const double* inv_freq = nullptr;  // [head_dim / 2]: theta^(-2i/hd) in float64; null = no RoPE
  // Position of row r: positions[r] when given (decode: one session per row), else start + r
  // (prefill: one session's consecutive tokens).
  const int64_t* positions = nullptr;
  int64_t start = 0;
  // Decode: the rotated key and the value also go into ring row (position mod window) of
  // slots[r] (null ring_k: no ring write, as in prefill, where the ring is written after the
  // attention has read the old rows).
  float* ring_k = nullptr;  // this layer's ring in slot 0; + slots[r] * ring_slot_stride
  float* ring_v = nullptr;
  int64_t ring_slot_stride = 0;
  const int* slots = nullptr;
};
// Adds the biases, applies RoPE (angles position * inv_freq computed in float64 on the device:
// at position 10^7 an fp32 product is off by tenths of a radian) to q and k, and in decode
// writes the new key and value into the ring.
void launch_qkv_prep(const QkvPrepParams& p, cudaStream_t stream);

struct AttnPrefillParams {
  int L = 0;          // new tokens (queries) of one session
  int64_t start = 0;  // absolute position of the first
  int heads = 0, kv_heads = 0, head_dim = 0, window = 0;
  const float* qkv = nullptr;  // [L][row stride]: q | k | v after qkv_prep
  int64_t qkv_row_stride = 0;
  const float* ring_k = nullptr;  // this session's ring of this layer: [window][kv_heads][head_dim]
  const float* ring_v = nullptr;
  void* out = nullptr;  // [L][heads * head_dim], storage type
  int64_t out_row_stride = 0;
};
// Query l (position start + l) attends to the keys at positions j with start+l-W < j <= start+l:
// those below `start` from the ring (row j mod W), the others from this call's qkv rows.
// Flash-style: key tiles in shared memory, online softmax, no score matrix in global memory.
void launch_window_attention_prefill(const AttnPrefillParams& p, DType t, cudaStream_t stream);

struct RingWriteParams {
  int L = 0;
  int64_t start = 0;
  int window = 0, kv_width = 0;  // kv_width = kv_heads * head_dim
  const float* k = nullptr;      // this call's rotated keys: row m at k + m * row_stride
  const float* v = nullptr;
  int64_t row_stride = 0;
  float* ring_k = nullptr;  // this session's ring of this layer
  float* ring_v = nullptr;
};
// After prefill attention: the last min(L, W) new keys and values into their ring rows.
void launch_ring_write(const RingWriteParams& p, cudaStream_t stream);

struct AttnDecodeParams {
  int batch = 0, heads = 0, kv_heads = 0, head_dim = 0, window = 0;
  const int* slots = nullptr;          // [batch], -1 = padding row
  const int64_t* positions = nullptr;  // [batch]: the row's token position; its key is in the ring already
  const float* q = nullptr;            // rotated queries, row b at q + b * q_row_stride
  int64_t q_row_stride = 0;
  const float* ring_k = nullptr;  // this layer's ring in slot 0; + slots[b] * ring_slot_stride
  const float* ring_v = nullptr;
  int64_t ring_slot_stride = 0;
  void* out = nullptr;  // [batch][heads * head_dim], storage type
  int64_t out_row_stride = 0;
  // The live keys (positions max(0, t-W+1)..t) are cut into `splits` ranges of `split_keys`
  // keys, one block each (flash-decoding), then merged; splits * split_keys >= window.
  int splits = 1, split_keys = 0;
  float* partial = nullptr;  // splits > 1: [batch][heads][splits][head_dim + 2] (acc | max | sum)
};
void launch_window_attention_decode(const AttnDecodeParams& p, DType t, cudaStream_t stream);
// How many splits decode uses for a window (1 when it fits one block's range).
int attention_decode_splits(int window, int split_keys);

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

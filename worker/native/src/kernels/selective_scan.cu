// The fused selective scan of prefill (Mamba-1), resuming from a session's saved state.
//
// For each channel d and state index n, with u = conv output, dt = softplus(delta + bias):
//   h[t] = exp(dt[t] * A[d,n]) * h[t-1] + dt[t] * B[t,n] * u[t]        h[-1] = saved state
//   y[t] = (sum_n C[t,n] * h[t] + D[d] * u[t]) * silu(z[t])
// and the final h is written back as the session's new state.
//
// Work split (the hardware-aware scan of the Mamba paper): one block owns kCh channels of one
// sequence and walks the sequence in chunks of kThreads * kItems steps. Each thread holds
// kItems consecutive steps in registers. Per chunk, u/dt/z are read once (16-byte loads); for
// every state index n the block computes the (decay, input) pairs, scans them with a block-wide
// parallel scan whose prefix is the carry from the previous chunk, and accumulates C * h into y
// in registers. Nothing but y and the final state goes back to memory.
//
// Resuming: the scan element is the affine map h -> a*h + b, composed left to right. The
// carry of chunk 0 is the map h -> h + h0 with h0 the saved state, so the first step sees
// exactly exp(dt*A)*h0 + dt*B*u. (mamba_ssm's forward kernel seeds the carry with 0 instead,
// which is why it cannot continue a sequence.) The carry after the last chunk, evaluated at 0,
// is the new state.
//
// kCh > 1 shares each B[t,n] and C[t,n] load among kCh channels: with one channel per block
// every block re-reads all of B and C (2*dstate floats per step) from L2, which is 12x the
// bytes of u/dt/z/y; kCh = 2 or 4 divides that re-read at the cost of registers. The benchmark
// (worker/native/bench/scan_bench.cu) times 1, 2 and 4.
#include <cub/block/block_scan.cuh>

#include "dtype.cuh"
#include "kernels.h"

namespace mamba {
namespace {

template <int kCh>
struct ScanPair {
  float a[kCh];
  float b[kCh];
};

// x precedes y: h -> y.a * (x.a * h + x.b) + y.b. Associative, not commutative; CUB keeps the
// order (earlier operand first).
template <int kCh>
struct ComposeMaps {
  __device__ __forceinline__ ScanPair<kCh> operator()(const ScanPair<kCh>& x, const ScanPair<kCh>& y) const {
    ScanPair<kCh> r;
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      r.a[c] = x.a[c] * y.a[c];
      r.b[c] = fmaf(y.a[c], x.b[c], y.b[c]);
    }
    return r;
  }
};

// Holds the running composition of all earlier chunks; CUB calls it from warp 0 with the
// chunk's aggregate and applies lane 0's return value as the prefix of the whole chunk.
template <int kCh>
struct CarryPrefix {
  ScanPair<kCh> running;
  __device__ __forceinline__ ScanPair<kCh> operator()(const ScanPair<kCh>& chunk_aggregate) {
    ScanPair<kCh> before = running;
    running = ComposeMaps<kCh>()(running, chunk_aggregate);
    return before;
  }
};

template <typename T, int kThreads, int kItems, int kCh>
__global__ void __launch_bounds__(kThreads) selective_scan_kernel(const ScanParams p) {
  using Pair = ScanPair<kCh>;
  using BlockScan = cub::BlockScan<Pair, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  constexpr int kChunk = kThreads * kItems;

  __shared__ typename BlockScan::TempStorage scan_storage;
  // carry[n]: the composed map of everything scanned so far for state index n. Only thread 0
  // reads and writes it inside the chunk loop (it is the thread whose prefix CUB uses).
  __shared__ Pair carry[kScanMaxState];

  const int b = blockIdx.y;
  const int d0 = blockIdx.x * kCh;
  const int L = p.seqlen;
  const int N = p.dstate;
  float* state = p.state + static_cast<int64_t>(p.slots[b]) * p.state_slot_stride + static_cast<int64_t>(d0) * N;

  for (int i = threadIdx.x; i < N * kCh; i += kThreads) {
    const int n = i / kCh, c = i % kCh;
    carry[n].a[c] = 1.f;
    carry[n].b[c] = state[c * N + n];
  }

  float dskip[kCh], dbias[kCh];
#pragma unroll
  for (int c = 0; c < kCh; ++c) {
    dskip[c] = p.D != nullptr ? p.D[d0 + c] : 0.f;
    dbias[c] = p.delta_bias != nullptr ? p.delta_bias[d0 + c] : 0.f;
  }
  const T* u_row = static_cast<const T*>(p.u) + b * p.u_batch_stride + static_cast<int64_t>(d0) * p.u_dim_stride;
  const float* dt_row = p.delta + b * p.delta_batch_stride + static_cast<int64_t>(d0) * p.delta_dim_stride;
  const T* z_row = p.z != nullptr
                       ? static_cast<const T*>(p.z) + b * p.z_batch_stride + static_cast<int64_t>(d0) * p.z_dim_stride
                       : nullptr;
  T* out_row = static_cast<T*>(p.out) + b * p.out_batch_stride + static_cast<int64_t>(d0) * p.out_dim_stride;
  const float* B_base = p.B + b * p.B_batch_stride;
  const float* C_base = p.C + b * p.C_batch_stride;
  __syncthreads();

  for (int chunk = 0; chunk < L; chunk += kChunk) {
    const int t0 = chunk + threadIdx.x * kItems;
    const int valid = max(0, min(kItems, L - t0));

    float dt[kCh][kItems], du[kCh][kItems], y[kCh][kItems];
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      float u[kItems], raw_dt[kItems];
      load_items<T, kItems>(u_row + c * p.u_dim_stride + t0, valid, u);
      load_items<float, kItems>(dt_row + c * p.delta_dim_stride + t0, valid, raw_dt);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        dt[c][i] = softplus_f32(raw_dt[i] + dbias[c]);
        du[c][i] = dt[c][i] * u[i];
        y[c][i] = dskip[c] * u[i];
      }
    }

    for (int n = 0; n < N; ++n) {
      float Bv[kItems], Cv[kItems];
      load_items<float, kItems>(B_base + n * p.B_state_stride + t0, valid, Bv);
      load_items<float, kItems>(C_base + n * p.C_state_stride + t0, valid, Cv);
      float A2[kCh];
#pragma unroll
      for (int c = 0; c < kCh; ++c) A2[c] = p.A2[(d0 + c) * N + n];

      Pair items[kItems];
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
#pragma unroll
        for (int c = 0; c < kCh; ++c) {
          // Steps past the end are the identity map, so the carry passes through them
          // unchanged. A select, not a multiply: the unread tail may hold NaN.
          const bool in = i < valid;
          items[i].a[c] = in ? exp2f(dt[c][i] * A2[c]) : 1.f;
          items[i].b[c] = in ? du[c][i] * Bv[i] : 0.f;
        }
      }

      CarryPrefix<kCh> prefix;
      if (threadIdx.x == 0) prefix.running = carry[n];
      BlockScan(scan_storage).InclusiveScan(items, items, ComposeMaps<kCh>(), prefix);
      if (threadIdx.x == 0) carry[n] = prefix.running;

#pragma unroll
      for (int i = 0; i < kItems; ++i) {
#pragma unroll
        for (int c = 0; c < kCh; ++c) y[c][i] = fmaf(items[i].b[c], Cv[i], y[c][i]);
      }
      __syncthreads();  // scan_storage is reused by the next state index
    }

#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      if (z_row != nullptr) {
        float zv[kItems];
        load_items<T, kItems>(z_row + c * p.z_dim_stride + t0, valid, zv);
#pragma unroll
        for (int i = 0; i < kItems; ++i) y[c][i] *= silu_f32(zv[i]);
      }
      store_items<T, kItems>(out_row + c * p.out_dim_stride + t0, valid, y[c]);
    }
  }

  __syncthreads();  // thread 0's last carry writes must be visible before the state is written
  for (int i = threadIdx.x; i < N * kCh; i += kThreads) {
    const int n = i / kCh, c = i % kCh;
    state[c * N + n] = carry[n].b[c];
  }
}

constexpr int kScanThreads = 128;
constexpr int kScanItems = 8;  // 16 bytes of bf16/fp16, 32 of fp32 per load
static_assert(kScanItems % kScanAlign == 0 || kScanAlign % kScanItems == 0, "alignment contract");

template <typename T, int kCh>
void launch_typed(const ScanParams& p, cudaStream_t stream) {
  dim3 grid(p.dim / kCh, p.batch);
  selective_scan_kernel<T, kScanThreads, kScanItems, kCh><<<grid, kScanThreads, 0, stream>>>(p);
  MAMBA_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_channels(const ScanParams& p, int ch, cudaStream_t stream) {
  switch (ch) {
    case 1: return launch_typed<T, 1>(p, stream);
    case 2: return launch_typed<T, 2>(p, stream);
    case 4: return launch_typed<T, 4>(p, stream);
  }
  throw NativeError("invalid_argument", "selective scan: channels_per_block must be 1, 2 or 4");
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

int selective_scan_default_channels(int dim) {
  // Two channels per block halve the B/C re-reads and keep about 100 registers per thread
  // (see the resource report in docs/cuda-engine.md); to be confirmed by the benchmark.
  if (dim % 2 == 0) return 2;
  return 1;
}

void launch_selective_scan(const ScanParams& p, DType t, int channels_per_block, cudaStream_t stream) {
  if (p.seqlen <= 0 || p.batch <= 0) return;
  const int ch = channels_per_block > 0 ? channels_per_block : selective_scan_default_channels(p.dim);
  MAMBA_REQUIRE(p.dstate >= 1 && p.dstate <= kScanMaxState, "invalid_argument",
                "selective scan: d_state must be in [1, 64], got " + std::to_string(p.dstate));
  MAMBA_REQUIRE(p.dim % ch == 0, "invalid_argument", "selective scan: d_inner is not a multiple of channels_per_block");
  // The vector loads need every row start 16-byte aligned.
  for (int64_t s : {p.u_dim_stride, p.u_batch_stride, p.delta_dim_stride, p.delta_batch_stride, p.B_state_stride,
                    p.B_batch_stride, p.C_state_stride, p.C_batch_stride, p.z_dim_stride, p.z_batch_stride,
                    p.out_dim_stride, p.out_batch_stride}) {
    MAMBA_REQUIRE(s % kScanAlign == 0, "invalid_argument", "selective scan: row strides must be multiples of 8 elements");
  }
  MAMBA_REQUIRE(aligned16(p.u) && aligned16(p.delta) && aligned16(p.B) && aligned16(p.C) && aligned16(p.out) &&
                    (p.z == nullptr || aligned16(p.z)),
                "invalid_argument", "selective scan: buffers must be 16-byte aligned");
  switch (t) {
    case DType::F32: return launch_channels<float>(p, ch, stream);
    case DType::F16: return launch_channels<__half>(p, ch, stream);
    case DType::BF16: return launch_channels<__nv_bfloat16>(p, ch, stream);
  }
}

}  // namespace mamba

// Device-side conversions between the storage types and fp32, and the wide loads the
// memory-bound kernels rely on. All arithmetic happens in fp32 whatever the storage type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace mamba {

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Reinterprets a 16-byte register vector as storage elements without a trip through local
// memory (a union keeps it in registers; checked in the --resource-usage report: 0 stack).
template <typename T>
union Vec16 {
  uint4 raw;
  T elems[16 / sizeof(T)];
};

// Loads kItems consecutive elements starting at p into fp32 registers. When all kItems are in
// range the load is 16-byte vectors (the caller guarantees p is 16-byte aligned then: row
// strides are multiples of kItems and rows start aligned); the tail of a sequence takes
// guarded scalar loads and fills zeros, which the callers mask explicitly.
template <typename T, int kItems>
__device__ __forceinline__ void load_items(const T* __restrict__ p, int valid, float (&out)[kItems]) {
  static_assert((kItems * sizeof(T)) % 16 == 0, "kItems elements must fill whole 16-byte vectors");
  constexpr int kPer = 16 / sizeof(T);
  constexpr int kVecs = kItems / kPer;
  if (valid >= kItems) {
    const uint4* v = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      Vec16<T> u;
      u.raw = __ldg(v + i);
#pragma unroll
      for (int j = 0; j < kPer; ++j) out[i * kPer + j] = to_f32(u.elems[j]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) out[i] = i < valid ? to_f32(p[i]) : 0.f;
  }
}

template <typename T, int kItems>
__device__ __forceinline__ void store_items(T* __restrict__ p, int valid, const float (&in)[kItems]) {
  static_assert((kItems * sizeof(T)) % 16 == 0, "kItems elements must fill whole 16-byte vectors");
  constexpr int kPer = 16 / sizeof(T);
  constexpr int kVecs = kItems / kPer;
  if (valid >= kItems) {
    uint4* v = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      Vec16<T> u;
#pragma unroll
      for (int j = 0; j < kPer; ++j) u.elems[j] = from_f32<T>(in[i * kPer + j]);
      v[i] = u.raw;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (i < valid) p[i] = from_f32<T>(in[i]);
  }
}

// torch.nn.functional.softplus(beta=1, threshold=20), as HF's Mamba applies it to dt.
__device__ __forceinline__ float softplus_f32(float v) { return v <= 20.f ? log1pf(expf(v)) : v; }

__device__ __forceinline__ float silu_f32(float v) { return v / (1.f + expf(-v)); }

}  // namespace mamba

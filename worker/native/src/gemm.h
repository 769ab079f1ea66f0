// The projections' matrix products, behind an interface with no cuBLAS types in it: the engine
// and the kernels compile where cuBLAS is absent (this repository's CI machines), and only
// gemm_cublas.cpp needs its headers and libraries.
//
// Semantics are cuBLAS's column-major ones (C = op(A) · op(B) + beta·C, alpha = 1, fp32
// accumulation); engine.cpp derives each call from the row-major layouts it keeps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"

namespace mamba {

struct GemmContext;  // owns the cuBLAS handle; one per engine, bound to the engine's stream

enum class Op : int { N = 0, T = 1 };

// workspace: device memory cuBLAS may use. Given explicitly so that no allocation happens
// while a decode step is being captured into a CUDA graph.
GemmContext* gemm_create(cudaStream_t stream, void* workspace, std::size_t workspace_bytes);
void gemm_destroy(GemmContext* ctx);

// fp32 operands are multiplied in true fp32 (CUBLAS_COMPUTE_32F, never TF32): the fp32 engine
// is held to 1e-4 of the reference. 16-bit operands accumulate in fp32. A and B must share a
// type; C may be fp32 (logits, x_proj output, the residual stream) or the operands' type.
void gemm(GemmContext* ctx, Op ta, Op tb, int m, int n, int k, const void* A, DType a_t, int64_t lda, const void* B,
          DType b_t, int64_t ldb, void* C, DType c_t, int64_t ldc, float beta);

std::string gemm_backend_version();

}  // namespace mamba

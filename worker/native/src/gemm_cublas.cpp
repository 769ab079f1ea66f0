// The one file that speaks cuBLAS (see gemm.h for why it is kept apart).
#include <cublas_v2.h>

#include <string>

#include "gemm.h"

namespace mamba {

struct GemmContext {
  cublasHandle_t handle = nullptr;
};

namespace {

[[noreturn]] void throw_cublas(cublasStatus_t st, const char* what) {
  throw NativeError("cublas_error", std::string(what) + " failed: " + cublasGetStatusName(st) + " (" +
                                        cublasGetStatusString(st) + ")");
}

#define MAMBA_CUBLAS_CHECK(expr)                                      \
  do {                                                                \
    cublasStatus_t st_ = (expr);                                      \
    if (st_ != CUBLAS_STATUS_SUCCESS) throw_cublas(st_, #expr);       \
  } while (0)

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

}  // namespace

GemmContext* gemm_create(cudaStream_t stream, void* workspace, std::size_t workspace_bytes) {
  auto* ctx = new GemmContext();
  try {
    MAMBA_CUBLAS_CHECK(cublasCreate(&ctx->handle));
    MAMBA_CUBLAS_CHECK(cublasSetStream(ctx->handle, stream));
    MAMBA_CUBLAS_CHECK(cublasSetWorkspace(ctx->handle, workspace, workspace_bytes));
    // Default math: no TF32 for fp32 operands (CUBLAS_COMPUTE_32F below asks for true fp32).
    MAMBA_CUBLAS_CHECK(cublasSetMathMode(ctx->handle, CUBLAS_DEFAULT_MATH));
    MAMBA_CUBLAS_CHECK(cublasSetPointerMode(ctx->handle, CUBLAS_POINTER_MODE_HOST));
  } catch (...) {
    gemm_destroy(ctx);
    throw;
  }
  return ctx;
}

void gemm_destroy(GemmContext* ctx) {
  if (ctx == nullptr) return;
  if (ctx->handle != nullptr) cublasDestroy(ctx->handle);
  delete ctx;
}

void gemm(GemmContext* ctx, Op ta, Op tb, int m, int n, int k, const void* A, DType a_t, int64_t lda, const void* B,
          DType b_t, int64_t ldb, void* C, DType c_t, int64_t ldc, float beta) {
  MAMBA_REQUIRE(a_t == b_t, "invalid_argument", "gemm: A and B must have the same type");
  const float alpha = 1.f;
  MAMBA_CUBLAS_CHECK(cublasGemmEx(ctx->handle, ta == Op::T ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  tb == Op::T ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A, cuda_type(a_t),
                                  static_cast<int>(lda), B, cuda_type(b_t), static_cast<int>(ldb), &beta, C,
                                  cuda_type(c_t), static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

std::string gemm_backend_version() {
  int major = 0, minor = 0, patch = 0;
  cublasGetProperty(MAJOR_VERSION, &major);
  cublasGetProperty(MINOR_VERSION, &minor);
  cublasGetProperty(PATCH_LEVEL, &patch);
  return "cuBLAS " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

}  // namespace mamba

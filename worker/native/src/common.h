// Types and error handling shared by every translation unit of the addon, host and device.
// Nothing here includes cuBLAS or Node headers: the kernels and the engine must compile on a
// machine that has only nvcc (see docs/cuda-engine.md, "What compiles where").
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mamba {

// Element types of weights and activations. The recurrent state is always fp32.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

inline std::size_t dtype_bytes(DType t) { return t == DType::F32 ? 4 : 2; }

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
  }
  return "?";
}

// An error that crosses into JavaScript with a stable code (the TypeScript side maps codes to
// its typed errors), so callers can tell "out of slots" from "the GPU faulted".
class NativeError : public std::runtime_error {
 public:
  NativeError(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* what, const char* file, int line) {
  throw NativeError("cuda_error", std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                                      ") at " + file + ":" + std::to_string(line));
}

}  // namespace mamba

// Every CUDA runtime call is checked: an unchecked asynchronous fault shows up calls later as a
// mystery, and exit code 0 proves nothing (METHOD.md).
#define MAMBA_CUDA_CHECK(expr)                                            \
  do {                                                                    \
    cudaError_t mamba_err_ = (expr);                                      \
    if (mamba_err_ != cudaSuccess) ::mamba::throw_cuda(mamba_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: catches bad launch configurations at the call that made them.
#define MAMBA_CUDA_CHECK_LAUNCH() MAMBA_CUDA_CHECK(cudaGetLastError())

#define MAMBA_REQUIRE(cond, code, msg)                         \
  do {                                                         \
    if (!(cond)) throw ::mamba::NativeError((code), (msg));    \
  } while (0)

// Converts CUDA runtime errors into absl::Status where a runtime call is made, so that no
// cudaError_t crosses a module boundary.
//
// Pure functions, thread-safe.
#ifndef PQKV_KERNELS_CUDA_CUDA_STATUS_H_
#define PQKV_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace pqkv::kernels::cuda {

// OK for cudaSuccess; otherwise "<what>: <error name>: <error text>" with the code
// RESOURCE_EXHAUSTED (out of device or pinned memory), UNAVAILABLE (no usable device or
// driver) or INTERNAL (anything else: a bad launch, a kernel fault).
absl::Status CudaStatus(cudaError_t error, absl::string_view what);

// OK when CUDA device `device` exists; UNAVAILABLE without a device or driver,
// INVALID_ARGUMENT for a device number past the last. For the objects' Create.
absl::Status CheckDevice(int device);

}  // namespace pqkv::kernels::cuda

// Returns from the enclosing function (absl::Status) when the CUDA call `expr` fails;
// the message names the call.
#define RETURN_IF_CUDA_ERROR(expr)                                       \
  do {                                                                   \
    const cudaError_t pqkv_cuda_error_ = (expr);                         \
    if (pqkv_cuda_error_ != cudaSuccess)                                 \
      return ::pqkv::kernels::cuda::CudaStatus(pqkv_cuda_error_, #expr); \
  } while (0)

#endif  // PQKV_KERNELS_CUDA_CUDA_STATUS_H_

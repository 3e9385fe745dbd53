// DeviceBuffer: a device allocation that grows on demand and is reused, for the CUDA
// kernels' owners in this directory. Host code; not thread-safe (its owner serialises).
#ifndef PQKV_KERNELS_CUDA_DEVICE_BUFFER_H_
#define PQKV_KERNELS_CUDA_DEVICE_BUFFER_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace pqkv::kernels::cuda {

// A device allocation that grows on demand and is reused; freed on destruction (the
// owner makes its device current first). It grows geometrically, to at least 1.5 times
// its old capacity: n grows by one token per decode step, and growing to exactly the
// bytes asked for would free and reallocate (cudaFree and cudaMalloc synchronize the
// device) on nearly every call.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }

  // Makes room for `bytes`; the contents are not kept. No work may be pending on it.
  // Counts each cudaMalloc in *allocations.
  absl::Status Reserve(size_t bytes, uint64_t* allocations) {
    if (bytes <= capacity_) return absl::OkStatus();
    const size_t target = std::max(bytes, capacity_ + capacity_ / 2);
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    capacity_ = 0;
    ++*allocations;
    const cudaError_t error = cudaMalloc(&data_, target);
    if (error != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky: clear it
      data_ = nullptr;
      return CudaStatus(error, absl::StrCat("cudaMalloc of ", target, " bytes"));
    }
    capacity_ = target;
    return absl::OkStatus();
  }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t capacity() const { return capacity_; }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_DEVICE_BUFFER_H_

#include "client/cuda_host_register.h"

#include <cuda_runtime_api.h>

namespace pqkv {

bool CudaHostRegisterIfPresent(void* data, size_t bytes) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  if (cudaHostRegister(data, bytes, cudaHostRegisterPortable) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}

void CudaHostUnregister(void* data) { cudaHostUnregister(data); }

}  // namespace pqkv

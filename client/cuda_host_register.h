// Page-locks host memory for the CUDA driver (cudaHostRegister) when a CUDA device is
// present, so that copies from it to the GPU are DMA. Built without CUDA
// (--define=pqkv_cuda=off) these report that no device is there.
#ifndef PQKV_CLIENT_CUDA_HOST_REGISTER_H_
#define PQKV_CLIENT_CUDA_HOST_REGISTER_H_

#include <cstddef>

namespace pqkv {

// True when `bytes` at `data` are now registered with CUDA; false when there is no
// device (or registration failed), and the memory is left as it was.
bool CudaHostRegisterIfPresent(void* data, size_t bytes);
// Undoes a successful CudaHostRegisterIfPresent.
void CudaHostUnregister(void* data);

}  // namespace pqkv

#endif  // PQKV_CLIENT_CUDA_HOST_REGISTER_H_

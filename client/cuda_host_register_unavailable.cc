// Built without the CUDA toolkit: there is never a device to register with.
#include "client/cuda_host_register.h"

namespace pqkv {

bool CudaHostRegisterIfPresent(void* /*data*/, size_t /*bytes*/) { return false; }
void CudaHostUnregister(void* /*data*/) {}

}  // namespace pqkv

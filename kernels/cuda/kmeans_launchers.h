// Launcher of the k-means assignment kernel (kmeans_assign.cu). Internal to kernels/cuda:
// CudaNearestCentroid (kmeans_cuda.h) validates the arguments, owns the buffers and wraps
// the returned cudaError_t into absl::Status. Host-compilable; enqueues on `stream`, never
// synchronizes. Pointers are device pointers.
#ifndef PQKV_KERNELS_CUDA_KMEANS_LAUNCHERS_H_
#define PQKV_KERNELS_CUDA_KMEANS_LAUNCHERS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace pqkv::kernels::cuda {

// kernels::AssignNearest on the device: for each of n points (fp32 [n][dim], contiguous)
// the index of the nearest of k centroids (fp32 [k][dim]) by argmin_c (c_norms[c] - 2 x.c),
// ties to the lower index; assign[n], and distances[n] (that value) unless null. The dot
// products are summed in dimension order with one FMA per product, as the AVX2 kernel
// does. Requires n < 2^31, 1 <= k and 1 <= dim <= kMaxAssignDim.
constexpr int kMaxAssignDim = 1024;
cudaError_t LaunchAssignNearest(const float* points, uint32_t n, int dim, const float* centroids,
                                const float* c_norms, int k, uint32_t* assign, float* distances,
                                cudaStream_t stream);

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_KMEANS_LAUNCHERS_H_

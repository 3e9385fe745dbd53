#include "kernels/cuda/resident_layer.h"

#include <cuda_runtime_api.h>

namespace pqkv::kernels::cuda {

ResidentLayer::ResidentLayer(int device, int kv_heads, const PqShape& pq)
    : device_(device), kv_heads_(kv_heads), pq_(pq) {}

ResidentLayer::~ResidentLayer() {
  if (centroids_ == nullptr && codes_ == nullptr) return;
  cudaSetDevice(device_);
  if (centroids_ != nullptr) cudaFree(centroids_);
  if (codes_ != nullptr) cudaFree(codes_);
}

size_t ResidentLayer::device_bytes() const {
  const size_t heads = static_cast<size_t>(kv_heads_);
  const size_t centroid_bytes =
      centroids_ == nullptr
          ? 0
          : heads * pq_.subspaces * pq_.centroids_per_subspace * pq_.subspace_dim * sizeof(float);
  return centroid_bytes + heads * capacity_ * pq_.subspaces;
}

}  // namespace pqkv::kernels::cuda

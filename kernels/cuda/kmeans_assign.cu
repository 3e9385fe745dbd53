// The k-means assignment step on the device: the n x k x dim multiply-adds of each
// Lloyd iteration (kernels/kmeans.h's AssignNearest is the contract and the test oracle).
// One thread per point; a block stages the centroids in shared memory a tile at a time,
// so every thread of the block reads each centroid from shared memory and its own point
// from L1.
#include "kernels/cuda/kmeans_launchers.h"

#include <algorithm>

namespace pqkv::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr size_t kTileBytes = 32 * 1024;  // of the 48 KiB every device gives a block

__global__ void AssignNearestKernel(const float* __restrict__ points, uint32_t n, int dim,
                                    const float* __restrict__ centroids,
                                    const float* __restrict__ c_norms, int k, int tile_centroids,
                                    uint32_t* __restrict__ assign, float* __restrict__ distances) {
  extern __shared__ float tile[];  // [tile_centroids][dim]
  const uint32_t r = blockIdx.x * blockDim.x + threadIdx.x;
  const float* x = points + static_cast<size_t>(r) * dim;
  float best = 0.0f;
  uint32_t best_c = 0;
  for (int first = 0; first < k; first += tile_centroids) {
    const int count = min(tile_centroids, k - first);
    __syncthreads();  // the previous tile is no longer read
    for (int i = threadIdx.x; i < count * dim; i += blockDim.x) {
      tile[i] = centroids[static_cast<size_t>(first) * dim + i];
    }
    __syncthreads();
    if (r >= n) continue;
    for (int j = 0; j < count; ++j) {
      const float* row = tile + j * dim;
      float dot = 0.0f;
      for (int i = 0; i < dim; ++i) dot = __fmaf_rn(x[i], row[i], dot);
      // 2 * dot is exact, so this rounds once, as the CPU's c_norm - 2 * dot does.
      const float d = __fsub_rn(c_norms[first + j], 2.0f * dot);
      const int c = first + j;
      if (c == 0 || d < best) {
        best = d;
        best_c = static_cast<uint32_t>(c);
      }
    }
  }
  if (r < n) {
    assign[r] = best_c;
    if (distances != nullptr) distances[r] = best;
  }
}

}  // namespace

cudaError_t LaunchAssignNearest(const float* points, uint32_t n, int dim, const float* centroids,
                                const float* c_norms, int k, uint32_t* assign, float* distances,
                                cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (k < 1 || dim < 1 || dim > kMaxAssignDim) return cudaErrorInvalidValue;
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  const int tile_centroids =
      static_cast<int>(std::min<size_t>(static_cast<size_t>(k), kTileBytes / row_bytes));
  const unsigned blocks = (n + kThreads - 1) / kThreads;
  AssignNearestKernel<<<blocks, kThreads, tile_centroids * row_bytes, stream>>>(
      points, n, dim, centroids, c_norms, k, tile_centroids, assign, distances);
  return cudaGetLastError();
}

}  // namespace pqkv::kernels::cuda

// CudaNearestCentroid: the k-means assignment step (kernels/kmeans.h's AssignNearest) on
// a CUDA device, for one set of points assigned against many sets of centroids: the
// points go to the device once (SetPoints), then each Lloyd iteration uploads its k
// centroids and reads back n assignments. kernels::AssignNearest is the contract and the
// test oracle (tests/kernels/cuda/kmeans_cuda_test.cc).
//
// Host header: no CUDA types. Not thread-safe: one object per thread (it owns a stream
// and its device buffers).
#ifndef PQKV_KERNELS_CUDA_KMEANS_CUDA_H_
#define PQKV_KERNELS_CUDA_KMEANS_CUDA_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pqkv::kernels::cuda {

class CudaNearestCentroid {
 public:
  // UNAVAILABLE without a device; INVALID_ARGUMENT for a device that does not exist.
  static absl::StatusOr<std::unique_ptr<CudaNearestCentroid>> Create(int device = 0);
  ~CudaNearestCentroid();

  // Uploads n points, fp32 [n][dim] contiguous, 1 <= dim <= 1024, n < 2^31.
  absl::Status SetPoints(const float* points, size_t n, int dim);
  // For each point set last, the nearest of k centroids (fp32 [k][dim]) given their
  // squared norms c_norms[k]: assign[n], and distances[n] unless null, as
  // kernels::AssignNearest defines them. Blocks until the results are on the host.
  absl::Status Assign(const float* centroids, const float* c_norms, int k, uint32_t* assign,
                      float* distances = nullptr);

 private:
  struct Impl;
  explicit CudaNearestCentroid(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_KMEANS_CUDA_H_

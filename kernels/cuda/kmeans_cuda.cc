#include "kernels/cuda/kmeans_cuda.h"

#include <cuda_runtime_api.h>

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/kmeans_launchers.h"

namespace pqkv::kernels::cuda {

struct CudaNearestCentroid::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  DeviceBuffer points, centroids, norms, assign, distances;
  size_t n = 0;
  int dim = 0;
  uint64_t allocations = 0;

  ~Impl() {
    cudaSetDevice(device);  // the buffers are freed on it
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

CudaNearestCentroid::CudaNearestCentroid(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaNearestCentroid::~CudaNearestCentroid() = default;

absl::StatusOr<std::unique_ptr<CudaNearestCentroid>> CudaNearestCentroid::Create(int device) {
  RETURN_IF_ERROR(CheckDevice(device));
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  return std::unique_ptr<CudaNearestCentroid>(new CudaNearestCentroid(std::move(impl)));
}

absl::Status CudaNearestCentroid::SetPoints(const float* points, size_t n, int dim) {
  if (points == nullptr && n > 0) return absl::InvalidArgumentError("points are required");
  if (dim < 1 || dim > kMaxAssignDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("dim must be in [1, ", kMaxAssignDim, "], got ", dim));
  }
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(n, " points: at most 2^31 - 1"));
  }
  Impl& m = *impl_;
  RETURN_IF_CUDA_ERROR(cudaSetDevice(m.device));
  const size_t bytes = n * dim * sizeof(float);
  RETURN_IF_ERROR(m.points.Reserve(bytes, &m.allocations));
  RETURN_IF_ERROR(m.assign.Reserve(n * sizeof(uint32_t), &m.allocations));
  RETURN_IF_ERROR(m.distances.Reserve(n * sizeof(float), &m.allocations));
  if (bytes > 0) {
    RETURN_IF_CUDA_ERROR(
        cudaMemcpyAsync(m.points.as<float>(), points, bytes, cudaMemcpyHostToDevice, m.stream));
  }
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(m.stream));
  m.n = n;
  m.dim = dim;
  return absl::OkStatus();
}

absl::Status CudaNearestCentroid::Assign(const float* centroids, const float* c_norms, int k,
                                         uint32_t* assign, float* distances) {
  Impl& m = *impl_;
  if (m.dim == 0) return absl::FailedPreconditionError("SetPoints has not been called");
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("k must be >= 1, got ", k));
  if (centroids == nullptr || c_norms == nullptr || (assign == nullptr && m.n > 0)) {
    return absl::InvalidArgumentError("centroids, c_norms and assign are required");
  }
  if (m.n == 0) return absl::OkStatus();
  RETURN_IF_CUDA_ERROR(cudaSetDevice(m.device));
  const size_t centroid_bytes = static_cast<size_t>(k) * m.dim * sizeof(float);
  RETURN_IF_ERROR(m.centroids.Reserve(centroid_bytes, &m.allocations));
  RETURN_IF_ERROR(m.norms.Reserve(k * sizeof(float), &m.allocations));
  RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(m.centroids.as<float>(), centroids, centroid_bytes,
                                       cudaMemcpyHostToDevice, m.stream));
  RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(m.norms.as<float>(), c_norms, k * sizeof(float),
                                       cudaMemcpyHostToDevice, m.stream));
  RETURN_IF_CUDA_ERROR(
      LaunchAssignNearest(m.points.as<float>(), static_cast<uint32_t>(m.n), m.dim,
                          m.centroids.as<float>(), m.norms.as<float>(), k, m.assign.as<uint32_t>(),
                          distances != nullptr ? m.distances.as<float>() : nullptr, m.stream));
  RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(assign, m.assign.as<uint32_t>(), m.n * sizeof(uint32_t),
                                       cudaMemcpyDeviceToHost, m.stream));
  if (distances != nullptr) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(distances, m.distances.as<float>(), m.n * sizeof(float),
                                         cudaMemcpyDeviceToHost, m.stream));
  }
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(m.stream));
  return absl::OkStatus();
}

}  // namespace pqkv::kernels::cuda

#include "server/index/gpu_scorer.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/cuda/kmeans_cuda.h"
#include "kernels/cuda/pq_retrieval_cuda.h"
#include "kernels/cuda/resident_layer.h"
#include "server/runtime/server_logger.h"

namespace pqkv::server {

namespace {

// k-means' assignments on the device, each call gated by and counted in the scorer's
// health (a device that failed a retrieval is not used for builds either, and back).
class DeviceKMeansAssigner : public NearestCentroidAssigner {
 public:
  DeviceKMeansAssigner(std::unique_ptr<kernels::cuda::CudaNearestCentroid> device,
                       GpuBackendHealth* health)
      : device_(std::move(device)), health_(health) {}

  absl::Status SetPoints(const float* points, size_t n, int dim) override {
    return Checked([&] { return device_->SetPoints(points, n, dim); });
  }
  absl::Status Assign(const float* centroids, const float* c_norms, int k,
                      uint32_t* assign) override {
    return Checked([&] { return device_->Assign(centroids, c_norms, k, assign); });
  }

 private:
  template <typename Call>
  absl::Status Checked(Call call) {
    const absl::Time now = absl::Now();
    if (!health_->TryDevice(now)) {
      return absl::FailedPreconditionError(absl::StrCat("the GPU backend is ",
                                                        GpuBackendStateName(health_->state()), ": ",
                                                        health_->last_error()));
    }
    absl::Status status = call();
    if (!status.ok()) {
      const std::string line = health_->RecordFailure(status, now);
      if (!line.empty()) ServerLogger().warn("k-means on the GPU: {}", line);
    }
    return status;
  }

  std::unique_ptr<kernels::cuda::CudaNearestCentroid> device_;
  GpuBackendHealth* const health_;
};

}  // namespace

bool GpuScorer::DeviceAvailable() { return kernels::cuda::CudaDeviceAvailable(); }

std::unique_ptr<NearestCentroidAssigner> GpuScorer::NewKMeansAssigner() {
  if (health_.state() != GpuBackendState::kReady) return nullptr;
  int device_number = 0;
  {
    absl::MutexLock lock(&mu_);
    device_number = retriever_->device();
  }
  absl::StatusOr<std::unique_ptr<kernels::cuda::CudaNearestCentroid>> device =
      kernels::cuda::CudaNearestCentroid::Create(device_number);
  if (!device.ok()) {
    const std::string line = health_.RecordFailure(device.status(), absl::Now());
    if (!line.empty()) ServerLogger().warn("k-means on the GPU: {}", line);
    return nullptr;
  }
  return std::make_unique<DeviceKMeansAssigner>(*std::move(device), &health_);
}

absl::StatusOr<std::unique_ptr<GpuScorer>> GpuScorer::Create(int device) {
  absl::StatusOr<std::unique_ptr<kernels::cuda::CudaLayerRetriever>> retriever =
      kernels::cuda::CudaLayerRetriever::Create(device);
  if (!retriever.ok()) return retriever.status();
  return std::unique_ptr<GpuScorer>(new GpuScorer(*std::move(retriever)));
}

GpuScorer::GpuScorer(std::unique_ptr<kernels::cuda::CudaLayerRetriever> retriever)
    : retriever_(std::move(retriever)) {}

GpuScorer::~GpuScorer() = default;

uint64_t GpuScorer::RegisterLayer() {
  absl::MutexLock lock(&mu_);
  const uint64_t layer = next_layer_++;
  resident_.emplace(layer, nullptr);
  return layer;
}

void GpuScorer::ReleaseLayer(uint64_t layer) {
  std::unique_ptr<kernels::cuda::ResidentLayer> released;
  absl::MutexLock lock(&mu_);  // no call is using it: calls hold the lock throughout
  auto it = resident_.find(layer);
  if (it == resident_.end()) return;
  released = std::move(it->second);
  resident_.erase(it);
  released.reset();  // cudaFree, under the lock
}

void GpuScorer::ResetLayer(uint64_t layer) {
  std::unique_ptr<kernels::cuda::ResidentLayer> released;
  absl::MutexLock lock(&mu_);
  auto it = resident_.find(layer);
  if (it == resident_.end()) return;
  released = std::move(it->second);  // it->second is null now: the next call uploads
  released.reset();                  // cudaFree, under the lock
}

size_t GpuScorer::resident_bytes() const {
  absl::MutexLock lock(&mu_);
  size_t bytes = 0;
  for (const auto& [layer, resident] : resident_) {
    if (resident != nullptr) bytes += resident->device_bytes();
  }
  return bytes;
}

uint64_t GpuScorer::layers_scored() const {
  absl::MutexLock lock(&mu_);
  return layers_scored_;
}

absl::StatusOr<std::vector<HeadSelection>> GpuScorer::ScoreLayer(const GpuLayerInput& input) {
  if (input.head_centroids.size() != static_cast<size_t>(input.kv_heads) ||
      input.head_codes.size() != static_cast<size_t>(input.kv_heads)) {
    return absl::InvalidArgumentError("head_centroids and head_codes need one entry per kv head");
  }
  kernels::cuda::LayerRetrievalInput in;
  in.shape.kv_heads = input.kv_heads;
  in.shape.query_heads = input.query_heads;
  in.shape.pq = input.pq;
  in.queries = input.queries;
  in.head_centroids = input.head_centroids.data();
  in.head_codes = input.head_codes.data();
  in.num_tokens = input.num_tokens;
  in.candidate_begin = input.candidate_begin;
  in.candidate_end = input.candidate_end;
  in.k = input.k;
  std::vector<uint32_t> positions(static_cast<size_t>(input.kv_heads) * input.k);
  std::vector<float> scores(positions.size());
  kernels::cuda::LayerRetrievalOutput out;
  out.positions = positions.data();
  out.scores = scores.data();
  const absl::Time now = absl::Now();
  if (!health_.TryDevice(now)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the GPU backend is ", GpuBackendStateName(health_.state()), ": ", health_.last_error()));
  }
  {
    absl::MutexLock lock(&mu_);
    auto resident = resident_.find(input.layer);
    if (resident == resident_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GPU layer ", input.layer, " is not registered"));
    }
    if (resident->second == nullptr) {
      resident->second = std::make_unique<kernels::cuda::ResidentLayer>(retriever_->device(),
                                                                        input.kv_heads, input.pq);
    }
    in.resident = resident->second.get();
    absl::Status status = retriever_->RetrieveLayer(in, out);
    if (!status.ok()) {
      const std::string line = health_.RecordFailure(status, now);
      if (!line.empty()) ServerLogger().warn("{}", line);
      return status;
    }
    ++layers_scored_;
  }
  std::vector<HeadSelection> heads(input.kv_heads);
  for (int h = 0; h < input.kv_heads; ++h) {
    const size_t begin = static_cast<size_t>(h) * input.k;
    heads[h].positions.assign(positions.begin() + begin, positions.begin() + begin + input.k);
    heads[h].scores.assign(scores.begin() + begin, scores.begin() + begin + input.k);
    for (float score : heads[h].scores) heads[h].overflow |= !std::isfinite(score);
  }
  return heads;
}

}  // namespace pqkv::server

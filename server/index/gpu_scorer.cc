#include "server/index/gpu_scorer.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/cuda/pq_retrieval_cuda.h"
#include "server/runtime/server_logger.h"

namespace pqkv::server {

bool GpuScorer::DeviceAvailable() { return kernels::cuda::CudaDeviceAvailable(); }

absl::StatusOr<std::unique_ptr<GpuScorer>> GpuScorer::Create(int device) {
  absl::StatusOr<std::unique_ptr<kernels::cuda::CudaLayerRetriever>> retriever =
      kernels::cuda::CudaLayerRetriever::Create(device);
  if (!retriever.ok()) return retriever.status();
  return std::unique_ptr<GpuScorer>(new GpuScorer(*std::move(retriever)));
}

GpuScorer::GpuScorer(std::unique_ptr<kernels::cuda::CudaLayerRetriever> retriever)
    : retriever_(std::move(retriever)) {}

GpuScorer::~GpuScorer() = default;

uint64_t GpuScorer::layers_scored() const {
  absl::MutexLock lock(&mu_);
  return layers_scored_;
}

absl::StatusOr<std::vector<HeadSelection>> GpuScorer::ScoreLayer(const GpuLayerInput& input) {
  kernels::cuda::LayerRetrievalInput in;
  in.shape.kv_heads = input.kv_heads;
  in.shape.query_heads = input.query_heads;
  in.shape.pq = input.pq;
  in.queries = input.queries;
  in.centroids = input.centroids;
  in.codes = input.codes;
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

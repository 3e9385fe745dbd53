// GpuScorer for builds without the CUDA toolkit (--define=pqkv_cuda=off): no device is
// ever available, and Create says why.
#include "server/index/gpu_scorer.h"

namespace pqkv::kernels::cuda {
class CudaLayerRetriever {};
class ResidentLayer {};
}  // namespace pqkv::kernels::cuda

namespace pqkv::server {

bool GpuScorer::DeviceAvailable() { return false; }

absl::StatusOr<std::unique_ptr<GpuScorer>> GpuScorer::Create(int device) {
  return absl::UnavailableError("this pqkv-server was built without CUDA (--define=pqkv_cuda=off)");
}

GpuScorer::GpuScorer(std::unique_ptr<kernels::cuda::CudaLayerRetriever> retriever)
    : retriever_(std::move(retriever)) {}

GpuScorer::~GpuScorer() = default;

uint64_t GpuScorer::layers_scored() const { return 0; }

uint64_t GpuScorer::RegisterLayer() { return 0; }

void GpuScorer::ReleaseLayer(uint64_t layer) {}

void GpuScorer::ResetLayer(uint64_t layer) {}

size_t GpuScorer::resident_bytes() const { return 0; }

std::unique_ptr<NearestCentroidAssigner> GpuScorer::NewKMeansAssigner() { return nullptr; }

absl::StatusOr<std::vector<HeadSelection>> GpuScorer::ScoreLayer(const GpuLayerInput& input) {
  return absl::UnavailableError("this pqkv-server was built without CUDA");
}

}  // namespace pqkv::server

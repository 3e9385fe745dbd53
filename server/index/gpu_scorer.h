// GpuScorer: the CUDA compute backend. Scores a whole layer (tables, ADC scan, GQA
// softmax, top-k for every kv head) on one GPU through kernels/cuda's
// CudaLayerRetriever.
//
// Thread-safe: calls are serialised, as the retriever owns one CUDA stream and its
// device buffers (the GPU's executor). Each registered layer's codebooks and codes stay
// on the device between calls (kernels/cuda/resident_layer.h): a call uploads its
// queries and the codes of the tokens encoded since the layer's last call, nothing more.
//
// Failures are remembered (GpuBackendHealth): after a persistent CUDA error every call
// fails at once with FAILED_PRECONDITION, without touching the device, and the caller
// answers from the CPU; out of device memory does the same for a cooldown. The scorer
// logs failures itself, rate-limited; callers need not.
#ifndef PQKV_SERVER_INDEX_GPU_SCORER_H_
#define PQKV_SERVER_INDEX_GPU_SCORER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/pq_scan.h"
#include "server/index/gpu_backend_health.h"
#include "server/index/head_scorer.h"
#include "server/index/kmeans.h"

namespace pqkv::kernels::cuda {
class CudaLayerRetriever;
class ResidentLayer;
}  // namespace pqkv::kernels::cuda

namespace pqkv::server {

// One layer, every token encoded.
struct GpuLayerInput {
  uint64_t layer = 0;  // GpuScorer::RegisterLayer's id for this layer
  int kv_heads = 0;
  int query_heads = 0;
  kernels::PqShape pq;
  const float* queries = nullptr;  // fp32 [query_heads][head_dim]
  // Per kv head: its codebook, fp32 [M][ksub][dsub], read on the layer's first call only
  // (again after ResetLayer: they were retrained), and its codes, uint8 [num_tokens][M], of
  // which only tokens not yet on the device are read. num_tokens never shrinks.
  std::vector<const float*> head_centroids;
  std::vector<const uint8_t*> head_codes;
  uint32_t num_tokens = 0;
  uint32_t candidate_begin = 0;
  uint32_t candidate_end = 0;
  uint32_t k = 0;
};

class GpuScorer {
 public:
  // True when a CUDA device and driver are present.
  static bool DeviceAvailable();
  // UNAVAILABLE without a device.
  static absl::StatusOr<std::unique_ptr<GpuScorer>> Create(int device = 0);
  ~GpuScorer();

  // One HeadSelection per kv head, best first, ties by lower position. On error the
  // caller scores on the CPU: FAILED_PRECONDITION while the backend is not kReady (see
  // the top), else the CUDA error.
  absl::StatusOr<std::vector<HeadSelection>> ScoreLayer(const GpuLayerInput& input);

  // A layer whose codebooks and codes will stay on the device between ScoreLayer calls
  // (from its first call on). ReleaseLayer frees that device memory; call it before the
  // layer's codes go away (LayerStore's destructor). Ids are never 0.
  uint64_t RegisterLayer();
  void ReleaseLayer(uint64_t layer);
  // Drops what the device holds of `layer` (its codebooks were retrained): the next
  // ScoreLayer uploads its codebooks and codes again.
  void ResetLayer(uint64_t layer);
  // Device bytes the registered layers hold (exported as a metric).
  size_t resident_bytes() const;

  // An assigner that runs k-means' assignment step on this scorer's device, for one
  // index build's thread (the index builder trains with it: LayerStore). Its failures
  // count in the backend's health like ScoreLayer's, and then the build's CPU takes over.
  // Null while the backend is not kReady, or where the device refuses a new stream.
  std::unique_ptr<NearestCentroidAssigner> NewKMeansAssigner();

  // The backend's state (exported as a metric) and the error behind it ("" if none).
  GpuBackendState state() const { return health_.state(); }
  std::string last_error() const { return health_.last_error(); }
  // Layers scored on the device, and calls the CPU answered instead, so far.
  uint64_t layers_scored() const;
  uint64_t cpu_fallbacks() const { return health_.cpu_fallbacks(); }

 private:
  explicit GpuScorer(std::unique_ptr<kernels::cuda::CudaLayerRetriever> retriever);

  GpuBackendHealth health_;
  mutable absl::Mutex mu_;
  std::unique_ptr<kernels::cuda::CudaLayerRetriever> retriever_ ABSL_GUARDED_BY(mu_);
  uint64_t layers_scored_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_layer_ ABSL_GUARDED_BY(mu_) = 1;
  // Registered layers; null until their first call.
  std::unordered_map<uint64_t, std::unique_ptr<kernels::cuda::ResidentLayer>> resident_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_GPU_SCORER_H_

// QualitySampler: live retrieval-quality telemetry. A fraction of the answered Retrieve
// items (--quality_sample_rate) is measured against exact attention over every token the
// layer held (LayerStore::MeasureQuality: attention-mass recall and recall@k), on one
// thread of its own at the lowest priority (niceness 19), after the item was answered:
// the item itself only pays a random draw and, when drawn, a copy of its query and
// positions. Samples that find the thread busy with max_queued others are dropped
// (counted), so a burst never queues work without bound. A queued sample does not keep
// its session alive: a session closed (or gone) by the time its turn comes is skipped, so
// closing a session hands its memory back without waiting for this low-priority thread.
//
// Results go to Prometheus histograms, labelled by index setting and layer bucket (never
// by session), and to the layer's own figures (GetSession).
//
// Thread-safe.
#ifndef PQKV_SERVER_METRICS_QUALITY_SAMPLER_H_
#define PQKV_SERVER_METRICS_QUALITY_SAMPLER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "server/metrics/metrics.h"
#include "server/runtime/thread_pool.h"
#include "server/store/layer_store.h"
#include "server/store/session.h"
#include "server/store/session_config.h"

namespace pqkv::server {

class QualitySampler {
 public:
  // rate in [0, 1]: the chance that an item is sampled.
  explicit QualitySampler(double rate, size_t max_queued = 16);
  // Destroying it finishes the queued samples (pool_ goes first).

  QualitySampler(const QualitySampler&) = delete;
  QualitySampler& operator=(const QualitySampler&) = delete;

  // For every answered item: draws, and when drawn queues a measurement of `selection`
  // (what Retrieve returned for `query` on `layer` of `session`, with re-ranking
  // `rerank`, 1 for none).
  void MaybeSample(std::shared_ptr<Session> session, uint32_t layer, absl::Span<const float> query,
                   const LayerSelection& selection, uint32_t rerank);

  // The histograms and counters, in the Prometheus text format.
  void Render(std::string* out) const;

  // The label of an index setting: "MxB", "+pairs", "+rerankR" (R > 1), e.g. "2x6+rerank4".
  static std::string IndexLabel(const IndexOptions& index, uint32_t rerank);
  // The label of a layer: its bucket of 8 ("0-7", "8-15", ...; "64+" past 63).
  static std::string LayerBucket(uint32_t layer);

  // Samples measured so far, and samples skipped because their session had closed (for
  // tests and the log).
  uint64_t measured() const { return measured_.load(std::memory_order_relaxed); }
  uint64_t skipped_closed() const { return skipped_closed_.load(std::memory_order_relaxed); }

 private:
  struct Histograms {
    LatencyHistogram mass_recall;
    LatencyHistogram recall_at_k;
    Histograms();
  };
  void Measure(const std::weak_ptr<Session>& weak_session, uint32_t layer,
               const std::vector<float>& query, uint64_t num_tokens,
               const std::vector<std::vector<uint32_t>>& positions, const std::string& index);
  Histograms& HistogramsFor(const std::string& index, const std::string& layer_bucket)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const double rate_;
  const size_t max_queued_;
  std::atomic<uint64_t> measured_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> skipped_closed_{0};
  std::atomic<uint64_t> failed_{0};
  mutable absl::Mutex mu_;
  // By label set (index="...",layer="..."); past kMaxLabelSets new index settings share
  // index="other".
  std::map<std::string, std::unique_ptr<Histograms>> histograms_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ThreadPool> pool_;  // last: its thread goes first
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_METRICS_QUALITY_SAMPLER_H_

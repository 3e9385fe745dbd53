#include "server/metrics/quality_sampler.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "server/runtime/server_logger.h"

namespace pqkv::server {
namespace {

// Distinct (index setting, layer bucket) label sets kept apart; clients choose index
// settings, so past this many the rest share index="other".
constexpr size_t kMaxLabelSets = 64;

std::vector<double> FractionBounds() {
  return {0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0};
}

bool Drawn(double rate) {
  if (rate >= 1) return true;
  if (rate <= 0) return false;
  thread_local std::mt19937_64 rng(std::random_device{}());
  return std::uniform_real_distribution<double>(0, 1)(rng) < rate;
}

}  // namespace

QualitySampler::Histograms::Histograms()
    : mass_recall(FractionBounds()), recall_at_k(FractionBounds()) {}

QualitySampler::QualitySampler(double rate, size_t max_queued)
    : rate_(rate), max_queued_(max_queued) {
  if (rate_ > 0) {
    pool_ = std::make_unique<ThreadPool>("pqkv-quality", 1, absl::ZeroDuration(), /*nice=*/19);
  }
}

std::string QualitySampler::IndexLabel(const IndexOptions& index, uint32_t rerank) {
  return absl::StrCat(index.subspaces, "x", index.bits, index.rope_pairs ? "+pairs" : "",
                      rerank > 1 ? absl::StrCat("+rerank", rerank) : "");
}

std::string QualitySampler::LayerBucket(uint32_t layer) {
  if (layer >= 64) return "64+";
  const uint32_t first = layer / 8 * 8;
  return absl::StrCat(first, "-", first + 7);
}

void QualitySampler::MaybeSample(std::shared_ptr<Session> session, uint32_t layer,
                                 absl::Span<const float> query, const LayerSelection& selection,
                                 uint32_t rerank) {
  if (pool_ == nullptr || !Drawn(rate_)) return;
  if (pool_->pending() >= max_queued_) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::vector<std::vector<uint32_t>> positions;
  positions.reserve(selection.heads.size());
  for (const HeadSelection& head : selection.heads) positions.push_back(head.positions);
  std::string index = IndexLabel(session->config().index, rerank);
  pool_->Schedule(
      [this, weak_session = std::weak_ptr<Session>(session), layer,
       query = std::vector<float>(query.begin(), query.end()), num_tokens = selection.num_tokens,
       positions = std::move(positions),
       index = std::move(index)] {
        Measure(weak_session, layer, query, num_tokens, positions, index);
      });
}

void QualitySampler::Measure(const std::weak_ptr<Session>& weak_session, uint32_t layer,
                             const std::vector<float>& query, uint64_t num_tokens,
                             const std::vector<std::vector<uint32_t>>& positions,
                             const std::string& index) {
  // A closed session's memory should go back at once, not after a telemetry sample: such a
  // sample is skipped. One that closes during the measurement is freed right after it.
  const std::shared_ptr<Session> session = weak_session.lock();
  if (session == nullptr || session->closed()) {
    skipped_closed_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  absl::StatusOr<LayerStore*> store = session->layer(layer);
  absl::StatusOr<SelectionQualitySample> sample =
      store.ok() ? (*store)->MeasureQuality(query, num_tokens, positions) : store.status();
  if (!sample.ok()) {
    // A selection the server itself returned always measures; say so if one does not.
    failed_.fetch_add(1, std::memory_order_relaxed);
    ServerLogger().warn("quality sample of layer {} not measured: {}", layer,
                        sample.status().ToString());
    return;
  }
  measured_.fetch_add(1, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  Histograms& histograms = HistogramsFor(index, LayerBucket(layer));
  histograms.mass_recall.ObserveValue(sample->mass_recall);
  histograms.recall_at_k.ObserveValue(sample->recall_at_k);
}

QualitySampler::Histograms& QualitySampler::HistogramsFor(const std::string& index,
                                                          const std::string& layer_bucket) {
  auto labels = [&](const std::string& name) {
    return absl::StrCat("index=\"", name, "\",layer=\"", layer_bucket, "\"");
  };
  auto it = histograms_.find(labels(index));
  if (it != histograms_.end()) return *it->second;
  std::unique_ptr<Histograms>& slot =
      histograms_[histograms_.size() < kMaxLabelSets ? labels(index) : labels("other")];
  if (slot == nullptr) slot = std::make_unique<Histograms>();
  return *slot;
}

void QualitySampler::Render(std::string* out) const {
  absl::StrAppend(out,
                  "# HELP pqkv_quality_mass_recall Attention-mass recall of sampled Retrieve "
                  "items against exact attention (sinks + recent window + selected).\n"
                  "# TYPE pqkv_quality_mass_recall histogram\n");
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, histograms] : histograms_) {
    histograms->mass_recall.Render("pqkv_quality_mass_recall", labels, out);
  }
  absl::StrAppend(out,
                  "# HELP pqkv_quality_recall_at_k Share of the exact top-k among the positions "
                  "returned, for sampled Retrieve items.\n"
                  "# TYPE pqkv_quality_recall_at_k histogram\n");
  for (const auto& [labels, histograms] : histograms_) {
    histograms->recall_at_k.Render("pqkv_quality_recall_at_k", labels, out);
  }
  absl::StrAppend(out,
                  "# HELP pqkv_quality_samples_dropped_total Sampled items not measured "
                  "because the sampling thread was busy.\n"
                  "# TYPE pqkv_quality_samples_dropped_total counter\n"
                  "pqkv_quality_samples_dropped_total ",
                  dropped_.load(std::memory_order_relaxed), "\n",
                  "# HELP pqkv_quality_samples_failed_total Sampled items that could not be "
                  "measured (the server log says why).\n"
                  "# TYPE pqkv_quality_samples_failed_total counter\n"
                  "pqkv_quality_samples_failed_total ",
                  failed_.load(std::memory_order_relaxed), "\n",
                  "# HELP pqkv_quality_samples_skipped_total Sampled items not measured "
                  "because their session closed first.\n"
                  "# TYPE pqkv_quality_samples_skipped_total counter\n"
                  "pqkv_quality_samples_skipped_total ",
                  skipped_closed_.load(std::memory_order_relaxed), "\n");
}

}  // namespace pqkv::server

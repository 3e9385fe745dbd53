#include "server/metrics/metrics.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pqkv::server {
namespace {

std::vector<double> LatencyBounds() {
  // 50 us to 10 s: a layer's retrieval sits near the bottom, an index build near the top.
  return {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
          50e-3, 100e-3, 250e-3, 500e-3, 1,    2.5,    5,    10};
}

}  // namespace

LatencyHistogram::LatencyHistogram(std::vector<double> bounds_seconds)
    : bounds_(std::move(bounds_seconds)), counts_(bounds_.size() + 1, 0) {}

void LatencyHistogram::ObserveValue(double value) {
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  absl::MutexLock lock(&mu_);
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void LatencyHistogram::Render(const std::string& name, const std::string& labels,
                              std::string* out) const {
  absl::MutexLock lock(&mu_);
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? absl::StrFormat("%g", bounds_[i]) : "+Inf";
    absl::StrAppend(out, name, "_bucket{", labels, sep, "le=\"", le, "\"} ", cumulative, "\n");
  }
  const std::string braces = labels.empty() ? "" : absl::StrCat("{", labels, "}");
  absl::StrAppend(out, name, "_sum", braces, " ", absl::StrFormat("%.9g", sum_), "\n");
  absl::StrAppend(out, name, "_count", braces, " ", count_, "\n");
}

Metrics::Metrics()
    : retrieve_total_(LatencyBounds()),
      retrieve_scoring_(LatencyBounds()),
      index_build_(LatencyBounds()) {}

void Metrics::RecordRetrieveItem(absl::Duration total, absl::Duration scoring) {
  retrieve_total_.Observe(total);
  retrieve_scoring_.Observe(scoring);
}

void Metrics::RecordIndexBuild(absl::Duration build) { index_build_.Observe(build); }

void Metrics::RecordStatus(const char* rpc, const absl::Status& status) {
  const std::string key =
      absl::StrCat("rpc=\"", rpc, "\",code=\"", absl::StatusCodeToString(status.code()), "\"");
  absl::MutexLock lock(&mu_);
  for (auto& [k, count] : statuses_) {
    if (k == key) {
      ++count;
      return;
    }
  }
  statuses_.emplace_back(key, 1);
}

void Metrics::RecordBytesSent(const char* transport, uint64_t bytes) {
  std::atomic<uint64_t>* counter = &grpc_bytes_sent_;
  if (std::strcmp(transport, "ucx-shm") == 0) counter = &ucx_shm_bytes_sent_;
  if (std::strcmp(transport, "ucx-put") == 0) counter = &ucx_put_bytes_sent_;
  counter->fetch_add(bytes, std::memory_order_relaxed);
}

void Metrics::RecordCacheSavedBytes(uint64_t bytes) {
  cache_saved_bytes_.fetch_add(bytes, std::memory_order_relaxed);
}

std::string Metrics::Render(const SessionStore& store) const {
  const SessionStoreStats stats = store.Stats();
  std::string out;
  absl::StrAppend(&out, "# HELP pqkv_sessions Live sessions.\n# TYPE pqkv_sessions gauge\n",
                  "pqkv_sessions ", stats.num_sessions, "\n");
  absl::StrAppend(&out,
                  "# HELP pqkv_kv_bytes_held K/V arena bytes in use.\n"
                  "# TYPE pqkv_kv_bytes_held gauge\npqkv_kv_bytes_held ",
                  stats.bytes_held, "\n");
  absl::StrAppend(&out,
                  "# HELP pqkv_kv_bytes_capacity K/V arena capacity (the memory budget).\n"
                  "# TYPE pqkv_kv_bytes_capacity gauge\npqkv_kv_bytes_capacity ",
                  stats.bytes_capacity, "\n");
  absl::StrAppend(&out,
                  "# HELP pqkv_index_builds_pending Layer index builds queued or running.\n"
                  "# TYPE pqkv_index_builds_pending gauge\npqkv_index_builds_pending ",
                  stats.index_builds_pending, "\n");
  absl::StrAppend(&out,
                  "# HELP pqkv_index_refreshes_total Layer codebooks retrained during decoding "
                  "(drift or growth, --refresh_*).\n"
                  "# TYPE pqkv_index_refreshes_total counter\npqkv_index_refreshes_total ",
                  stats.index_refreshes_done, "\n");
  absl::StrAppend(&out,
                  "# HELP pqkv_index_build_seconds Time to train and encode one layer.\n"
                  "# TYPE pqkv_index_build_seconds histogram\n");
  index_build_.Render("pqkv_index_build_seconds", "", &out);
  absl::StrAppend(&out,
                  "# HELP pqkv_retrieve_item_seconds Server time per Retrieve item, by stage.\n"
                  "# TYPE pqkv_retrieve_item_seconds histogram\n");
  retrieve_total_.Render("pqkv_retrieve_item_seconds", "stage=\"total\"", &out);
  retrieve_scoring_.Render("pqkv_retrieve_item_seconds", "stage=\"scoring\"", &out);
  absl::StrAppend(&out,
                  "# HELP pqkv_kv_bytes_sent_total K/V bytes sent to clients, by transport.\n"
                  "# TYPE pqkv_kv_bytes_sent_total counter\n"
                  "pqkv_kv_bytes_sent_total{transport=\"grpc\"} ",
                  grpc_bytes_sent_.load(std::memory_order_relaxed), "\n",
                  "pqkv_kv_bytes_sent_total{transport=\"ucx-shm\"} ",
                  ucx_shm_bytes_sent_.load(std::memory_order_relaxed), "\n",
                  "pqkv_kv_bytes_sent_total{transport=\"ucx-put\"} ",
                  ucx_put_bytes_sent_.load(std::memory_order_relaxed), "\n");
  absl::StrAppend(&out,
                  "# HELP pqkv_kv_bytes_saved_by_cache_total K/V bytes not sent because the "
                  "client's row cache held them.\n"
                  "# TYPE pqkv_kv_bytes_saved_by_cache_total counter\n"
                  "pqkv_kv_bytes_saved_by_cache_total ",
                  cache_saved_bytes_.load(std::memory_order_relaxed), "\n");
  if (const GpuScorer* gpu = gpu_.load(std::memory_order_acquire); gpu != nullptr) {
    absl::StrAppend(
        &out,
        "# HELP pqkv_gpu_backend_state CUDA backend: 0 ready, 1 cooling down after running out "
        "of device memory (the CPU answers), 2 failed until the server restarts (the CPU "
        "answers).\n"
        "# TYPE pqkv_gpu_backend_state gauge\npqkv_gpu_backend_state ",
        static_cast<int>(gpu->state()), "\n",
        "# HELP pqkv_gpu_layers_scored_total Layers scored on the GPU.\n"
        "# TYPE pqkv_gpu_layers_scored_total counter\npqkv_gpu_layers_scored_total ",
        gpu->layers_scored(), "\n",
        "# HELP pqkv_gpu_cpu_fallbacks_total Layers the CPU scored because the GPU failed or "
        "was not ready.\n"
        "# TYPE pqkv_gpu_cpu_fallbacks_total counter\npqkv_gpu_cpu_fallbacks_total ",
        gpu->cpu_fallbacks(), "\n",
        "# HELP pqkv_gpu_resident_bytes Device bytes of the PQ codebooks and codes kept on the "
        "GPU between retrievals.\n"
        "# TYPE pqkv_gpu_resident_bytes gauge\npqkv_gpu_resident_bytes ",
        gpu->resident_bytes(), "\n");
  }
  absl::StrAppend(&out,
                  "# HELP pqkv_requests_total Calls and Retrieve items, by RPC and status code.\n"
                  "# TYPE pqkv_requests_total counter\n");
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, count] : statuses_) {
      absl::StrAppend(&out, "pqkv_requests_total{", key, "} ", count, "\n");
    }
  }
  absl::MutexLock lock(&sections_mu_);
  for (const auto& render : sections_) render(&out);
  return out;
}

void Metrics::AddSection(std::function<void(std::string*)> render) {
  absl::MutexLock lock(&sections_mu_);
  sections_.push_back(std::move(render));
}

}  // namespace pqkv::server

// Metrics: the server's counters and latency histograms, rendered in the Prometheus
// text exposition format for /metrics.
//
// Thread-safe: counters are atomics; each histogram has its own mutex.
#ifndef PQKV_SERVER_METRICS_METRICS_H_
#define PQKV_SERVER_METRICS_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/index/gpu_scorer.h"
#include "server/store/session_store.h"

namespace pqkv::server {

// A histogram with fixed buckets, Prometheus-style cumulative output: latencies in
// seconds, or any other value (ObserveValue, bounds in the values' unit).
class LatencyHistogram {
 public:
  explicit LatencyHistogram(std::vector<double> bounds_seconds);
  void Observe(absl::Duration d) { ObserveValue(absl::ToDoubleSeconds(d)); }
  void ObserveValue(double value);
  // Appends `name{labels,le="..."}` lines, _sum and _count.
  void Render(const std::string& name, const std::string& labels, std::string* out) const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // per bucket, last = +Inf
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

class Metrics {
 public:
  Metrics();

  // One Retrieve item answered: its total server time and the scoring part of it.
  void RecordRetrieveItem(absl::Duration total, absl::Duration scoring);
  void RecordIndexBuild(absl::Duration build);
  // A call or item that ended with `status` (OK ones count too, by code "OK").
  void RecordStatus(const char* rpc, const absl::Status& status);
  // K/V bytes sent back, by path ("grpc": FetchKv and Retrieve with_kv).
  // transport: "grpc", "ucx-shm" or "ucx-put".
  void RecordBytesSent(const char* transport, uint64_t bytes);
  // K/V bytes a client's row cache made unnecessary (delta transfer).
  void RecordCacheSavedBytes(uint64_t bytes);

  // The CUDA backend whose state Render exports (pqkv_gpu_backend_state and its
  // counters), or null (the CPU backend: no such lines). Must outlive this object.
  void SetGpuScorer(const GpuScorer* gpu) { gpu_.store(gpu, std::memory_order_release); }

  // Adds a section that Render appends to its text (e.g. QualitySampler::Render); the
  // callable must stay valid while this object renders.
  void AddSection(std::function<void(std::string*)> render);

  // The exposition text, with gauges read from `store`.
  std::string Render(const SessionStore& store) const;

 private:
  LatencyHistogram retrieve_total_;
  LatencyHistogram retrieve_scoring_;
  LatencyHistogram index_build_;
  std::atomic<uint64_t> grpc_bytes_sent_{0};
  std::atomic<uint64_t> ucx_shm_bytes_sent_{0};
  std::atomic<uint64_t> ucx_put_bytes_sent_{0};
  std::atomic<uint64_t> cache_saved_bytes_{0};
  std::atomic<const GpuScorer*> gpu_{nullptr};
  mutable absl::Mutex sections_mu_;
  std::vector<std::function<void(std::string*)>> sections_ ABSL_GUARDED_BY(sections_mu_);
  mutable absl::Mutex mu_;
  // (rpc, code) -> count
  std::vector<std::pair<std::string, uint64_t>> statuses_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_METRICS_METRICS_H_

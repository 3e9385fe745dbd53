// LayerStore with the CUDA backend (GpuScorer) against LayerStore on the CPU, on the same
// data: Retrieve's selections and scores, decode step after decode step (n growing by
// one token per call, and once by a chunk), for PQ 2 x 6 and 4 x 8, RoPE pairs on and
// off, with and without exact re-ranking. Both stores train the same codebooks (training
// is deterministic, and the GPU store's k-means assigns on the device with the AVX2
// kernel's arithmetic), so the GPU scans the same codes the CPU does; the GPU keeps them
// on the device and receives only each step's new ones.
//
// Equal selections: the same positions rank by rank, except that two positions whose
// scores are within the tolerance may swap (fp32 expf on the GPU against the CPU's
// kernels), and scores within 1e-4 relative (the kernels test's all-CPU tolerance).
//
// Tagged "cuda"; the binary reports itself skipped without a device
// (tests/kernels/cuda/cuda_test_main.cc).
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/cpu_features.h"
#include "server/index/gpu_scorer.h"
#include "server/index/kmeans.h"
#include "server/metrics/metrics.h"
#include "server/store/layer_store.h"
#include "server/store/session_store.h"

namespace pqkv::server {
namespace {

constexpr uint32_t kKvHeads = 2, kQueryHeads = 8, kDim = 64;
constexpr double kRelTolerance = 1e-4;

struct GpuCase {
  uint32_t subspaces, bits;
  bool rope_pairs;
  uint32_t rerank;
};

std::ostream& operator<<(std::ostream& os, const GpuCase& c) {
  return os << c.subspaces << " x " << c.bits << (c.rope_pairs ? " pairs" : "") << " rerank "
            << c.rerank;
}

SessionConfig Config(const GpuCase& c) {
  SessionConfig config;
  config.shape = {1, kKvHeads, kQueryHeads, kDim, kernels::ElementType::kFp32};
  config.index.subspaces = c.subspaces;
  config.index.bits = c.bits;
  config.index.kmeans_iterations = 4;
  config.index.rope_pairs = c.rope_pairs;
  return config;  // 32 sinks, a recent window of 64
}

// fp32 bytes [kv_head][token][dim] for `n` tokens, values from `seed`.
std::string Bytes(uint32_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(static_cast<size_t>(kKvHeads) * n * kDim);
  for (float& x : v) x = normal(rng);
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::vector<float> Query(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> q(kQueryHeads * kDim);
  for (float& x : q) x = 2.0f * normal(rng);
  return q;
}

GpuScorer& SharedScorer() {
  static absl::StatusOr<std::unique_ptr<GpuScorer>> created = GpuScorer::Create();
  if (!created.ok()) FAIL("GpuScorer::Create: " << created.status());
  return **created;
}

bool Near(float a, float b) {
  return std::fabs(static_cast<double>(a) - b) <= kRelTolerance * std::fabs(static_cast<double>(b));
}

// The GPU's selection of one kv head against the CPU's (see the top).
void RequireSameSelection(const HeadSelection& gpu, const HeadSelection& cpu) {
  REQUIRE(gpu.positions.size() == cpu.positions.size());
  REQUIRE(gpu.scores.size() == cpu.scores.size());
  const size_t k = cpu.positions.size();
  for (size_t j = 0; j < k; ++j) {
    INFO("rank " << j << " of " << k << ": GPU position " << gpu.positions[j] << " score "
                 << gpu.scores[j] << ", CPU position " << cpu.positions[j] << " score "
                 << cpu.scores[j]);
    REQUIRE(Near(gpu.scores[j], cpu.scores[j]));
    if (gpu.positions[j] == cpu.positions[j]) continue;
    // A swap of near-ties: a neighbour's score is within the tolerance (the last rank's
    // neighbour below may be outside the selection).
    const bool near_tie = (j > 0 && Near(cpu.scores[j - 1], cpu.scores[j])) ||
                          (j + 1 < k && Near(cpu.scores[j + 1], cpu.scores[j])) || j + 1 == k;
    REQUIRE(near_tie);
  }
}

TEST_CASE("LayerStore's GPU Retrieve selects what its CPU Retrieve does", "[cuda]") {
  const GpuCase c =
      GENERATE(GpuCase{2, 6, false, 0}, GpuCase{2, 6, true, 0}, GpuCase{4, 8, false, 0},
               GpuCase{4, 8, true, 0}, GpuCase{2, 6, false, 4}, GpuCase{4, 8, true, 4});
  INFO(c);
  GpuScorer& scorer = SharedScorer();
  const SessionConfig config = Config(c);
  std::unique_ptr<PageArena> gpu_arena = PageArena::Create(64 << 20, 4096).value();
  std::unique_ptr<PageArena> cpu_arena = PageArena::Create(64 << 20, 4096).value();
  LayerStore on_gpu(0, config, gpu_arena.get(), &scorer);
  LayerStore on_cpu(0, config, cpu_arena.get());

  // Prefill: 4 x 256 tokens trains 8 bits; 2000 tokens in two chunks.
  uint32_t n = 0;
  for (uint32_t chunk : {1200u, 800u}) {
    const std::string keys = Bytes(chunk, n + 1), values = Bytes(chunk, n + 2);
    REQUIRE(on_gpu.Append(n, chunk, keys, values).ok());
    REQUIRE(on_cpu.Append(n, chunk, keys, values).ok());
    n += chunk;
  }
  REQUIRE(on_gpu.SealPrefill());
  REQUIRE(on_cpu.SealPrefill());
  on_gpu.BuildIndex();
  on_cpu.BuildIndex();
  REQUIRE(on_gpu.Status().index_state == IndexState::kReady);
  REQUIRE(on_cpu.Status().index_state == IndexState::kReady);

  const uint64_t scored_before = scorer.layers_scored();
  const uint64_t fallbacks_before = scorer.cpu_fallbacks();
  const uint32_t k = GENERATE(1u, 50u);
  int calls = 0;
  // Decode steps: one token per step, and one chunk of 300 in the middle.
  for (int step = 0; step < 24; ++step) {
    const uint32_t add = step == 12 ? 300 : 1;
    const std::string keys = Bytes(add, 1000 + step), values = Bytes(add, 2000 + step);
    REQUIRE(on_gpu.Append(n, add, keys, values).ok());
    REQUIRE(on_cpu.Append(n, add, keys, values).ok());
    n += add;
    const std::vector<float> query = Query(step);
    absl::StatusOr<LayerSelection> gpu =
        on_gpu.Retrieve(query, k, absl::InfiniteFuture(), nullptr, false, c.rerank);
    absl::StatusOr<LayerSelection> cpu =
        on_cpu.Retrieve(query, k, absl::InfiniteFuture(), nullptr, false, c.rerank);
    INFO("step " << step << ", n = " << n << ", k = " << k);
    REQUIRE(gpu.ok());
    REQUIRE(cpu.ok());
    ++calls;
    REQUIRE(gpu->num_tokens == n);
    REQUIRE(gpu->num_encoded == cpu->num_encoded);
    REQUIRE(gpu->heads.size() == kKvHeads);
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      INFO("kv head " << h);
      RequireSameSelection(gpu->heads[h], cpu->heads[h]);
    }
  }
  // Every call was scored on the device, none fell back to the CPU.
  CHECK(scorer.layers_scored() - scored_before == static_cast<uint64_t>(calls));
  CHECK(scorer.cpu_fallbacks() == fallbacks_before);
  CHECK(scorer.state() == GpuBackendState::kReady);
  // The layer's codes stayed on the device: 2 heads x n tokens x M bytes at least.
  CHECK(scorer.resident_bytes() >= size_t{kKvHeads} * n * c.subspaces);
}

TEST_CASE("After a codebook refresh the GPU scans the new codes, as the CPU does", "[cuda]") {
  // The device held the old codebooks and codes; RefreshIndex must make it upload the new
  // ones (GpuScorer::ResetLayer), or its selections would come from stale tables.
  GpuScorer& scorer = SharedScorer();
  const SessionConfig config = Config(GpuCase{2, 6, false, 0});
  std::unique_ptr<PageArena> gpu_arena = PageArena::Create(64 << 20, 4096).value();
  std::unique_ptr<PageArena> cpu_arena = PageArena::Create(64 << 20, 4096).value();
  LayerStore on_gpu(0, config, gpu_arena.get(), &scorer);
  LayerStore on_cpu(0, config, cpu_arena.get());
  uint32_t n = 1000;
  for (LayerStore* layer : {&on_gpu, &on_cpu}) {
    REQUIRE(layer->Append(0, n, Bytes(n, 1), Bytes(n, 2)).ok());
    REQUIRE(layer->SealPrefill());
    layer->BuildIndex();
  }
  REQUIRE(on_gpu.Retrieve(Query(1), 20, absl::InfiniteFuture()).ok());  // codes on the device
  // 1000 more tokens from another distribution, then the refresh on both.
  std::string keys = Bytes(1000, 7);
  for (size_t i = 0; i < keys.size(); i += sizeof(float)) {
    float x;
    std::memcpy(&x, keys.data() + i, sizeof x);
    x = 3.0f * x + 2.0f;
    std::memcpy(keys.data() + i, &x, sizeof x);
  }
  for (LayerStore* layer : {&on_gpu, &on_cpu}) {
    REQUIRE(layer->Append(n, 1000, keys, Bytes(1000, 8)).ok());
    layer->RefreshIndex();
    REQUIRE(layer->Status().index_refreshes == 1);
  }
  n += 1000;
  for (int step = 0; step < 4; ++step) {
    const std::vector<float> query = Query(100 + step);
    absl::StatusOr<LayerSelection> gpu = on_gpu.Retrieve(query, 50, absl::InfiniteFuture());
    absl::StatusOr<LayerSelection> cpu = on_cpu.Retrieve(query, 50, absl::InfiniteFuture());
    REQUIRE(gpu.ok());
    REQUIRE(cpu.ok());
    REQUIRE(gpu->num_tokens == n);
    for (uint32_t h = 0; h < kKvHeads; ++h) RequireSameSelection(gpu->heads[h], cpu->heads[h]);
  }
}

TEST_CASE("A closed layer's codes leave the device", "[cuda]") {
  GpuScorer& scorer = SharedScorer();
  const size_t before = scorer.resident_bytes();
  {
    const SessionConfig config = Config(GpuCase{2, 6, false, 0});
    std::unique_ptr<PageArena> arena = PageArena::Create(64 << 20, 4096).value();
    LayerStore layer(0, config, arena.get(), &scorer);
    REQUIRE(layer.Append(0, 1000, Bytes(1000, 1), Bytes(1000, 2)).ok());
    REQUIRE(layer.SealPrefill());
    layer.BuildIndex();
    REQUIRE(layer.Retrieve(Query(1), 10, absl::InfiniteFuture()).ok());
    CHECK(scorer.resident_bytes() >= before + size_t{kKvHeads} * 1000 * 2);
  }
  CHECK(scorer.resident_bytes() == before);
}

// The index build's k-means with its assignments on the device (GpuScorer's assigner, as
// LayerStore trains with the CUDA backend) against the CPU's: the device sums each dot
// product as the AVX2 kernel does, so on an AVX2 CPU the centroids are the same bits.
TEST_CASE("k-means assigning on the GPU trains the CPU's centroids", "[cuda]") {
  const int dim = GENERATE(32, 64), k = GENERATE(64, 256);
  const size_t n = 32768;
  std::mt19937 rng(dim + k);
  std::normal_distribution<float> normal;
  std::vector<float> points(n * dim);
  for (float& v : points) v = normal(rng);
  KMeansOptions options;
  options.max_points_per_centroid = 64;
  const KMeansResult cpu = TrainKMeans(points.data(), n, dim, dim, k, options);
  std::unique_ptr<NearestCentroidAssigner> assigner = SharedScorer().NewKMeansAssigner();
  REQUIRE(assigner != nullptr);
  options.assigner = assigner.get();
  const KMeansResult gpu = TrainKMeans(points.data(), n, dim, dim, k, options);
  INFO(gpu.assigner_error);
  REQUIRE(gpu.assigner_error.ok());
  CHECK(gpu.assigner_iterations == gpu.iterations);
  if (kernels::UseAvx2()) {
    CHECK(gpu.centroids == cpu.centroids);
    return;
  }
  REQUIRE(gpu.centroids.size() == cpu.centroids.size());
  for (size_t i = 0; i < cpu.centroids.size(); ++i) {
    CHECK(gpu.centroids[i] == Approx(cpu.centroids[i]).margin(1e-3));
  }
}

TEST_CASE("The metrics export the GPU backend's state", "[cuda]") {
  GpuScorer& scorer = SharedScorer();
  SessionStoreOptions options;
  options.memory_budget_bytes = 16 << 20;
  absl::StatusOr<std::unique_ptr<SessionStore>> store = SessionStore::Create(options);
  REQUIRE(store.ok());
  Metrics metrics;
  CHECK(metrics.Render(**store).find("pqkv_gpu_backend_state") == std::string::npos);
  metrics.SetGpuScorer(&scorer);
  const std::string text = metrics.Render(**store);
  CHECK(text.find("pqkv_gpu_backend_state 0\n") != std::string::npos);
  CHECK(text.find("pqkv_gpu_layers_scored_total ") != std::string::npos);
  CHECK(text.find("pqkv_gpu_cpu_fallbacks_total ") != std::string::npos);
  CHECK(text.find("pqkv_gpu_resident_bytes ") != std::string::npos);
}

}  // namespace
}  // namespace pqkv::server

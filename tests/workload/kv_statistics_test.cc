#include "workload/kv_statistics.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/dtype_convert.h"
#include "workload/kv_dataset.h"

namespace pqkv::workload {
namespace {

// One layer, one kv head, `group` query heads, keys given in fp32 [token][dim] and one
// query per query head at the last position.
KvDataSet TinyDataSet(uint32_t tokens, uint32_t dim, uint32_t group,
                      const std::vector<float>& keys, const std::vector<float>& query) {
  KvDataSet data;
  data.name = "tiny";
  data.num_kv_heads = 1;
  data.num_query_heads = group;
  data.head_dim = dim;
  data.num_tokens = tokens;
  data.rope_theta = 1e4;
  data.query_positions = {tokens - 1};
  KvLayer layer;
  for (float k : keys) layer.keys.push_back(kernels::FloatToHalf(k));
  layer.values.assign(layer.keys.size(), kernels::FloatToHalf(0.0f));
  for (uint32_t g = 0; g < group; ++g) layer.queries.insert(layer.queries.end(), query.begin(), query.end());
  data.layers.push_back(layer);
  return data;
}

TEST_CASE("MeasureHeadAttention: all mass on token 0 is a pure sink", "[workload]") {
  const uint32_t n = 1000, d = 32;
  std::vector<float> keys(size_t{n} * d, 0.0f);
  keys[0] = 8.0f;  // token 0 along e0; the query too: logit 8 * 64 / sqrt(32) ~ 90
  std::vector<float> query(d, 0.0f);
  query[0] = 64.0f;
  const KvDataSet data = TinyDataSet(n, d, 2, keys, query);
  const HeadAttentionStats s = MeasureHeadAttention(data, 0, 0);
  CHECK(s.sink_share == Approx(1.0).margin(1e-9));
  CHECK(s.recent_share == Approx(0.0).margin(1e-9));
  CHECK(s.entropy_nats == Approx(0.0).margin(1e-6));
  CHECK(s.n90 == 1);
  CHECK(s.top2pct_share == Approx(1.0).margin(1e-9));
  CHECK(s.topk_mass == Approx(1.0).margin(1e-9));
  CHECK(s.context_tokens == Approx(n));
  CHECK(ClassifyHead(s) == HeadType::kStreaming);
}

TEST_CASE("MeasureHeadAttention: uniform attention has entropy ln n", "[workload]") {
  const uint32_t n = GENERATE(256u, 1000u, 4096u);
  const uint32_t d = 16;
  const std::vector<float> keys(size_t{n} * d, 0.0f);  // every logit 0
  std::vector<float> query(d, 1.0f);
  const KvDataSet data = TinyDataSet(n, d, 1, keys, query);
  const HeadAttentionStats s = MeasureHeadAttention(data, 0, 0);
  CHECK(s.entropy_nats == Approx(std::log(static_cast<double>(n))).epsilon(1e-6));
  CHECK(s.sink_share == Approx(4.0 / n).epsilon(1e-6));
  CHECK(s.recent_share == Approx(64.0 / n).epsilon(1e-6));
  const double top2 = std::ceil(0.02 * n) / n;
  CHECK(s.top2pct_share == Approx(top2).epsilon(1e-6));
  CHECK(s.n90 == static_cast<uint32_t>(std::ceil(0.9 * n - 1e-6)));
  // Budget ceil(n/16) tokens: 4 sinks + 64 recent + the rest from the middle.
  const double budget = std::max<double>(68, std::ceil(n / 16.0));
  CHECK(s.topk_mass == Approx(budget / n).epsilon(1e-6));
  CHECK(ClassifyHead(s) == HeadType::kDiffuse);
}

TEST_CASE("MeasureHeadAttention: a few middle tokens with the mass are a retrieval head",
          "[workload]") {
  const uint32_t n = 4096, d = 32;
  std::vector<float> keys(size_t{n} * d, 0.0f);
  const uint32_t needles[] = {500, 1700, 2900};
  for (uint32_t p : needles) keys[size_t{p} * d + 1] = 4.0f;
  std::vector<float> query(d, 0.0f);
  query[1] = 30.0f;  // needle logit 120 / sqrt(32) ~ 21: the needles take ~all
  const KvDataSet data = TinyDataSet(n, d, 4, keys, query);
  const HeadAttentionStats s = MeasureHeadAttention(data, 0, 0);
  CHECK(s.sink_share < 1e-6);
  CHECK(s.n90 == 3);
  CHECK(s.topk_mass == Approx(1.0).margin(1e-6));
  CHECK(ClassifyHead(s) == HeadType::kRetrieval);
}

TEST_CASE("ClassifyHead follows the documented thresholds", "[workload]") {
  HeadAttentionStats s;
  s.context_tokens = 32768;
  s.sink_share = 0.7;
  s.recent_share = 0.25;
  s.n90 = 5000;
  CHECK(ClassifyHead(s) == HeadType::kStreaming);
  s.recent_share = 0.15;
  s.n90 = 163;  // 0.5% of 32768 = 163.8
  CHECK(ClassifyHead(s) == HeadType::kRetrieval);
  s.n90 = 164;
  CHECK(ClassifyHead(s) == HeadType::kDiffuse);
  s.context_tokens = 1000;
  s.n90 = 32;
  CHECK(ClassifyHead(s) == HeadType::kRetrieval);
}

TEST_CASE("MeasureKeyStructure: rank, channel profile and sink norm on known keys",
          "[workload]") {
  // Keys with variance in exactly 3 dims (std 10, 5, 1) and a constant elsewhere, no
  // RoPE (theta large makes the rotation negligible only approximately, so keep the
  // keys at position-independent values in the lowest-frequency pairs).
  const uint32_t n = 2048, d = 32, half = d / 2;
  std::vector<float> keys(size_t{n} * d, 0.0f);
  uint64_t state = 12345;
  auto uniform = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(state >> 11) * 0x1.0p-53 * 2 - 1;  // [-1, 1), std 0.577
  };
  for (uint32_t t = 0; t < n; ++t) {
    float* k = &keys[size_t{t} * d];
    for (uint32_t i = 0; i < d; ++i) k[i] = 1.0f;
    // Pair half-1 (dims 15, 31) is the lowest frequency: theta^(-30/32) with theta 1e4
    // gives 1.8e-4 rad/token; with 2048 tokens it rotates < 0.4 rad. Use a huge base
    // below so the rotation is ~0 and pre-RoPE = post-RoPE.
    k[half - 1] = static_cast<float>(10 * uniform() / 0.57735);
    k[2 * half - 1] = static_cast<float>(5 * uniform() / 0.57735);
    k[half - 2] = static_cast<float>(1 * uniform() / 0.57735);
  }
  KvDataSet data = TinyDataSet(n, d, 1, keys, std::vector<float>(d, 1.0f));
  data.rope_theta = 1e30;  // frequencies 1e30^(-2i/d): every pair but pair 0 ~ frozen
  const KeyStructureStats s = MeasureKeyStructure(data, 0, 0);
  // Variances 100, 25, 1 (pair 0 rotates a constant: its variance ~1 per dim, 2 dims).
  CHECK(s.rank90_pre <= 3);
  CHECK(s.rank90_pre >= 2);
  CHECK(s.top_channels_pre[0] == half - 1);
  CHECK(s.top_channel_low_frequency);
  CHECK(s.random_pair_cosine < s.chunk_cosine + 1.0);  // defined and finite
  CHECK(std::isfinite(s.query_mahalanobis));
}

TEST_CASE("MeasureDataSet and FormatReport cover every head", "[workload]") {
  const uint32_t n = 512, d = 16;
  std::vector<float> keys(size_t{n} * d, 0.0f);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<float>((i * 37 % 11) - 5) * 0.1f;
  KvDataSet data = TinyDataSet(n, d, 2, keys, std::vector<float>(d, 0.5f));
  data.layers.push_back(data.layers[0]);
  data.layers[1].layer = 1;
  const std::vector<HeadReport> heads = MeasureDataSet(data, 2);
  REQUIRE(heads.size() == 2);
  CHECK(heads[1].layer == 1);
  CHECK_FALSE(heads[0].has_label);
  const std::string report = FormatReport(data, heads, true);
  CHECK(report.find("per head") != std::string::npos);
  CHECK(report.find("from ClassifyHead") != std::string::npos);
}

}  // namespace
}  // namespace pqkv::workload

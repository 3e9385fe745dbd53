#include "workload/long_context_kv.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/dtype_convert.h"
#include "workload/kv_dataset.h"
#include "workload/kv_statistics.h"

namespace pqkv::workload {
namespace {

// 4 layers x 4 kv heads: layer 0 diffuse, one retrieval head, the rest streaming.
LongContextSpec SmallSpec(uint64_t seed) {
  LongContextSpec spec;
  spec.num_layers = 4;
  spec.num_kv_heads = 4;
  spec.num_query_heads = 8;
  spec.head_dim = 128;
  spec.num_tokens = 4096;
  spec.num_queries = 8;
  spec.seed = seed;
  return spec;
}

// Generated once for the statistics test cases (a few seconds).
const KvDataSet& SmallData() {
  static const KvDataSet data = GenerateLongContext(SmallSpec(7));
  return data;
}

const std::vector<HeadReport>& SmallReport() {
  static const std::vector<HeadReport> heads = MeasureDataSet(SmallData());
  return heads;
}

TEST_CASE("GenerateLongContext has the spec's shape", "[workload]") {
  const LongContextSpec spec = SmallSpec(7);
  const KvDataSet& data = SmallData();
  CHECK(data.name == "generated");
  CHECK(data.num_kv_heads == 4);
  CHECK(data.num_query_heads == 8);
  CHECK(data.head_dim == 128);
  CHECK(data.num_tokens == 4096);
  CHECK(data.rope_theta == spec.rope_theta);
  REQUIRE(data.query_positions.size() == 8);
  CHECK(data.query_positions.front() == 4088);
  CHECK(data.query_positions.back() == 4095);
  REQUIRE(data.layers.size() == 4);
  for (size_t l = 0; l < data.layers.size(); ++l) {
    const KvLayer& layer = data.layers[l];
    CHECK(layer.layer == l);
    CHECK(layer.keys.size() == size_t{4} * 4096 * 128);
    CHECK(layer.values.size() == layer.keys.size());
    CHECK(layer.queries.size() == size_t{8} * 8 * 128);
    CHECK(layer.head_types.size() == 4);
    CHECK(kernels::AllFinite(kernels::ElementType::kFp16, layer.keys.data(), layer.keys.size()));
    CHECK(kernels::AllFinite(kernels::ElementType::kFp16, layer.values.data(), layer.values.size()));
    CHECK(std::all_of(layer.queries.begin(), layer.queries.end(), [](float q) { return std::isfinite(q); }));
  }
}

TEST_CASE("GenerateLongContext is deterministic per seed", "[workload]") {
  LongContextSpec spec = SmallSpec(11);
  spec.num_layers = 2;
  spec.num_tokens = 1024;
  const KvDataSet a = GenerateLongContext(spec);
  const KvDataSet b = GenerateLongContext(spec);
  spec.seed = 12;
  const KvDataSet c = GenerateLongContext(spec);
  for (size_t l = 0; l < a.layers.size(); ++l) {
    CHECK(a.layers[l].keys == b.layers[l].keys);
    CHECK(a.layers[l].values == b.layers[l].values);
    CHECK(a.layers[l].queries == b.layers[l].queries);
    CHECK(a.layers[l].head_types == b.layers[l].head_types);
    CHECK(a.layers[l].keys != c.layers[l].keys);
    CHECK(a.layers[l].queries != c.layers[l].queries);
  }
}

std::map<HeadType, int> Count(const std::vector<std::vector<HeadType>>& types) {
  std::map<HeadType, int> counts;
  for (const auto& layer : types) {
    for (HeadType t : layer) ++counts[t];
  }
  return counts;
}

TEST_CASE("AssignHeadTypes rounds the mix and keeps one of each type", "[workload]") {
  SECTION("8 layers x 8 kv heads: ~3 retrieval, ~16 diffuse, layer 0 diffuse") {
    LongContextSpec spec;
    const auto types = AssignHeadTypes(spec);
    auto counts = Count(types);
    CHECK(counts[HeadType::kRetrieval] == 3);
    CHECK(counts[HeadType::kDiffuse] == 16);
    CHECK(counts[HeadType::kStreaming] == 45);
    CHECK(std::all_of(types[0].begin(), types[0].end(), [](HeadType t) { return t == HeadType::kDiffuse; }));
  }
  SECTION("one layer of 3 kv heads (SmolLM2-like): one of each") {
    LongContextSpec spec;
    spec.num_layers = 1;
    spec.num_kv_heads = 3;
    spec.num_query_heads = 9;
    auto counts = Count(AssignHeadTypes(spec));
    CHECK(counts[HeadType::kRetrieval] == 1);
    CHECK(counts[HeadType::kDiffuse] == 1);
    CHECK(counts[HeadType::kStreaming] == 1);
  }
  SECTION("the small test shape") {
    auto counts = Count(AssignHeadTypes(SmallSpec(7)));
    CHECK(counts[HeadType::kRetrieval] == 1);
    CHECK(counts[HeadType::kDiffuse] == 4);
    CHECK(counts[HeadType::kStreaming] == 11);
  }
}

TEST_CASE("Streaming heads: sinks take 0.6-0.9 and sinks + recent > 0.9", "[workload]") {
  double sum = 0;
  int count = 0;
  for (const HeadReport& h : SmallReport()) {
    if (h.label != HeadType::kStreaming) continue;
    CHECK(h.attention.sink_share > 0.5);
    CHECK(h.attention.sink_share < 0.97);  // single heads may exceed 0.9; the mean may not
    CHECK(h.attention.sink_share + h.attention.recent_share > 0.9);
    sum += h.attention.sink_share;
    ++count;
  }
  REQUIRE(count > 0);
  CHECK(sum / count > 0.6);
  CHECK(sum / count < 0.9);
}

TEST_CASE("Retrieval heads put their mass on a few needles", "[workload]") {
  int count = 0;
  for (const HeadReport& h : SmallReport()) {
    if (h.label != HeadType::kRetrieval) continue;
    ++count;
    const double outside = 1 - h.attention.sink_share - h.attention.recent_share;
    CHECK(outside > 0.4);  // mass outside sinks and the recent window
    CHECK(h.attention.n90 <= 32);
    CHECK(h.classified == HeadType::kRetrieval);
  }
  CHECK(count == 1);
}

TEST_CASE("Diffuse heads have high entropy and little sink", "[workload]") {
  double streaming_entropy = 0, diffuse_entropy = 0;
  int streaming = 0, diffuse = 0;
  const double ln_n = std::log(4096.0);
  for (const HeadReport& h : SmallReport()) {
    if (h.label == HeadType::kDiffuse) {
      CHECK(h.attention.entropy_nats > ln_n - 3.5);
      CHECK(h.attention.top2pct_share < 0.6);
      CHECK(h.attention.sink_share < 0.4);
      diffuse_entropy += h.attention.entropy_nats;
      ++diffuse;
    } else if (h.label == HeadType::kStreaming) {
      streaming_entropy += h.attention.entropy_nats;
      ++streaming;
    }
  }
  REQUIRE(diffuse > 0);
  REQUIRE(streaming > 0);
  CHECK(diffuse_entropy / diffuse > streaming_entropy / streaming + 3);
}

TEST_CASE("Keys: outliers in low-frequency pairs, low pre-RoPE rank, small sink norm",
          "[workload]") {
  for (const HeadReport& h : SmallReport()) {
    CHECK(h.keys.top_channel_low_frequency);
    CHECK(h.keys.channel_std_ratio_pre > 7);
    CHECK(h.keys.channel_std_ratio_pre < 14);
    CHECK(h.keys.rank90_pre >= 128 / 4);
    CHECK(h.keys.rank90_pre <= 128 / 2);
    CHECK(h.keys.rank90_post > h.keys.rank90_pre);
    CHECK(h.keys.sink_norm_ratio < 0.5);
    CHECK(h.keys.chunk_cosine > h.keys.random_chunk_cosine);
    // Queries are out of the keys' distribution (RetrievalAttention).
    CHECK(h.keys.query_mahalanobis > 3 * h.keys.key_mahalanobis);
  }
}

TEST_CASE("ClassifyHead agrees with the generator's labels for most heads", "[workload]") {
  int agree = 0;
  for (const HeadReport& h : SmallReport()) agree += h.label == h.classified ? 1 : 0;
  CHECK(agree >= static_cast<int>(SmallReport().size()) * 8 / 10);
}

}  // namespace
}  // namespace pqkv::workload

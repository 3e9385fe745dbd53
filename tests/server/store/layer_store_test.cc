#include "server/store/layer_store.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include "catch2/catch.hpp"
#include "kernels/top_k.h"

namespace pqkv::server {
namespace {

constexpr uint32_t kKvHeads = 2, kQueryHeads = 4, kDim = 16;

SessionConfig Config(uint32_t sinks = 4, uint32_t recent = 8) {
  SessionConfig config;
  config.shape = {1, kKvHeads, kQueryHeads, kDim, kernels::ElementType::kFp32};
  config.index.subspaces = 2;
  config.index.bits = 4;  // 16 centroids: trains from 64 tokens
  config.index.kmeans_iterations = 5;
  config.index.sink_tokens = sinks;
  config.index.recent_window = recent;
  return config;
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
  for (float& x : q) x = normal(rng);
  return q;
}

absl::Time Soon() { return absl::Now() + absl::Seconds(30); }

struct Fixture {
  std::unique_ptr<PageArena> arena = PageArena::Create(16 << 20, 4096).value();
  SessionConfig config = Config();
  LayerStore layer{0, config, arena.get()};
};

TEST_CASE("LayerStore rejects bad appends and changes nothing", "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 10, Bytes(10, 1), Bytes(10, 2)).ok());
  const size_t bytes_before = f.arena->bytes_in_use();

  SECTION("byte length that does not match the shape") {
    const absl::Status s = f.layer.Append(10, 5, Bytes(4, 1), Bytes(5, 2));
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()).find("bytes") != std::string::npos);
  }
  SECTION("a gap") {
    const absl::Status s = f.layer.Append(11, 1, Bytes(1, 1), Bytes(1, 2));
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()).find("gap") != std::string::npos);
  }
  SECTION("an overlap") {
    const absl::Status s = f.layer.Append(9, 1, Bytes(1, 1), Bytes(1, 2));
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()).find("overlap") != std::string::npos);
  }
  SECTION("zero tokens") {
    CHECK(f.layer.Append(10, 0, "", "").code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("NaN or Inf in keys") {
    std::string keys = Bytes(1, 1);
    const float inf = std::numeric_limits<float>::infinity();
    std::memcpy(keys.data() + 8, &inf, sizeof inf);
    CHECK(f.layer.Append(10, 1, keys, Bytes(1, 2)).code() == absl::StatusCode::kInvalidArgument);
  }
  CHECK(f.layer.Status().num_tokens == 10);
  CHECK(f.arena->bytes_in_use() == bytes_before);
}

// Issue 15: values with NaN or Inf were accepted while keys were refused.
TEST_CASE("LayerStore refuses NaN or Inf in values as in keys, saying where", "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 10, Bytes(10, 1), Bytes(10, 2)).ok());
  const size_t bytes_before = f.arena->bytes_in_use();
  const float bad =
      GENERATE(std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
               -std::numeric_limits<float>::infinity());
  const bool in_keys = GENERATE(false, true);
  INFO("value " << bad << (in_keys ? " in keys" : " in values"));
  std::string keys = Bytes(4, 1), values = Bytes(4, 2);
  // kv head 1, token 2 of the chunk (position 12), dim 5.
  std::memcpy((in_keys ? keys : values).data() + ((1 * 4 + 2) * kDim + 5) * sizeof(float), &bad,
              sizeof bad);
  const absl::Status s = f.layer.Append(10, 4, keys, values);
  INFO(s.ToString());
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message())
            .find(in_keys ? "keys contain NaN or Inf" : "values contain NaN or Inf") !=
        std::string::npos);
  CHECK(std::string(s.message()).find("kv head 1, token 12") != std::string::npos);
  CHECK(f.layer.Status().num_tokens == 10);
  CHECK(f.arena->bytes_in_use() == bytes_before);
}

TEST_CASE("LayerStore refuses an append past the memory budget", "[server]") {
  auto arena = PageArena::Create(4 * 4096, 4096).value();  // 4 pages: 2 tensors x 2 heads
  LayerStore layer(0, Config(), arena.get());
  REQUIRE(layer.Append(0, 64, Bytes(64, 1), Bytes(64, 2)).ok());  // one page per tensor
  const absl::Status s = layer.Append(64, 1, Bytes(1, 1), Bytes(1, 2));
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(layer.Status().num_tokens == 64);
}

// With an index, an append takes K/V pages and pages for its tokens' codes. When the codes
// do not fit, the K/V pages taken for them come back: a refused append changes nothing.
TEST_CASE("An append whose codes do not fit the budget gives its K/V pages back", "[server]") {
  constexpr uint32_t kPrefill = 200, kMore = 1024;
  // First on a roomy arena: what the built layer holds, and what the append takes.
  size_t built = 0, kv_pages = 0, appended = 0;
  {
    Fixture f;
    REQUIRE(f.layer.Append(0, kPrefill, Bytes(kPrefill, 1), Bytes(kPrefill, 2)).ok());
    REQUIRE(f.layer.SealPrefill());
    f.layer.BuildIndex();
    REQUIRE(f.layer.Status().index_state == IndexState::kReady);
    built = f.arena->bytes_in_use();
    REQUIRE(f.layer.Append(kPrefill, kMore, Bytes(kMore, 3), Bytes(kMore, 4)).ok());
    appended = f.arena->bytes_in_use();
    // Rows of kDim fp32: each of the 2 x kKvHeads tensors grows by whole 4 KiB pages.
    const size_t rows_per_page = 4096 / (kDim * sizeof(float));
    const size_t old_pages = (kPrefill + rows_per_page - 1) / rows_per_page;
    const size_t new_pages = (kPrefill + kMore + rows_per_page - 1) / rows_per_page;
    kv_pages = 2 * kKvHeads * (new_pages - old_pages);
  }
  REQUIRE(appended > built + kv_pages * 4096);  // the codes took pages too
  // Then with room for the K/V pages and none for the codes.
  auto arena = PageArena::Create(built + kv_pages * 4096, 4096).value();
  LayerStore layer(0, Config(), arena.get());
  REQUIRE(layer.Append(0, kPrefill, Bytes(kPrefill, 1), Bytes(kPrefill, 2)).ok());
  REQUIRE(layer.SealPrefill());
  layer.BuildIndex();
  REQUIRE(layer.Status().index_state == IndexState::kReady);
  REQUIRE(arena->bytes_in_use() == built);
  const absl::Status s = layer.Append(kPrefill, kMore, Bytes(kMore, 3), Bytes(kMore, 4));
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(arena->bytes_in_use() == built);
  CHECK(layer.Status().num_tokens == kPrefill);
  CHECK(layer.Status().num_encoded == kPrefill);
  // What fits still goes in.
  CHECK(layer.Append(kPrefill, 1, Bytes(1, 3), Bytes(1, 4)).ok());
}

TEST_CASE("LayerStore rejects bad retrievals", "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 100, Bytes(100, 1), Bytes(100, 2)).ok());
  std::vector<float> query = Query(1);
  SECTION("query of the wrong size") {
    query.pop_back();
    CHECK(f.layer.Retrieve(query, 5, Soon()).status().code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("NaN in the query") {
    query[3] = std::nanf("");
    CHECK(f.layer.Retrieve(query, 5, Soon()).status().code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("k of zero") {
    CHECK(f.layer.Retrieve(query, 0, Soon()).status().code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("k larger than the candidates") {
    // 100 tokens - 4 sinks - 8 recent = 88 candidates.
    CHECK(f.layer.Retrieve(query, 88, Soon()).ok());
    const absl::Status s = f.layer.Retrieve(query, 89, Soon()).status();
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()).find("88 candidate") != std::string::npos);
  }
}

// Issue 15: this said "k must be in [1, 0]".
TEST_CASE("A layer with no candidates says so and why", "[server]") {
  Fixture f;  // 4 sinks, a recent window of 8
  const std::vector<float> query = Query(1);
  SECTION("no tokens") {
    const absl::Status s = f.layer.Retrieve(query, 1, Soon()).status();
    INFO(s.ToString());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()) == "layer 0 holds no tokens: no candidates to select from");
  }
  SECTION("all tokens are sinks or recent") {
    REQUIRE(f.layer.Append(0, 12, Bytes(12, 1), Bytes(12, 2)).ok());
    const absl::Status s = f.layer.Retrieve(query, 1, Soon()).status();
    INFO(s.ToString());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()) ==
          "layer 0 has 12 tokens, all within the 4 sink tokens and the recent window of 8: no "
          "candidates to select from (it needs more than 12 tokens)");
    REQUIRE(f.layer.Append(12, 1, Bytes(1, 1), Bytes(1, 2)).ok());
    CHECK(f.layer.Retrieve(query, 1, Soon()).ok());
  }
}

TEST_CASE("LayerStore never returns sinks or recent tokens", "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 100, Bytes(100, 1), Bytes(100, 2)).ok());
  const LayerSelection all = f.layer.Retrieve(Query(2), 88, Soon()).value();
  REQUIRE(all.heads.size() == kKvHeads);
  for (const HeadSelection& head : all.heads) {
    std::vector<uint32_t> sorted = head.positions;
    std::sort(sorted.begin(), sorted.end());
    std::vector<uint32_t> expected(88);
    std::iota(expected.begin(), expected.end(), 4);
    CHECK(sorted == expected);
  }
}

TEST_CASE("An open layer is scored exactly", "[server]") {
  Fixture f;
  const std::string keys = Bytes(300, 1);
  REQUIRE(f.layer.Append(0, 300, keys, Bytes(300, 2)).ok());
  const std::vector<float> query = Query(3);
  const LayerSelection got = f.layer.Retrieve(query, 20, Soon()).value();
  CHECK(got.num_encoded == 0);
  const float* k = reinterpret_cast<const float*>(keys.data());
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    // Exact reference for the head: logits from raw keys, softmax-sum over the group.
    std::vector<double> scores(300, 0.0);
    for (uint32_t g = 0; g < kQueryHeads / kKvHeads; ++g) {
      const float* q = query.data() + (h * 2 + g) * kDim;
      std::vector<double> logits(300);
      double max = -1e30, z = 0;
      for (uint32_t t = 0; t < 300; ++t) {
        double dot = 0;
        for (uint32_t i = 0; i < kDim; ++i) dot += double(q[i]) * k[(h * 300 + t) * kDim + i];
        logits[t] = dot / 4.0;  // sqrt(16)
        max = std::max(max, logits[t]);
      }
      for (double l : logits) z += std::exp(l - max);
      for (uint32_t t = 0; t < 300; ++t) scores[t] += std::exp(logits[t] - max) / z;
    }
    std::vector<uint32_t> order(300 - 12);
    std::iota(order.begin(), order.end(), 4);
    std::sort(order.begin(), order.end(),
              [&](uint32_t a, uint32_t b) { return scores[a] > scores[b]; });
    order.resize(20);
    CHECK(got.heads[h].positions == order);
  }
}

TEST_CASE("LayerStore builds its index and encodes later appends", "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 200, Bytes(200, 1), Bytes(200, 2)).ok());
  REQUIRE(f.layer.SealPrefill());
  CHECK(f.layer.Status().index_state == IndexState::kBuilding);
  CHECK_FALSE(f.layer.SealPrefill());  // sealing twice does nothing
  // Appends while building are allowed and encoded when the build lands.
  REQUIRE(f.layer.Append(200, 3, Bytes(3, 3), Bytes(3, 4)).ok());
  f.layer.BuildIndex();
  LayerStatus status = f.layer.Status();
  CHECK(status.index_state == IndexState::kReady);
  CHECK(status.num_encoded == 203);
  REQUIRE(f.layer.Append(203, 1, Bytes(1, 5), Bytes(1, 6)).ok());
  status = f.layer.Status();
  CHECK(status.num_tokens == 204);
  CHECK(status.num_encoded == 204);
  const LayerSelection got = f.layer.Retrieve(Query(4), 10, Soon()).value();
  CHECK(got.num_encoded == 204);
  CHECK(got.num_tokens == 204);
}

// kv heads built in parallel on a pool train and encode each head as the serial build
// does (same seeds): the same selections, scores included.
TEST_CASE("LayerStore builds kv heads on a pool as it does serially", "[server]") {
  Fixture serial, parallel;
  ThreadPool pool("build", 2);
  for (Fixture* f : {&serial, &parallel}) {
    REQUIRE(f->layer.Append(0, 300, Bytes(300, 1), Bytes(300, 2)).ok());
    REQUIRE(f->layer.SealPrefill());
  }
  serial.layer.BuildIndex();
  parallel.layer.BuildIndex(&pool);
  REQUIRE(parallel.layer.Status().index_state == IndexState::kReady);
  CHECK(parallel.layer.Status().num_encoded == 300);
  const LayerSelection a = serial.layer.Retrieve(Query(7), 20, Soon()).value();
  const LayerSelection b = parallel.layer.Retrieve(Query(7), 20, Soon()).value();
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    CHECK(a.heads[h].positions == b.heads[h].positions);
    CHECK(a.heads[h].scores == b.heads[h].scores);
  }
}

// The per-dimension 4-bit index (M = head_dim): codes in the dim4 layout, scored by the
// int8 dim4 scan; the plain path scores the same codes with float tables. Both pick
// nearly the same tokens, prefill and appended alike.
TEST_CASE("A per-dimension 4-bit index selects as the plain scorer of its codes", "[server]") {
  auto arena = PageArena::Create(16 << 20, 4096).value();
  SessionConfig config = Config();
  config.index.subspaces = kDim;
  config.index.rerank = 1;
  LayerStore layer{0, config, arena.get()};
  REQUIRE(layer.Append(0, 500, Bytes(500, 1), Bytes(500, 2)).ok());
  REQUIRE(layer.SealPrefill());
  layer.BuildIndex();
  REQUIRE(layer.Status().index_state == IndexState::kReady);
  REQUIRE(layer.Append(500, 21, Bytes(21, 3), Bytes(21, 4)).ok());  // encoded on append
  CHECK(layer.Status().num_encoded == 521);
  size_t same = 0, total = 0;
  for (uint32_t seed = 10; seed < 15; ++seed) {
    const LayerSelection fast = layer.Retrieve(Query(seed), 40, Soon()).value();
    const LayerSelection plain =
        layer.Retrieve(Query(seed), 40, Soon(), nullptr, /*plain=*/true).value();
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      REQUIRE(fast.heads[h].positions.size() == 40);
      const std::set<uint32_t> want(plain.heads[h].positions.begin(),
                                    plain.heads[h].positions.end());
      for (uint32_t p : fast.heads[h].positions) same += want.count(p);
      total += 40;
    }
  }
  // The int8 query moves a few near-ties across the cut, no more.
  INFO(same << " of " << total << " positions shared");
  CHECK(same >= total * 9 / 10);
}

TEST_CASE("A layer too short to train is scored exactly after sealing", "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 63, Bytes(63, 1), Bytes(63, 2)).ok());  // < 4 x 16 centroids
  CHECK_FALSE(f.layer.SealPrefill());
  CHECK(f.layer.Status().index_state == IndexState::kExact);
  CHECK(f.layer.Retrieve(Query(5), 5, Soon()).value().num_encoded == 0);
}

TEST_CASE("Retrieve waits for a building index until its deadline, then scores exactly",
          "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 200, Bytes(200, 1), Bytes(200, 2)).ok());
  REQUIRE(f.layer.SealPrefill());  // building until BuildIndex runs below
  const std::vector<float> query = Query(6);
  // Past its deadline (a past one: no wait at all) it answers from the exact scores: what a
  // layer that was never sealed answers.
  Fixture unsealed;
  REQUIRE(unsealed.layer.Append(0, 200, Bytes(200, 1), Bytes(200, 2)).ok());
  const LayerSelection want = unsealed.layer.Retrieve(query, 5, Soon()).value();
  for (absl::Time deadline : {absl::InfinitePast(), absl::Now() + absl::Milliseconds(50)}) {
    const LayerSelection exact = f.layer.Retrieve(query, 5, deadline).value();
    CHECK(f.layer.Status().index_state == IndexState::kBuilding);
    CHECK(exact.num_encoded == 0);
    REQUIRE(exact.heads.size() == want.heads.size());
    for (size_t h = 0; h < want.heads.size(); ++h) {
      CHECK(exact.heads[h].positions == want.heads[h].positions);
      CHECK(exact.heads[h].scores == want.heads[h].scores);
    }
  }

  absl::StatusOr<LayerSelection> waited;
  std::thread retriever([&] { waited = f.layer.Retrieve(query, 5, Soon()); });
  f.layer.BuildIndex();
  retriever.join();
  REQUIRE(waited.ok());
  CHECK(waited->num_encoded == 200);
}

TEST_CASE("LayerStore fetches exactly the rows it was given", "[server]") {
  Fixture f;
  const std::string keys = Bytes(50, 1), values = Bytes(50, 2);
  REQUIRE(f.layer.Append(0, 50, keys, values).ok());
  const std::vector<uint32_t> positions = {49, 0, 17, 17};
  const size_t row = kDim * sizeof(float);
  std::vector<char> k(positions.size() * row), v(positions.size() * row);
  REQUIRE(f.layer.Fetch(1, positions, k.data(), v.data()).ok());
  for (size_t i = 0; i < positions.size(); ++i) {
    const size_t src = (50 + positions[i]) * row;  // kv head 1
    CHECK(std::memcmp(k.data() + i * row, keys.data() + src, row) == 0);
    CHECK(std::memcmp(v.data() + i * row, values.data() + src, row) == 0);
  }
  CHECK(f.layer.Fetch(2, positions, k.data(), v.data()).code() ==
        absl::StatusCode::kInvalidArgument);
  const std::vector<uint32_t> beyond = {50};
  CHECK(f.layer.Fetch(0, beyond, k.data(), v.data()).code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pqkv::server

namespace pqkv::server {
namespace {

TEST_CASE("DeferUntilIndexSettled parks work until the build ends", "[server]") {
  Fixture f;
  REQUIRE(f.layer.Append(0, 200, Bytes(200, 1), Bytes(200, 2)).ok());
  bool ran = false;
  absl::AnyInvocable<void()&&> work = [&ran] { ran = true; };
  SECTION("an open layer runs it at once") {
    CHECK_FALSE(f.layer.DeferUntilIndexSettled(work));
    CHECK(work);  // left to the caller
  }
  SECTION("a building layer keeps it until BuildIndex ends") {
    REQUIRE(f.layer.SealPrefill());
    CHECK(f.layer.DeferUntilIndexSettled(work));
    CHECK_FALSE(ran);
    f.layer.BuildIndex();
    CHECK(ran);
    CHECK(f.layer.Status().index_state == IndexState::kReady);
  }
  SECTION("an abandoned build releases it and scores exactly") {
    REQUIRE(f.layer.SealPrefill());
    CHECK(f.layer.DeferUntilIndexSettled(work));
    f.layer.AbandonBuild();
    CHECK(ran);
    CHECK(f.layer.Status().index_state == IndexState::kFailed);
    CHECK(f.layer.Retrieve(Query(7), 5, Soon()).value().num_encoded == 0);
  }
}

}  // namespace
}  // namespace pqkv::server

namespace pqkv::server {
namespace {

TEST_CASE("Logits that overflow fp32 are reported, not ranked", "[server]") {
  Fixture f;
  std::vector<float> huge(kKvHeads * 100 * kDim, 1e30f);
  const std::string keys(reinterpret_cast<const char*>(huge.data()), huge.size() * sizeof(float));
  REQUIRE(f.layer.Append(0, 100, keys, keys).ok());
  const std::vector<float> query(kQueryHeads * kDim, 1e20f);
  const absl::Status s = f.layer.Retrieve(query, 5, Soon()).status();
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find("overflow") != std::string::npos);
}

}  // namespace
}  // namespace pqkv::server

namespace pqkv::server {
namespace {

// Keys away from the prefill's distribution: every dimension shifted by `shift` and two
// channels 8x larger (a topic change and new outlier channels), fp32 bytes as Bytes.
std::string DriftedBytes(uint32_t n, uint32_t seed, float shift) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(static_cast<size_t>(kKvHeads) * n * kDim);
  for (size_t i = 0; i < v.size(); ++i) {
    const size_t d = i % kDim;
    v[i] = normal(rng) * (d == 3 || d == 11 ? 8.0f : 1.0f) + shift;
  }
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

SessionConfig RefreshConfig(double drift_ratio, double growth, uint32_t min_tokens) {
  SessionConfig config = Config();
  config.refresh.drift_ratio = drift_ratio;
  config.refresh.growth = growth;
  config.refresh.min_tokens = min_tokens;
  return config;
}

TEST_CASE("Drifted appends ask for a refresh, which retrains on every token", "[server]") {
  auto arena = PageArena::Create(16 << 20, 4096).value();
  // Growth out of reach: only drift can ask.
  LayerStore layer(0, RefreshConfig(1.5, 100.0, 64), arena.get());
  const uint32_t prefill = 512;
  REQUIRE(layer.Append(0, prefill, Bytes(prefill, 1), Bytes(prefill, 2)).ok());
  REQUIRE(layer.SealPrefill());
  layer.BuildIndex();
  const double training_error = layer.Status().training_quantization_error;
  REQUIRE(training_error > 0);

  // Tokens like the prefill's, one per decode step: no refresh.
  uint32_t n = prefill;
  for (uint32_t i = 0; i < 128; ++i, ++n) {
    REQUIRE(layer.Append(n, 1, Bytes(1, 100 + i), Bytes(1, 200 + i)).ok());
    CHECK_FALSE(layer.ClaimRefresh());
  }
  CHECK(layer.Status().appended_quantization_error < 1.5 * training_error);

  // Then drifted ones: a refresh once min_tokens were appended and the error ratio passed.
  bool claimed = false;
  for (uint32_t i = 0; i < 256 && !claimed; ++i, ++n) {
    REQUIRE(layer.Append(n, 1, DriftedBytes(1, 300 + i, 2.0f), Bytes(1, 400 + i)).ok());
    claimed = layer.ClaimRefresh();
  }
  REQUIRE(claimed);
  CHECK(layer.Status().appended_quantization_error >= 1.5 * training_error);
  CHECK_FALSE(layer.ClaimRefresh());  // claimed once until the refresh ends
  // More drifted tokens before the refresh runs (it would train on them too).
  for (uint32_t i = 0; i < 256; ++i, ++n) {
    REQUIRE(layer.Append(n, 1, DriftedBytes(1, 500 + i, 2.0f), Bytes(1, 600 + i)).ok());
  }
  const double drifted_error = layer.Status().appended_quantization_error;

  layer.RefreshIndex();
  const LayerStatus status = layer.Status();
  CHECK(status.index_refreshes == 1);
  CHECK(status.index_state == IndexState::kReady);
  CHECK(status.num_encoded == n);
  CHECK(status.appended_quantization_error == 0);  // nothing appended since
  // The new codebooks learned the drifted keys: more of them reconstruct far better.
  for (uint32_t i = 0; i < 64; ++i, ++n) {
    REQUIRE(layer.Append(n, 1, DriftedBytes(1, 700 + i, 2.0f), Bytes(1, 800 + i)).ok());
  }
  INFO("drifted keys' error " << drifted_error << " before the refresh, "
                              << layer.Status().appended_quantization_error << " after");
  CHECK(layer.Status().appended_quantization_error < 0.7 * drifted_error);
  // Retrieve works on the new index.
  CHECK(layer.Retrieve(Query(3), 32, Soon()).ok());
}

TEST_CASE("Growth alone asks for a refresh at the configured factor", "[server]") {
  auto arena = PageArena::Create(16 << 20, 4096).value();
  LayerStore layer(0, RefreshConfig(1000.0, 0.5, 16), arena.get());
  REQUIRE(layer.Append(0, 256, Bytes(256, 1), Bytes(256, 2)).ok());
  REQUIRE(layer.SealPrefill());
  layer.BuildIndex();
  uint32_t n = 256;
  for (; n < 256 + 127; ++n) {
    REQUIRE(layer.Append(n, 1, Bytes(1, n), Bytes(1, n + 1)).ok());
    REQUIRE_FALSE(layer.ClaimRefresh());
  }
  REQUIRE(layer.Append(n, 1, Bytes(1, n), Bytes(1, n + 1)).ok());  // 128 = 0.5 x 256
  CHECK(layer.ClaimRefresh());
}

TEST_CASE("Refresh swaps under concurrent appends and retrievals; rows stay exact", "[server]") {
  // Refreshes as often as the policy allows (every 8 appended tokens) while one thread
  // appends drifted tokens and another retrieves and fetches rows: every Retrieve succeeds
  // with k distinct candidates, and fetched rows equal what was appended.
  auto arena = PageArena::Create(64 << 20, 4096).value();
  LayerStore layer(0, RefreshConfig(1.0, 0.01, 8), arena.get());
  const uint32_t prefill = 256, appended = 384;
  std::string keys = Bytes(prefill, 1), values = Bytes(prefill, 2);
  REQUIRE(layer.Append(0, prefill, keys, values).ok());
  REQUIRE(layer.SealPrefill());
  layer.BuildIndex();
  // Per kv head, every token's key row, in order: what Fetch must give back.
  std::vector<std::string> head_keys(kKvHeads);
  const size_t row = kDim * sizeof(float);
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    head_keys[h] = keys.substr(static_cast<size_t>(h) * prefill * row, prefill * row);
  }
  std::vector<std::string> chunks;
  for (uint32_t i = 0; i < appended; ++i) chunks.push_back(DriftedBytes(1, 1000 + i, 0.01f * i));
  for (uint32_t i = 0; i < appended; ++i) {
    for (uint32_t h = 0; h < kKvHeads; ++h) head_keys[h] += chunks[i].substr(h * row, row);
  }

  std::atomic<bool> done{false};
  std::atomic<int> refreshes{0};
  std::thread refresher([&] {
    while (!done.load()) {
      if (layer.ClaimRefresh()) {
        layer.RefreshIndex();
        refreshes.fetch_add(1);
      } else {
        std::this_thread::yield();
      }
    }
  });
  // Catch2 asserts on the test's thread only: the appender reports its failures here.
  std::atomic<int> failed_appends{0};
  std::thread appender([&] {
    for (uint32_t i = 0; i < appended; ++i) {
      if (!layer.Append(prefill + i, 1, chunks[i], Bytes(1, 5000 + i)).ok()) ++failed_appends;
      absl::SleepFor(absl::Microseconds(200));  // a decode step's pace, roughly
    }
    done.store(true);
  });
  const std::vector<float> query = Query(9);
  int retrievals = 0;
  while (!done.load() || retrievals < 10) {
    // Every other one re-ranked, the latest appended tokens joining (the exact tail).
    const uint32_t rerank = retrievals % 2 == 0 ? 1 : 4;
    const absl::StatusOr<LayerSelection> s =
        layer.Retrieve(query, 16, Soon(), nullptr, false, rerank);
    REQUIRE(s.ok());
    const uint64_t end = s->num_tokens - Config().index.recent_window;
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      const std::vector<uint32_t>& positions = s->heads[h].positions;
      REQUIRE(positions.size() == 16);
      REQUIRE(std::set<uint32_t>(positions.begin(), positions.end()).size() == 16);
      std::vector<char> k_out(positions.size() * row), v_out(positions.size() * row);
      REQUIRE(layer.Fetch(h, positions, k_out.data(), v_out.data()).ok());
      for (size_t i = 0; i < positions.size(); ++i) {
        REQUIRE(positions[i] >= Config().index.sink_tokens);
        REQUIRE(positions[i] < end);
        REQUIRE(std::memcmp(k_out.data() + i * row, head_keys[h].data() + positions[i] * row,
                            row) == 0);
      }
    }
    ++retrievals;
  }
  appender.join();
  refresher.join();
  const LayerStatus status = layer.Status();
  INFO(refreshes.load() << " refreshes during " << retrievals << " retrievals");
  CHECK(failed_appends.load() == 0);
  CHECK(refreshes.load() >= 2);
  CHECK(status.index_refreshes == static_cast<uint64_t>(refreshes.load()));
  CHECK(status.num_tokens == prefill + appended);
  CHECK(status.num_encoded == prefill + appended);
}

// Keys with channel 0 at `lead` and every other channel 0, fp32 bytes as Bytes: tokens the
// codebooks (trained on N(0, 1) keys) give one and the same code.
std::string LeadBytes(uint32_t n, float lead) {
  std::vector<float> v(static_cast<size_t>(kKvHeads) * n * kDim, 0.0f);
  for (size_t i = 0; i < v.size(); i += kDim) v[i] = lead;
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

TEST_CASE("The latest appended tokens join the exact re-rank whatever their codes", "[server]") {
  // 64 decoded keys share one code; the one that matters most (channel 0 at 4.2 against
  // 4.0) is the last of them before the recent window. The scan sees a tie and shortlists
  // earlier tokens; the exact tail re-ranks it anyway.
  auto run = [](uint32_t exact_tail) {
    auto arena = PageArena::Create(16 << 20, 4096).value();
    SessionConfig config = RefreshConfig(1000.0, 1000.0, 1 << 20);  // no refresh is due
    config.refresh.exact_tail = exact_tail;
    LayerStore layer(0, config, arena.get());
    const uint32_t prefill = 512;
    REQUIRE(layer.Append(0, prefill, Bytes(prefill, 1), Bytes(prefill, 2)).ok());
    REQUIRE(layer.SealPrefill());
    layer.BuildIndex();
    uint32_t n = prefill;
    REQUIRE(layer.Append(n, 63, LeadBytes(63, 4.0f), Bytes(63, 3)).ok());
    n += 63;
    REQUIRE(layer.Append(n, 1, LeadBytes(1, 4.2f), Bytes(1, 4)).ok());
    const uint32_t wanted = n++;
    const uint32_t recent = config.index.recent_window;
    REQUIRE(layer.Append(n, recent, LeadBytes(recent, 4.0f), Bytes(recent, 5)).ok());
    std::vector<float> query(kQueryHeads * kDim, 0.0f);
    for (size_t i = 0; i < query.size(); i += kDim) query[i] = 1.0f;  // reads channel 0
    const absl::StatusOr<LayerSelection> s = layer.Retrieve(query, 1, Soon(), nullptr, false, 4);
    REQUIRE(s.ok());
    std::vector<bool> found;
    for (const HeadSelection& head : s->heads) {
      REQUIRE(head.positions.size() == 1);
      found.push_back(head.positions[0] == wanted);
    }
    return found;
  };
  CHECK(run(512) == std::vector<bool>(kKvHeads, true));
  // Without it the scan's shortlist misses the token (the case is real).
  CHECK(run(0) == std::vector<bool>(kKvHeads, false));
}

}  // namespace
}  // namespace pqkv::server

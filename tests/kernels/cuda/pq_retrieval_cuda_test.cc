// CudaLayerRetriever against the plain kernels (kernels/pq_scan.h, gqa_softmax.h,
// top_k.h): every step of a layer's retrieval on random inputs, several shapes (odd n,
// M = 2 x 6 bits, M = 4 x 8 bits, tables past shared memory, each ADC scan
// kernel: grouped and joined tables), ties from
// integer-valued inputs, and the gather against memcpy into pinned host memory.
//
// Tolerances: on integer-valued inputs the tables and logits are exact (small integers
// in fp32). On normal inputs the tables and logits get 1e-6 relative plus 1e-5
// absolute (the kernels keep the reference's rounding order, so they are expected
// bit-equal). Softmax scores get 2e-5 relative plus 1e-30 absolute (fp32 expf against
// the reference's fp64 exp and normaliser). Top-k is exact: the GPU's selection equals
// kernels::TopK on the GPU's own scores, ties included; against the all-CPU pipeline,
// the selected scores agree rank by rank within 1e-4 (near-ties may swap between fp32
// and fp64 exponentials).
//
// Runs only where a CUDA device exists; cuda_test_main.cc reports the binary skipped
// elsewhere. With PQKV_CUDA_TEST_SMALL set (device_check.sh does so under
// compute-sanitizer, which runs kernels tens of times slower) cases of more than 5000
// tokens are left out.
#include "kernels/cuda/pq_retrieval_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/cuda/scan_mode.h"
#include "kernels/gqa_softmax.h"
#include "kernels/pq_scan.h"
#include "kernels/top_k.h"

namespace pqkv::kernels::cuda {
namespace {

// Whether to leave out the cases of more than kSmallTokens tokens (see the top).
constexpr uint32_t kSmallTokens = 5000;
bool SmallOnly() { return std::getenv("PQKV_CUDA_TEST_SMALL") != nullptr; }

// One retriever for the whole binary, so buffers are reused across shapes (large, then
// smaller, then larger again) as in the service.
CudaLayerRetriever& SharedRetriever() {
  static absl::StatusOr<std::unique_ptr<CudaLayerRetriever>> created = CudaLayerRetriever::Create();
  if (!created.ok()) FAIL("CudaLayerRetriever::Create: " << created.status());
  return **created;
}

// Largest |got - want| - (rel * |want| + abs) over the arrays: <= 0 when all agree. The
// index of the worst element goes to *worst.
double WorstExcess(const float* got, const float* want, size_t n, double rel, double abs,
                   size_t* worst) {
  double excess = -1;
  *worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]) -
                     (rel * std::fabs(static_cast<double>(want[i])) + abs);
    if (std::isnan(got[i]) || e > excess) {
      excess = std::isnan(got[i]) ? 1e30 : e;
      *worst = i;
    }
  }
  return excess;
}

#define REQUIRE_CLOSE(what, got, want, n, rel, abs)                                   \
  do {                                                                                \
    size_t worst_;                                                                    \
    const double excess_ = WorstExcess((got), (want), (n), (rel), (abs), &worst_);    \
    INFO(what << ": worst element " << worst_ << " got " << (got)[worst_] << " want " \
              << (want)[worst_]);                                                     \
    REQUIRE(excess_ <= 0);                                                            \
  } while (0)

// Exact equality of got[0, n) and want, reporting the first difference (not the arrays).
template <typename T>
void RequireEqual(const char* what, const T* got, const std::vector<T>& want) {
  size_t i = 0;
  while (i < want.size() && got[i] == want[i]) ++i;
  if (i == want.size()) return;
  FAIL(what << ": first difference at rank " << i << " of " << want.size() << ": got " << got[i]
            << ", want " << want[i]);
}

struct LayerCase {
  int kv_heads, query_heads, head_dim, subspaces, bits;
  uint32_t num_tokens;
  bool integer;  // integer-valued queries and centroids: exact tables and logits, ties
};

std::ostream& operator<<(std::ostream& os, const LayerCase& c) {
  return os << "H=" << c.kv_heads << " Q=" << c.query_heads << " d=" << c.head_dim
            << " M=" << c.subspaces << " bits=" << c.bits << " n=" << c.num_tokens
            << (c.integer ? " integer" : " normal");
}

struct LayerData {
  CudaLayerShape shape;
  std::vector<float> queries, centroids;
  std::vector<uint8_t> codes;
};

LayerData MakeLayer(const LayerCase& c, uint32_t seed) {
  LayerData data;
  data.shape.kv_heads = c.kv_heads;
  data.shape.query_heads = c.query_heads;
  data.shape.pq = PqShape{c.subspaces, 1 << c.bits, c.head_dim / c.subspaces};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> small(-2, 2);
  const auto value = [&](float normal_scale) {
    return c.integer ? static_cast<float>(small(rng)) : normal_scale * normal(rng);
  };
  const size_t ksub = 1u << c.bits;
  data.queries.resize(static_cast<size_t>(c.query_heads) * c.head_dim);
  for (float& v : data.queries) v = value(3.0f);
  data.centroids.resize(static_cast<size_t>(c.kv_heads) * ksub * c.head_dim);
  for (float& v : data.centroids) v = value(1.0f);
  std::uniform_int_distribution<int> code(0, static_cast<int>(ksub) - 1);
  data.codes.resize(static_cast<size_t>(c.kv_heads) * c.num_tokens * c.subspaces);
  for (uint8_t& v : data.codes) v = static_cast<uint8_t>(code(rng));
  return data;
}

// Runs one layer through RetrieveLayer with the scan `mode` and checks every step against
// the plain kernels (see the top for the tolerances). k: the selection's size, at most
// the candidates.
void CheckLayerAgainstPlain(const LayerCase& c, uint32_t want_k, ScanMode mode) {
  INFO(c << " k=" << want_k << " scan " << ScanModeName(mode));
  const LayerData data = MakeLayer(c, c.num_tokens * 31 + c.bits);
  const CudaLayerShape& shape = data.shape;
  const int H = shape.kv_heads, Q = shape.query_heads, G = shape.group_size();
  const int M = shape.pq.subspaces, ksub = shape.pq.centroids_per_subspace;
  const int dsub = shape.pq.subspace_dim, d = shape.head_dim();
  const uint32_t n = c.num_tokens;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // Candidates leave out a prefix (sinks) and a suffix (recent window) where n allows.
  const uint32_t begin = n > 100 ? 32 : 0;
  const uint32_t end = n > 100 ? n - 64 : n;
  const uint32_t k = std::min(want_k, end - begin);

  LayerRetrievalInput in;
  in.shape = shape;
  in.queries = data.queries.data();
  in.centroids = data.centroids.data();
  in.codes = data.codes.data();
  in.num_tokens = n;
  in.candidate_begin = begin;
  in.candidate_end = end;
  in.k = k;
  std::vector<uint32_t> positions(static_cast<size_t>(H) * k);
  std::vector<float> top_scores(positions.size());
  std::vector<float> tables(static_cast<size_t>(Q) * M * ksub);
  std::vector<float> logits(static_cast<size_t>(Q) * n);
  std::vector<float> head_scores(static_cast<size_t>(H) * n);
  LayerRetrievalOutput out;
  out.positions = positions.data();
  out.scores = top_scores.data();
  out.tables = tables.data();
  out.logits = logits.data();
  out.head_scores = head_scores.data();
  LayerTimings timings;
  SharedRetriever().set_scan_mode(mode);
  const absl::Status status = SharedRetriever().RetrieveLayer(in, out, &timings);
  SharedRetriever().set_scan_mode(ScanMode::kAuto);
  INFO(status);
  REQUIRE(status.ok());
  CHECK(timings.total_ms() > 0);

  // Exact on integer inputs; on normal inputs (values of magnitude 1-100) 1e-6 relative
  // plus 1e-5 absolute for values that cancel to near zero.
  const double exact_rel = c.integer ? 0.0 : 1e-6;
  const double exact_abs = c.integer ? 0.0 : 1e-5;
  const size_t table_size = static_cast<size_t>(M) * ksub;
  std::vector<float> want_table(table_size), want_logits(n), want_scores(n);
  std::vector<float> cpu_scores(static_cast<size_t>(H) * n, 0.0f);  // all-CPU pipeline
  for (int h = 0; h < H; ++h) {
    const float* centroids = data.centroids.data() + static_cast<size_t>(h) * table_size * dsub;
    const uint8_t* codes = data.codes.data() + static_cast<size_t>(h) * n * M;
    std::fill(want_scores.begin(), want_scores.end(), 0.0f);
    for (int g = 0; g < G; ++g) {
      const int q = h * G + g;
      // Step 1 against the reference on the same query and codebook.
      ComputeInnerProductTable(shape.pq, data.queries.data() + static_cast<size_t>(q) * d,
                               centroids, want_table.data());
      const float* table = tables.data() + q * table_size;
      REQUIRE_CLOSE("table of query head " << q, table, want_table.data(), table_size, exact_rel,
                    exact_abs);
      // Step 2 on the GPU's table.
      AdcScan(shape.pq, table, codes, n, want_logits.data());
      const float* q_logits = logits.data() + static_cast<size_t>(q) * n;
      REQUIRE_CLOSE("logits of query head " << q, q_logits, want_logits.data(), n, exact_rel,
                    exact_abs);
      // Step 3 on the GPU's logits.
      AccumulateSoftmax(q_logits, n, scale, want_scores.data());
      // The all-CPU pipeline, for the end-to-end comparison below.
      AdcScan(shape.pq, want_table.data(), codes, n, want_logits.data());
      AccumulateSoftmax(want_logits.data(), n, scale,
                        cpu_scores.data() + static_cast<size_t>(h) * n);
    }
    const float* h_scores = head_scores.data() + static_cast<size_t>(h) * n;
    REQUIRE_CLOSE("scores of kv head " << h, h_scores, want_scores.data(), n, 2e-5, 1e-30);

    // Step 4 on the GPU's scores: exactly kernels::TopK, ties by lower position.
    std::vector<uint32_t> want_positions(k);
    TopK(h_scores, begin, end, k, want_positions.data());
    const uint32_t* got = positions.data() + static_cast<size_t>(h) * k;
    INFO("kv head " << h);
    RequireEqual("positions vs kernels::TopK", got, want_positions);
    std::vector<float> want_top(k);
    for (uint32_t j = 0; j < k; ++j) want_top[j] = h_scores[got[j]];
    RequireEqual("top scores", top_scores.data() + static_cast<size_t>(h) * k, want_top);

    // End to end against the all-CPU pipeline: same scores, and rank by rank the same
    // selected scores (positions may differ only among near-ties).
    const float* cpu = cpu_scores.data() + static_cast<size_t>(h) * n;
    REQUIRE_CLOSE("scores of kv head " << h << " vs all-CPU", h_scores, cpu, n, 1e-4, 1e-30);
    std::vector<uint32_t> cpu_positions(k);
    TopK(cpu, begin, end, k, cpu_positions.data());
    std::vector<float> got_cpu_scores(k), want_cpu_scores(k);
    for (uint32_t j = 0; j < k; ++j) {
      got_cpu_scores[j] = cpu[got[j]];
      want_cpu_scores[j] = cpu[cpu_positions[j]];
    }
    REQUIRE_CLOSE("selected scores of kv head " << h << " vs all-CPU", got_cpu_scores.data(),
                  want_cpu_scores.data(), k, 1e-4, 1e-30);
    REQUIRE(std::set<uint32_t>(got, got + k).size() == k);
  }

  if (c.integer && c.subspaces == 2 && c.num_tokens > 100000 && k > 1) {
    // 4096 distinct codes over 131073 tokens: the selection runs through ties.
    size_t ties = 0;
    for (size_t i = 0; i + 1 < positions.size(); ++i) {
      if ((i + 1) % k != 0 && top_scores[i] == top_scores[i + 1]) ++ties;
    }
    CHECK(ties > 100);
  }
}

TEST_CASE("CudaLayerRetriever matches the plain kernels step by step", "[cuda]") {
  const LayerCase c = GENERATE(
      LayerCase{8, 32, 128, 2, 6, 131073, true},   // PQCache default, odd n, many ties
      LayerCase{8, 32, 128, 4, 8, 131071, false},  // M = 4 x 8 bits
      LayerCase{8, 32, 128, 4, 8, 20011, true}, LayerCase{2, 8, 64, 2, 6, 1001, false},
      LayerCase{3, 9, 48, 3, 4, 4099, true},    // G = 3, three sub-spaces
      LayerCase{1, 1, 8, 8, 1, 333, true},      // dsub = 1, two centroids
      LayerCase{4, 4, 64, 16, 4, 777, false},   // G = 1
      LayerCase{2, 4, 128, 64, 8, 517, false},  // 64 KiB tables: past the default shared memory
      LayerCase{2, 12, 32, 2, 6, 7, true},      // fewer tokens than a warp
      // Past every grid-stride cap: the scan's 2048 blocks x 256 threads x 4
      // tokens (2,097,152 tokens), the score kernel's 4096 x 256 (1,048,576
      // tokens) and the top-k kernels' 4096 x 256 (1,048,576 items).
      LayerCase{1, 2, 16, 2, 6, 2100001, true});
  INFO(c);
  if (SmallOnly() && c.num_tokens > kSmallTokens) return;
  const uint32_t candidates = c.num_tokens > 100 ? c.num_tokens - 96 : c.num_tokens;
  const uint32_t k = GENERATE_COPY(values<uint32_t>({1, std::max<uint32_t>(1, candidates / 5)}));
  // The cap case runs the grouped scan, whose cap it passes (auto would join the tables).
  CheckLayerAgainstPlain(c, k, c.num_tokens > 2000000 ? ScanMode::kGrouped : ScanMode::kAuto);
}

// The scan kernels side by side: the grouped scan with tables in shared memory (chunks of
// query heads where the group's tables do not fit together) and in global memory, and
// the joined table of 2 x 6 and 2 x 4 bits (2 x 8 falls back to grouped), with groups of
// 1 to 16 query heads.
TEST_CASE("Every ADC scan mode gives the plain kernels' results", "[cuda]") {
  const LayerCase c =
      GENERATE(LayerCase{8, 32, 128, 2, 6, 40009, true},  // auto picks joined
               LayerCase{8, 32, 128, 2, 6, 40009, false}, LayerCase{2, 32, 64, 2, 6, 3001, false},
               LayerCase{4, 4, 64, 2, 4, 999, true},       // G = 1, ksub 16
               LayerCase{2, 6, 96, 2, 8, 2001, false},     // joined: 256 KiB per head, too large
               LayerCase{3, 9, 48, 3, 4, 4099, true},      // G = 3, M = 3: grouped only
               LayerCase{2, 32, 128, 16, 8, 1500, false},  // 16 KiB per head: chunks of G
               LayerCase{2, 4, 128, 64, 8, 517, false},    // 64 KiB per head: opt-in shared
               LayerCase{1, 2, 256, 256, 8, 300, false},   // 256 KiB per head: global memory
               // Past the joined scan's cap: 2048 blocks x 8192 tokens (16,777,216).
               LayerCase{1, 2, 16, 2, 6, 16777259, true});
  const ScanMode mode =
      GENERATE(values<ScanMode>({ScanMode::kAuto, ScanMode::kGrouped, ScanMode::kJoined}));
  if (SmallOnly() && c.num_tokens > kSmallTokens) return;
  CheckLayerAgainstPlain(c, c.num_tokens / 7, mode);
}

TEST_CASE("CudaLayerRetriever::TopK equals kernels::TopK, ties by lower position", "[cuda]") {
  const int heads = GENERATE(1, 3, 8);
  // 1100009 tokens: 3 or 8 heads of candidates are past the top-k kernels' grid-stride
  // cap (4096 blocks x 256 threads = 1,048,576 items).
  const uint32_t n = GENERATE(1u, 2u, 31u, 4099u, 131073u, 1100009u);
  const int distinct = GENERATE(3, 1000000);  // few distinct values: many ties
  INFO("heads=" << heads << " n=" << n << " distinct=" << distinct);
  if (SmallOnly() && n > kSmallTokens) return;
  std::mt19937 rng(heads * 7919 + n + distinct);
  std::uniform_int_distribution<int> value(0, distinct - 1);
  std::vector<float> scores(static_cast<size_t>(heads) * n);
  for (float& s : scores) s = static_cast<float>(value(rng) - distinct / 2);
  // Signed zeros compare equal: ordered by position like any tie.
  for (size_t i = 0; i < scores.size(); i += 5) {
    if (scores[i] == 0.0f && i % 2 == 1) scores[i] = -0.0f;
  }
  const uint32_t begin = n / 10;
  const uint32_t end = n - n / 7;
  const uint32_t candidates = end - begin;
  // k <= candidates / 4 runs the radix select, larger k the sort of every candidate.
  for (uint32_t k :
       {1u, candidates / 5, candidates / 4, candidates / 4 + 1, candidates / 2 + 1, candidates}) {
    if (k == 0 || k > candidates) continue;
    INFO("k=" << k);
    std::vector<uint32_t> got(static_cast<size_t>(heads) * k);
    std::vector<float> got_scores(got.size());
    const absl::Status status = SharedRetriever().TopK(scores.data(), heads, n, begin, end, k,
                                                       got.data(), got_scores.data());
    INFO(status);
    REQUIRE(status.ok());
    for (int h = 0; h < heads; ++h) {
      const float* row = scores.data() + static_cast<size_t>(h) * n;
      std::vector<uint32_t> want(k);
      TopK(row, begin, end, k, want.data());
      INFO("head " << h);
      RequireEqual("positions vs kernels::TopK", got.data() + static_cast<size_t>(h) * k, want);
      std::vector<float> want_scores(k);
      for (uint32_t j = 0; j < k; ++j) want_scores[j] = row[want[j]];
      RequireEqual("top scores", got_scores.data() + static_cast<size_t>(h) * k, want_scores);
    }
  }
}

TEST_CASE("CudaLayerRetriever rejects bad layer arguments", "[cuda]") {
  const LayerData data = MakeLayer(LayerCase{2, 8, 64, 2, 6, 100, true}, 1);
  LayerRetrievalInput in;
  in.shape = data.shape;
  in.queries = data.queries.data();
  in.centroids = data.centroids.data();
  in.codes = data.codes.data();
  in.num_tokens = 100;
  in.candidate_begin = 10;
  in.candidate_end = 20;
  std::vector<uint32_t> positions(2 * 11);
  std::vector<float> scores(2 * 11);
  LayerRetrievalOutput out;
  out.positions = positions.data();
  out.scores = scores.data();
  CudaLayerRetriever& retriever = SharedRetriever();

  SECTION("k larger than the candidates") {
    in.k = 11;
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("query heads not a multiple of kv heads") {
    in.k = 1;
    in.shape.query_heads = 7;
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("candidates past the end") {
    in.k = 1;
    in.candidate_end = 101;
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("ksub not a power of two") {
    in.k = 1;
    in.shape.pq.centroids_per_subspace = 48;
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("and still works afterwards") {
    in.k = 10;
    CHECK(retriever.RetrieveLayer(in, out).ok());
  }
}

TEST_CASE("k == 0 and an empty candidate range skip the top-k and still score", "[cuda]") {
  const LayerCase c{2, 8, 64, 2, 6, 100, true};
  const LayerData data = MakeLayer(c, 2);
  const int H = data.shape.kv_heads, G = data.shape.group_size();
  const uint32_t n = c.num_tokens;
  LayerRetrievalInput in;
  in.shape = data.shape;
  in.queries = data.queries.data();
  in.centroids = data.centroids.data();
  in.codes = data.codes.data();
  in.num_tokens = n;
  in.k = 0;
  std::vector<float> head_scores(static_cast<size_t>(H) * n, -1.0f);
  LayerRetrievalOutput out;  // no positions or scores: not needed when k == 0
  out.head_scores = head_scores.data();
  CudaLayerRetriever& retriever = SharedRetriever();

  // The all-CPU scores of kv head h.
  const auto want_scores = [&](int h) {
    const int M = data.shape.pq.subspaces, ksub = data.shape.pq.centroids_per_subspace;
    const int d = data.shape.head_dim();
    std::vector<float> table(static_cast<size_t>(M) * ksub), logits(n), scores(n, 0.0f);
    for (int g = 0; g < G; ++g) {
      ComputeInnerProductTable(
          data.shape.pq, data.queries.data() + static_cast<size_t>(h * G + g) * d,
          data.centroids.data() + static_cast<size_t>(h) * M * ksub * data.shape.pq.subspace_dim,
          table.data());
      AdcScan(data.shape.pq, table.data(), data.codes.data() + static_cast<size_t>(h) * n * M, n,
              logits.data());
      AccumulateSoftmax(logits.data(), n, 1.0f / std::sqrt(static_cast<float>(d)), scores.data());
    }
    return scores;
  };

  SECTION("RetrieveLayer, empty range") {
    in.candidate_begin = in.candidate_end = 40;
    const absl::Status status = retriever.RetrieveLayer(in, out);
    INFO(status);
    REQUIRE(status.ok());
    for (int h = 0; h < H; ++h) {
      const std::vector<float> want = want_scores(h);
      REQUIRE_CLOSE("scores of kv head " << h, head_scores.data() + static_cast<size_t>(h) * n,
                    want.data(), n, 2e-5, 1e-30);
    }
  }
  SECTION("RetrieveLayer, candidates but k == 0") {
    in.candidate_begin = 0;
    in.candidate_end = n;
    const absl::Status status = retriever.RetrieveLayer(in, out);
    INFO(status);
    REQUIRE(status.ok());
    const std::vector<float> want = want_scores(0);
    REQUIRE_CLOSE("scores of kv head 0", head_scores.data(), want.data(), n, 2e-5, 1e-30);
  }
  SECTION("RetrieveLayer, empty range at the end, k == 1 is refused") {
    in.candidate_begin = in.candidate_end = n;
    in.k = 1;
    std::vector<uint32_t> positions(H);
    std::vector<float> scores(H);
    out.positions = positions.data();
    out.scores = scores.data();
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("TopK") {
    std::vector<float> scores(static_cast<size_t>(H) * n, 1.0f);
    uint32_t position = 12345;
    CHECK(retriever.TopK(scores.data(), H, n, 7, 7, 0, &position, nullptr).ok());
    CHECK(retriever.TopK(scores.data(), H, n, 0, n, 0, &position, nullptr).ok());
    CHECK(retriever.TopK(scores.data(), H, n, n, n, 0, nullptr, nullptr).ok());
    CHECK(position == 12345);  // nothing written
    CHECK(retriever.TopK(scores.data(), H, n, 7, 7, 1, &position, nullptr).code() ==
          absl::StatusCode::kInvalidArgument);
  }
  SECTION("and still works afterwards") {
    in.candidate_begin = 10;
    in.candidate_end = 90;
    in.k = 5;
    std::vector<uint32_t> positions(static_cast<size_t>(H) * 5);
    std::vector<float> scores(positions.size());
    out.positions = positions.data();
    out.scores = scores.data();
    const absl::Status status = retriever.RetrieveLayer(in, out);
    INFO(status);
    REQUIRE(status.ok());
    for (int h = 0; h < H; ++h) {
      std::vector<uint32_t> want(5);
      TopK(head_scores.data() + static_cast<size_t>(h) * n, 10, 90, 5, want.data());
      RequireEqual("positions vs kernels::TopK", positions.data() + h * 5, want);
    }
  }
}

TEST_CASE("Device buffers grow geometrically as n grows by one token per call", "[cuda]") {
  if (SmallOnly()) return;  // 100 calls; the other cases take these paths too
  // A retriever of its own, so that its allocation count starts at 0.
  absl::StatusOr<std::unique_ptr<CudaLayerRetriever>> created = CudaLayerRetriever::Create();
  INFO(created.status());
  REQUIRE(created.ok());
  CudaLayerRetriever& retriever = **created;
  constexpr uint32_t kFirst = 5000, kSteps = 100;
  const LayerData data = MakeLayer(LayerCase{2, 8, 64, 2, 6, kFirst + kSteps, false}, 3);
  LayerRetrievalInput in;
  in.shape = data.shape;
  in.queries = data.queries.data();
  in.centroids = data.centroids.data();
  in.codes = data.codes.data();  // [H][n][M] read for each n: a valid (different) layer
  std::vector<uint32_t> positions(2 * 64);
  std::vector<float> scores(positions.size());
  LayerRetrievalOutput out;
  out.positions = positions.data();
  out.scores = scores.data();
  uint64_t after_first = 0;
  for (uint32_t n = kFirst; n < kFirst + kSteps; ++n) {
    in.num_tokens = n;
    in.candidate_begin = 32;
    in.candidate_end = n - 64;
    in.k = 64;
    const absl::Status status = retriever.RetrieveLayer(in, out);
    INFO("n = " << n << ": " << status);
    REQUIRE(status.ok());
    if (n == kFirst) after_first = retriever.device_allocations();
  }
  // 100 tokens past 5000 is 2% growth: each of the retriever's 13 buffers grows at most
  // once (growing to exactly the size asked for reallocated 4 or more of them per call).
  INFO("allocations after the first call " << after_first << ", after " << kSteps << " calls "
                                           << retriever.device_allocations());
  CHECK(after_first > 0);
  CHECK(retriever.device_allocations() - after_first <= 13);
}

TEST_CASE("A resident layer scores what a full upload does as n grows", "[cuda]") {
  const LayerCase c =
      GENERATE(LayerCase{2, 8, 64, 2, 6, 2600, false}, LayerCase{3, 6, 64, 4, 8, 2600, true});
  INFO(c);
  // Codes of up to 2600 tokens per kv head, [H][2600][M]: head h's first n tokens are the
  // layer at n tokens (tokens are only appended).
  const LayerData data = MakeLayer(c, 4);
  const int H = c.kv_heads, M = c.subspaces;
  const size_t table_floats = static_cast<size_t>(M) * (1u << c.bits) * (c.head_dim / M);
  std::vector<const float*> head_centroids(H);
  std::vector<const uint8_t*> head_codes(H);
  for (int h = 0; h < H; ++h) {
    head_centroids[h] = data.centroids.data() + h * table_floats;
    head_codes[h] = data.codes.data() + static_cast<size_t>(h) * c.num_tokens * M;
  }
  CudaLayerRetriever& retriever = SharedRetriever();
  ResidentLayer resident(retriever.device(), H, data.shape.pq);
  CHECK(resident.num_tokens() == 0);
  CHECK(resident.device_bytes() == 0);

  const uint32_t k = 20;
  std::vector<uint32_t> capacities;
  // n = 1000, 1001, ..., 1039, then a jump past the capacity, then one more.
  std::vector<uint32_t> steps;
  for (uint32_t n = 1000; n < 1040; ++n) steps.push_back(n);
  steps.push_back(2500);
  steps.push_back(2501);
  for (uint32_t n : steps) {
    INFO("n = " << n);
    LayerRetrievalInput in;
    in.shape = data.shape;
    in.queries = data.queries.data();
    in.num_tokens = n;
    in.candidate_begin = 32;
    in.candidate_end = n - 64;
    in.k = k;
    // The full upload: [H][n][M].
    std::vector<uint8_t> codes(static_cast<size_t>(H) * n * M);
    for (int h = 0; h < H; ++h) {
      std::memcpy(codes.data() + static_cast<size_t>(h) * n * M, head_codes[h],
                  static_cast<size_t>(n) * M);
    }
    in.centroids = data.centroids.data();
    in.codes = codes.data();
    std::vector<uint32_t> want_positions(static_cast<size_t>(H) * k);
    std::vector<float> want_scores(want_positions.size()), want_head_scores(size_t{n} * H);
    LayerRetrievalOutput out;
    out.positions = want_positions.data();
    out.scores = want_scores.data();
    out.head_scores = want_head_scores.data();
    absl::Status status = retriever.RetrieveLayer(in, out);
    INFO(status);
    REQUIRE(status.ok());

    in.centroids = nullptr;
    in.codes = nullptr;
    in.resident = &resident;
    in.head_centroids = head_centroids.data();
    in.head_codes = head_codes.data();
    std::vector<uint32_t> got_positions(want_positions.size());
    std::vector<float> got_scores(want_scores.size()), got_head_scores(want_head_scores.size());
    out.positions = got_positions.data();
    out.scores = got_scores.data();
    out.head_scores = got_head_scores.data();
    status = retriever.RetrieveLayer(in, out);
    INFO(status);
    REQUIRE(status.ok());
    CHECK(resident.num_tokens() == n);
    CHECK(resident.capacity() >= n);
    if (capacities.empty() || capacities.back() != resident.capacity()) {
      capacities.push_back(resident.capacity());
    }
    // The same kernels on the same codes: bit-equal.
    RequireEqual("positions", got_positions.data(), want_positions);
    RequireEqual("scores", got_scores.data(), want_scores);
    RequireEqual("head scores", got_head_scores.data(), want_head_scores);
  }
  // Exactly 1000 at first, 1.5x at 1001 (enough for 1002..1039), the jump to 2500 taken
  // as asked (more than 1.5x), then 1.5x again at 2501.
  CHECK(capacities == std::vector<uint32_t>{1000, 1500, 2500, 3750});
  CHECK(resident.device_bytes() >= static_cast<size_t>(H) * 2501 * M);

  SECTION("n may not shrink; the shape must match") {
    LayerRetrievalInput in;
    in.shape = data.shape;
    in.queries = data.queries.data();
    in.num_tokens = 2000;
    in.candidate_end = 2000;
    in.resident = &resident;
    in.head_centroids = head_centroids.data();
    in.head_codes = head_codes.data();
    LayerRetrievalOutput out;
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
    ResidentLayer other(retriever.device(), H + 1, data.shape.pq);
    in.resident = &other;
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
    in.resident = &resident;
    in.head_codes = nullptr;
    in.num_tokens = 2501;
    in.candidate_end = 2501;
    CHECK(retriever.RetrieveLayer(in, out).code() == absl::StatusCode::kInvalidArgument);
  }
}

// Pinned host memory from cudaHostAlloc, freed on scope exit.
struct PinnedBytes {
  explicit PinnedBytes(size_t bytes) {
    REQUIRE(cudaHostAlloc(&data, bytes > 0 ? bytes : 1, cudaHostAllocDefault) == cudaSuccess);
  }
  ~PinnedBytes() { cudaFreeHost(data); }
  uint8_t* bytes() const { return static_cast<uint8_t*>(data); }
  void* data = nullptr;
};

// Device memory holding a copy of `host`, freed on scope exit.
struct DeviceBytes {
  explicit DeviceBytes(const std::vector<uint8_t>& host) {
    REQUIRE(cudaMalloc(&data, host.size()) == cudaSuccess);
    REQUIRE(cudaMemcpy(data, host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess);
    // A cudaMemcpy from pageable memory may return before its DMA to the device ends, and
    // the retriever's stream does not wait for the legacy stream (it is non-blocking).
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  }
  ~DeviceBytes() { cudaFree(data); }
  void* data = nullptr;
};

struct GatherCase {
  int kv_heads;
  uint32_t num_tokens, k;
  size_t row_bytes;
};

TEST_CASE("CudaLayerRetriever::Gather packs K then V rows like memcpy", "[cuda]") {
  const GatherCase c = GENERATE(GatherCase{8, 4099, 820, 256},  // fp16, d = 128
                                GatherCase{8, 1000, 200, 512},  // fp32, d = 128
                                GatherCase{3, 777, 155, 132},   // fp32, d = 33
                                GatherCase{2, 101, 21, 24},     // bf16, d = 12
                                GatherCase{1, 1, 1, 14},        // fp16, d = 7
                                GatherCase{4, 50, 50, 256},     // k = n
                                // 2 x 8 x 20000 rows of 16 chunks of 16 bytes: past the
                                // kernel's grid-stride cap (8192 x 256 = 2,097,152 chunks).
                                GatherCase{8, 60000, 20000, 256});
  INFO("H=" << c.kv_heads << " n=" << c.num_tokens << " k=" << c.k << " row=" << c.row_bytes);
  if (SmallOnly() && c.num_tokens > kSmallTokens) return;
  const size_t tensor_bytes = static_cast<size_t>(c.kv_heads) * c.num_tokens * c.row_bytes;
  std::mt19937 rng(c.num_tokens + c.row_bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<uint8_t> keys(tensor_bytes), values(tensor_bytes);
  for (uint8_t& b : keys) b = static_cast<uint8_t>(byte(rng));
  for (uint8_t& b : values) b = static_cast<uint8_t>(byte(rng));
  // Random positions with repeats, plus the first and last row.
  std::uniform_int_distribution<uint32_t> position(0, c.num_tokens - 1);
  std::vector<uint32_t> positions(static_cast<size_t>(c.kv_heads) * c.k);
  for (uint32_t& p : positions) p = position(rng);
  positions.front() = 0;
  positions.back() = c.num_tokens - 1;

  const size_t out_bytes = 2 * positions.size() * c.row_bytes;
  std::vector<uint8_t> want(out_bytes);
  for (size_t i = 0; i < positions.size(); ++i) {
    const size_t h = i / c.k;
    const size_t source = (h * c.num_tokens + positions[i]) * c.row_bytes;
    std::memcpy(want.data() + i * c.row_bytes, keys.data() + source, c.row_bytes);
    std::memcpy(want.data() + (positions.size() + i) * c.row_bytes, values.data() + source,
                c.row_bytes);
  }

  GatherRequest request;
  request.kv_heads = c.kv_heads;
  request.num_tokens = c.num_tokens;
  request.row_bytes = c.row_bytes;
  request.positions = positions.data();
  request.k = c.k;
  // Output offset by `shift` bytes inside a pinned buffer: 0 takes the widest copies,
  // 4 forces narrower ones.
  const size_t shift = GENERATE(size_t{0}, size_t{4});
  PinnedBytes out(out_bytes + shift);
  std::memset(out.bytes(), 0xAB, out_bytes + shift);
  request.out = out.bytes() + shift;
  CudaLayerRetriever& retriever = SharedRetriever();

  SECTION("rows in device memory") {
    DeviceBytes device_keys(keys), device_values(values);
    request.keys = device_keys.data;
    request.values = device_values.data;
    float kernel_ms = -1;
    const absl::Status status = retriever.Gather(request, &kernel_ms);
    INFO(status);
    REQUIRE(status.ok());
    CHECK(kernel_ms >= 0);
    REQUIRE(std::memcmp(out.bytes() + shift, want.data(), out_bytes) == 0);
  }
  SECTION("rows in pinned host memory") {
    PinnedBytes host_keys(tensor_bytes), host_values(tensor_bytes);
    std::memcpy(host_keys.bytes(), keys.data(), tensor_bytes);
    std::memcpy(host_values.bytes(), values.data(), tensor_bytes);
    request.keys = host_keys.data;
    request.values = host_values.data;
    const absl::Status status = retriever.Gather(request);
    INFO(status);
    REQUIRE(status.ok());
    REQUIRE(std::memcmp(out.bytes() + shift, want.data(), out_bytes) == 0);
  }
  SECTION("rejects pageable memory and positions past the end") {
    DeviceBytes device_keys(keys), device_values(values);
    request.keys = device_keys.data;
    request.values = device_values.data;
    std::vector<uint8_t> pageable(out_bytes);
    GatherRequest bad = request;
    bad.out = pageable.data();
    CHECK(retriever.Gather(bad).code() == absl::StatusCode::kInvalidArgument);
    bad = request;
    bad.keys = keys.data();
    CHECK(retriever.Gather(bad).code() == absl::StatusCode::kInvalidArgument);
    std::vector<uint32_t> past_end = positions;
    past_end.back() = c.num_tokens;
    bad = request;
    bad.positions = past_end.data();
    CHECK(retriever.Gather(bad).code() == absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace pqkv::kernels::cuda

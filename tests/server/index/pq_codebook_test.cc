#include "server/index/pq_codebook.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

std::vector<float> RandomKeys(size_t n, int dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> keys(n * dim);
  for (float& x : keys) x = normal(rng);
  return keys;
}

TEST_CASE("PqCodebook trains the requested shape", "[server]") {
  const int M = GENERATE(1, 2, 4);
  const int bits = GENERATE(4, 6, 8);
  const int dim = 64;
  const size_t n = 2048;
  const std::vector<float> keys = RandomKeys(n, dim, M * 100 + bits);
  auto codebook = PqCodebook::Train(keys.data(), n, dim, M, bits, 5);
  REQUIRE(codebook.ok());
  CHECK(codebook->shape().subspaces == M);
  CHECK(codebook->shape().centroids_per_subspace == (1 << bits));
  CHECK(codebook->shape().subspace_dim == dim / M);
  CHECK(codebook->centroids().size() == size_t(1 << bits) * dim);
}

TEST_CASE("PqCodebook encodes each sub-vector to its nearest centroid", "[server]") {
  const int dim = 32, M = 2, bits = 4;
  const std::vector<float> keys = RandomKeys(1000, dim, 7);
  auto codebook = PqCodebook::Train(keys.data(), 1000, dim, M, bits, 10).value();
  std::vector<uint8_t> codes(1000 * M);
  codebook.Encode(keys.data(), 1000, codes.data());
  const auto& shape = codebook.shape();
  for (size_t t = 0; t < 1000; ++t) {
    for (int m = 0; m < M; ++m) {
      float best = std::numeric_limits<float>::infinity();
      for (int c = 0; c < shape.centroids_per_subspace; ++c) {
        float d = 0;
        for (int i = 0; i < shape.subspace_dim; ++i) {
          const float diff =
              keys[t * dim + m * shape.subspace_dim + i] -
              codebook.centroids()[(m * shape.centroids_per_subspace + c) * shape.subspace_dim + i];
          d += diff * diff;
        }
        best = std::min(best, d);
      }
      float chosen = 0;
      const int c = codes[t * M + m];
      for (int i = 0; i < shape.subspace_dim; ++i) {
        const float diff =
            keys[t * dim + m * shape.subspace_dim + i] -
            codebook.centroids()[(m * shape.centroids_per_subspace + c) * shape.subspace_dim + i];
        chosen += diff * diff;
      }
      REQUIRE(chosen == best);
    }
  }
}

TEST_CASE("PqCodebook training is deterministic and beats a single centroid", "[server]") {
  const int dim = 32, M = 2, bits = 6;
  const size_t n = 4096;
  const std::vector<float> keys = RandomKeys(n, dim, 11);
  auto a = PqCodebook::Train(keys.data(), n, dim, M, bits, 10).value();
  auto b = PqCodebook::Train(keys.data(), n, dim, M, bits, 10).value();
  CHECK(a.centroids() == b.centroids());

  // Distortion of the reconstruction against the data's own variance (what one
  // centroid at the mean would leave): 64 centroids per 16-dim sub-space must do better.
  std::vector<uint8_t> codes(n * M);
  a.Encode(keys.data(), n, codes.data());
  const auto& shape = a.shape();
  double distortion = 0, variance = 0;
  for (size_t t = 0; t < n; ++t) {
    for (int i = 0; i < dim; ++i) {
      const int m = i / shape.subspace_dim;
      const float c =
          a.centroids()[(m * shape.centroids_per_subspace + codes[t * M + m]) * shape.subspace_dim +
                        i % shape.subspace_dim];
      distortion += (keys[t * dim + i] - c) * (keys[t * dim + i] - c);
      variance += keys[t * dim + i] * keys[t * dim + i];
    }
  }
  CHECK(distortion < 0.8 * variance);
}

TEST_CASE("PqCodebook refuses shapes it cannot train", "[server]") {
  const std::vector<float> keys = RandomKeys(100, 64, 1);
  CHECK(PqCodebook::Train(keys.data(), 100, 64, 3, 6, 5).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(PqCodebook::Train(keys.data(), 100, 64, 2, 9, 5).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(PqCodebook::Train(keys.data(), 100, 64, 2, 8, 5).status().code() ==
        absl::StatusCode::kFailedPrecondition);
}

// Found by append_kv_fuzzer: finite keys of 1e30 made every k-means distance overflow to
// infinity, FAISS assigned no centroid and its assertion (Clustering.cpp:169) aborted the
// server from the index build thread.
TEST_CASE("PqCodebook refuses keys whose k-means distances would overflow fp32", "[server]") {
  const int dim = 16, M = 2, bits = 4;
  const size_t n = 64;
  std::vector<float> keys = RandomKeys(n, dim, 3);
  const float huge = GENERATE(1e30f, -3e38f, 1e19f);
  keys[5 * dim + 3] = huge;
  const absl::StatusOr<PqCodebook> codebook = PqCodebook::Train(keys.data(), n, dim, M, bits, 5);
  CHECK(codebook.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(codebook.status().message()), Catch::Contains("overflow"));
}

TEST_CASE("PqCodebook encodes keys far outside its training range to real centroids", "[server]") {
  const int dim = 16, M = 2, bits = 4;
  const std::vector<float> keys = RandomKeys(256, dim, 4);
  const PqCodebook codebook = PqCodebook::Train(keys.data(), 256, dim, M, bits, 5).value();
  std::vector<float> far(dim, 3e38f);
  far[1] = -3e38f;
  std::vector<uint8_t> codes(M, 0xff);
  codebook.Encode(far.data(), 1, codes.data());
  for (uint8_t code : codes) CHECK(code < (1 << bits));
}

}  // namespace
}  // namespace pqkv::server

namespace pqkv::server {
namespace {

// q . reconstruction(codes) as the scan computes it: PermuteDims(q) . centroids.
double AdcScore(const PqCodebook& codebook, const float* query, const uint8_t* codes) {
  const auto& s = codebook.shape();
  std::vector<float> ordered(s.subspaces * s.subspace_dim);
  codebook.PermuteDims(query, 1, ordered.data());
  double score = 0;
  for (int m = 0; m < s.subspaces; ++m) {
    const float* c =
        codebook.centroids().data() + (m * s.centroids_per_subspace + codes[m]) * s.subspace_dim;
    for (int i = 0; i < s.subspace_dim; ++i) score += ordered[m * s.subspace_dim + i] * c[i];
  }
  return score;
}

TEST_CASE("PqCodebook with or without RoPE pairs keeps query . key", "[server]") {
  const bool rope_pairs = GENERATE(false, true);
  const int dim = 16, M = 2, bits = 3;
  // As many distinct keys as centroids: each key becomes its own centroid, so the
  // reconstruction is exact and the score must equal the true dot product.
  const size_t n = 8;
  const std::vector<float> keys = RandomKeys(n, dim, 5);
  const PqCodebook codebook =
      PqCodebook::Train(keys.data(), n, dim, M, bits, 20, rope_pairs).value();
  CHECK(codebook.permutes() == rope_pairs);
  std::vector<uint8_t> codes(n * M);
  codebook.Encode(keys.data(), n, codes.data());
  const std::vector<float> query = RandomKeys(1, dim, 9);
  for (size_t t = 0; t < n; ++t) {
    double exact = 0;
    for (int i = 0; i < dim; ++i) exact += query[i] * keys[t * dim + i];
    CHECK(AdcScore(codebook, query.data(), codes.data() + t * M) == Approx(exact).margin(1e-3));
  }
}

TEST_CASE("PqCodebook RoPE pairs put dims i and i + dim/2 side by side", "[server]") {
  const int dim = 8;
  const std::vector<float> keys = RandomKeys(64, dim, 3);
  const PqCodebook codebook = PqCodebook::Train(keys.data(), 64, dim, 2, 2, 5, true).value();
  const float in[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  float out[8];
  codebook.PermuteDims(in, 1, out);
  const float want[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  for (int i = 0; i < dim; ++i) CHECK(out[i] == want[i]);
  CHECK(PqCodebook::Train(keys.data(), 64, dim, 8, 2, 5, true).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("PqCodebook gives one-dimension sub-spaces a uniform grid from min to max", "[server]") {
  const int dim = 16, bits = GENERATE(2, 4);
  const int ksub = 1 << bits;
  const size_t n = 500;
  std::vector<float> keys = RandomKeys(n, dim, 11);
  keys[3 * dim + 5] = 40.0f;  // one outlier stretches dimension 5's grid
  const PqCodebook codebook = PqCodebook::Train(keys.data(), n, dim, dim, bits, 10).value();
  CHECK(codebook.iterations_run() == 0);
  for (int d = 0; d < dim; ++d) {
    float lo = keys[d], hi = keys[d];
    for (size_t t = 0; t < n; ++t) {
      lo = std::min(lo, keys[t * dim + d]);
      hi = std::max(hi, keys[t * dim + d]);
    }
    const float* levels = codebook.centroids().data() + d * ksub;
    CHECK(levels[0] == lo);
    CHECK(levels[ksub - 1] == Approx(hi));
    for (int c = 1; c < ksub; ++c) {
      CHECK(levels[c] - levels[c - 1] == Approx((hi - lo) / (ksub - 1)));
    }
  }
  // Encoding picks the nearest level, also for keys outside the training range.
  std::vector<float> queries = RandomKeys(200, dim, 12);
  for (size_t i = 0; i < queries.size(); i += 7) queries[i] *= 10;
  std::vector<uint8_t> codes(200 * dim);
  codebook.Encode(queries.data(), 200, codes.data());
  for (size_t t = 0; t < 200; ++t) {
    for (int d = 0; d < dim; ++d) {
      const float x = queries[t * dim + d];
      const float* levels = codebook.centroids().data() + d * ksub;
      float best = std::numeric_limits<float>::infinity();
      for (int c = 0; c < ksub; ++c) best = std::min(best, std::abs(x - levels[c]));
      REQUIRE(codes[t * dim + d] < ksub);
      REQUIRE(std::abs(x - levels[codes[t * dim + d]]) <= best + 1e-5f);
    }
  }
}

TEST_CASE("PqTrainOptions samples keys per centroid up to a cap", "[server]") {
  PqTrainOptions options;                     // the defaults: 128 per centroid, at most 16384
  CHECK(options.TrainingKeys(64) == 8192);    // 2 x 6 bits
  CHECK(options.TrainingKeys(256) == 16384);  // 4 x 8 bits: the cap
  CHECK(options.TrainingKeys(16) == 2048);
  options.max_training_keys = 0;  // no cap
  CHECK(options.TrainingKeys(256) == 32768);
  options.keys_per_centroid = 0;  // neither bound: every key
  CHECK(options.TrainingKeys(256) == 0);
  options.max_training_keys = 1000;  // the cap alone
  CHECK(options.TrainingKeys(64) == 1000);
}

TEST_CASE("PqCodebook stops early once few assignments change", "[server]") {
  // Gaussian keys: Lloyd's iterations keep moving a few points for a long time, so only
  // the early stop ends training before the 50th.
  const int dim = 8, n = 4096, bits = 4;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> keys(static_cast<size_t>(n) * dim);
  for (float& v : keys) v = normal(rng);
  PqTrainOptions early;  // stop at 5% changed
  PqTrainOptions converge = early;
  converge.stop_fraction = 0;
  const PqCodebook stopped =
      PqCodebook::Train(keys.data(), n, dim, 2, bits, 50, false, early).value();
  const PqCodebook full =
      PqCodebook::Train(keys.data(), n, dim, 2, bits, 50, false, converge).value();
  INFO("iterations: " << stopped.iterations_run() << " early, " << full.iterations_run()
                      << " to convergence");
  CHECK(stopped.iterations_run() < full.iterations_run());
  // The quantization error it gives up is small.
  const auto error = [&](const PqCodebook& codebook) {
    std::vector<uint8_t> codes(static_cast<size_t>(n) * 2);
    codebook.Encode(keys.data(), n, codes.data());
    const int dsub = dim / 2, ksub = 1 << bits;
    double sum = 0;
    for (int t = 0; t < n; ++t) {
      for (int m = 0; m < 2; ++m) {
        const float* c = codebook.centroids().data() + (m * ksub + codes[t * 2 + m]) * dsub;
        for (int j = 0; j < dsub; ++j) {
          const double e = keys[t * dim + m * dsub + j] - c[j];
          sum += e * e;
        }
      }
    }
    return sum / n;
  };
  INFO("error " << error(stopped) << " early, " << error(full) << " to convergence");
  CHECK(error(stopped) <= error(full) * 1.05);
}

}  // namespace
}  // namespace pqkv::server

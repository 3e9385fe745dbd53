#include "server/index/kmeans.h"

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "catch2/catch.hpp"
#include "kernels/kmeans.h"

namespace pqkv::server {
namespace {

// k well-separated blobs (centres 100 apart on a diagonal, noise 1): Lloyd stops on its
// own (no assignment changed) well before max_iterations, at a fixed point: every centroid
// is the mean of the points nearest to it.
TEST_CASE("TrainKMeans stops once converged, at a Lloyd fixed point", "[server]") {
  const int k = 8, dim = 4;
  const size_t per = 200, n = per * k;
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<float> points(n * dim);
  for (size_t i = 0; i < n; ++i) {
    for (int j = 0; j < dim; ++j) points[i * dim + j] = 100.0f * (i % k) + noise(rng);
  }
  KMeansOptions options;
  options.max_iterations = 50;
  const KMeansResult result = TrainKMeans(points.data(), n, dim, dim, k, options);
  CHECK(result.sample_size == n);
  CHECK(result.iterations < 50);
  const std::vector<float>& c = result.centroids;
  std::vector<double> sums(static_cast<size_t>(k) * dim, 0.0);
  std::vector<size_t> counts(k, 0);
  for (size_t i = 0; i < n; ++i) {
    int best = 0;
    double best_d = 1e300;
    for (int ci = 0; ci < k; ++ci) {
      double d = 0;
      for (int j = 0; j < dim; ++j) {
        const double diff = double{points[i * dim + j]} - c[static_cast<size_t>(ci) * dim + j];
        d += diff * diff;
      }
      if (d < best_d) {
        best_d = d;
        best = ci;
      }
    }
    ++counts[best];
    for (int j = 0; j < dim; ++j) sums[static_cast<size_t>(best) * dim + j] += points[i * dim + j];
  }
  for (int ci = 0; ci < k; ++ci) {
    REQUIRE(counts[ci] > 0);
    for (int j = 0; j < dim; ++j) {
      CHECK(c[static_cast<size_t>(ci) * dim + j] ==
            Approx(sums[static_cast<size_t>(ci) * dim + j] / counts[ci]).margin(1e-3));
    }
  }
}

TEST_CASE("TrainKMeans trains on at most max_points_per_centroid x k points", "[server]") {
  const int k = 16, dim = 8;
  const size_t n = 5000;
  std::mt19937 rng(9);
  std::normal_distribution<float> value(0.0f, 1.0f);
  std::vector<float> points(n * dim);
  for (float& v : points) v = value(rng);
  KMeansOptions options;
  options.max_points_per_centroid = 64;
  const KMeansResult a = TrainKMeans(points.data(), n, dim, dim, k, options);
  CHECK(a.sample_size == 64 * 16);
  const KMeansResult b = TrainKMeans(points.data(), n, dim, dim, k, options);
  CHECK(a.centroids == b.centroids);    // same seed, same sample, same centroids
  options.max_points_per_centroid = 0;  // no cap
  CHECK(TrainKMeans(points.data(), n, dim, dim, k, options).sample_size == n);
}

// Half the points are one repeated value: more centroids start there than it needs, and
// the duplicates lose all their points. Every centroid must still end up used (split from
// a populous cluster), none left as a stale copy.
TEST_CASE("TrainKMeans refills empty clusters", "[server]") {
  const int k = 8, dim = 2;
  const size_t n = 400;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> value(-10.0f, 10.0f);
  std::vector<float> points(n * dim, 0.0f);
  for (size_t i = n / 2; i < n * dim; ++i) points[i] = value(rng);
  KMeansOptions options;
  options.max_iterations = 20;
  const KMeansResult result = TrainKMeans(points.data(), n, dim, dim, k, options);
  std::set<std::vector<float>> distinct;
  for (int c = 0; c < k; ++c) {
    distinct.insert(std::vector<float>(result.centroids.begin() + c * dim,
                                       result.centroids.begin() + (c + 1) * dim));
  }
  CHECK(distinct.size() == static_cast<size_t>(k));
}

// The points on a row stride wider than dim (a sub-space of a wider key).
TEST_CASE("TrainKMeans reads strided sub-vectors", "[server]") {
  const int k = 4, dim = 2;
  const size_t stride = 6, n = 400;
  std::vector<float> points(n * stride, -1000.0f);  // the other columns: far away
  for (size_t i = 0; i < n; ++i) {
    points[i * stride + 2] = 10.0f * (i % k);
    points[i * stride + 3] = 0.0f;
  }
  const KMeansResult result = TrainKMeans(points.data() + 2, n, dim, stride, k, KMeansOptions());
  std::vector<float> xs;
  for (int c = 0; c < k; ++c) xs.push_back(result.centroids[c * dim]);
  std::sort(xs.begin(), xs.end());
  CHECK(xs == std::vector<float>{0.0f, 10.0f, 20.0f, 30.0f});
}

// An assigner on this CPU that can be told to fail: stands in for the GPU's.
class TestAssigner : public NearestCentroidAssigner {
 public:
  explicit TestAssigner(int fail_at_call) : fail_at_call_(fail_at_call) {}
  absl::Status SetPoints(const float* points, size_t n, int dim) override {
    ++set_points_calls;
    if (fail_at_call_ == 0) return absl::UnavailableError("no device");
    points_ = points;
    n_ = n;
    dim_ = dim;
    return absl::OkStatus();
  }
  absl::Status Assign(const float* centroids, const float* c_norms, int k,
                      uint32_t* assign) override {
    if (++assign_calls == fail_at_call_) return absl::InternalError("device fault");
    kernels::AssignNearest(points_, n_, dim_, dim_, centroids, c_norms, k, assign, nullptr);
    return absl::OkStatus();
  }
  int set_points_calls = 0;
  int assign_calls = 0;

 private:
  const int fail_at_call_;  // 0: SetPoints fails; -1: never
  const float* points_ = nullptr;
  size_t n_ = 0;
  int dim_ = 0;
};

// An assigner makes every iteration's assignment, on the same sample, and when it fails
// the CPU finishes the training where it stopped: the centroids are the CPU's either way.
TEST_CASE("TrainKMeans assigns through an assigner and falls back to the CPU", "[server]") {
  const int k = 16, dim = 8;
  const size_t n = 3000;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> points(n * dim);
  for (float& v : points) v = normal(rng);
  KMeansOptions options;
  options.max_iterations = 6;
  options.max_points_per_centroid = 100;  // a sample of 1600: SetPoints gets the sample
  const KMeansResult cpu = TrainKMeans(points.data(), n, dim, dim, k, options);
  REQUIRE(cpu.iterations == 6);

  const int fail_at = GENERATE(-1, 0, 1, 4);
  INFO("fail at call " << fail_at);
  TestAssigner assigner(fail_at);
  options.assigner = &assigner;
  const KMeansResult result = TrainKMeans(points.data(), n, dim, dim, k, options);
  CHECK(result.centroids == cpu.centroids);
  CHECK(result.iterations == cpu.iterations);
  CHECK(assigner.set_points_calls == 1);
  const int expected_device = fail_at < 0 ? 6 : fail_at == 0 ? 0 : fail_at - 1;
  CHECK(result.assigner_iterations == expected_device);
  CHECK(result.assigner_error.ok() == (fail_at < 0));
  CHECK(assigner.assign_calls == (fail_at < 0 ? 6 : fail_at == 0 ? 0 : fail_at));
}

}  // namespace
}  // namespace pqkv::server

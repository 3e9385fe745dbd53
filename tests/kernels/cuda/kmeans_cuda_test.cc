// CudaNearestCentroid against kernels::AssignNearest, the CPU contract. With
// PQKV_CUDA_TEST_SMALL set (under compute-sanitizer) the cases stay under 5000 points.
#include "kernels/cuda/kmeans_cuda.h"

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/cpu_features.h"
#include "kernels/kmeans.h"

namespace pqkv::kernels::cuda {
namespace {

bool SmallOnly() { return std::getenv("PQKV_CUDA_TEST_SMALL") != nullptr; }

std::unique_ptr<CudaNearestCentroid> NewAssigner() {
  absl::StatusOr<std::unique_ptr<CudaNearestCentroid>> created = CudaNearestCentroid::Create();
  if (!created.ok()) FAIL("CudaNearestCentroid::Create: " << created.status());
  return *std::move(created);
}

// Integer-valued points and centroids: every product and partial sum is exact, so the
// device and the CPU agree to the bit whatever their summation.
TEST_CASE("CudaNearestCentroid assigns what kernels::AssignNearest does", "[cuda]") {
  const int dim = GENERATE(1, 8, 32, 64, 128, 200);
  const int k = GENERATE(1, 7, 64, 256);
  const size_t n = GENERATE(size_t{1}, size_t{130}, size_t{5000});
  INFO("dim " << dim << ", k " << k << ", n " << n);
  if (SmallOnly() && n > 5000) return;
  std::mt19937 rng(dim * 1000 + k + n);
  std::uniform_int_distribution<int> value(-8, 8);
  std::vector<float> points(n * dim), centroids(static_cast<size_t>(k) * dim), norms(k);
  for (float& v : points) v = static_cast<float>(value(rng));
  for (float& v : centroids) v = static_cast<float>(value(rng));
  CentroidNorms(centroids.data(), k, dim, norms.data());
  std::vector<uint32_t> want(n), got(n);
  std::vector<float> want_d(n), got_d(n);
  AssignNearestPortable(points.data(), n, dim, dim, centroids.data(), norms.data(), k, want.data(),
                        want_d.data());
  std::unique_ptr<CudaNearestCentroid> device = NewAssigner();
  REQUIRE(device->SetPoints(points.data(), n, dim).ok());
  REQUIRE(device->Assign(centroids.data(), norms.data(), k, got.data(), got_d.data()).ok());
  CHECK(got == want);  // ties (many, on small integers) to the lower index, as the CPU
  CHECK(got_d == want_d);
  // A second set of centroids against the same points.
  for (float& v : centroids) v = static_cast<float>(value(rng));
  CentroidNorms(centroids.data(), k, dim, norms.data());
  AssignNearestPortable(points.data(), n, dim, dim, centroids.data(), norms.data(), k, want.data(),
                        nullptr);
  REQUIRE(device->Assign(centroids.data(), norms.data(), k, got.data()).ok());
  CHECK(got == want);
}

// Real-valued data: the device sums with one FMA per product in dimension order, as the
// AVX2 kernel does (the same bits there); against the portable code (a multiply then an
// add) it may pick another centroid only when the two are within rounding of each other.
TEST_CASE("CudaNearestCentroid on real-valued points", "[cuda]") {
  const int dim = GENERATE(32, 64), k = GENERATE(64, 256);
  const size_t n = SmallOnly() ? 4096 : 16384;
  std::mt19937 rng(dim + k);
  std::normal_distribution<float> normal;
  std::vector<float> points(n * dim), centroids(static_cast<size_t>(k) * dim), norms(k);
  for (float& v : points) v = normal(rng);
  for (float& v : centroids) v = normal(rng);
  CentroidNorms(centroids.data(), k, dim, norms.data());
  std::vector<uint32_t> want(n), got(n);
  AssignNearest(points.data(), n, dim, dim, centroids.data(), norms.data(), k, want.data(),
                nullptr);
  std::unique_ptr<CudaNearestCentroid> device = NewAssigner();
  REQUIRE(device->SetPoints(points.data(), n, dim).ok());
  REQUIRE(device->Assign(centroids.data(), norms.data(), k, got.data()).ok());
  if (UseAvx2()) {
    CHECK(got == want);
    return;
  }
  for (size_t r = 0; r < n; ++r) {
    if (got[r] == want[r]) continue;
    auto distance = [&](uint32_t c) {
      double d = 0;
      for (int i = 0; i < dim; ++i) {
        const double diff = double{points[r * dim + i]} - centroids[c * dim + i];
        d += diff * diff;
      }
      return d;
    };
    CHECK(distance(got[r]) <= distance(want[r]) * (1 + 1e-5) + 1e-5);
  }
}

TEST_CASE("CudaNearestCentroid rejects bad arguments", "[cuda]") {
  std::unique_ptr<CudaNearestCentroid> device = NewAssigner();
  const float centroid[2] = {0, 0}, norm[1] = {0};
  uint32_t assign[1];
  CHECK(device->Assign(centroid, norm, 1, assign).code() == absl::StatusCode::kFailedPrecondition);
  const float point[2] = {1, 2};
  CHECK(device->SetPoints(point, 1, 0).code() == absl::StatusCode::kInvalidArgument);
  CHECK(device->SetPoints(point, 1, 2000).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(device->SetPoints(point, 1, 2).ok());
  CHECK(device->Assign(centroid, norm, 0, assign).code() == absl::StatusCode::kInvalidArgument);
  CHECK(device->Assign(centroid, norm, 1, assign).ok());
  CHECK(assign[0] == 0);
}

}  // namespace
}  // namespace pqkv::kernels::cuda

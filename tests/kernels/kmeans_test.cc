#include "kernels/kmeans.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

// Integer-valued points and centroids: every dot product and norm is exact in float, so
// the SIMD path (AVX-512, or AVX2 in kmeans_avx2_test) must agree with the portable one bit
// for bit, ties (to the lower index) included. Sweeps the shapes PQ uses (dim 32 and 64, k 64
// and 256) and the awkward ones: k not a multiple of 16 or 32, n not a multiple of the
// kernels' 6 or 12 points, a row stride wider than dim.
TEST_CASE("AssignNearest matches the portable reference exactly on integer inputs", "[kernels]") {
  const int dim = GENERATE(1, 7, 32, 64);
  const int k = GENERATE(1, 2, 15, 17, 33, 64, 256);
  const size_t n =
      GENERATE(size_t{1}, size_t{5}, size_t{6}, size_t{7}, size_t{12}, size_t{13}, size_t{100});
  const size_t stride = dim + 3;
  std::mt19937 rng(static_cast<uint32_t>(dim * 1000 + k * 10 + n));
  std::uniform_int_distribution<int> value(-4, 4);  // small range: many exact ties
  std::vector<float> points(n * stride), centroids(static_cast<size_t>(k) * dim);
  for (float& v : points) v = static_cast<float>(value(rng));
  for (float& v : centroids) v = static_cast<float>(value(rng));
  if (k > 1) {  // a duplicated centroid: the tie must go to the lower index
    for (int i = 0; i < dim; ++i) centroids[static_cast<size_t>(k - 1) * dim + i] = centroids[i];
  }
  std::vector<float> norms(k);
  CentroidNorms(centroids.data(), k, dim, norms.data());
  std::vector<uint32_t> fast(n), reference(n);
  std::vector<float> fast_d(n), reference_d(n);
  AssignNearest(points.data(), n, dim, stride, centroids.data(), norms.data(), k, fast.data(),
                fast_d.data());
  AssignNearestPortable(points.data(), n, dim, stride, centroids.data(), norms.data(), k,
                        reference.data(), reference_d.data());
  for (size_t r = 0; r < n; ++r) {
    INFO("dim " << dim << " k " << k << " point " << r);
    REQUIRE(fast[r] == reference[r]);
    REQUIRE(fast_d[r] == reference_d[r]);
    REQUIRE((k == 1 || reference[r] != static_cast<uint32_t>(k - 1)));  // never the duplicate
  }
}

// The reference itself against a brute-force L2 argmin in double.
TEST_CASE("AssignNearestPortable picks the nearest centroid by L2", "[kernels]") {
  const int dim = 16, k = 40;
  const size_t n = 200;
  std::mt19937 rng(3);
  std::normal_distribution<float> value(0.0f, 1.0f);
  std::vector<float> points(n * dim), centroids(static_cast<size_t>(k) * dim);
  for (float& v : points) v = value(rng);
  for (float& v : centroids) v = value(rng);
  std::vector<float> norms(k);
  CentroidNorms(centroids.data(), k, dim, norms.data());
  std::vector<uint32_t> assign(n);
  AssignNearestPortable(points.data(), n, dim, dim, centroids.data(), norms.data(), k,
                        assign.data(), nullptr);
  for (size_t r = 0; r < n; ++r) {
    double best = 1e300;
    for (int c = 0; c < k; ++c) {
      double d = 0;
      for (int i = 0; i < dim; ++i) {
        const double diff =
            double{points[r * dim + i]} - centroids[static_cast<size_t>(c) * dim + i];
        d += diff * diff;
      }
      best = std::min(best, d);
    }
    double chosen = 0;
    for (int i = 0; i < dim; ++i) {
      const double diff =
          double{points[r * dim + i]} - centroids[static_cast<size_t>(assign[r]) * dim + i];
      chosen += diff * diff;
    }
    REQUIRE(chosen <= best + 1e-4);
  }
}

// Random float inputs: the two paths round differently (FMA), so they may pick different
// centroids only where two distances are within rounding of each other.
TEST_CASE("AssignNearest agrees with the reference within rounding on float inputs", "[kernels]") {
  const int dim = GENERATE(32, 64);
  const int k = GENERATE(64, 256);
  const size_t n = 1000;
  std::mt19937 rng(static_cast<uint32_t>(dim + k));
  std::normal_distribution<float> value(0.0f, 1.0f);
  std::vector<float> points(n * dim), centroids(static_cast<size_t>(k) * dim);
  for (float& v : points) v = value(rng);
  for (float& v : centroids) v = value(rng);
  std::vector<float> norms(k);
  CentroidNorms(centroids.data(), k, dim, norms.data());
  std::vector<uint32_t> fast(n), reference(n);
  std::vector<float> fast_d(n), reference_d(n);
  AssignNearest(points.data(), n, dim, dim, centroids.data(), norms.data(), k, fast.data(),
                fast_d.data());
  AssignNearestPortable(points.data(), n, dim, dim, centroids.data(), norms.data(), k,
                        reference.data(), reference_d.data());
  for (size_t r = 0; r < n; ++r) {
    REQUIRE(fast_d[r] == Approx(reference_d[r]).margin(1e-3));
  }
}

}  // namespace
}  // namespace pqkv::kernels

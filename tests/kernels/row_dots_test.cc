#include "kernels/row_dots.h"

#include <cstring>
#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/dtype_convert.h"

namespace pqkv::kernels {
namespace {

TEST_CASE("RowDots matches double-precision dot products for every dtype", "[kernels]") {
  const ElementType dtype = GENERATE(ElementType::kFp16, ElementType::kBf16, ElementType::kFp32);
  // 24: AVX2's only (not a multiple of AVX-512's 16 lanes); 12: the portable code's only.
  const int dim = GENERATE(8, 24, 48, 64, 128, 12);
  const int group = GENERATE(1, 3, 4, 6, 9);  // the SIMD paths take query heads four at a time
  const size_t n = 37;
  INFO("dim " << dim << ", group " << group);
  std::mt19937 rng(dim * 16 + group);
  std::normal_distribution<float> normal;
  std::vector<float> queries(group * dim);
  for (float& x : queries) x = normal(rng);
  // Rows stored in the dtype, scattered (every other slot) as gathered rows are.
  std::vector<std::vector<uint8_t>> storage(2 * n);
  std::vector<const void*> rows;
  std::vector<std::vector<float>> exact(n);
  for (size_t r = 0; r < n; ++r) {
    std::vector<float> row(dim);
    for (float& x : row) x = normal(rng);
    std::vector<uint8_t>& bytes = storage[2 * r];
    bytes.resize(dim * ElementBytes(dtype));
    for (int i = 0; i < dim; ++i) {
      if (dtype == ElementType::kFp32) {
        std::memcpy(&bytes[i * 4], &row[i], 4);
      } else {
        const uint16_t h = dtype == ElementType::kFp16 ? FloatToHalf(row[i]) : FloatToBf16(row[i]);
        std::memcpy(&bytes[i * 2], &h, 2);
      }
    }
    exact[r].resize(dim);
    ToFloat(dtype, bytes.data(), dim, exact[r].data());  // what the dtype holds
    rows.push_back(bytes.data());
  }
  std::vector<float> fast(group * n), portable(group * n);
  RowDots(dtype, rows.data(), n, dim, queries.data(), group, fast.data());
  RowDotsPortable(dtype, rows.data(), n, dim, queries.data(), group, portable.data());
  for (int g = 0; g < group; ++g) {
    for (size_t r = 0; r < n; ++r) {
      double want = 0;
      for (int i = 0; i < dim; ++i) want += double(queries[g * dim + i]) * exact[r][i];
      CHECK(fast[g * n + r] == Approx(want).margin(1e-4));
      CHECK(portable[g * n + r] == Approx(want).margin(1e-4));
    }
  }
}

}  // namespace
}  // namespace pqkv::kernels

#include "kernels/dtype_convert.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

TEST_CASE("Every finite fp16 value survives half -> float -> half", "[kernels]") {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    if ((h & 0x7c00u) == 0x7c00u) continue;  // inf/nan
    REQUIRE(FloatToHalf(HalfToFloat(h)) == h);
  }
}

TEST_CASE("HalfToFloat decodes known values", "[kernels]") {
  CHECK(HalfToFloat(0x3c00) == 1.0f);
  CHECK(HalfToFloat(0xc000) == -2.0f);
  CHECK(HalfToFloat(0x7bff) == 65504.0f);
  CHECK(HalfToFloat(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(std::isinf(HalfToFloat(0x7c00)));
  CHECK(std::isnan(HalfToFloat(0x7e00)));
}

// ToFloat's fp16 loop (F16C where the CPU has AVX2; dtype_convert_test_portable runs the
// scalar one) gives HalfToFloat's bits for every half, NaNs as NaNs, at every length (the
// 8-wide loop's tail).
TEST_CASE("ToFloat converts every fp16 value as HalfToFloat does", "[kernels]") {
  std::vector<uint16_t> all(0x10000);
  for (uint32_t bits = 0; bits < 0x10000; ++bits) all[bits] = static_cast<uint16_t>(bits);
  const size_t offset = GENERATE(size_t{0}, size_t{3});
  const size_t n = all.size() - offset - GENERATE(size_t{0}, size_t{1}, size_t{7});
  std::vector<float> out(n + 1, -7.0f);
  ToFloat(ElementType::kFp16, all.data() + offset, n, out.data());
  for (size_t i = 0; i < n; ++i) {
    const float want = HalfToFloat(all[offset + i]);
    INFO("half 0x" << std::hex << all[offset + i]);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(out[i]));
    } else {
      uint32_t got_bits, want_bits;
      std::memcpy(&got_bits, &out[i], 4);
      std::memcpy(&want_bits, &want, 4);
      REQUIRE(got_bits == want_bits);
    }
  }
  REQUIRE(out[n] == -7.0f);  // nothing written past n
}

TEST_CASE("FloatToHalf rounds to nearest even and saturates to inf", "[kernels]") {
  CHECK(FloatToHalf(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie: stays even
  CHECK(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie: rounds up to even
  CHECK(FloatToHalf(65520.0f) == 0x7c00);
  CHECK(FloatToHalf(-1e9f) == 0xfc00);
  CHECK(FloatToHalf(std::ldexp(1.0f, -26)) == 0x0000);
}

TEST_CASE("bf16 conversion keeps the top 16 bits with rounding", "[kernels]") {
  CHECK(Bf16ToFloat(FloatToBf16(1.5f)) == 1.5f);
  CHECK(FloatToBf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);  // tie to even
  CHECK(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  CHECK(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("AllFinite finds NaN and Inf in every dtype", "[kernels]") {
  const float f[3] = {1.0f, std::numeric_limits<float>::infinity(), 2.0f};
  CHECK_FALSE(AllFinite(ElementType::kFp32, f, 3));
  CHECK(AllFinite(ElementType::kFp32, f, 1));
  const uint16_t h[2] = {0x3c00, 0x7e00};
  CHECK_FALSE(AllFinite(ElementType::kFp16, h, 2));
  CHECK(AllFinite(ElementType::kFp16, h, 1));
  const uint16_t b[2] = {0x3f80, 0x7f80};
  CHECK_FALSE(AllFinite(ElementType::kBf16, b, 2));
  CHECK(AllFinite(ElementType::kBf16, b, 1));
}

// AllFinite checks blocks of elements without a branch, then the tail one by one: one bad
// element is found wherever it lies, in buffers of any length.
TEST_CASE("AllFinite finds one NaN or Inf anywhere in a long buffer", "[kernels]") {
  const size_t n = GENERATE(255, 256, 257, 1000, 4096);
  for (size_t at : {size_t{0}, size_t{1}, size_t{255}, size_t{256}, n / 2, n - 1}) {
    if (at >= n) continue;
    INFO("n = " << n << ", bad element at " << at);
    std::vector<float> f(n, 1.5f);
    std::vector<uint16_t> h(n, 0x3c00), b(n, 0x3f80);  // 1.0 in fp16 and bf16
    CHECK(AllFinite(ElementType::kFp32, f.data(), n));
    CHECK(AllFinite(ElementType::kFp16, h.data(), n));
    CHECK(AllFinite(ElementType::kBf16, b.data(), n));
    f[at] = -std::numeric_limits<float>::infinity();
    h[at] = 0x7e00;  // NaN
    b[at] = 0xff80;  // -Inf
    CHECK_FALSE(AllFinite(ElementType::kFp32, f.data(), n));
    CHECK_FALSE(AllFinite(ElementType::kFp16, h.data(), n));
    CHECK_FALSE(AllFinite(ElementType::kBf16, b.data(), n));
    // The largest finite values are not mistaken for Inf.
    f[at] = std::numeric_limits<float>::max();
    h[at] = 0x7bff;
    b[at] = 0x7f7f;
    CHECK(AllFinite(ElementType::kFp32, f.data(), n));
    CHECK(AllFinite(ElementType::kFp16, h.data(), n));
    CHECK(AllFinite(ElementType::kBf16, b.data(), n));
  }
}

TEST_CASE("ToFloat converts whole buffers", "[kernels]") {
  const uint16_t h[3] = {0x3c00, 0xc000, 0x0000};
  float out[3];
  ToFloat(ElementType::kFp16, h, 3, out);
  CHECK(out[0] == 1.0f);
  CHECK(out[1] == -2.0f);
  CHECK(out[2] == 0.0f);
}

}  // namespace
}  // namespace pqkv::kernels

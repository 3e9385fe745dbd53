#include "kernels/pq_code_store.h"

#include <algorithm>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

std::vector<uint8_t> RandomCodes(size_t n, int M, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  std::vector<uint8_t> codes(n * M);
  for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng));
  return codes;
}

TEST_CASE("PqCodeStore keeps every layout consistent across appends", "[kernels]") {
  const auto [M, bits] = GENERATE(std::make_pair(2, 6), std::make_pair(3, 4), std::make_pair(4, 4),
                                  std::make_pair(16, 4), std::make_pair(4, 8));
  const std::vector<uint8_t> codes = RandomCodes(100, M, bits, M * 10 + bits);
  PqCodeStore store(M, bits);
  // Uneven appends, including single tokens that land in a partial fast-scan block.
  size_t at = 0;
  for (size_t count : {1, 30, 2, 1, 66}) {
    store.Append(codes.data() + at * M, count);
    at += count;
  }
  REQUIRE(store.size() == 100);
  CHECK(std::vector<uint8_t>(store.codes(), store.codes() + 100 * M) == codes);
  if (store.has_joined()) {
    std::vector<uint32_t> histogram(store.joined_size(), 0);
    for (size_t t = 0; t < 100; ++t) {
      uint32_t joined = 0;
      for (int m = 0; m < M; ++m) joined |= uint32_t{codes[t * M + m]} << (m * bits);
      REQUIRE(store.joined_codes()[t] == joined);
      ++histogram[joined];
    }
    CHECK(std::vector<uint32_t>(store.joined_histogram(),
                                store.joined_histogram() + store.joined_size()) == histogram);
  }
  if (store.has_fast_scan()) {
    REQUIRE(store.num_blocks() == 4);
    for (size_t t = 0; t < 100; ++t) {
      const uint8_t* block = store.fast_scan_blocks() + t / 32 * store.block_bytes();
      for (int m = 0; m < M; ++m) {
        const uint8_t byte = block[(m / 2) * 32 + t % 32];
        REQUIRE(((m % 2 == 0) ? (byte & 0xf) : (byte >> 4)) == codes[t * M + m]);
      }
    }
  }
  CHECK(store.has_joined() == (M * bits <= 12));
  CHECK(store.has_fast_scan() == (bits == 4 && M % 2 == 0));
}

TEST_CASE("PqCodeStore keeps per-dimension 4-bit codes in dim4 blocks", "[kernels]") {
  const int M = GENERATE(8, 64);
  const std::vector<uint8_t> codes = RandomCodes(100, M, 4, M);
  PqCodeStore store(M, 4, /*per_dimension=*/true);
  size_t at = 0;
  for (size_t count : {1, 14, 2, 1, 82}) {  // across the 16-token block edges
    store.Append(codes.data() + at * M, count);
    at += count;
  }
  REQUIRE(store.has_dim4());
  CHECK_FALSE(store.has_fast_scan());
  REQUIRE(store.num_dim4_blocks() == 7);
  CHECK(std::vector<uint8_t>(store.codes(), store.codes() + 100 * M) == codes);
  for (size_t t = 0; t < 100; ++t) {
    const uint8_t* block = store.dim4_blocks() + t / 16 * (8 * M);
    for (int d = 0; d < M; ++d) {
      const uint8_t byte = block[(d / 8) * 64 + 4 * (t % 16) + d % 4];
      REQUIRE((d % 8 < 4 ? (byte & 0xf) : (byte >> 4)) == codes[t * M + d]);
    }
  }
  std::vector<uint8_t> copied(100 * M);
  store.CopyCodes(0, 100, copied.data());
  CHECK(copied == codes);
  // Without the byte layout: the same codes, from the dim4 blocks alone.
  PqCodeStore compact(M, 4, /*per_dimension=*/true, /*keep_bytes=*/false);
  compact.Append(codes.data(), 37);
  compact.Append(codes.data() + 37 * M, 63);
  CHECK_FALSE(compact.has_bytes());
  CHECK(compact.codes() == nullptr);
  std::vector<uint8_t> unpacked(98 * M);
  compact.CopyCodes(2, 98, unpacked.data());
  CHECK(std::vector<uint8_t>(codes.begin() + 2 * M, codes.end()) == unpacked);
  CHECK(compact.bytes() < store.bytes() / 2);
  // Padding tokens of the last block read as code 0.
  for (size_t i = 4 * (100 % 16); i < 64; ++i) CHECK(store.dim4_blocks()[6 * 8 * M + i] == 0);
  // Not per dimension, or not 4 bits, or M not a multiple of 8: no dim4 blocks.
  CHECK_FALSE(PqCodeStore(M, 4).has_dim4());
  CHECK_FALSE(PqCodeStore(M, 6, true).has_dim4());
  CHECK_FALSE(PqCodeStore(12, 4, true).has_dim4());
}

TEST_CASE("PqCodeStore::Reserve makes room that appends use, and BytesFor says its size",
          "[kernels]") {
  const auto [M, bits, per_dimension, keep_bytes] = GENERATE(
      std::tuple{2, 6, false, true}, std::tuple{16, 4, false, true}, std::tuple{4, 8, false, true},
      std::tuple{16, 4, true, true}, std::tuple{16, 4, true, false});
  PqCodeStore store(M, bits, per_dimension, keep_bytes);
  store.Reserve(1000);
  // Without bytes the dim4 blocks set the room: whole blocks of 16 tokens.
  CHECK(store.capacity() == (store.has_bytes() ? 1000 : 1008));
  const size_t reserved = store.bytes();
  CHECK(reserved == PqCodeStore::BytesFor(M, bits, 1000, per_dimension, keep_bytes));
  const std::vector<uint8_t> codes(static_cast<size_t>(999) * M, 1);
  store.Append(codes.data(), 999);
  store.Append(codes.data(), 1);
  CHECK(store.bytes() == reserved);  // nothing allocated past the reservation
  CHECK(store.capacity() == (store.has_bytes() ? 1000 : 1008));
  store.Reserve(10);  // never shrinks
  CHECK(store.bytes() == reserved);
}

TEST_CASE("PqCodeStore lists each joined code's tokens in position order", "[kernels]") {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> digit(0, 63);
  PqCodeStore store(2, 6);
  std::vector<uint8_t> codes;
  for (size_t count : {1000, 1, 1, 300, 1, 2000}) {
    std::vector<uint8_t> more(count * 2);
    for (uint8_t& c : more) c = static_cast<uint8_t>(digit(rng));
    store.Append(more.data(), count);
    codes.insert(codes.end(), more.begin(), more.end());
    // Every listed token sits in its code's list, in ascending order.
    std::vector<uint32_t> seen;
    for (size_t c = 0; c < store.joined_size(); ++c) {
      const uint32_t* first = store.list_tokens() + store.list_offsets()[c];
      const uint32_t* last = store.list_tokens() + store.list_offsets()[c + 1];
      REQUIRE(std::is_sorted(first, last));
      for (const uint32_t* t = first; t < last; ++t) {
        REQUIRE(store.joined_codes()[*t] == c);
        seen.push_back(*t);
      }
    }
    std::sort(seen.begin(), seen.end());
    REQUIRE(seen.size() == store.listed());
    for (size_t i = 0; i < seen.size(); ++i) REQUIRE(seen[i] == i);
    // Not listed yet: at most an eighth of the store, or 256 tokens.
    CHECK(store.size() - store.listed() <= std::max<size_t>(256, store.size() / 8));
  }
  CHECK(store.listed() > 0);
}

}  // namespace
}  // namespace pqkv::kernels

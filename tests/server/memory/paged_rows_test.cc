#include "server/memory/paged_rows.h"

#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

TEST_CASE("PagedRows stores rows across pages and reads them back", "[server]") {
  const size_t row_bytes = GENERATE(size_t{4}, size_t{256}, size_t{1000}, size_t{4096});
  auto arena = PageArena::Create(1 << 22, 4096).value();
  PagedRows rows(arena.get(), row_bytes);
  std::vector<char> data(row_bytes * 100);
  std::iota(data.begin(), data.end(), 0);
  size_t appended = 0;
  for (size_t count : {1, 7, 50, 42}) {
    const size_t pages = rows.PagesNeededFor(count);
    if (pages > 0) rows.AddPages(arena->Allocate(pages).value());
    CHECK(rows.PagesNeededFor(count) == 0);
    rows.Append(data.data() + appended * row_bytes, count);
    appended += count;
  }
  REQUIRE(rows.size() == 100);
  for (size_t r = 0; r < 100; ++r) {
    REQUIRE(
        std::equal(data.begin() + r * row_bytes, data.begin() + (r + 1) * row_bytes, rows.Row(r)));
  }
  const size_t rows_per_page = 4096 / row_bytes;
  CHECK(rows.bytes_held() == (100 + rows_per_page - 1) / rows_per_page * 4096);
}

TEST_CASE("PagedRows gathers any rows, in the order asked, across pages", "[server]") {
  // Rows of a few bytes to more than a page of lines; selections shorter and longer than
  // the prefetch distance, with repeats, in random order.
  const size_t row_bytes = GENERATE(size_t{4}, size_t{200}, size_t{256}, size_t{4096});
  auto arena = PageArena::Create(1 << 23, 4096).value();
  PagedRows rows(arena.get(), row_bytes);
  const size_t n = 300;
  std::vector<char> data(row_bytes * n);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 + i / 7);
  rows.AddPages(arena->Allocate(rows.PagesNeededFor(n)).value());
  rows.Append(data.data(), n);
  std::mt19937 rng(5);
  for (size_t count : {size_t{0}, size_t{1}, size_t{5}, size_t{299}, size_t{600}}) {
    std::vector<uint32_t> picked(count);
    for (uint32_t& p : picked) p = static_cast<uint32_t>(rng() % n);
    std::vector<char> out(count * row_bytes + 1, 'x');
    rows.Gather(picked.data(), count, out.data());
    for (size_t i = 0; i < count; ++i) {
      REQUIRE(std::memcmp(out.data() + i * row_bytes, data.data() + picked[i] * row_bytes,
                          row_bytes) == 0);
    }
    CHECK(out.back() == 'x');  // nothing past the last row
  }
}

TEST_CASE("PagedRows returns its pages to the arena", "[server]") {
  auto arena = PageArena::Create(1 << 20, 4096).value();
  {
    PagedRows rows(arena.get(), 512);
    rows.AddPages(arena->Allocate(rows.PagesNeededFor(20)).value());
    CHECK(arena->bytes_in_use() == 3 * 4096);
  }
  CHECK(arena->bytes_in_use() == 0);
}

}  // namespace
}  // namespace pqkv::server

#include "server/memory/page_arena.h"

#include <cstring>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

TEST_CASE("PageArena hands out distinct pages and takes them back", "[server]") {
  auto arena = PageArena::Create(16 * 4096, 4096).value();
  CHECK(arena->capacity_bytes() == 16 * 4096);
  auto a = arena->Allocate(10).value();
  auto b = arena->Allocate(6).value();
  CHECK(arena->bytes_in_use() == 16 * 4096);
  std::vector<uint32_t> all = a;
  all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
  // Pages are writable and independent.
  for (uint32_t p : all) std::memset(arena->PageData(p), static_cast<int>(p), 4096);
  for (uint32_t p : all) CHECK(arena->PageData(p)[4095] == static_cast<char>(p));

  arena->Free(a);
  CHECK(arena->bytes_in_use() == 6 * 4096);
  CHECK(arena->Allocate(10).ok());
}

TEST_CASE("PageArena refuses past its budget and changes nothing", "[server]") {
  auto arena = PageArena::Create(8 * 4096, 4096).value();
  auto held = arena->Allocate(5).value();
  absl::StatusOr<std::vector<uint32_t>> too_many = arena->Allocate(4);
  REQUIRE(too_many.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(too_many.status().message()).find("3 of 8 free") != std::string::npos);
  CHECK(arena->bytes_in_use() == 5 * 4096);
  CHECK(arena->Allocate(3).ok());
}

TEST_CASE("PageArena rejects bad page sizes and empty budgets", "[server]") {
  CHECK(PageArena::Create(1 << 20, 1000).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(PageArena::Create(100, 4096).status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pqkv::server

#include "server/memory/page_arena.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

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

// The "THPeligible:" field of the mapping holding `address` in /proc/self/smaps: 1 when
// the kernel may back it with transparent huge pages; -1 when there is no such field.
int ThpEligible(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto target = reinterpret_cast<uintptr_t>(address);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2) {
      inside = begin <= target && target < end;
    } else if (inside && line.rfind("THPeligible:", 0) == 0) {
      return std::stoi(line.substr(12));
    }
  }
  return -1;
}

bool ThpMode(const std::string& mode) {
  std::ifstream enabled("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(enabled, line);
  return line.find("[" + mode + "]") != std::string::npos;
}

TEST_CASE("PageArena asks for huge pages unless told not to", "[server]") {
  // Only the "madvise" mode tells the two apart ("always" makes both eligible, "never"
  // neither), and only kernels that report THPeligible say.
  if (!ThpMode("madvise")) return;
  constexpr size_t kBytes = size_t{8} << 21;
  auto huge = PageArena::Create(kBytes, 64 << 10).value();
  auto small = PageArena::Create(kBytes, 64 << 10, /*huge_pages=*/false).value();
  const int eligible = ThpEligible(huge->PageData(0));
  if (eligible < 0) return;
  CHECK(eligible == 1);
  CHECK(ThpEligible(small->PageData(0)) == 0);
  // Huge or not, pages work and freeing takes them back.
  const std::vector<uint32_t> pages = huge->Allocate(40).value();
  for (uint32_t p : pages) std::memset(huge->PageData(p), 7, 64 << 10);
  CHECK(huge->bytes_in_use() == 40 * (64 << 10));
  huge->Free(pages);
  CHECK(huge->bytes_in_use() == 0);
}

}  // namespace
}  // namespace pqkv::server

#include "server/dataplane/row_cache_directory.h"

#include <algorithm>
#include <set>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

TEST_CASE("RowCacheDirectory sends a cold selection whole and a repeated one not at all",
          "[server]") {
  RowCacheDirectory directory(4);
  RowCacheDirectory::Placement first = directory.Place({10, 20, 30});
  CHECK(first.sent == std::vector<uint32_t>{0, 1, 2});
  CHECK(std::set<uint32_t>(first.slots.begin(), first.slots.end()).size() == 3);
  RowCacheDirectory::Placement again = directory.Place({30, 10, 20});
  CHECK(again.sent.empty());
  CHECK(again.slots == std::vector<uint32_t>{first.slots[2], first.slots[0], first.slots[1]});
}

TEST_CASE("RowCacheDirectory evicts the least recently selected, never the selection's own",
          "[server]") {
  RowCacheDirectory directory(4);
  directory.Place({1, 2, 3, 4});
  directory.Place({3, 4});  // 1 and 2 are now the least recently selected
  RowCacheDirectory::Placement placement = directory.Place({5, 3, 6, 4});
  CHECK(placement.sent == std::vector<uint32_t>{0, 2});
  // 5 and 6 took the slots of 1 and 2; 3 and 4 kept theirs.
  std::set<uint32_t> slots(placement.slots.begin(), placement.slots.end());
  CHECK(slots.size() == 4);
  // 1 and 2 are gone, 5 and 6 stay.
  CHECK(directory.Place({1}).sent == std::vector<uint32_t>{0});
  CHECK(directory.Place({5, 6}).sent.empty());
}

TEST_CASE("RowCacheDirectory keeps every selected position in a distinct slot", "[server]") {
  const uint32_t slots = GENERATE(8u, 64u);
  RowCacheDirectory directory(slots);
  // A mirror of what a client stores: slot -> position.
  std::vector<int64_t> client(slots, -1);
  uint32_t state = 7;
  for (int step = 0; step < 200; ++step) {
    std::set<uint32_t> chosen;
    while (chosen.size() < slots / 2) {
      state = state * 1664525u + 1013904223u;
      chosen.insert((state >> 8) % (3 * slots));
    }
    std::vector<uint32_t> positions(chosen.begin(), chosen.end());
    RowCacheDirectory::Placement placement = directory.Place(positions);
    for (uint32_t index : placement.sent) client[placement.slots[index]] = positions[index];
    for (size_t i = 0; i < positions.size(); ++i) {
      REQUIRE(placement.slots[i] < slots);
      REQUIRE(client[placement.slots[i]] == positions[i]);
    }
  }
}

TEST_CASE("RowCacheDirectory puts slots in use only as positions need them", "[server]") {
  RowCacheDirectory directory(65536);
  CHECK(directory.slots() == 65536);
  CHECK(directory.used() == 0);
  const std::vector<uint32_t> first = {3, 1, 4};
  CHECK(directory.NewSlotsFor(first) == 3);
  directory.Place(first);
  CHECK(directory.used() == 3);
  const std::vector<uint32_t> second = {4, 1, 5, 9};
  CHECK(directory.NewSlotsFor(second) == 2);
  directory.Place(second);
  CHECK(directory.used() == 5);
  // Full: misses evict, so no new slot comes into use.
  RowCacheDirectory small(2);
  small.Place(std::vector<uint32_t>{1, 2});
  CHECK(small.NewSlotsFor(std::vector<uint32_t>{7, 8}) == 0);
  small.Place(std::vector<uint32_t>{7, 8});
  CHECK(small.used() == 2);
}

}  // namespace
}  // namespace pqkv::server

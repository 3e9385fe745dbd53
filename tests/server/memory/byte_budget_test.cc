#include "server/memory/byte_budget.h"

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

TEST_CASE("ByteBudget reserves up to its capacity and refuses past it with the numbers",
          "[server]") {
  ByteBudget budget(1000);
  auto a = budget.TryReserve(600);
  REQUIRE(a.ok());
  CHECK(a->bytes() == 600);
  CHECK(budget.in_use() == 600);
  const auto refused = budget.TryReserve(401);
  REQUIRE(refused.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(refused.status().message() == "401 bytes do not fit: 600 of 1000 bytes are in use");
  CHECK(budget.in_use() == 600);
  auto b = budget.TryReserve(400);
  REQUIRE(b.ok());
  CHECK(budget.in_use() == 1000);
  CHECK(budget.TryReserve(1).status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(budget.TryReserve(0).ok());
}

TEST_CASE("ByteBudget reservations give their bytes back once, when released or destroyed",
          "[server]") {
  ByteBudget budget(100);
  {
    auto a = budget.TryReserve(30);
    REQUIRE(a.ok());
    ByteBudget::Reservation moved = *std::move(a);
    CHECK(budget.in_use() == 30);
    ByteBudget::Reservation other;
    other = std::move(moved);
    CHECK(moved.bytes() == 0);
    CHECK(budget.in_use() == 30);
    auto c = budget.TryReserve(20);
    REQUIRE(c.ok());
    other = *std::move(c);  // the 30 go back
    CHECK(budget.in_use() == 20);
    other.Release();
    other.Release();
    CHECK(budget.in_use() == 0);
    auto d = budget.TryReserve(50);
    REQUIRE(d.ok());
  }
  CHECK(budget.in_use() == 0);
}

TEST_CASE("ByteBudget never lets concurrent reservations pass its capacity", "[server]") {
  ByteBudget budget(1000);
  std::atomic<bool> passed{false};  // (Catch2's assertions are not thread-safe)
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&budget, &passed] {
      for (int i = 0; i < 20000; ++i) {
        auto r = budget.TryReserve(7);
        if (r.ok() && budget.in_use() > 1000) passed = true;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  CHECK_FALSE(passed);
  CHECK(budget.in_use() == 0);
}

TEST_CASE("ByteBudget::Reservation::Absorb holds both reservations' bytes as one", "[server]") {
  ByteBudget budget(100);
  ByteBudget::Reservation held;
  held.Absorb(ByteBudget::Reservation());  // nothing to take
  CHECK(held.bytes() == 0);
  held.Absorb(budget.TryReserve(30).value());
  held.Absorb(budget.TryReserve(50).value());
  CHECK(held.bytes() == 80);
  CHECK(budget.in_use() == 80);
  CHECK_FALSE(budget.TryReserve(21).ok());
  held.Release();
  CHECK(budget.in_use() == 0);
}

}  // namespace
}  // namespace pqkv::server

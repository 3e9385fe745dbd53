#include "server/dataplane/ucx_offer_check.h"

#include <sys/ipc.h>
#include <sys/shm.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

// A packed key in UCX 1.13's framing: domain map, memory type, then per domain a length
// byte and its bytes.
std::string Key(uint64_t md_map, uint8_t mem_type, const std::string& sections) {
  std::string key(reinterpret_cast<const char*>(&md_map), sizeof md_map);
  key += static_cast<char>(mem_type);
  return key + sections;
}

std::string SysvSection(int shmid, uint64_t owner) {
  std::string section(1, '\x0c');
  const uint32_t id = static_cast<uint32_t>(shmid);
  section.append(reinterpret_cast<const char*>(&id), sizeof id);
  section.append(reinterpret_cast<const char*>(&owner), sizeof owner);
  return section;
}

// md 2 is System V, as in the keys below (bit 2 of their md map).
constexpr uint64_t kSysvMd2 = 0b100;

TEST_CASE("PrepareRkey keeps and pins a System V segment that exists", "[server]") {
  const int shmid = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
  REQUIRE(shmid >= 0);
  const std::string key = Key(0b101, 0, std::string(1, '\0') + SysvSection(shmid, 0x7000));
  auto prepared = PrepareRkey(key, kSysvMd2);
  // Marked for removal now: the pin alone keeps it alive.
  shmctl(shmid, IPC_RMID, nullptr);
  REQUIRE(prepared.ok());
  CHECK(prepared->packed == key);
  REQUIRE(prepared->segments.size() == 1);
  CHECK(prepared->segments[0].shmid == static_cast<uint32_t>(shmid));
  CHECK(prepared->segments[0].owner_address == 0x7000);
  CHECK(prepared->segments[0].bytes == 8192);
  CHECK(prepared->dropped_sections == 0);
  shmid_ds info{};
  CHECK(shmctl(shmid, IPC_STAT, &info) == 0);  // still there while pinned
}

TEST_CASE("PrepareRkey cuts the section of a segment that is gone", "[server]") {
  const int shmid = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
  REQUIRE(shmid >= 0);
  REQUIRE(shmctl(shmid, IPC_RMID, nullptr) == 0);  // unattached: gone at once
  const std::string tcp(1, '\0');
  auto prepared = PrepareRkey(Key(0b101, 0, tcp + SysvSection(shmid, 0x7000)), kSysvMd2);
  REQUIRE(prepared.ok());
  CHECK(prepared->packed == Key(0b001, 0, tcp));
  CHECK(prepared->segments.empty());
  CHECK(prepared->dropped_sections == 1);
}

// UCX picks the component by md index, not by a section's length: a corrupt length at
// the System V index would have UCX read a shmid from bytes that are none.
TEST_CASE("PrepareRkey refuses a section of another length at a System V md index", "[server]") {
  const std::string tcp(1, '\0');
  std::string eleven = SysvSection(1, 0x7000).substr(0, 12);
  eleven[0] = '\x0b';
  for (const std::string& section :
       {std::string(1, '\0'), eleven, std::string(1, '\x0d') + std::string(13, 'x')}) {
    INFO(section.size() - 1 << "-byte section");
    const std::string key = Key(0b101, 0, tcp + section);
    auto prepared = PrepareRkey(key, kSysvMd2);
    CHECK(prepared.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(prepared.status().message().find(absl::StrCat("md index 2 is ", section.size() - 1,
                                                        " bytes")) != absl::string_view::npos);
    // Where the client's address has no System V interface, the section is another
    // transport's, left to UCX.
    auto elsewhere = PrepareRkey(key, 0b010);
    REQUIRE(elsewhere.ok());
    CHECK(elsewhere->packed == key);
  }
}

TEST_CASE("PrepareRkey leaves 12-byte sections at other md indices as they are", "[server]") {
  const int shmid = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
  REQUIRE(shmid >= 0);
  REQUIRE(shmctl(shmid, IPC_RMID, nullptr) == 0);  // gone: cut were it System V
  const std::string key = Key(0b101, 0, std::string(1, '\0') + SysvSection(shmid, 0x7000));
  auto prepared = PrepareRkey(key, 0b010);
  REQUIRE(prepared.ok());
  CHECK(prepared->packed == key);
  CHECK(prepared->segments.empty());  // no forged segment bounds the shared-memory path
  CHECK(prepared->dropped_sections == 0);
}

TEST_CASE("PrepareRkey rejects corrupt keys", "[server]") {
  // Framing alone: no System V md index.
  CHECK(PrepareRkey("short", 0).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(PrepareRkey(Key(0b1, 3, std::string(1, '\0')), 0).status().code() ==
        absl::StatusCode::kInvalidArgument);                                    // not host memory
  CHECK(!PrepareRkey(Key(0b11, 0, std::string(1, '\0')), 0).ok());              // a section short
  CHECK(!PrepareRkey(Key(0b1, 0, std::string("\x05xy", 3)), 0).ok());           // truncated
  CHECK(!PrepareRkey(Key(0b1, 0, std::string(1, '\0') + "ab"), 0).ok());        // bad trailer
  CHECK(PrepareRkey(Key(0b1, 0, std::string(1, '\0') + "d" + "abc"), 0).ok());  // device trailer
}

}  // namespace
}  // namespace pqkv::server

// Memory a session costs before it holds any K/V: its per-layer and per-kv-head
// structures are charged to the memory budget (bytes_held counts them, admission refuses
// what does not fit), --max_sessions caps live sessions, create/close cycles give the
// memory back, and GetServerStats shows a token only its own sessions. The server's
// resident memory is read from /proc/<pid>/status.
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "tests/testing/index_wait.h"
#include "tests/testing/proc_status.h"
#include "tests/testing/server_process.h"

namespace pqkv {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kResidentSizeMeansSomething = false;  // ASan's quarantine keeps freed memory
#else
constexpr bool kResidentSizeMeansSomething = true;
#endif

std::unique_ptr<testing::ServerProcess> StartServer(std::vector<std::string> extra_args) {
  std::vector<std::string> args = {"--log_level=warn", "--noucx"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto server = testing::ServerProcess::Start("server/pqkv-server", args);
  REQUIRE(server.ok());
  return *std::move(server);
}

// 1024 layers x 64 kv heads, nothing uploaded: about 9 MiB of structures.
SessionOptions WideEmptySession() {
  SessionOptions options;
  options.shape = {1024, 64, 64, 128, DType::kFp16};
  return options;
}

TEST_CASE("Empty sessions are charged to the memory budget and refused past it", "[integration]") {
  auto server = StartServer({"--memory_budget=64MiB"});
  auto client = Client::Connect(server->address()).value();
  const size_t rss_start = testing::ProcStatusBytes(server->pid(), "VmRSS");

  absl::StatusOr<std::string> first = client->CreateSession(WideEmptySession());
  REQUIRE(first.ok());
  const uint64_t one = client->GetServerStats()->bytes_held;
  CHECK(one >= 4 * kMiB);  // its layer and kv-head structures
  absl::StatusOr<std::vector<SessionInfo>> listed = client->ListSessions();
  REQUIRE(listed.ok());
  REQUIRE(listed->size() == 1);
  CHECK((*listed)[0].bytes_held == one);

  // 40 would take about 350 MiB; the budget is 64 MiB.
  absl::Status refused;
  int created = 1;
  for (; created < 40; ++created) {
    absl::StatusOr<std::string> id = client->CreateSession(WideEmptySession());
    if (!id.ok()) {
      refused = id.status();
      break;
    }
  }
  INFO(refused);
  CHECK(created < 40);
  CHECK(refused.code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(refused.message(), "67108864"));  // the budget, in the message
  CHECK(client->GetServerStats()->bytes_held <= 64 * kMiB);
  if (kResidentSizeMeansSomething) {
    CHECK(testing::ProcStatusBytes(server->pid(), "VmRSS") < rss_start + 96 * kMiB);
  }
  // Closing gives the budget back.
  REQUIRE(client->CloseSession(*first).ok());
  CHECK(client->GetServerStats()->bytes_held == one * (created - 1));
  CHECK(client->CreateSession(WideEmptySession()).ok());
  CHECK(server->Stop() == 0);
}

TEST_CASE("--max_sessions caps live sessions", "[integration]") {
  auto server = StartServer({"--memory_budget=64MiB", "--max_sessions=3"});
  auto client = Client::Connect(server->address()).value();
  SessionOptions small;
  small.shape = {1, 1, 1, 8, DType::kFp32};
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(client->CreateSession(small).value());
  absl::StatusOr<std::string> fourth = client->CreateSession(small);
  CHECK(fourth.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(fourth.status().message(), "3"));
  REQUIRE(client->CloseSession(ids[0]).ok());
  CHECK(client->CreateSession(small).ok());
  CHECK(server->Stop() == 0);
}

TEST_CASE("Create/close cycles of empty sessions do not grow the server's memory",
          "[integration]") {
  if (!kResidentSizeMeansSomething) return;
  auto server = StartServer({"--memory_budget=1GiB"});
  auto client = Client::Connect(server->address()).value();
  const auto cycle = [&] {
    std::vector<std::string> ids;
    for (int i = 0; i < 40; ++i) ids.push_back(client->CreateSession(WideEmptySession()).value());
    for (const std::string& id : ids) REQUIRE(client->CloseSession(id).ok());
  };
  cycle();
  cycle();
  const size_t settled = testing::ProcStatusBytes(server->pid(), "VmRSS");
  for (int i = 0; i < 6; ++i) cycle();
  const size_t after = testing::ProcStatusBytes(server->pid(), "VmRSS");
  INFO("resident after 2 cycles " << settled << ", after 8 " << after);
  CHECK(after < settled + 16 * kMiB);
  CHECK(client->GetServerStats()->bytes_held == 0);
  CHECK(server->Stop() == 0);
}

// 1 layer x 8 kv heads x 64 dims, fp32, indexed 16 x 4 bits (fast-scan): 24 bytes of
// codes per token and kv head (16 one-byte codes + 8 packed), 192 per token.
SessionOptions IndexedSession() {
  SessionOptions options;
  options.shape = {1, 8, 8, 64, DType::kFp32};
  options.index.subspaces = 16;
  options.index.bits = 4;
  options.index.kmeans_iterations = 2;
  options.index.sink_tokens = 4;
  options.index.recent_window = 16;
  return options;
}

// Uploads n tokens of random K/V as the whole prefill and waits (a Retrieve waits for the
// build) until the layer's index settles; returns its state.
IndexState UploadAndIndex(Client& client, const std::string& id, uint32_t n) {
  const SessionOptions options = IndexedSession();
  const size_t floats = size_t{n} * options.shape.num_kv_heads * options.shape.head_dim;
  std::vector<float> keys(floats), values(floats);
  uint32_t x = 12345;
  for (size_t i = 0; i < floats; ++i) {
    x = x * 1664525u + 1013904223u;
    keys[i] = static_cast<float>(x >> 8) / (1 << 24) - 0.5f;
    values[i] = keys[i];
  }
  REQUIRE(client.UploadPrefill(id, 0, 0, n, keys.data(), values.data(), true).ok());
  REQUIRE(testing::WaitForIndexes(client, id).ok());
  auto stream = client.OpenRetrievalStream().value();
  std::vector<float> query(size_t{options.shape.num_query_heads} * options.shape.head_dim, 0.1f);
  RetrieveQuery retrieve;
  retrieve.session_id = id;
  retrieve.query = query;
  retrieve.k = 8;
  REQUIRE(stream->Retrieve(0, absl::MakeConstSpan(&retrieve, 1)).ok());
  REQUIRE(stream->Close().ok());
  return client.GetSession(id)->layers.at(0).index_state;
}

TEST_CASE("PQ codes are charged to the memory budget and bytes_held", "[integration]") {
  constexpr uint32_t kTokens = 32768;
  // K/V: 32768 x 8 x 64 x 4 bytes x 2 = 128 MiB; codes: 32768 x 8 x 24 = 6 MiB.
  constexpr size_t kCodeBytes = size_t{kTokens} * 8 * 24;
  SECTION("bytes_held grows by the codes once the index is built, and closing gives it back") {
    auto server = StartServer({"--memory_budget=256MiB"});
    auto client = Client::Connect(server->address()).value();
    const std::string id = client->CreateSession(IndexedSession()).value();
    const uint64_t empty = client->GetServerStats()->bytes_held;
    REQUIRE(UploadAndIndex(*client, id, kTokens) == IndexState::kReady);
    const uint64_t kv = size_t{kTokens} * 8 * 64 * 4 * 2;
    const uint64_t held = client->GetSession(id)->bytes_held;
    INFO("empty " << empty << ", held " << held << ", K/V " << kv << ", codes " << kCodeBytes);
    CHECK(held >= empty + kv + kCodeBytes);
    CHECK(client->GetServerStats()->bytes_held == held);
    REQUIRE(client->CloseSession(id).ok());
    CHECK(client->GetServerStats()->bytes_held == 0);
    CHECK(server->Stop() == 0);
  }
  SECTION("an index that does not fit is refused (the log has the numbers); exact scoring") {
    // The K/V fits in 132 MiB, its codes do not.
    auto server = StartServer({"--memory_budget=132MiB"});
    auto client = Client::Connect(server->address()).value();
    const std::string id = client->CreateSession(IndexedSession()).value();
    CHECK(UploadAndIndex(*client, id, kTokens) == IndexState::kFailed);
    CHECK(client->GetServerStats()->bytes_held <= 132 * kMiB);
    CHECK(server->Stop() == 0);
  }
}

TEST_CASE("GetServerStats shows a token its own sessions; totals without auth or for admin",
          "[integration]") {
  const std::string tokens = std::string(std::getenv("TEST_TMPDIR")) + "/stats_tokens";
  std::ofstream(tokens) << "alice:token-a\nbob:token-b\nadmin:token-admin\n";
  auto server = StartServer({"--memory_budget=64MiB", "--auth_tokens_file=" + tokens});
  const auto connect_as = [&](const std::string& token) {
    ClientOptions options;
    options.auth_token = token;
    return Client::Connect(server->address(), options).value();
  };
  auto alice = connect_as("token-a");
  auto bob = connect_as("token-b");
  auto admin = connect_as("token-admin");
  SessionOptions options;
  options.shape = {1, 1, 2, 8, DType::kFp32};
  REQUIRE(alice->CreateSession(options).ok());
  REQUIRE(alice->CreateSession(options).ok());
  REQUIRE(bob->CreateSession(options).ok());
  std::vector<float> kv(200 * 8, 0.5f);
  const std::string id = alice->ListSessions()->at(0).session_id;
  REQUIRE(alice->UploadPrefill(id, 0, 0, 200, kv.data(), kv.data(), true).ok());
  // 200 tokens train the default index (16 levels need 64), whose codes are charged when
  // the build lands: read the figures once it has.
  REQUIRE(testing::WaitForIndexes(*alice, id).ok());

  const ServerStats of_alice = alice->GetServerStats().value();
  const ServerStats of_bob = bob->GetServerStats().value();
  const ServerStats of_admin = admin->GetServerStats().value();
  CHECK(of_alice.num_sessions == 2);
  CHECK(of_bob.num_sessions == 1);
  CHECK(of_admin.num_sessions == 3);
  uint64_t alice_listed = 0;
  const std::vector<SessionInfo> alices = alice->ListSessions().value();
  for (const SessionInfo& s : alices) alice_listed += s.bytes_held;
  CHECK(of_alice.bytes_held == alice_listed);
  CHECK(of_bob.bytes_held < of_alice.bytes_held);
  CHECK(of_admin.bytes_held == of_alice.bytes_held + of_bob.bytes_held);
  CHECK(of_bob.bytes_capacity == of_admin.bytes_capacity);  // the budget is no secret
  CHECK(server->Stop() == 0);
}

}  // namespace
}  // namespace pqkv

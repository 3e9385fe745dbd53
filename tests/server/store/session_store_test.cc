#include "server/store/session_store.h"

#include <random>

#include "absl/strings/match.h"
#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

SessionConfig SmallConfig() {
  SessionConfig config;
  config.shape = {2, 1, 2, 8, kernels::ElementType::kFp16};
  config.index.bits = 4;
  return config;
}

std::unique_ptr<SessionStore> NewStore(size_t budget = 64 << 20) {
  SessionStoreOptions options;
  options.memory_budget_bytes = budget;
  options.page_bytes = 4096;
  return SessionStore::Create(options).value();
}

TEST_CASE("SessionStore creates, finds, lists and closes sessions", "[server]") {
  auto store = NewStore();
  auto chosen = store->CreateSession("worker-1:seq.7_a", SmallConfig());
  REQUIRE(chosen.ok());
  CHECK((*chosen)->id() == "worker-1:seq.7_a");
  auto generated = store->CreateSession("", SmallConfig());
  REQUIRE(generated.ok());
  CHECK((*generated)->id() != (*chosen)->id());
  CHECK(store->List().size() == 2);
  CHECK(store->Get("worker-1:seq.7_a").ok());
  REQUIRE(store->Close("worker-1:seq.7_a").ok());
  CHECK(store->Get("worker-1:seq.7_a").status().code() == absl::StatusCode::kNotFound);
  CHECK(store->Close("worker-1:seq.7_a").status().code() == absl::StatusCode::kNotFound);
  CHECK(store->Stats().num_sessions == 1);
}

TEST_CASE("SessionStore rejects a duplicate session id", "[server]") {
  auto store = NewStore();
  REQUIRE(store->CreateSession("a", SmallConfig()).ok());
  const absl::Status s = store->CreateSession("a", SmallConfig()).status();
  CHECK(s.code() == absl::StatusCode::kAlreadyExists);
  CHECK(store->Stats().num_sessions == 1);
}

TEST_CASE("A session created again under a closed or expired id has a new serial", "[server]") {
  auto store = NewStore();
  const std::shared_ptr<Session> first = store->CreateSession("a", SmallConfig()).value();
  const std::shared_ptr<Session> other = store->CreateSession("b", SmallConfig()).value();
  CHECK(first->serial() != other->serial());
  REQUIRE(store->Close("a").ok());
  const std::shared_ptr<Session> second = store->CreateSession("a", SmallConfig()).value();
  CHECK(second->serial() != first->serial());
  CHECK(second->serial() != other->serial());
  REQUIRE(store->ExpireIdleSessions(absl::Now() + absl::Hours(1), absl::Minutes(1)) == 2);
  const std::shared_ptr<Session> third = store->CreateSession("a", SmallConfig()).value();
  CHECK(third->serial() != first->serial());
  CHECK(third->serial() != second->serial());
}

TEST_CASE("SessionStore rejects bad ids and configs", "[server]") {
  auto store = NewStore();
  CHECK(store->CreateSession("has space", SmallConfig()).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(store->CreateSession(std::string(129, 'x'), SmallConfig()).status().code() ==
        absl::StatusCode::kInvalidArgument);
  SessionConfig config = SmallConfig();
  SECTION("zero layers") { config.shape.num_layers = 0; }
  SECTION("query heads not a multiple of kv heads") {
    config.shape.num_kv_heads = 2;
    config.shape.num_query_heads = 3;
  }
  SECTION("zero head dim") { config.shape.head_dim = 0; }
  SECTION("more (layer, kv head) pairs than a session may hold") {
    config.shape.num_layers = 1024;
    config.shape.num_kv_heads = 128;
    config.shape.num_query_heads = 128;
  }
  SECTION("sub-spaces that do not divide the head dim") { config.index.subspaces = 3; }
  SECTION("bits out of range") { config.index.bits = 9; }
  SECTION("a row larger than a page") { config.shape.head_dim = 4096; }
  const absl::Status s = store->CreateSession("", config).status();
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_FALSE(s.message().empty());
  CHECK(store->Stats().num_sessions == 0);
}

TEST_CASE("Session rejects a layer out of range", "[server]") {
  auto store = NewStore();
  auto session = store->CreateSession("", SmallConfig()).value();
  CHECK(session->layer(1).ok());
  CHECK(session->layer(2).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Closing a session frees its memory", "[server]") {
  auto store = NewStore();
  auto session = store->CreateSession("s", SmallConfig()).value();
  const std::string bytes(1000 * 8 * 2, '\0');  // 1000 fp16 zeros per head
  REQUIRE((*session->layer(0))->Append(0, 1000, bytes, bytes).ok());
  CHECK(store->Stats().bytes_held > 0);
  const size_t released = store->Close("s").value();
  CHECK(released == store->Stats().bytes_held);  // still referenced by `session`
  session.reset();
  CHECK(store->Stats().bytes_held == 0);
}

TEST_CASE("A session released after its store is gone still frees its pages", "[server]") {
  // At shutdown a queued task can hold the last reference to a session past the store.
  auto store = NewStore();
  std::shared_ptr<Session> session = store->CreateSession("s", SmallConfig()).value();
  const std::string bytes(1000 * 8 * 2, '\0');
  REQUIRE((*session->layer(0))->Append(0, 1000, bytes, bytes).ok());
  store.reset();
  CHECK(session->bytes_held() > 0);
  session.reset();  // returns its pages to the arena, which the session kept alive
}

TEST_CASE("SessionStore builds a sealed layer's index in the background", "[server]") {
  auto store = NewStore();
  auto session = store->CreateSession("s", SmallConfig()).value();
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> bits(0, 0x3bff);  // finite fp16 values
  std::vector<uint16_t> keys(500 * 8);
  for (uint16_t& k : keys) k = static_cast<uint16_t>(bits(rng));
  const std::string key_bytes(reinterpret_cast<const char*>(keys.data()), keys.size() * 2);
  LayerStore* layer = *session->layer(1);
  REQUIRE(layer->Append(0, 500, key_bytes, key_bytes).ok());
  store->SealPrefill(session, 1);
  // Retrieve waits for the build, so it sees codes for every token.
  const std::vector<float> query(2 * 8, 0.5f);
  const LayerSelection got = layer->Retrieve(query, 10, absl::Now() + absl::Seconds(60)).value();
  CHECK(got.num_encoded == 500);
  CHECK(layer->Status().index_state == IndexState::kReady);
}

}  // namespace
}  // namespace pqkv::server

namespace pqkv::server {
namespace {

TEST_CASE("Idle sessions expire after the TTL and free their memory", "[server]") {
  auto store = NewStore();
  auto idle = store->CreateSession("idle", SmallConfig()).value();
  auto busy = store->CreateSession("busy", SmallConfig()).value();
  const std::string bytes(1000 * 8 * 2, '\0');
  REQUIRE((*idle->layer(0))->Append(0, 1000, bytes, bytes).ok());
  idle.reset();
  busy.reset();
  const absl::Duration ttl = absl::Minutes(10);
  // Nothing is idle for 10 minutes yet.
  CHECK(store->ExpireIdleSessions(absl::Now(), ttl) == 0);
  // Eleven minutes on, "busy" was used a minute ago, "idle" not since it was created.
  const absl::Time later = absl::Now() + ttl + absl::Minutes(1);
  store->Get("busy").value()->Touch(later - absl::Minutes(1));
  CHECK(store->ExpireIdleSessions(later, ttl) == 1);
  CHECK(store->Get("idle").status().code() == absl::StatusCode::kNotFound);
  CHECK(store->Get("busy").ok());
  // Only the live session's metadata pages are left.
  CHECK(store->Stats().bytes_held == store->Get("busy").value()->bytes_held());
}

TEST_CASE("A session's metadata is charged to the budget before it is built", "[server]") {
  SessionConfig wide = SmallConfig();
  wide.shape.num_layers = 1024;
  wide.shape.num_kv_heads = 64;
  wide.shape.num_query_heads = 64;
  const size_t metadata = Session::MetadataBytes(wide);
  CHECK(metadata > size_t{1024} * 64 * 2 * sizeof(PagedRows));
  auto store = NewStore(size_t{24} << 20);  // room for two
  auto first = store->CreateSession("a", wide);
  REQUIRE(first.ok());
  CHECK((*first)->bytes_held() >= metadata);
  CHECK((*first)->bytes_held() < metadata + 4096);  // whole pages
  CHECK(store->Stats().bytes_held == (*first)->bytes_held());
  REQUIRE(store->CreateSession("b", wide).ok());
  absl::StatusOr<std::shared_ptr<Session>> third = store->CreateSession("c", wide);
  CHECK(third.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(third.status().message(), std::to_string(metadata)));
  CHECK(store->Stats().num_sessions == 2);
  first->reset();
  REQUIRE(store->Close("a").ok());
  CHECK(store->CreateSession("c", wide).ok());
  REQUIRE(store->Close("b").ok());
  REQUIRE(store->Close("c").ok());
  CHECK(store->Stats().bytes_held == 0);
}

TEST_CASE("SessionStore refuses sessions past max_sessions", "[server]") {
  SessionStoreOptions options;
  options.memory_budget_bytes = 64 << 20;
  options.page_bytes = 4096;
  options.max_sessions = 2;
  auto store = SessionStore::Create(options).value();
  REQUIRE(store->CreateSession("a", SmallConfig()).ok());
  REQUIRE(store->CreateSession("b", SmallConfig()).ok());
  absl::StatusOr<std::shared_ptr<Session>> third = store->CreateSession("c", SmallConfig());
  CHECK(third.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(third.status().message(), "--max_sessions=2"));
  REQUIRE(store->Close("a").ok());
  CHECK(store->CreateSession("c", SmallConfig()).ok());
}

TEST_CASE("StatsOf counts one principal's sessions and bytes", "[server]") {
  auto store = NewStore();
  REQUIRE(store->CreateSession("a", SmallConfig(), "alice").ok());
  REQUIRE(store->CreateSession("b", SmallConfig(), "alice").ok());
  auto bobs = store->CreateSession("a", SmallConfig(), "bob");
  REQUIRE(bobs.ok());
  CHECK(store->StatsOf("alice").num_sessions == 2);
  CHECK(store->StatsOf("bob").num_sessions == 1);
  CHECK(store->StatsOf("bob").bytes_held == (*bobs)->bytes_held());
  CHECK(store->StatsOf("carol").num_sessions == 0);
  CHECK(store->StatsOf("carol").bytes_held == 0);
  CHECK(store->Stats().bytes_held ==
        store->StatsOf("alice").bytes_held + store->StatsOf("bob").bytes_held);
}

}  // namespace
}  // namespace pqkv::server

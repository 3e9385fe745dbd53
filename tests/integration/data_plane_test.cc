// The data plane against the real server binary: selected K/V rows land bit for bit in
// the client's buffer over UCX (shared memory, and TCP only) and over gRPC; the delta
// transfer sends only what the client's row cache misses; landings are checked against
// the registered buffer; bad offers and vanishing clients fail only their own stream.
//
// The same tests run against a LeakSanitizer build of the server (data_plane_lsan_test):
// every ServerProcess::Stop() must then return 0, which it does not when LSan finds a leak.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "client/ucx_receiver.h"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "tests/testing/index_wait.h"
#include "tests/testing/patterned_kv.h"
#include "tests/testing/retrieve_test_stream.h"
#include "tests/testing/server_process.h"

namespace pqkv {
namespace {

// The server binary under test: the plain one, or the LeakSanitizer build.
std::string ServerBinary() {
  const char* binary = std::getenv("PQKV_TEST_SERVER");
  return binary != nullptr ? binary : "server/pqkv-server";
}

std::unique_ptr<testing::ServerProcess> StartServer(std::vector<std::string> extra_args = {}) {
  std::vector<std::string> args = {"--memory_budget=1GiB", "--log_level=warn"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto server = testing::ServerProcess::Start(ServerBinary(), args);
  REQUIRE(server.ok());
  return *std::move(server);
}

std::unique_ptr<Client> Connect(const testing::ServerProcess& server) {
  auto client = Client::Connect(server.address());
  REQUIRE(client.ok());
  return *std::move(client);
}

// Sets an environment variable for the life of the object (UCX reads UCX_* when a
// context is created, in this process and in a server started meanwhile).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

struct Uploaded {
  std::string id;
  ModelShape shape;
  size_t tokens;
  testing::PatternedLayer layer;
};

Uploaded Upload(Client& client, const ModelShape& shape, size_t tokens, uint32_t seed = 1) {
  SessionOptions options;
  options.shape = shape;
  Uploaded up{client.CreateSession(options).value(), shape, tokens,
              testing::MakePatternedLayer(shape, tokens, seed)};
  REQUIRE(client
              .UploadPrefill(up.id, 0, 0, static_cast<uint32_t>(tokens), up.layer.keys.data(),
                             up.layer.values.data(), true)
              .ok());
  // The selections these tests compare come from the index, not the exact scores a
  // building layer is answered with.
  REQUIRE(testing::WaitForIndexes(client, up.id).ok());
  return up;
}

std::vector<float> Query(const ModelShape& shape, uint32_t seed) {
  std::vector<float> query(shape.num_query_heads * shape.head_dim);
  uint32_t state = seed;
  for (float& x : query) {
    state = state * 1664525u + 1013904223u;
    x = static_cast<float>(state >> 8) / static_cast<float>(1u << 24) - 0.5f;
  }
  return query;
}

TEST_CASE("Selected rows land bit for bit over UCX shared memory and over gRPC", "[data_plane]") {
  auto server = StartServer();
  auto client = Connect(*server);
  const DataPath path = GENERATE(DataPath::kUcx, DataPath::kGrpc);
  const ModelShape shape =
      GENERATE(ModelShape{1, 4, 4, 64, DType::kFp16}, ModelShape{1, 3, 9, 64, DType::kBf16},
               ModelShape{1, 8, 32, 128, DType::kFp32});
  INFO("kv heads " << shape.num_kv_heads << ", dim " << shape.head_dim << ", path "
                   << (path == DataPath::kUcx ? "ucx" : "grpc"));
  const size_t tokens = 3000;
  const uint32_t k = 300;
  const Uploaded up = Upload(*client, shape, tokens);
  auto stream = client->OpenRetrievalStream({.data_path = path}).value();
  const size_t bytes = shape.num_kv_heads * k * shape.row_bytes();
  std::vector<uint8_t> own(2 * bytes);
  uint8_t* keys = own.data();
  if (path == DataPath::kUcx) {
    REQUIRE(stream->receive_buffer() != nullptr);
    REQUIRE(stream->receive_buffer_bytes() >= 2 * bytes);
    keys = static_cast<uint8_t*>(stream->receive_buffer());
  }
  uint8_t* values = keys + bytes;
  for (uint32_t step = 0; step < 3; ++step) {
    const std::vector<float> query = Query(shape, step + 1);
    RetrieveQuery q{up.id, query, k, keys, values, bytes};
    auto results = stream->Retrieve(0, {&q, 1});
    REQUIRE(results.ok());
    const RetrieveResult& result = (*results)[0];
    REQUIRE(result.status.ok());
    CHECK(result.data_path == (path == DataPath::kUcx ? "ucx-shm" : "grpc"));
    CHECK(result.kv_bytes == bytes);
    CHECK(testing::CountMismatchedRows(shape, tokens, up.layer, result, keys, values) == 0);
  }
  CHECK(stream->Close().ok());
  stream.reset();
  client.reset();
  CHECK(server->Stop() == 0);  // LeakSanitizer build: no leaks
}

TEST_CASE("With UCX_TLS=tcp the server puts the rows, bit for bit, up to 8 MiB per layer",
          "[data_plane]") {
  ScopedEnv tls("UCX_TLS", "tcp");
  auto server = StartServer();
  auto client = Connect(*server);
  const ModelShape shape{1, 8, 32, 128, DType::kFp16};
  const size_t tokens = 4096 + 96;
  const Uploaded up = Upload(*client, shape, tokens);
  auto stream = client->OpenRetrievalStream({.data_path = DataPath::kUcx}).value();
  const uint32_t k = GENERATE(64u, 4096u);  // 256 KiB and 8 MiB of K+V
  const size_t bytes = shape.num_kv_heads * k * shape.row_bytes();
  auto* keys = static_cast<uint8_t*>(stream->receive_buffer());
  uint8_t* values = keys + bytes;
  const std::vector<float> query = Query(shape, 7);
  RetrieveQuery q{up.id, query, k, keys, values, bytes};
  auto results = stream->Retrieve(0, {&q, 1});
  REQUIRE(results.ok());
  const RetrieveResult& result = (*results)[0];
  REQUIRE(result.status.ok());
  CHECK(result.data_path == "ucx-put");
  CHECK(testing::CountMismatchedRows(shape, tokens, up.layer, result, keys, values) == 0);
  CHECK(stream->Close().ok());
  // DataPath::kAuto leaves TCP-only puts (slower than gRPC here) for gRPC responses.
  auto automatic = client->OpenRetrievalStream().value();
  auto* auto_keys = static_cast<uint8_t*>(automatic->receive_buffer());
  RetrieveQuery a{up.id, query, k, auto_keys, auto_keys + bytes, bytes};
  auto auto_results = automatic->Retrieve(0, {&a, 1});
  REQUIRE(auto_results.ok());
  REQUIRE((*auto_results)[0].status.ok());
  CHECK((*auto_results)[0].data_path == "grpc");
  CHECK(testing::CountMismatchedRows(shape, tokens, up.layer, (*auto_results)[0], auto_keys,
                                     auto_keys + bytes) == 0);
  automatic.reset();
  stream.reset();
  client.reset();
  CHECK(server->Stop() == 0);
}

TEST_CASE("Delta transfer: only the rows the client's cache misses are sent", "[data_plane]") {
  auto server = StartServer();
  auto client = Connect(*server);
  const DataPath path = GENERATE(DataPath::kUcx, DataPath::kGrpc);
  const ModelShape shape{1, 2, 8, 64, DType::kFp16};
  const size_t tokens = 4000, row = shape.row_bytes();
  const uint32_t k = 200, slots = 400;
  const Uploaded up = Upload(*client, shape, tokens);
  auto stream = client->OpenRetrievalStream({.data_path = path}).value();
  const size_t bytes = shape.num_kv_heads * k * row;
  std::vector<uint8_t> own(2 * bytes);
  uint8_t* keys =
      path == DataPath::kUcx ? static_cast<uint8_t*>(stream->receive_buffer()) : own.data();
  uint8_t* values = keys + bytes;
  // The worker's cache: [kv_head][slot][row] for K and V.
  std::vector<uint8_t> cache_k(shape.num_kv_heads * slots * row),
      cache_v(shape.num_kv_heads * slots * row);
  uint64_t saved = 0, sent_rows = 0;
  std::vector<float> query = Query(shape, 3);
  for (uint32_t step = 0; step < 12; ++step) {
    // A decode trace: the query drifts a little between steps, and repeats at step 1.
    if (step > 1) {
      const std::vector<float> noise = Query(shape, 100 + step);
      for (size_t i = 0; i < query.size(); ++i) query[i] += 0.15f * noise[i];
    }
    RetrieveQuery q{up.id, query, k, keys, values, bytes, slots};
    auto results = stream->Retrieve(0, {&q, 1});
    REQUIRE(results.ok());
    const RetrieveResult& result = (*results)[0];
    REQUIRE(result.status.ok());
    size_t offset = 0, sent_now = 0;
    for (size_t h = 0; h < result.heads.size(); ++h) {
      const HeadSelection& head = result.heads[h];
      REQUIRE(head.slots.size() == k);
      for (uint32_t index : head.sent) {
        const size_t slot = h * slots + head.slots[index];
        std::memcpy(cache_k.data() + slot * row, keys + offset, row);
        std::memcpy(cache_v.data() + slot * row, values + offset, row);
        offset += row;
      }
      sent_now += head.sent.size();
      // Every selected position is now in its slot, exactly as uploaded.
      for (size_t i = 0; i < k; ++i) {
        const size_t slot = h * slots + head.slots[i];
        const size_t src = (h * tokens + head.positions[i]) * row;
        REQUIRE(std::memcmp(cache_k.data() + slot * row, up.layer.keys.data() + src, row) == 0);
        REQUIRE(std::memcmp(cache_v.data() + slot * row, up.layer.values.data() + src, row) == 0);
      }
    }
    CHECK(result.kv_bytes == offset);
    CHECK(result.cache_saved_bytes == 2 * (shape.num_kv_heads * k - sent_now) * row);
    if (step == 0) CHECK(sent_now == shape.num_kv_heads * k);  // a cold cache misses all
    if (step == 1) CHECK(sent_now == 0);                       // the same query hits all
    saved += result.cache_saved_bytes;
    sent_rows += sent_now;
  }
  CHECK(saved > 0);
  CHECK(sent_rows < 12 * shape.num_kv_heads * k);
  // Fewer slots than k is refused for that item.
  RetrieveQuery small{up.id, query, k, keys, values, bytes, k - 1};
  auto refused = stream->Retrieve(0, {&small, 1});
  REQUIRE(refused.ok());
  CHECK((*refused)[0].status.code() == absl::StatusCode::kInvalidArgument);
  // Two items of one request on the same row cache: the second is refused.
  std::vector<uint8_t> own_second(2 * bytes);
  uint8_t* second = path == DataPath::kUcx ? keys + 2 * bytes : own_second.data();
  const RetrieveQuery twice[] = {{up.id, query, k, keys, values, bytes, slots},
                                 {up.id, query, k, second, second + bytes, bytes, slots}};
  auto both = stream->Retrieve(0, twice);
  REQUIRE(both.ok());
  CHECK((*both)[0].status.ok());
  CHECK((*both)[1].status.code() == absl::StatusCode::kInvalidArgument);
  CHECK((*both)[1].status.message().find("row cache") != absl::string_view::npos);
  stream.reset();
  client.reset();
  CHECK(server->Stop() == 0);  // LeakSanitizer build: no leaks
}

TEST_CASE("Delta transfer: a session id closed or expired and created again starts cold",
          "[data_plane]") {
  // Closed by the client, or by the TTL sweep (a session unused for 2 s).
  const bool by_ttl = GENERATE(false, true);
  INFO((by_ttl ? "expired" : "closed"));
  auto server = StartServer(by_ttl ? std::vector<std::string>{"--session_ttl_seconds=2"}
                                   : std::vector<std::string>{});
  auto client = Connect(*server);
  const ModelShape shape{1, 1, 2, 64, DType::kFp16};
  const size_t tokens = 2000, row = shape.row_bytes();
  const uint32_t k = 50, slots = 64;
  const std::string id = "r";
  // The second instance has the same keys (so the same selection) but other values.
  const testing::PatternedLayer first = testing::MakePatternedLayer(shape, tokens, 1);
  testing::PatternedLayer second = first;
  second.values = testing::MakePatternedLayer(shape, tokens, 2).values;
  auto create_and_upload = [&](const testing::PatternedLayer& layer) {
    SessionOptions options;
    options.session_id = id;
    options.shape = shape;
    REQUIRE(client->CreateSession(options).value() == id);
    REQUIRE(client
                ->UploadPrefill(id, 0, 0, static_cast<uint32_t>(tokens), layer.keys.data(),
                                layer.values.data(), true)
                .ok());
    REQUIRE(testing::WaitForIndexes(*client, id).ok());  // both selections from the index
  };
  create_and_upload(first);
  // One stream throughout: its row cache directory must not outlive the session.
  auto stream = client->OpenRetrievalStream({.data_path = DataPath::kGrpc}).value();
  std::vector<uint8_t> keys(k * row), values(k * row);
  const std::vector<float> query = Query(shape, 9);
  RetrieveQuery q{id, query, k, keys.data(), values.data(), keys.size(), slots};
  auto cold = stream->Retrieve(0, {&q, 1});
  REQUIRE(cold.ok());
  REQUIRE((*cold)[0].status.ok());
  CHECK((*cold)[0].heads[0].sent.size() == k);
  CHECK(testing::CountMismatchedRows(shape, tokens, first, (*cold)[0], keys.data(),
                                     values.data()) == 0);

  if (by_ttl) {
    // Wait for the sweep (ListSessions does not mark sessions used).
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    for (;;) {
      auto listed = client->ListSessions();
      REQUIRE(listed.ok());
      if (listed->empty()) break;
      REQUIRE(absl::Now() < give_up);
      absl::SleepFor(absl::Milliseconds(50));
    }
  } else {
    REQUIRE(client->CloseSession(id).ok());
  }
  create_and_upload(second);

  auto again = stream->Retrieve(0, {&q, 1});
  REQUIRE(again.ok());
  const RetrieveResult& result = (*again)[0];
  REQUIRE(result.status.ok());
  REQUIRE(result.heads.size() == 1);
  CHECK(result.heads[0].positions == (*cold)[0].heads[0].positions);
  // A new session: the directory starts cold, every row is sent, and they are the new ones.
  CHECK(result.heads[0].sent.size() == k);
  CHECK(result.cache_saved_bytes == 0);
  CHECK(testing::CountMismatchedRows(shape, tokens, second, result, keys.data(), values.data()) ==
        0);
  CHECK(stream->Close().ok());
  stream.reset();
  client.reset();
  CHECK(server->Stop() == 0);  // LeakSanitizer build: no leaks
}

v1::RetrieveRequest ItemRequest(const std::string& id, const std::vector<float>& query, uint32_t k,
                                std::optional<std::pair<uint64_t, uint64_t>> landing) {
  v1::RetrieveRequest request;
  request.set_request_id(1);
  v1::RetrieveItem* item = request.add_items();
  item->set_session_id(id);
  item->mutable_query()->Add(query.begin(), query.end());
  item->set_k(k);
  item->set_with_kv(true);
  if (landing) {
    item->mutable_landing()->set_keys_offset(landing->first);
    item->mutable_landing()->set_values_offset(landing->second);
  }
  return request;
}

TEST_CASE("The server writes only inside the buffer a client registered", "[data_plane]") {
  auto server = StartServer();
  auto client = Connect(*server);
  const ModelShape shape{1, 2, 8, 64, DType::kFp16};
  const Uploaded up = Upload(*client, shape, 2048);
  const std::vector<float> query = Query(shape, 5);
  const uint32_t k = 100;
  const uint64_t bytes = shape.num_kv_heads * k * shape.row_bytes();  // 25600
  auto receiver = UcxReceiver::Create(size_t{1} << 20).value();
  // All but the check bytes at the start, which prove to the server it is this buffer.
  char* usable = receiver->data() + UcxReceiver::kCheckBytes;
  std::memset(usable, 0xAB, receiver->size() - UcxReceiver::kCheckBytes);
  auto untouched = [&] {
    return std::all_of(usable, receiver->data() + receiver->size(),
                       [](char c) { return static_cast<uint8_t>(c) == 0xAB; });
  };
  auto stream = std::make_unique<testing::RetrieveTestStream>(*server);
  // Registered: the first 64 KiB only, although the buffer is bigger.
  v1::RetrieveRequest offer;
  *offer.mutable_open_data_plane() = receiver->Offer();
  offer.mutable_open_data_plane()->set_buffer_bytes(64 << 10);
  v1::RetrieveResponse opened = stream->Call(offer);
  REQUIRE(opened.data_plane().status_code() == 0);
  CHECK(opened.data_plane().method() == "ucx-shm");

  SECTION("values past the registered end") {
    auto response = stream->Call(ItemRequest(up.id, query, k, {{0, (64 << 10) - bytes + 1}}));
    CHECK(response.results(0).status_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(response.results(0).error_message().find("registered buffer") != std::string::npos);
    CHECK(untouched());
  }
  SECTION("an offset that wraps around") {
    auto response = stream->Call(ItemRequest(up.id, query, k, {{UINT64_MAX - 10, 0}}));
    CHECK(response.results(0).status_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(untouched());
  }
  SECTION("keys and values that overlap") {
    auto response = stream->Call(ItemRequest(up.id, query, k, {{0, bytes / 2}}));
    CHECK(response.results(0).status_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(untouched());
  }
  SECTION("a landing that fits exactly is written, and only there") {
    const uint64_t keys_at = 1000, values_at = (64 << 10) - bytes;
    auto response = stream->Call(ItemRequest(up.id, query, k, {{keys_at, values_at}}));
    REQUIRE(response.results(0).status_code() == 0);
    CHECK(response.results(0).landed_bytes() == bytes);
    const auto* base = reinterpret_cast<const uint8_t*>(receiver->data());
    CHECK(std::all_of(base + UcxReceiver::kCheckBytes, base + keys_at,
                      [](uint8_t c) { return c == 0xAB; }));
    CHECK(
        std::all_of(base + keys_at + bytes, base + values_at, [](uint8_t c) { return c == 0xAB; }));
    CHECK(std::all_of(base + (64 << 10), base + receiver->size(),
                      [](uint8_t c) { return c == 0xAB; }));
  }
  stream.reset();
  client.reset();
  receiver.reset();            // before the server: see the last test case of this kind below
  CHECK(server->Stop() == 0);  // LeakSanitizer build: no leaks
}

TEST_CASE("A bad or missing data plane fails the items that need it, not the stream",
          "[data_plane]") {
  auto server = StartServer();
  auto client = Connect(*server);
  const ModelShape shape{1, 2, 8, 64, DType::kFp16};
  const Uploaded up = Upload(*client, shape, 2048);
  const std::vector<float> query = Query(shape, 5);
  auto stream = std::make_unique<testing::RetrieveTestStream>(*server);
  // A landing before any offer.
  auto early = stream->Call(ItemRequest(up.id, query, 50, {{0, 1 << 20}}));
  CHECK(early.results(0).status_code() == grpc::StatusCode::FAILED_PRECONDITION);
  // A stale or forged rkey, and a worker address that is not one.
  auto receiver = UcxReceiver::Create(size_t{1} << 20).value();
  v1::RetrieveRequest offer;
  *offer.mutable_open_data_plane() = receiver->Offer();
  offer.mutable_open_data_plane()->set_rkey(std::string(receiver->rkey().size(), '\x5a'));
  auto forged = stream->Call(offer);
  CHECK(forged.data_plane().status_code() == grpc::StatusCode::INVALID_ARGUMENT);
  INFO(forged.data_plane().error_message());
  // A stale rkey: that of a buffer its client has since freed.
  std::string stale_rkey;
  uint64_t stale_address = 0;
  {
    auto freed = UcxReceiver::Create(size_t{1} << 20).value();
    stale_rkey = freed->rkey();
    stale_address = reinterpret_cast<uintptr_t>(freed->data());
  }
  offer.mutable_open_data_plane()->set_worker_address(receiver->worker_address());
  offer.mutable_open_data_plane()->set_buffer_address(stale_address);
  offer.mutable_open_data_plane()->set_rkey(stale_rkey);
  auto stale = stream->Call(offer);
  INFO(stale.data_plane().error_message());
  // Its segment is gone, so it is cut from the key: the server maps nothing and would
  // put (writing would then be the client's own fault; nothing is written here).
  CHECK(stale.data_plane().status_code() == 0);
  CHECK(stale.data_plane().method() == "ucx-put");
  offer.mutable_open_data_plane()->set_worker_address("not an address");
  offer.mutable_open_data_plane()->set_rkey(receiver->rkey());
  offer.mutable_open_data_plane()->set_buffer_check(receiver->check());
  CHECK(stream->Call(offer).data_plane().status_code() == grpc::StatusCode::INVALID_ARGUMENT);
  auto after = stream->Call(ItemRequest(up.id, query, 50, {{0, 1 << 20}}));
  CHECK(after.results(0).status_code() == grpc::StatusCode::FAILED_PRECONDITION);
  // The stream still serves rows in the response.
  auto inline_rows = stream->Call(ItemRequest(up.id, query, 50, std::nullopt));
  CHECK(inline_rows.results(0).status_code() == 0);
  CHECK(inline_rows.results(0).rows_size() == 2);
  stream.reset();
  client.reset();
  receiver.reset();            // before the server: see the last test case of this kind below
  CHECK(server->Stop() == 0);  // LeakSanitizer build: no leaks
}

TEST_CASE("An offer reaching past its segment, or of a buffer in use, is refused", "[data_plane]") {
  auto server = StartServer();
  auto receiver = UcxReceiver::Create(size_t{1} << 20).value();
  v1::RetrieveRequest offer;
  *offer.mutable_open_data_plane() = receiver->Offer();
  {
    // The server would map the segment and write past it, into its own memory.
    testing::RetrieveTestStream stream(*server);
    offer.mutable_open_data_plane()->set_buffer_bytes(receiver->size() + 4096);
    auto response = stream.Call(offer);
    CHECK(response.data_plane().status_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(response.data_plane().error_message().find("runs past") != std::string::npos);
  }
  offer.mutable_open_data_plane()->set_buffer_bytes(receiver->size());
  auto first = std::make_unique<testing::RetrieveTestStream>(*server);
  CHECK(first->Call(offer).data_plane().status_code() == 0);
  {
    testing::RetrieveTestStream second(*server);
    auto response = second.Call(offer);
    CHECK(response.data_plane().status_code() == grpc::StatusCode::ABORTED);
    CHECK(response.data_plane().error_message().find("another stream") != std::string::npos);
  }
  {
    // Check bytes that are not at the start of the buffer: not provably the client's.
    auto wrong = offer;
    wrong.mutable_open_data_plane()->set_buffer_check(std::string(16, '\x11'));
    testing::RetrieveTestStream other(*server);
    auto response = other.Call(wrong);
    CHECK(response.data_plane().status_code() == 0);
    CHECK(response.data_plane().method() == "ucx-put");
  }
  // Re-offering on the stream that holds it replaces its own data plane.
  CHECK(first->Call(offer).data_plane().status_code() == 0);
  first.reset();
  // The receiver goes before the server, as a worker's would: UCX 1.13 aborts a process
  // whose worker still owes a wireup reply to a server that has exited (its progress
  // thread finds the server's TCP port closed), which this test hit about 1 run in 10.
  receiver.reset();
  CHECK(server->Stop() == 0);  // LeakSanitizer build: no leaks
}

TEST_CASE("The SDK refuses a receive-buffer landing that does not fit before sending",
          "[data_plane]") {
  auto server = StartServer();
  auto client = Connect(*server);
  const ModelShape shape{1, 2, 8, 64, DType::kFp16};
  const Uploaded up = Upload(*client, shape, 2048);
  auto stream =
      client->OpenRetrievalStream({.data_path = DataPath::kUcx, .receive_buffer_bytes = 1 << 16})
          .value();
  auto* buffer = static_cast<uint8_t*>(stream->receive_buffer());
  std::memset(buffer, 0xAB, stream->receive_buffer_bytes());
  const std::vector<float> query = Query(shape, 5);
  const uint32_t k = 100;
  const size_t bytes = 2 * k * shape.row_bytes();
  RetrieveQuery q{up.id, query, k, buffer, buffer + bytes, bytes - 1};
  CHECK(stream->Retrieve(0, {&q, 1}).status().code() == absl::StatusCode::kInvalidArgument);
  // Past the end of the receive buffer: with kUcx the item fails, nothing is written.
  q = {up.id, query, k, buffer, buffer + stream->receive_buffer_bytes() - bytes / 2, bytes};
  auto results = stream->Retrieve(0, {&q, 1});
  REQUIRE(results.ok());
  CHECK((*results)[0].status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::all_of(buffer, buffer + stream->receive_buffer_bytes(),
                    [](uint8_t c) { return c == 0xAB; }));
  stream.reset();
  client.reset();
  CHECK(server->Stop() == 0);  // LeakSanitizer build: no leaks
}

// Runs `argv` with stdout to a pipe; returns its pid and the pipe's read end.
std::pair<pid_t, FILE*> Spawn(const std::vector<std::string>& args) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  return {pid, fdopen(fds[0], "r")};
}

TEST_CASE("A client killed mid-transfer fails only itself; the server keeps serving",
          "[data_plane]") {
  // TCP puts take long enough that the kill lands while rows are in flight.
  ScopedEnv tls("UCX_TLS", "tcp");
  auto server = StartServer();
  auto [pid, out] = Spawn(
      {"tests/integration/data_plane_client", "--server", server->address(), "--mode", "hammer"});
  char line[256] = {0};
  REQUIRE(fgets(line, sizeof line, out) != nullptr);
  CHECK(std::string(line).rfind("hammering", 0) == 0);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  fclose(out);
  // Another client is served, over UCX, right after.
  auto client = Connect(*server);
  const ModelShape shape{1, 2, 8, 64, DType::kFp16};
  const Uploaded up = Upload(*client, shape, 2048);
  auto stream = client->OpenRetrievalStream({.data_path = DataPath::kUcx}).value();
  const std::vector<float> query = Query(shape, 9);
  const uint32_t k = 100;
  const size_t bytes = 2 * k * shape.row_bytes();
  auto* keys = static_cast<uint8_t*>(stream->receive_buffer());
  RetrieveQuery q{up.id, query, k, keys, keys + bytes, bytes};
  for (int i = 0; i < 3; ++i) {
    auto results = stream->Retrieve(0, {&q, 1});
    REQUIRE(results.ok());
    REQUIRE((*results)[0].status.ok());
    CHECK(testing::CountMismatchedRows(shape, 2048, up.layer, (*results)[0], keys, keys + bytes) ==
          0);
  }
  CHECK(client->GetServerStats().ok());
  stream.reset();
  client.reset();
  CHECK(server->Stop() == 0);
}

}  // namespace
}  // namespace pqkv

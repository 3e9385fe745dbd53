// Memory of Retrieve's row cache directories (delta transfer, cache_slots) in the real
// server: a directory grows with the positions it is given, never to cache_slots up front;
// all directories are charged to --max_row_cache_bytes (over it the item fails with
// RESOURCE_EXHAUSTED); a closed session's directories are dropped while the stream lives.
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "tests/testing/patterned_kv.h"
#include "tests/testing/proc_status.h"
#include "tests/testing/retrieve_test_stream.h"
#include "tests/testing/server_process.h"

namespace pqkv {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// Under AddressSanitizer freed memory waits in its quarantine and its shadow inflates what
// is resident: the resident-size checks hold only for the normal build.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kResidentSizeMeansSomething = false;
#else
constexpr bool kResidentSizeMeansSomething = true;
#endif

std::unique_ptr<testing::ServerProcess> StartServer(std::vector<std::string> extra_args = {}) {
  // 512 MiB: the shape takes a 64 KiB page per kv head for K and for V (256 MiB
  // for its two layers), and the session's metadata takes pages of the budget too.
  std::vector<std::string> args = {"--memory_budget=512MiB", "--log_level=warn", "--noucx"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto server = testing::ServerProcess::Start("server/pqkv-server", args);
  REQUIRE(server.ok());
  return *std::move(server);
}

// A session of `shape`, no sinks and no recent window (every token a candidate), `tokens`
// tokens in every layer, scored exactly (no index).
std::string Upload(Client& client, const ModelShape& shape, size_t tokens) {
  SessionOptions options;
  options.shape = shape;
  options.index.sink_tokens = 0;
  options.index.recent_window = 0;
  const std::string id = client.CreateSession(options).value();
  const testing::PatternedLayer layer = testing::MakePatternedLayer(shape, tokens, 1);
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    const absl::Status uploaded = client.UploadPrefill(
        id, l, 0, static_cast<uint32_t>(tokens), layer.keys.data(), layer.values.data(), false);
    INFO(uploaded.ToString());
    REQUIRE(uploaded.ok());
  }
  return id;
}

v1::RetrieveRequest CachedRequest(const std::string& id, uint32_t layer, size_t query_floats,
                                  uint32_t k, uint32_t cache_slots) {
  v1::RetrieveRequest request;
  request.set_request_id(layer + 1);
  request.set_layer(layer);
  v1::RetrieveItem* item = request.add_items();
  item->set_session_id(id);
  for (size_t d = 0; d < query_floats; ++d) {
    item->add_query(static_cast<float>(static_cast<int>(d * 37 % 19) - 9) / 9.0f);
  }
  item->set_k(k);
  item->set_with_kv(true);
  item->set_omit_scores(true);
  item->set_cache_slots(cache_slots);
  return request;
}

TEST_CASE("Row cache directories grow with use, not to cache_slots", "[server]") {
  auto server = StartServer();
  auto client = Client::Connect(server->address()).value();
  // The shape: 1024 kv heads x 2 dims, one token per layer; an 8 KB query.
  const ModelShape shape{2, 1024, 1024, 2, DType::kFp32};
  const std::string id = Upload(*client, shape, 1);
  testing::RetrieveTestStream stream(*server);
  const size_t before = testing::ProcStatusBytes(server->pid(), "VmRSS");
  for (uint32_t layer = 0; layer < shape.num_layers; ++layer) {
    const v1::RetrieveResponse response =
        stream.Call(CachedRequest(id, layer, 1024 * 2, /*k=*/1, /*cache_slots=*/65536));
    REQUIRE(response.results_size() == 1);
    INFO(response.results(0).error_message());
    REQUIRE(response.results(0).status_code() == 0);
    REQUIRE(response.results(0).heads_size() == 1024);
  }
  const size_t after = testing::ProcStatusBytes(server->pid(), "VmRSS");
  const double grown_mib = (static_cast<double>(after) - static_cast<double>(before)) / kMiB;
  INFO("resident " << before / kMiB << " MiB -> " << after / kMiB << " MiB for " << shape.num_layers
                   << " layers' directories (was about 790 MB each)");
  if (kResidentSizeMeansSomething) CHECK(grown_mib < 100);
}

TEST_CASE("Row cache directories are charged to --max_row_cache_bytes; a closed session's go",
          "[server]") {
  auto server = StartServer({"--max_row_cache_bytes=128KiB"});
  auto client = Client::Connect(server->address()).value();
  // 1 kv head x 4 dims: 2000 candidates, k = 1500 takes 1500 slots of a directory.
  const ModelShape shape{1, 1, 1, 4, DType::kFp32};
  const std::string a = Upload(*client, shape, 2000);
  const std::string b = Upload(*client, shape, 2000);
  testing::RetrieveTestStream stream(*server);

  v1::RetrieveResponse response = stream.Call(CachedRequest(a, 0, 4, 1500, 4096));
  INFO(response.results(0).error_message());
  REQUIRE(response.results(0).status_code() == 0);
  REQUIRE(response.results(0).heads(0).sent_size() == 1500);

  // A second session's directory does not fit what is left.
  response = stream.Call(CachedRequest(b, 0, 4, 1500, 4096));
  INFO(response.results(0).error_message());
  REQUIRE(response.results(0).status_code() ==
          static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  CHECK(absl::StrContains(response.results(0).error_message(), "--max_row_cache_bytes"));
  CHECK(response.results(0).heads_size() == 0);

  // Closing the first session gives its directory's bytes back on the same stream.
  REQUIRE(client->CloseSession(a).ok());
  response = stream.Call(CachedRequest(b, 0, 4, 1500, 4096));
  INFO(response.results(0).error_message());
  REQUIRE(response.results(0).status_code() == 0);
  CHECK(response.results(0).heads(0).sent_size() == 1500);
}

}  // namespace
}  // namespace pqkv

// Memory that Retrieve's with_kv rows take in the real server: rows that cannot fit a
// response's 64 MiB, or the server's in-flight gather budget (--max_inflight_gather_bytes),
// fail their items before they are gathered, and what was gathered comes back once the
// response is written. The server's resident memory is read from /proc/<pid>/status.
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
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
constexpr size_t kResponseCap = 64 * kMiB;  // server/rpc/fetch_limits.h kMaxFetchBytes

// Under AddressSanitizer (scripts/test.sh --sanitizers builds the server with it too) freed
// memory waits in ASan's quarantine, so resident sizes say nothing about what the server
// keeps: the memory checks below hold only for the normal build; the statuses hold always.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kResidentSizeMeansSomething = false;
#else
constexpr bool kResidentSizeMeansSomething = true;
#endif

std::unique_ptr<testing::ServerProcess> StartServer(std::vector<std::string> extra_args = {}) {
  std::vector<std::string> args = {"--memory_budget=1GiB", "--log_level=warn", "--noucx"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto server = testing::ServerProcess::Start("server/pqkv-server", args);
  REQUIRE(server.ok());
  return *std::move(server);
}

// Resets the process's peak resident size (VmHWM) to its current one; false where the
// kernel does not allow it.
bool ResetPeak(pid_t pid) {
  std::ofstream clear_refs(absl::StrCat("/proc/", pid, "/clear_refs"));
  clear_refs << "5";
  clear_refs.flush();
  return clear_refs.good();
}

// A session of 1 layer x 1 kv head x 128 dims, fp32 (512-byte rows), all tokens uploaded.
std::string Upload(Client& client, size_t tokens) {
  const ModelShape shape{1, 1, 1, 128, DType::kFp32};
  SessionOptions options;
  options.shape = shape;
  const std::string id = client.CreateSession(options).value();
  const testing::PatternedLayer layer = testing::MakePatternedLayer(shape, tokens, 1);
  REQUIRE(client
              .UploadPrefill(id, 0, 0, static_cast<uint32_t>(tokens), layer.keys.data(),
                             layer.values.data(), true)
              .ok());
  return id;
}

// `items` items of the same session, query and k, all with_kv, rows in the response.
v1::RetrieveRequest WithKvRequest(const std::string& id, int items, uint32_t k) {
  v1::RetrieveRequest request;
  request.set_request_id(1);
  for (int i = 0; i < items; ++i) {
    v1::RetrieveItem* item = request.add_items();
    item->set_session_id(id);
    for (int d = 0; d < 128; ++d) item->add_query(static_cast<float>((d * 37 % 19) - 9) / 9.0f);
    item->set_k(k);
    item->set_with_kv(true);
    item->set_omit_scores(true);
  }
  return request;
}

size_t RowBytesOf(const v1::RetrieveResult& result) {
  size_t bytes = 0;
  for (const v1::HeadRows& rows : result.rows()) bytes += rows.keys().size() + rows.values().size();
  return bytes;
}

TEST_CASE("Retrieve with_kv fails the items whose rows do not fit the response before gathering",
          "[server]") {
  auto server = StartServer();
  auto client = Client::Connect(server->address()).value();
  const std::string id = Upload(*client, 70000);
  testing::RetrieveTestStream stream(*server);
  // Scored once first, so that the index is built and its memory already counted.
  REQUIRE(stream.Call(WithKvRequest(id, 1, 10)).results(0).status_code() == 0);

  // 30 items of 60000 rows: 58.6 MiB of K+V each, one fits the response's 64 MiB.
  const uint32_t k = 60000;
  const size_t item_bytes = size_t{2} * k * 512;
  const size_t rss_before = testing::ProcStatusBytes(server->pid(), "VmRSS");
  const bool peak_reset = ResetPeak(server->pid());
  const v1::RetrieveResponse response = stream.Call(WithKvRequest(id, 30, k));
  const size_t peak = testing::ProcStatusBytes(server->pid(), peak_reset ? "VmHWM" : "VmRSS");
  REQUIRE(response.results_size() == 30);
  CHECK(response.results(0).status_code() == 0);
  CHECK(RowBytesOf(response.results(0)) == item_bytes);
  for (int i = 1; i < 30; ++i) {
    INFO("item " << i);
    const v1::RetrieveResult& result = response.results(i);
    CHECK(result.status_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
    CHECK(result.rows_size() == 0);
    CHECK(result.error_message().find(absl::StrCat(item_bytes)) != std::string::npos);
  }
  // One item's rows were gathered (and the selections of all 30): not 30 items' rows.
  INFO("RSS before " << rss_before / kMiB << " MiB, peak " << peak / kMiB << " MiB"
                     << (peak_reset ? "" : " (VmHWM not resettable: RSS after)"));
  if (kResidentSizeMeansSomething) CHECK(peak < rss_before + 3 * kResponseCap);
  client.reset();
  CHECK(server->Stop() == 0);
}

TEST_CASE("Retrieve with_kv rows gathered for a response come back after it", "[server]") {
  auto server = StartServer();
  auto client = Client::Connect(server->address()).value();
  const std::string id = Upload(*client, 2000);
  testing::RetrieveTestStream stream(*server);
  REQUIRE(stream.Call(WithKvRequest(id, 1, 10)).results(0).status_code() == 0);
  // 5000 items of 100 rows (100 KiB each, 488 MiB in all): 655 fit one response.
  const v1::RetrieveRequest request = WithKvRequest(id, 5000, 100);
  const size_t rss_before = testing::ProcStatusBytes(server->pid(), "VmRSS");
  size_t rss_first = 0;  // after the first request
  for (int round = 0; round < 3; ++round) {
    const v1::RetrieveResponse response = stream.Call(request);
    REQUIRE(response.results_size() == 5000);
    int ok = 0;
    size_t bytes = 0;
    for (const v1::RetrieveResult& result : response.results()) {
      ok += result.status_code() == 0;
      bytes += RowBytesOf(result);
    }
    CHECK(ok == static_cast<int>(kResponseCap / (2 * 100 * 512)));
    CHECK(bytes <= kResponseCap);
    CHECK(response.results(4999).status_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
    if (round == 0) rss_first = testing::ProcStatusBytes(server->pid(), "VmRSS");
  }
  const size_t rss_after = testing::ProcStatusBytes(server->pid(), "VmRSS");
  INFO("RSS before " << rss_before / kMiB << " MiB, after 1 request " << rss_first / kMiB
                     << " MiB, after 3 " << rss_after / kMiB << " MiB");
  // What stays is of the order of one response's rows (freed, but kept by malloc's
  // arenas; 45-90 MiB measured), not of 5000 items' (570 MiB when every item's rows were
  // gathered before the cap was applied).
  if (kResidentSizeMeansSomething) CHECK(rss_after < rss_before + 3 * kResponseCap);
  client.reset();
  CHECK(server->Stop() == 0);
}

TEST_CASE("Retrieve with_kv items past the server's in-flight gather budget fail with the numbers",
          "[server]") {
  auto server = StartServer({"--max_inflight_gather_bytes=1MiB"});
  auto client = Client::Connect(server->address()).value();
  const std::string id = Upload(*client, 4000);
  testing::RetrieveTestStream stream(*server);
  // 600 rows: 600 KiB of K+V. One fits the budget, a second in the same response not.
  const v1::RetrieveResponse two = stream.Call(WithKvRequest(id, 2, 600));
  REQUIRE(two.results_size() == 2);
  CHECK(two.results(0).status_code() == 0);
  CHECK(RowBytesOf(two.results(0)) == 600 * 1024);
  CHECK(two.results(1).status_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(two.results(1).error_message().find("--max_inflight_gather_bytes") != std::string::npos);
  CHECK(two.results(1).error_message().find("614400") != std::string::npos);
  CHECK(two.results(1).error_message().find("1048576") != std::string::npos);
  // Rows over the whole budget never fit.
  const v1::RetrieveResponse big = stream.Call(WithKvRequest(id, 1, 1100));
  CHECK(big.results(0).status_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  // The budget comes back once a response is written: the next requests fit again. The
  // server lets go when gRPC reports the write done, which can come after this client
  // has read the response and sent the next request: a refusal is retried, boundedly.
  for (int round = 0; round < 5; ++round) {
    int attempts = 0, code = -1;
    while (code != 0 && attempts++ < 200) {
      if (attempts > 1) absl::SleepFor(absl::Milliseconds(5));
      const v1::RetrieveResponse one = stream.Call(WithKvRequest(id, 1, 600));
      code = one.results(0).status_code();
      if (code != 0) REQUIRE(code == grpc::StatusCode::RESOURCE_EXHAUSTED);
    }
    CHECK(code == 0);
  }
  client.reset();
  CHECK(server->Stop() == 0);
}

}  // namespace
}  // namespace pqkv

// Starts the real pqkv-server binary on a free loopback port and drives it through the
// SDK (and, for malformed input the SDK cannot produce, through the raw stub).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "tests/testing/bytes_held_wait.h"
#include "tests/testing/index_wait.h"
#include "tests/testing/server_process.h"
#include "workload/end_to_end_flow.h"

namespace pqkv {
namespace {

constexpr char kServer[] = "server/pqkv-server";

std::unique_ptr<testing::ServerProcess> StartServer(std::vector<std::string> extra = {}) {
  extra.insert(extra.end(), {"--memory_budget=2GiB", "--log_level=warn"});
  auto server = testing::ServerProcess::Start(kServer, extra);
  REQUIRE(server.ok());
  return *std::move(server);
}

// Waits until no layer of the session is building its index.
void WaitForIndexes(Client& client, const std::string& id) {
  REQUIRE(testing::WaitForIndexes(client, id).ok());
}

std::unique_ptr<Client> Connect(const testing::ServerProcess& server) {
  auto client = Client::Connect(server.address());
  REQUIRE(client.ok());
  return *std::move(client);
}

TEST_CASE("A worker uploads, retrieves every layer, fetches exact bytes and decodes",
          "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  workload::FlowSpec spec;  // 4 layers x 2 kv heads x 8 query heads x 128 dims x 8192, fp16
  spec.num_layers = 4;
  spec.k = 512;
  spec.data = {2, 8, 128, 8192};
  spec.data.recent = 16;  // so that decode tokens leave the recent window
  spec.decode_tokens = 64;
  spec.retrieve_repeats = 1;
  spec.close_session = false;
  auto report = workload::RunEndToEndFlow(*client, spec);
  REQUIRE(report.ok());
  REQUIRE(report->layers.size() == 4);
  for (const workload::LayerReport& layer : report->layers) {
    INFO("layer " << layer.layer);
    CHECK(layer.index_state == "ready");
    CHECK(layer.num_encoded == 8192);
    CHECK(layer.rows_fetched == 2 * 512);
    CHECK(layer.rows_landed == 2 * 512);
    CHECK(layer.data_path == "ucx-shm");
    CHECK(layer.rows_mismatched == 0);
    CHECK(layer.mass_ratio >= 0.9);
    CHECK(layer.planted_recall >= 0.9);
  }
  CHECK(report->tokens_after_decode == 8192 + 64);
  CHECK(report->encoded_after_decode == 8192 + 64);
  CHECK(report->decode_planted_expected == 4 * 2 * 6);  // 8 planted, 2 in the last 16
  CHECK(report->decode_planted_found == report->decode_planted_expected);

  auto info = client->GetSession(report->session_id);
  REQUIRE(info.ok());
  CHECK(info->layers[3].num_tokens == 8256);
  auto stats = client->GetServerStats();
  REQUIRE(stats.ok());
  CHECK(stats->num_sessions == 1);
  CHECK(stats->index_builds_done == 4);
  CHECK(stats->bytes_held > 4u * 2 * 2 * 8256 * 256);
  REQUIRE(client->CloseSession(report->session_id).ok());
  // Sampled Retrieve items may still be measuring on the session a moment longer.
  CHECK(testing::WaitForNoBytesHeld(*client).ok());
  CHECK(server->Stop() == 0);  // clean exit on SIGTERM
}

TEST_CASE("Every dtype round-trips bit for bit", "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  const DType dtype = GENERATE(DType::kFp16, DType::kBf16, DType::kFp32);
  SessionOptions options;
  options.shape = {1, 3, 6, 64, dtype};
  const std::string id = client->CreateSession(options).value();
  const size_t n = 700, bytes = 3 * n * options.shape.row_bytes();
  std::vector<uint8_t> keys(bytes), values(bytes);
  for (size_t i = 0; i < bytes; ++i) {
    keys[i] = static_cast<uint8_t>(i * 7 + 3);
    values[i] = static_cast<uint8_t>(i * 13 + 1);
  }
  // Keep every element finite: clear the top exponent bit of each element's high byte.
  const size_t elem = DTypeBytes(dtype);
  for (size_t i = elem - 1; i < bytes; i += elem) {
    keys[i] &= 0x3f;
    values[i] &= 0x3f;
  }
  REQUIRE(client->UploadPrefill(id, 0, 0, n, keys.data(), values.data(), true).ok());
  std::vector<FetchHead> heads = {{2, {0, 699, 350}}, {0, {5}}};
  std::vector<uint8_t> k(4 * options.shape.row_bytes()), v(k.size());
  REQUIRE(client->FetchKv(id, 0, heads, k.data(), v.data(), k.size()).value() == k.size());
  size_t row = 0;
  for (const FetchHead& head : heads) {
    for (uint32_t p : head.positions) {
      const size_t src = (head.kv_head * n + p) * options.shape.row_bytes();
      const size_t dst = row++ * options.shape.row_bytes();
      CHECK(std::memcmp(k.data() + dst, keys.data() + src, options.shape.row_bytes()) == 0);
      CHECK(std::memcmp(v.data() + dst, values.data() + src, options.shape.row_bytes()) == 0);
    }
  }
}

TEST_CASE("Retrieve with_kv returns the selected rows in the same round trip", "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  const DType dtype = GENERATE(DType::kFp16, DType::kBf16, DType::kFp32);
  SessionOptions options;
  options.shape = {1, 2, 8, 64, dtype};
  const std::string id = client->CreateSession(options).value();
  const size_t n = 2048, row = options.shape.row_bytes(), bytes = 2 * n * row;
  std::vector<uint8_t> keys(bytes), values(bytes);
  for (size_t i = 0; i < bytes; ++i) {
    keys[i] = static_cast<uint8_t>(i * 7 + 3);
    values[i] = static_cast<uint8_t>(i * 13 + 1);
  }
  const size_t elem = DTypeBytes(dtype);
  for (size_t i = elem - 1; i < bytes; i += elem) {  // finite keys and values
    keys[i] &= 0x3f;
    values[i] &= 0x3f;
  }
  REQUIRE(client->UploadPrefill(id, 0, 0, n, keys.data(), values.data(), true).ok());
  std::vector<float> query(8 * 64, 0.01f);
  const uint32_t k = 100;
  std::vector<uint8_t> k_out(2 * k * row), v_out(2 * k * row);
  auto stream = client->OpenRetrievalStream().value();
  RetrieveQuery q{id, query, k, k_out.data(), v_out.data(), k_out.size()};
  auto results = stream->Retrieve(0, {&q, 1});
  REQUIRE(results.ok());
  REQUIRE((*results)[0].status.ok());
  REQUIRE((*results)[0].kv_bytes == k_out.size());
  for (uint32_t h = 0; h < 2; ++h) {
    for (uint32_t r = 0; r < k; ++r) {
      const uint32_t p = (*results)[0].heads[h].positions[r];
      REQUIRE(std::memcmp(k_out.data() + (h * k + r) * row, keys.data() + (h * n + p) * row, row) ==
              0);
      REQUIRE(std::memcmp(v_out.data() + (h * k + r) * row, values.data() + (h * n + p) * row,
                          row) == 0);
    }
    CHECK((*results)[0].heads[h].scores.size() == k);
  }
  // Positions only: the same selection and rows, no scores.
  const std::vector<uint8_t> k_with_scores = k_out, v_with_scores = v_out;
  q.with_scores = false;
  auto positions_only = stream->Retrieve(0, {&q, 1});
  REQUIRE(positions_only.ok());
  REQUIRE((*positions_only)[0].status.ok());
  for (uint32_t h = 0; h < 2; ++h) {
    CHECK((*positions_only)[0].heads[h].positions == (*results)[0].heads[h].positions);
    CHECK((*positions_only)[0].heads[h].scores.empty());
  }
  CHECK(k_out == k_with_scores);
  CHECK(v_out == v_with_scores);
  q.with_scores = true;
  // A buffer one byte short is refused before anything is sent or written.
  std::fill(k_out.begin(), k_out.end(), 0xAB);
  q.buffer_bytes = k_out.size() - 1;
  const absl::Status short_buffer = stream->Retrieve(0, {&q, 1}).status();
  CHECK(short_buffer.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::all_of(k_out.begin(), k_out.end(), [](uint8_t b) { return b == 0xAB; }));
  CHECK(stream->Retrieve(0, {&q, 1}).status().code() == absl::StatusCode::kInvalidArgument);
  q.buffer_bytes = k_out.size();
  CHECK(stream->Retrieve(0, {&q, 1}).ok());  // the stream is still good
}

TEST_CASE("Retrieve re-ranks exactly when asked, within its limit", "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  SessionOptions options;
  options.shape = {1, 1, 2, 16, DType::kFp32};
  options.index.sink_tokens = 0;
  options.index.recent_window = 0;
  // PQCache's 2 x 6, named (the server's default index needs no re-rank).
  options.index.subspaces = 2;
  options.index.bits = 6;
  const std::string id = client->CreateSession(options).value();
  // Gaussian-ish keys from a fixed pattern; enough tokens for a 2 x 6-bit index.
  const uint32_t n = 2048;
  std::vector<float> kv(n * 16);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = std::sin(0.37f * i) * std::cos(0.011f * i);
  REQUIRE(client->UploadPrefill(id, 0, 0, n, kv.data(), kv.data(), true).ok());
  WaitForIndexes(*client, id);
  auto stream = client->OpenRetrievalStream();
  REQUIRE(stream.ok());
  std::vector<float> query(2 * 16);
  for (size_t i = 0; i < query.size(); ++i) query[i] = std::cos(0.5f * i);
  // The exact top-k, from the keys as uploaded.
  std::vector<double> score(n, 0.0);
  for (int g = 0; g < 2; ++g) {
    std::vector<double> logit(n);
    double max = -1e30, z = 0;
    for (uint32_t t = 0; t < n; ++t) {
      for (int d = 0; d < 16; ++d) logit[t] += double(query[g * 16 + d]) * kv[t * 16 + d] / 4;
      max = std::max(max, logit[t]);
    }
    for (uint32_t t = 0; t < n; ++t) z += std::exp(logit[t] - max);
    for (uint32_t t = 0; t < n; ++t) score[t] += std::exp(logit[t] - max) / z;
  }
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return score[a] > score[b]; });
  auto recall = [&](const std::vector<uint32_t>& got) {
    const std::set<uint32_t> best(order.begin(), order.begin() + 32);
    size_t hits = 0;
    for (uint32_t p : got) hits += best.count(p);
    return double(hits) / 32;
  };
  RetrieveQuery plain{id, query, 32};
  plain.rerank = 1;  // off (0 would take the session's default)
  RetrieveQuery refined{id, query, 32};
  refined.rerank = 64;  // 64 x 32 = every candidate: the exact top-k
  auto results = (*stream)->Retrieve(0, {&plain, 1});
  REQUIRE(results.ok());
  const double plain_recall = recall((*results)[0].heads[0].positions);
  results = (*stream)->Retrieve(0, {&refined, 1});
  REQUIRE(results.ok());
  REQUIRE((*results)[0].status.ok());
  CHECK(recall((*results)[0].heads[0].positions) == 1.0);
  CHECK(plain_recall < 1.0);  // PQ alone is approximate here
  refined.rerank = 65;
  results = (*stream)->Retrieve(0, {&refined, 1});
  REQUIRE(results.ok());
  CHECK((*results)[0].status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string((*results)[0].status.message()).find("rerank") != std::string::npos);

  // A 2 x 6 session that sets no re-ranking gets the server's default for it, 4, and
  // says which; one that names no index gets one 4-bit sub-space per dimension and none.
  CHECK(client->GetSession(id)->index.rerank == 4u);
  SessionOptions unnamed;
  unnamed.shape = options.shape;
  const std::string default_id = client->CreateSession(unnamed).value();
  const auto default_info = client->GetSession(default_id);
  REQUIRE(default_info.ok());
  CHECK(default_info->index.subspaces == 16u);
  CHECK(default_info->index.bits == 4u);
  CHECK(default_info->index.rerank == 1u);
  // A session's IndexOptions.rerank serves the items that leave rerank at 0.
  options.index.rerank = 64;
  const std::string exact_id = client->CreateSession(options).value();
  CHECK(client->GetSession(exact_id)->index.rerank == 64u);
  REQUIRE(client->UploadPrefill(exact_id, 0, 0, n, kv.data(), kv.data(), true).ok());
  WaitForIndexes(*client, exact_id);
  RetrieveQuery by_session{exact_id, query, 32};
  results = (*stream)->Retrieve(0, {&by_session, 1});
  REQUIRE(results.ok());
  REQUIRE((*results)[0].status.ok());
  CHECK(recall((*results)[0].heads[0].positions) == 1.0);
  by_session.rerank = 1;  // an item can still turn it off
  results = (*stream)->Retrieve(0, {&by_session, 1});
  REQUIRE(results.ok());
  CHECK(recall((*results)[0].heads[0].positions) == plain_recall);
  // Out of range when the session is created.
  for (uint32_t bad : {0u, 65u}) {
    options.index.rerank = bad;
    absl::StatusOr<std::string> refused = client->CreateSession(options);
    CHECK(refused.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(refused.status().message()).find("index.rerank") != std::string::npos);
  }
}

TEST_CASE("One Retrieve request serves several sessions, with per-item errors", "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  workload::PlantedKvSpec data{2, 4, 64, 2048};
  data.planted_per_head = 16;
  SessionOptions options;
  options.shape = {1, 2, 4, 64, DType::kFp16};
  std::vector<std::string> ids;
  std::vector<workload::LayerData> layers;
  for (uint64_t seed : {1, 2}) {
    data.seed = seed;
    layers.push_back(workload::GeneratePlantedLayer(data, 0));
    ids.push_back(client->CreateSession(options).value());
    const auto k = workload::ToHalf(layers.back().keys), v = workload::ToHalf(layers.back().values);
    REQUIRE(client->UploadPrefill(ids.back(), 0, 0, 2048, k.data(), v.data(), true).ok());
  }
  std::vector<float> nan_query = layers[0].query;
  nan_query[0] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<RetrieveQuery> queries = {{ids[0], layers[0].query, 16},
                                              {"no-such-session", layers[0].query, 16},
                                              {ids[1], layers[1].query, 16},
                                              {ids[0], nan_query, 16},
                                              {ids[1], layers[1].query, 100000}};
  auto stream = client->OpenRetrievalStream().value();
  auto results = stream->Retrieve(0, queries);
  REQUIRE(results.ok());
  REQUIRE(results->size() == 5);
  CHECK((*results)[0].status.ok());
  CHECK((*results)[1].status.code() == absl::StatusCode::kNotFound);
  CHECK((*results)[2].status.ok());
  CHECK((*results)[3].status.code() == absl::StatusCode::kInvalidArgument);
  CHECK((*results)[4].status.code() == absl::StatusCode::kInvalidArgument);
  for (int i : {0, 2}) {
    const auto& planted = layers[i / 2].planted;
    for (size_t h = 0; h < 2; ++h) {
      CHECK(workload::Recall((*results)[i].heads[h].positions, planted[h]) == 1.0);
    }
  }
  // A layer out of range is an item error too, and the stream keeps working.
  auto bad_layer = stream->Retrieve(1, {&queries[0], 1});
  REQUIRE(bad_layer.ok());
  CHECK((*bad_layer)[0].status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(stream->Retrieve(0, {&queries[0], 1}).ok());
  CHECK(stream->Close().ok());
}

TEST_CASE("With a wait bound, a Retrieve right after the prefill waits for the layer's index",
          "[integration]") {
  auto server = StartServer({"--max_index_wait_seconds=60"});
  auto client = Connect(*server);
  workload::PlantedKvSpec data{2, 8, 128, 8192};
  const workload::LayerData layer = workload::GeneratePlantedLayer(data, 0);
  SessionOptions options;
  options.shape = {1, 2, 8, 128, DType::kFp16};
  const std::string id = client->CreateSession(options).value();
  const auto k = workload::ToHalf(layer.keys), v = workload::ToHalf(layer.values);
  REQUIRE(client->UploadPrefill(id, 0, 0, 8192, k.data(), v.data(), true).ok());
  auto stream = client->OpenRetrievalStream().value();
  const RetrieveQuery query{id, layer.query, 64};
  auto results = stream->Retrieve(0, {&query, 1});
  REQUIRE(results.ok());
  REQUIRE((*results)[0].status.ok());
  CHECK((*results)[0].num_encoded == 8192);  // scored from codes, not before they existed
}

TEST_CASE("By default a Retrieve during the index build is answered at once, exactly",
          "[integration]") {
  // 4 x 8 bits over 32K tokens builds for a while; the retrievals sent meanwhile are
  // answered from exact scores (num_encoded 0), those after it from the codes.
  auto server = StartServer();
  auto client = Connect(*server);
  workload::PlantedKvSpec data{2, 8, 128, 32768};
  const workload::LayerData layer = workload::GeneratePlantedLayer(data, 0);
  SessionOptions options;
  options.shape = {1, 2, 8, 128, DType::kFp16};
  options.index.subspaces = 4;
  options.index.bits = 8;
  const std::string id = client->CreateSession(options).value();
  const auto k = workload::ToHalf(layer.keys), v = workload::ToHalf(layer.values);
  REQUIRE(client->UploadPrefill(id, 0, 0, 32768, k.data(), v.data(), true).ok());
  auto stream = client->OpenRetrievalStream().value();
  const RetrieveQuery query{id, layer.query, 64};
  int exact = 0;
  for (int i = 0; i < 200; ++i) {
    auto results = stream->Retrieve(0, {&query, 1});
    REQUIRE(results.ok());
    REQUIRE((*results)[0].status.ok());
    const RetrieveResult& r = (*results)[0];
    if (r.num_encoded == 0) {
      ++exact;
      for (size_t h = 0; h < 2; ++h) {  // exact scores find every planted token
        CHECK(workload::Recall(r.heads[h].positions, layer.planted[h]) == 1.0);
      }
    } else {
      CHECK(r.num_encoded == 32768);  // never a half-built index
      break;
    }
  }
  INFO("answered exactly while building: " << exact);
  WaitForIndexes(*client, id);
  auto later = stream->Retrieve(0, {&query, 1});
  REQUIRE(later.ok());
  CHECK((*later)[0].num_encoded == 32768);
}

TEST_CASE("The index wait bound applies only to items that wait for an index", "[integration]") {
  // A bound far below any build time: the first retrieval must wait and report it; once
  // the index is ready, the same stream keeps serving, however long it has been open.
  auto server = StartServer({"--max_index_wait_seconds=0.000001"});
  auto client = Connect(*server);
  workload::PlantedKvSpec data{2, 8, 128, 8192};
  const workload::LayerData layer = workload::GeneratePlantedLayer(data, 0);
  SessionOptions options;
  options.shape = {1, 2, 8, 128, DType::kFp16};
  const std::string id = client->CreateSession(options).value();
  const auto k = workload::ToHalf(layer.keys), v = workload::ToHalf(layer.values);
  REQUIRE(client->UploadPrefill(id, 0, 0, 8192, k.data(), v.data(), true).ok());
  auto stream = client->OpenRetrievalStream().value();
  const RetrieveQuery query{id, layer.query, 64};
  auto first = stream->Retrieve(0, {&query, 1});
  REQUIRE(first.ok());
  const absl::StatusCode first_code = (*first)[0].status.code();
  CHECK((first_code == absl::StatusCode::kDeadlineExceeded || first_code == absl::StatusCode::kOk));
  WaitForIndexes(*client, id);
  for (int i = 0; i < 3; ++i) {
    auto later = stream->Retrieve(0, {&query, 1});
    REQUIRE(later.ok());
    CHECK((*later)[0].status.ok());
    CHECK((*later)[0].num_encoded == 8192);
  }
}

TEST_CASE("An open AppendKv stream does not keep a closed session's memory", "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  SessionOptions options;
  options.session_id = "closing";
  options.shape = {1, 1, 1, 64, DType::kFp16};
  REQUIRE(client->CreateSession(options).ok());
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Pqkv::NewStub(channel);
  grpc::ClientContext context;
  v1::AppendKvResponse response;
  auto writer = stub->AppendKv(&context, &response);
  v1::AppendKvRequest chunk;
  chunk.set_session_id("closing");
  chunk.set_num_tokens(1000);
  chunk.set_dtype(v1::DTYPE_FP16);
  chunk.set_keys(std::string(1000 * 128, '\0'));
  chunk.set_values(std::string(1000 * 128, '\0'));
  REQUIRE(writer->Write(chunk));
  while (client->GetSession("closing")->layers[0].num_tokens == 0) std::this_thread::yield();
  REQUIRE(client->CloseSession("closing").ok());
  // The stream is still open. The chunk's tokens are visible a moment before the call
  // that appended them lets go of the session, so wait for that (bounded), not longer.
  CHECK(testing::WaitForNoBytesHeld(*client).ok());
  // A new session under the same id works on the same stream.
  REQUIRE(client->CreateSession(options).ok());
  chunk.set_token_begin(0);
  REQUIRE(writer->Write(chunk));
  writer->WritesDone();
  CHECK(writer->Finish().ok());
  CHECK(client->GetSession("closing")->layers[0].num_tokens == 1000);
}

TEST_CASE("The server exports Prometheus metrics on /metrics", "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  SessionOptions options;
  options.shape = {1, 1, 2, 8, DType::kFp32};
  const std::string id = client->CreateSession(options).value();
  std::vector<float> kv(300 * 8, 0.5f), query(2 * 8, 0.25f);
  REQUIRE(client->UploadPrefill(id, 0, 0, 300, kv.data(), kv.data(), true).ok());
  auto stream = client->OpenRetrievalStream().value();
  const RetrieveQuery good{id, query, 8};
  const RetrieveQuery bad{"missing", query, 8};
  REQUIRE(stream->Retrieve(0, {good, bad}).ok());
  CHECK(client->GetSession("missing").status().code() == absl::StatusCode::kNotFound);

  httplib::Client http("127.0.0.1", server->metrics_port());
  const httplib::Result result = http.Get("/metrics");
  REQUIRE(result);
  REQUIRE(result->status == 200);
  const std::string& text = result->body;
  INFO(text);
  CHECK(text.find("pqkv_sessions 1\n") != std::string::npos);
  CHECK(text.find("pqkv_kv_bytes_held ") != std::string::npos);
  CHECK(text.find("pqkv_requests_total{rpc=\"Retrieve\",code=\"OK\"} 1\n") != std::string::npos);
  CHECK(text.find("pqkv_requests_total{rpc=\"Retrieve\",code=\"NOT_FOUND\"} 1\n") !=
        std::string::npos);
  CHECK(text.find("pqkv_requests_total{rpc=\"GetSession\",code=\"NOT_FOUND\"} 1\n") !=
        std::string::npos);
  CHECK(text.find("pqkv_retrieve_item_seconds_count{stage=\"total\"} 1\n") != std::string::npos);
  CHECK(text.find("pqkv_index_build_seconds_bucket{le=\"+Inf\"}") != std::string::npos);
}

TEST_CASE("The server answers gRPC health checks", "[integration]") {
  auto server = StartServer();
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  // grpc.health.v1.HealthCheckRequest{service: ""} is the empty message; the response
  // HealthCheckResponse{status: SERVING} is field 1 = 1, bytes 08 01.
  for (const std::string service : {"", "pqkv.v1.Pqkv"}) {
    INFO("service \"" << service << "\"");
    std::string request;
    if (!service.empty()) request = std::string("\x0a") + char(service.size()) + service;
    grpc::Slice slice(request);
    grpc::ByteBuffer request_buffer(&slice, 1), response_buffer;
    grpc::ClientContext context;
    absl::Notification done;
    grpc::Status status;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                   &response_buffer, [&](grpc::Status s) {
                     status = std::move(s);
                     done.Notify();
                   });
    done.WaitForNotification();
    REQUIRE(status.ok());
    std::vector<grpc::Slice> slices;
    REQUIRE(response_buffer.Dump(&slices).ok());
    std::string response;
    for (const grpc::Slice& s : slices)
      response.append(reinterpret_cast<const char*>(s.begin()), s.size());
    CHECK(response == std::string("\x08\x01", 2));
  }
}

TEST_CASE("Sessions spread over three servers; one going away fails only its own",
          "[integration]") {
  std::vector<std::unique_ptr<testing::ServerProcess>> servers;
  std::vector<std::string> targets;
  for (int i = 0; i < 3; ++i) {
    servers.push_back(StartServer({"--memory_budget=256MiB"}));
    targets.push_back(servers.back()->address());
  }
  auto client = Client::Connect(absl::StrJoin(targets, ","));
  REQUIRE(client.ok());
  SessionOptions options;
  options.shape = {1, 1, 2, 8, DType::kFp32};
  options.index.sink_tokens = 0;
  options.index.recent_window = 0;
  std::vector<std::string> ids;
  for (int i = 0; i < 300; ++i) {
    options.session_id = i % 2 == 0 ? "" : absl::StrCat("worker-7:seq-", i);
    auto id = (*client)->CreateSession(options);
    REQUIRE(id.ok());
    ids.push_back(*id);
  }
  // Placement: each session is on the server EndpointFor names, and only there.
  std::vector<std::unique_ptr<Client>> direct;
  for (const std::string& t : targets) direct.push_back(Client::Connect(t).value());
  for (const std::string& id : ids) {
    for (size_t s = 0; s < 3; ++s) {
      const bool here = direct[s]->GetSession(id).ok();
      REQUIRE(here == (targets[s] == (*client)->EndpointFor(id)));
    }
  }
  // Balance: 100 each. The servers' random ports enter the hash, so the counts are a
  // fresh draw every run (binomial, sd 8.2): within 20% fails about 4% of runs by chance
  // alone, so this checks 40% (4.9 sd); tests/client/rendezvous_test holds the 20% bound
  // on fixed endpoint names.
  auto per_server = (*client)->GetEndpointStats();
  REQUIRE(per_server.ok());
  for (const ServerStats& stats : *per_server) {
    INFO(stats.endpoint);
    CHECK(stats.num_sessions >= 60);
    CHECK(stats.num_sessions <= 140);
  }
  CHECK((*client)->GetServerStats()->num_sessions == 300);
  CHECK((*client)->ListSessions()->size() == 300);

  // Three sessions on three different servers get some tokens; one server goes away.
  std::vector<std::string> picked(3);
  for (const std::string& id : ids) {
    for (size_t s = 0; s < 3; ++s) {
      if (picked[s].empty() && (*client)->EndpointFor(id) == targets[s]) picked[s] = id;
    }
  }
  std::vector<float> kv(200 * 8, 0.5f), query(2 * 8, 0.25f);
  for (const std::string& id : picked) {
    REQUIRE((*client)->UploadPrefill(id, 0, 0, 200, kv.data(), kv.data(), true).ok());
  }
  auto stream = (*client)->OpenRetrievalStream().value();
  std::vector<RetrieveQuery> queries;
  for (const std::string& id : picked) queries.push_back({id, query, 4});
  auto before = stream->Retrieve(0, queries);
  REQUIRE(before.ok());
  for (const RetrieveResult& r : *before) CHECK(r.status.ok());

  servers[1]->Stop();
  auto after = stream->Retrieve(0, queries);
  REQUIRE(after.ok());
  CHECK((*after)[0].status.ok());
  CHECK((*after)[1].status.code() == absl::StatusCode::kUnavailable);
  CHECK((*after)[2].status.ok());
  CHECK((*client)->GetSession(picked[1]).status().code() == absl::StatusCode::kUnavailable);
  CHECK((*client)->GetSession(picked[0]).ok());
  CHECK((*client)->UploadPrefill(picked[2], 0, 200, 1, kv.data(), kv.data(), false).ok());
}

TEST_CASE("The server answers gRPC reflection with its services", "[integration]") {
  auto server = StartServer();
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&](int want_tag) {
    void* tag = nullptr;
    bool ok = false;
    REQUIRE(cq.Next(&tag, &ok));
    CHECK(tag == reinterpret_cast<void*>(want_tag));
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  REQUIRE(step(1));
  // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
  const std::string request("\x3a\x00", 2);
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  call->Write(request_buffer, reinterpret_cast<void*>(2));
  REQUIRE(step(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  REQUIRE(step(3));
  grpc::ByteBuffer response_buffer;
  call->Read(&response_buffer, reinterpret_cast<void*>(4));
  REQUIRE(step(4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  CHECK(status.ok());
  std::vector<grpc::Slice> slices;
  REQUIRE(response_buffer.Dump(&slices).ok());
  std::string response;
  for (const grpc::Slice& s : slices) {
    response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // The ListServiceResponse names every service.
  CHECK(response.find("pqkv.v1.Pqkv") != std::string::npos);
  CHECK(response.find("grpc.health.v1.Health") != std::string::npos);
}

TEST_CASE("The server closes sessions idle past --session_ttl_seconds", "[integration]") {
  auto server = StartServer({"--session_ttl_seconds=0.5"});
  auto client = Connect(*server);
  SessionOptions options;
  options.shape = {1, 1, 1, 8, DType::kFp32};
  absl::StatusOr<std::string> id = client->CreateSession(options);
  REQUIRE(id.ok());
  std::vector<float> kv(1000 * 8, 1.0f);
  REQUIRE(client->UploadPrefill(*id, 0, 0, 1000, kv.data(), kv.data(), false).ok());
  CHECK(client->GetServerStats()->num_sessions == 1);
  CHECK(client->GetServerStats()->bytes_held > 0);
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (client->GetServerStats()->num_sessions > 0 && absl::Now() < give_up) {
    std::this_thread::yield();
  }
  CHECK(client->GetServerStats()->num_sessions == 0);
  CHECK(client->GetServerStats()->bytes_held == 0);  // its pages are back in the arena
  CHECK(client->GetSession(*id).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("A memory-budget refusal names the numbers and leaves the server healthy",
          "[integration]") {
  auto server = testing::ServerProcess::Start(
      kServer, {"--memory_budget=8MiB", "--page_size=64KiB", "--log_level=warn"});
  REQUIRE(server.ok());
  auto client = Connect(**server);
  SessionOptions options;
  options.shape = {1, 1, 1, 128, DType::kFp32};  // 512-byte rows: 8 MiB is 8192 K+V rows
  absl::StatusOr<std::string> big = client->CreateSession(options);
  REQUIRE(big.ok());
  std::vector<float> kv(20000 * 128, 0.25f);
  const absl::Status refused = client->UploadPrefill(*big, 0, 0, 20000, kv.data(), kv.data(), true);
  CHECK(refused.code() == absl::StatusCode::kResourceExhausted);
  INFO(refused.message());
  CHECK(std::string(refused.message()).find("budget") != std::string::npos);
  CHECK(std::string(refused.message()).find("8388608") != std::string::npos);
  // Still serving: a session that fits works, and closing the big one frees its part.
  REQUIRE(client->CloseSession(*big).ok());
  CHECK(client->GetServerStats()->bytes_held == 0);
  absl::StatusOr<std::string> small = client->CreateSession(options);
  REQUIRE(small.ok());
  REQUIRE(client->UploadPrefill(*small, 0, 0, 2000, kv.data(), kv.data(), true).ok());
  auto stream = client->OpenRetrievalStream();
  REQUIRE(stream.ok());
  std::vector<float> query(128, 0.5f);
  RetrieveQuery q{*small, query, 16};
  auto results = (*stream)->Retrieve(0, {&q, 1});
  REQUIRE(results.ok());
  CHECK((*results)[0].status.ok());
  CHECK((*server)->Stop() == 0);
}

TEST_CASE("Bearer tokens: wrong or missing ones are refused, sessions belong to theirs",
          "[integration]") {
  const std::string tokens = std::string(std::getenv("TEST_TMPDIR")) + "/tokens";
  std::ofstream(tokens) << "# name:token\nalice:token-a\nbob:token-b\n";
  auto server = StartServer({"--auth_tokens_file=" + tokens});
  const auto connect_as = [&](const std::string& token) {
    ClientOptions options;
    options.auth_token = token;
    return Client::Connect(server->address(), options).value();
  };
  auto alice = connect_as("token-a");
  auto bob = connect_as("token-b");
  SessionOptions options;
  options.session_id = "alice-1";
  options.shape = {1, 1, 2, 8, DType::kFp32};
  REQUIRE(alice->CreateSession(options).ok());
  std::vector<float> kv(200 * 8, 0.5f), query(2 * 8, 0.25f);
  REQUIRE(alice->UploadPrefill("alice-1", 0, 0, 200, kv.data(), kv.data(), true).ok());

  SECTION("another token sees nothing") {
    CHECK(bob->GetSession("alice-1").status().code() == absl::StatusCode::kNotFound);
    CHECK(bob->CloseSession("alice-1").code() == absl::StatusCode::kNotFound);
    CHECK(bob->ListSessions()->empty());
    std::vector<uint8_t> buffer(64);
    CHECK(bob->FetchKv("alice-1", 0, {{{0, {0}}}}, buffer.data(), buffer.data(), 64)
              .status()
              .code() == absl::StatusCode::kNotFound);
    auto stream = bob->OpenRetrievalStream().value();
    const RetrieveQuery q{"alice-1", query, 4};
    auto results = stream->Retrieve(0, {&q, 1});
    REQUIRE(results.ok());
    CHECK((*results)[0].status.code() == absl::StatusCode::kNotFound);
    CHECK(alice->GetSession("alice-1").ok());  // still there
    // Ids are per token: bob may use the same id, which tells him nothing about alice's.
    CHECK(bob->CreateSession(options).ok());
    CHECK(bob->GetSession("alice-1")->layers[0].num_tokens == 0);
    CHECK(alice->GetSession("alice-1")->layers[0].num_tokens == 200);
  }
  SECTION("a wrong or missing token is UNAUTHENTICATED") {
    for (const std::string token : {"token-c", ""}) {
      auto stranger = connect_as(token);
      CHECK(stranger->GetServerStats().status().code() == absl::StatusCode::kUnauthenticated);
      CHECK(stranger->CreateSession(options).status().code() == absl::StatusCode::kUnauthenticated);
      CHECK(stranger->UploadPrefill("alice-1", 0, 200, 1, kv.data(), kv.data(), false).code() ==
            absl::StatusCode::kUnauthenticated);
      auto stream = stranger->OpenRetrievalStream().value();
      const RetrieveQuery q{"alice-1", query, 4};
      auto results = stream->Retrieve(0, {&q, 1});
      REQUIRE(results.ok());
      // The stream was refused: the item carries the server's code and reason.
      CHECK((*results)[0].status.code() == absl::StatusCode::kUnauthenticated);
      const std::string why((*results)[0].status.message());
      CHECK((absl::StrContains(why, "unknown token") || absl::StrContains(why, "missing")));
    }
    CHECK(alice->GetSession("alice-1")->layers[0].num_tokens == 200);  // nothing appended
  }
}

// Malformed uploads the SDK would never send, through the raw stub.
TEST_CASE("The server rejects bad AppendKv chunks with a clear status", "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  SessionOptions options;
  options.session_id = "dup";
  options.shape = {2, 1, 2, 8, DType::kFp16};
  REQUIRE(client->CreateSession(options).ok());
  CHECK(client->CreateSession(options).status().code() == absl::StatusCode::kAlreadyExists);
  SessionOptions bad = options;
  bad.session_id = "";
  bad.shape.num_kv_heads = 2;
  bad.shape.num_query_heads = 3;  // not a multiple of the kv heads
  CHECK(client->CreateSession(bad).status().code() == absl::StatusCode::kInvalidArgument);

  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Pqkv::NewStub(channel);
  const auto append = [&](v1::AppendKvRequest chunk) {
    grpc::ClientContext context;
    v1::AppendKvResponse response;
    auto writer = stub->AppendKv(&context, &response);
    writer->Write(chunk);
    writer->WritesDone();
    return writer->Finish();
  };
  v1::AppendKvRequest good;
  good.set_session_id("dup");
  good.set_layer(0);
  good.set_token_begin(0);
  good.set_num_tokens(4);
  good.set_dtype(v1::DTYPE_FP16);
  good.set_keys(std::string(4 * 8 * 2, '\0'));
  good.set_values(std::string(4 * 8 * 2, '\0'));

  struct Case {
    const char* what;
    std::function<void(v1::AppendKvRequest&)> mutate;
    grpc::StatusCode code;
    const char* message_part;
  };
  const std::vector<Case> cases = {
      {"unknown session", [](auto& c) { c.set_session_id("nope"); }, grpc::NOT_FOUND, "nope"},
      {"layer out of range", [](auto& c) { c.set_layer(2); }, grpc::INVALID_ARGUMENT, "layer 2"},
      {"dtype mismatch", [](auto& c) { c.set_dtype(v1::DTYPE_FP32); }, grpc::INVALID_ARGUMENT,
       "dtype"},
      {"byte length", [](auto& c) { c.mutable_keys()->pop_back(); }, grpc::INVALID_ARGUMENT,
       "bytes"},
      {"gap", [](auto& c) { c.set_token_begin(1); }, grpc::INVALID_ARGUMENT, "gap"},
      {"Inf key", [](auto& c) { (*c.mutable_keys())[1] = '\x7c'; }, grpc::INVALID_ARGUMENT, "Inf"},
      {"NaN value", [](auto& c) { (*c.mutable_values())[1] = '\x7e'; }, grpc::INVALID_ARGUMENT,
       "values contain NaN or Inf (first at kv head 0, token 0)"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    v1::AppendKvRequest chunk = good;
    c.mutate(chunk);
    const grpc::Status status = append(chunk);
    CHECK(status.error_code() == c.code);
    CHECK(status.error_message().find(c.message_part) != std::string::npos);
  }
  // Nothing above changed the session; the good chunk still applies at position 0,
  // and a second copy of it now overlaps.
  CHECK(client->GetSession("dup")->layers[0].num_tokens == 0);
  CHECK(append(good).ok());
  const grpc::Status overlap = append(good);
  CHECK(overlap.error_code() == grpc::INVALID_ARGUMENT);
  CHECK(overlap.error_message().find("overlap") != std::string::npos);
  CHECK(client->GetSession("dup")->layers[0].num_tokens == 4);

  // Fetch and info errors.
  std::vector<uint8_t> buffer(64);
  CHECK(client->FetchKv("dup", 0, {{{1, {0}}}}, buffer.data(), buffer.data(), 64).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(client->FetchKv("dup", 0, {{{0, {4}}}}, buffer.data(), buffer.data(), 64).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(client->GetSession("nope").status().code() == absl::StatusCode::kNotFound);
  CHECK(client->CloseSession("nope").code() == absl::StatusCode::kNotFound);
  CHECK(client->ListSessions()->size() == 1);
}

// What a raw (GenericStub) call got back: its status and the bytes of its response.
struct RawReply {
  grpc::Status status;
  std::optional<std::string> response;  // absent when no response message came
};

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  REQUIRE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// Sends `messages`, bytes as they are, as the stream of client-streaming `method`.
RawReply RawClientStream(grpc::GenericStub& stub, const std::string& method,
                         const std::vector<std::string>& messages) {
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  auto call = stub.PrepareCall(&context, method, &cq);
  // Each op is awaited before the next starts; returns its ok.
  intptr_t tag = 0;
  auto step = [&] {
    void* got = nullptr;
    bool ok = false;
    REQUIRE(cq.Next(&got, &ok));
    CHECK(got == reinterpret_cast<void*>(tag));
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(++tag));
  REQUIRE(step());
  for (const std::string& message : messages) {
    grpc::Slice slice(message);
    grpc::ByteBuffer buffer(&slice, 1);
    call->Write(buffer, reinterpret_cast<void*>(++tag));
    if (!step()) break;  // the server ended the call
  }
  call->WritesDone(reinterpret_cast<void*>(++tag));
  step();
  RawReply reply;
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(++tag));
  if (step()) reply.response = Flatten(response);
  call->Finish(&reply.status, reinterpret_cast<void*>(++tag));
  step();
  cq.Shutdown();
  void* ignored_tag;
  bool ignored_ok;
  while (cq.Next(&ignored_tag, &ignored_ok)) {
  }
  return reply;
}

RawReply RawUnary(grpc::GenericStub& stub, const std::string& method, const std::string& request) {
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1), response_buffer;
  grpc::ClientContext context;
  absl::Notification done;
  RawReply reply;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request_buffer, &response_buffer,
                 [&](grpc::Status s) {
                   reply.status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (reply.status.ok()) reply.response = Flatten(response_buffer);
  return reply;
}

// Issue 15, defect 4: gRPC's generated callback method reports a message that does not
// parse as the end of the client's writes, which ended the stream with OK.
TEST_CASE("An AppendKv message that does not parse ends the stream with INVALID_ARGUMENT",
          "[integration]") {
  auto server = StartServer();
  auto client = Connect(*server);
  SessionOptions options;
  options.session_id = "s";
  options.shape = {1, 1, 1, 8, DType::kFp32};
  REQUIRE(client->CreateSession(options).ok());
  const auto chunk = [](uint64_t token_begin) {
    v1::AppendKvRequest chunk;
    chunk.set_session_id("s");
    chunk.set_token_begin(token_begin);
    chunk.set_num_tokens(10);
    chunk.set_dtype(v1::DTYPE_FP32);
    chunk.set_keys(std::string(10 * 8 * 4, '\0'));
    chunk.set_values(std::string(10 * 8 * 4, '\0'));
    return chunk.SerializeAsString();
  };
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  const std::string method = "/pqkv.v1.Pqkv/AppendKv";

  SECTION("a garbage message between good ones") {
    const RawReply reply =
        RawClientStream(stub, method, {chunk(0), "\xff\xff\xff\xff", chunk(10), chunk(20)});
    INFO(reply.status.error_message());
    CHECK(reply.status.error_code() == grpc::INVALID_ARGUMENT);
    CHECK(absl::StrContains(reply.status.error_message(),
                            "AppendKv message 2 did not parse as pqkv.v1.AppendKvRequest"));
    CHECK(absl::StrContains(reply.status.error_message(), "applied 1 chunks before it"));
    CHECK(client->GetSession("s")->layers[0].num_tokens == 10);
  }
  SECTION("one truncated message") {
    std::string truncated = chunk(0);
    truncated.resize(truncated.size() - 5);
    const RawReply reply = RawClientStream(stub, method, {truncated});
    INFO(reply.status.error_message());
    CHECK(reply.status.error_code() == grpc::INVALID_ARGUMENT);
    CHECK(absl::StrContains(reply.status.error_message(), "AppendKv message 1 did not parse"));
    CHECK(client->GetSession("s")->layers[0].num_tokens == 0);
  }
  SECTION("good messages only: OK and the counts") {
    const RawReply reply = RawClientStream(stub, method, {chunk(0), chunk(10), chunk(20)});
    INFO(reply.status.error_message());
    REQUIRE(reply.status.ok());
    REQUIRE(reply.response.has_value());
    v1::AppendKvResponse response;
    REQUIRE(response.ParseFromString(*reply.response));
    CHECK(response.chunks_applied() == 3);
    CHECK(response.tokens_applied() == 30);
    CHECK(client->GetSession("s")->layers[0].num_tokens == 30);
  }
}

// Issue 15: gRPC's generated callback unary handler answers a request that does not parse
// with UNIMPLEMENTED and an empty message.
TEST_CASE("A unary request that does not parse gets INVALID_ARGUMENT saying so", "[integration]") {
  auto server = StartServer();
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  for (const std::string rpc : {"CreateSession", "FetchKv", "CloseSession", "GetSession",
                                "ListSessions", "GetServerStats"}) {
    INFO(rpc);
    const RawReply reply = RawUnary(stub, "/pqkv.v1.Pqkv/" + rpc, "\xff\xff\xff\xff");
    INFO(reply.status.error_message());
    CHECK(reply.status.error_code() == grpc::INVALID_ARGUMENT);
    CHECK(absl::StrContains(
        reply.status.error_message(),
        absl::StrCat("the ", rpc, " request did not parse as pqkv.v1.", rpc, "Request")));
  }
  // A request that parses still gets its response.
  const RawReply stats = RawUnary(stub, "/pqkv.v1.Pqkv/GetServerStats", "");
  REQUIRE(stats.status.ok());
  REQUIRE(stats.response.has_value());
  v1::GetServerStatsResponse response;
  REQUIRE(response.ParseFromString(*stats.response));
  CHECK(!response.version().empty());
}

}  // namespace
}  // namespace pqkv

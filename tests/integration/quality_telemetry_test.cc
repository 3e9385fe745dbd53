// Live quality telemetry (server/metrics/quality_sampler.h) against the truth: on
// generated data, with every item sampled, the server's mean sampled mass recall must
// agree with the quality harness's offline figure for the same selections within 0.01,
// both measured over the tokens the server held (the harness leaves out the query's own
// key: counted in, it adds up to 0.012 here).
// Also: the per-layer figures in GetSession, and nothing exported when sampling is off.
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "httplib.h"
#include "quality/quality_harness.h"
#include "tests/testing/index_wait.h"
#include "tests/testing/patterned_kv.h"
#include "tests/testing/server_process.h"
#include "workload/long_context_kv.h"

namespace pqkv::quality {
namespace {

constexpr char kServer[] = "server/pqkv-server";

std::string Scrape(const testing::ServerProcess& server) {
  httplib::Client http("127.0.0.1", server.metrics_port());
  const httplib::Result result = http.Get("/metrics");
  REQUIRE(result);
  REQUIRE(result->status == 200);
  return result->body;
}

// The sum of a metric's values over every label set (lines "name{...} value").
double SumOf(const std::string& text, const std::string& name) {
  double total = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, name) || line.size() <= name.size() ||
        (line[name.size()] != '{' && line[name.size()] != ' ')) {
      continue;
    }
    double value = 0;
    REQUIRE(absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value));
    total += value;
  }
  return total;
}

// Waits (bounded) until the sampler has measured `samples` items.
std::string ScrapeAfter(const testing::ServerProcess& server, double samples) {
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  std::string text = Scrape(server);
  while (SumOf(text, "pqkv_quality_mass_recall_count") < samples && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(100));
    text = Scrape(server);
  }
  return text;
}

TEST_CASE("Sampled mass recall agrees with the quality harness's offline figure", "[quality]") {
  auto server = testing::ServerProcess::Start(
      kServer, {"--log_level=warn", "--quality_sample_rate=1", "--metrics_port=0"});
  REQUIRE(server.ok());
  auto client = Client::Connect((*server)->address());
  REQUIRE(client.ok());
  workload::LongContextSpec spec;
  spec.num_layers = 2;
  spec.num_kv_heads = 4;
  spec.num_query_heads = 16;
  spec.head_dim = 64;
  spec.num_tokens = 4096;
  spec.num_queries = 8;
  spec.seed = 11;
  const workload::KvDataSet data = workload::GenerateLongContext(spec);
  const std::string pq = GENERATE(std::string("2x6"), std::string("default"));
  HarnessOptions options;
  options.budget = 1.0 / 16;
  options.methods = {"pqkv"};
  options.pq = {ParsePqConfig(pq).value()};
  options.include_query_token = false;
  options.close_sessions = false;  // the sampler skips a closed session's items
  absl::StatusOr<HarnessReport> report = RunQualityHarness(data, client->get(), options);
  REQUIRE(report.ok());
  const QualityRow* all = nullptr;
  for (const QualityRow& row : report->rows) {
    if (row.method == "pqkv" && row.head_type == "all") all = &row;
  }
  REQUIRE(all != nullptr);

  const double items = spec.num_layers * spec.num_queries;
  const std::string text = ScrapeAfter(**server, items);
  const double count = SumOf(text, "pqkv_quality_mass_recall_count");
  REQUIRE(count == items);
  const double sampled = SumOf(text, "pqkv_quality_mass_recall_sum") / count;
  const double sampled_recall =
      SumOf(text, "pqkv_quality_recall_at_k_sum") / SumOf(text, "pqkv_quality_recall_at_k_count");
  std::printf("%-8s offline mass %.4f recall@k %.4f; sampled mass %.4f recall@k %.4f\n", pq.c_str(),
              all->quality.mass_recall, all->quality.recall_at_k, sampled, sampled_recall);
  CHECK(std::abs(sampled - all->quality.mass_recall) <= 0.01);
  CHECK(sampled_recall > 0);
  CHECK(sampled_recall <= 1);
  // Labelled by index setting and layer bucket (the default: one 4-bit sub-space per
  // dimension, no re-rank).
  const std::string label = pq == "2x6" ? "index=\"2x6\"" : "index=\"64x4\"";
  CHECK(text.find("pqkv_quality_mass_recall_count{" + label + ",layer=\"0-7\"}") !=
        std::string::npos);
}

TEST_CASE("GetSession reports each layer's sampled mass recall", "[quality]") {
  auto server = testing::ServerProcess::Start(
      kServer, {"--log_level=warn", "--quality_sample_rate=1", "--metrics_port=0"});
  REQUIRE(server.ok());
  auto client = Client::Connect((*server)->address()).value();
  SessionOptions options;
  options.shape = {2, 2, 8, 64, DType::kFp16};
  const std::string id = client->CreateSession(options).value();
  const size_t n = 4096;
  for (uint32_t layer = 0; layer < 2; ++layer) {
    const testing::PatternedLayer kv = testing::MakePatternedLayer(options.shape, n, layer + 1);
    REQUIRE(client->UploadPrefill(id, layer, 0, n, kv.keys.data(), kv.values.data(), true).ok());
  }
  REQUIRE(testing::WaitForIndexes(*client, id, absl::Seconds(60)).ok());
  auto stream = client->OpenRetrievalStream().value();
  std::vector<float> query(8 * 64);
  for (size_t i = 0; i < query.size(); ++i) query[i] = 0.05f * static_cast<float>(i % 7) - 0.1f;
  const int calls = 3;
  for (int c = 0; c < calls; ++c) {
    RetrieveQuery q{id, query, 64};
    auto results = stream->Retrieve(1, {&q, 1});  // layer 1 only
    REQUIRE(results.ok());
    REQUIRE((*results)[0].status.ok());
  }
  ScrapeAfter(**server, calls);
  const SessionInfo info = client->GetSession(id).value();
  REQUIRE(info.layers.size() == 2);
  CHECK(info.layers[0].quality_samples == 0);
  CHECK(info.layers[1].quality_samples == calls);
  CHECK(info.layers[1].mean_mass_recall > 0);
  CHECK(info.layers[1].mean_mass_recall <= 1.0 + 1e-6);
  // The same query each time: the last equals the mean.
  CHECK(info.layers[1].last_mass_recall == Approx(info.layers[1].mean_mass_recall));
}

TEST_CASE("Nothing is sampled with --quality_sample_rate=0", "[quality]") {
  auto server = testing::ServerProcess::Start(
      kServer, {"--log_level=warn", "--quality_sample_rate=0", "--metrics_port=0"});
  REQUIRE(server.ok());
  CHECK(Scrape(**server).find("pqkv_quality_") == std::string::npos);
}

}  // namespace
}  // namespace pqkv::quality

// The quality gate: the harness (quality/quality_harness.h) on a small real capture
// (testdata/smollm2-135m, SmolLM2-135M-Instruct) and a small generated set, through the
// real server. A change that makes pqkv pick worse tokens fails here.
//
// Targets (docs/quality.md), at a 1/16 budget with the recommended setting
// (4x8+pairs+rerank4): attention-mass recall >= 0.95 on average over heads, within one
// point of the exact top-k oracle, ahead of StreamingLLM's and Quest's selections. On
// generated data the average cannot reach 0.95 for any top-k method (the oracle's
// neither): its diffuse heads spread their mass by design, so there the 0.95 applies to
// the streaming and retrieval heads.
#include <cstdio>
#include <string>

#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "quality/quality_harness.h"
#include "tests/testing/server_process.h"
#include "workload/kv_dataset_io.h"
#include "workload/long_context_kv.h"

namespace pqkv::quality {
namespace {

constexpr char kServer[] = "server/pqkv-server";

const QualityRow& Row(const HarnessReport& report, const std::string& method,
                      const std::string& head_type = "all") {
  for (const QualityRow& row : report.rows) {
    if (row.method == method && row.head_type == head_type) return row;
  }
  FAIL("no row for " << method << " " << head_type);
  return report.rows.front();
}

HarnessReport Run(const workload::KvDataSet& data) {
  auto server = testing::ServerProcess::Start(kServer, {"--log_level=warn"});
  REQUIRE(server.ok());
  auto client = Client::Connect((*server)->address());
  REQUIRE(client.ok());
  HarnessOptions options;
  options.budget = 1.0 / 16;
  options.methods = {"pqkv", "oracle", "streaming", "quest"};
  options.pq = {ParsePqConfig("4x8+pairs+rerank4").value()};
  absl::StatusOr<HarnessReport> report = RunQualityHarness(data, client->get(), options);
  REQUIRE(report.ok());
  // The figures, for the test log.
  for (const QualityRow& row : report->rows) {
    std::printf("%-9s %-17s %-9s heads %3u  mass %.4f  error %.4f  recall@k %.4f\n",
                row.method.c_str(), row.pq.c_str(), row.head_type.c_str(), row.heads,
                row.quality.mass_recall, row.quality.output_rel_error, row.quality.recall_at_k);
  }
  return *std::move(report);
}

// Mass recall of pqkv against the oracle and the baselines, over every head.
void CheckRanking(const HarnessReport& report) {
  const double pqkv = Row(report, "pqkv").quality.mass_recall;
  const double oracle = Row(report, "oracle").quality.mass_recall;
  INFO("pqkv mass " << pqkv << ", oracle " << oracle << ", streaming "
                    << Row(report, "streaming").quality.mass_recall << ", quest "
                    << Row(report, "quest").quality.mass_recall);
  CHECK(pqkv >= oracle - 0.01);
  CHECK(pqkv <= oracle + 1e-9);  // the oracle's set has the most mass by definition
  CHECK(pqkv > Row(report, "streaming").quality.mass_recall + 0.02);
  CHECK(pqkv > Row(report, "quest").quality.mass_recall + 0.02);
}

TEST_CASE("pqkv meets the mass-recall target on a real SmolLM2 capture", "[quality]") {
  absl::StatusOr<workload::KvDataSet> data = workload::LoadKvDataSet("testdata/smollm2-135m");
  REQUIRE(data.ok());
  const HarnessReport report = Run(*data);
  CheckRanking(report);
  CHECK(Row(report, "pqkv").quality.mass_recall >= 0.95);
}

TEST_CASE("pqkv meets the mass-recall target on generated long-context data", "[quality]") {
  workload::LongContextSpec spec;
  spec.num_layers = 4;
  spec.num_kv_heads = 8;
  spec.num_query_heads = 32;
  spec.head_dim = 128;
  spec.num_tokens = 8192;
  spec.num_queries = 8;
  spec.seed = 7;
  const HarnessReport report = Run(workload::GenerateLongContext(spec));
  CheckRanking(report);
  CHECK(Row(report, "pqkv", "streaming").quality.mass_recall >= 0.95);
  CHECK(Row(report, "pqkv", "retrieval").quality.mass_recall >= 0.95);
}

}  // namespace
}  // namespace pqkv::quality

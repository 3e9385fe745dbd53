#include "quality/quality_harness.h"

#include <string>

#include "catch2/catch.hpp"
#include "workload/long_context_kv.h"

namespace pqkv::quality {
namespace {

TEST_CASE("ParsePqConfig reads MxB[+pairs][+rerankR] and names it back", "[quality]") {
  absl::StatusOr<PqConfig> c = ParsePqConfig("4x8+pairs+rerank4");
  REQUIRE(c.ok());
  CHECK(c->subspaces == 4);
  CHECK(c->bits == 8);
  CHECK(c->rope_pairs);
  CHECK(c->rerank == 4);
  CHECK(c->Name() == "4x8+pairs+rerank4");
  CHECK(ParsePqConfig("2x6")->Name() == "2x6");
  CHECK(ParsePqConfig("2x6")->rerank == 1);               // no re-ranking unless named
  absl::StatusOr<PqConfig> d = ParsePqConfig("default");  // the server's choices
  REQUIRE(d.ok());
  CHECK(d->server_default);
  CHECK(d->rerank == 0);
  CHECK(d->Name() == "default");
  CHECK(ParsePqConfig("2x").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParsePqConfig("2x6+center").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParsePqConfig("2x6+rerankx").status().code() == absl::StatusCode::kInvalidArgument);
}

workload::KvDataSet SmallTrace() {
  workload::LongContextSpec spec;
  spec.num_layers = 2;
  spec.num_kv_heads = 4;
  spec.num_query_heads = 8;
  spec.head_dim = 64;
  spec.num_tokens = 2048;
  spec.num_queries = 4;
  return workload::GenerateLongContext(spec);
}

TEST_CASE("The harness ranks the baselines as their definitions imply", "[quality]") {
  HarnessOptions options;
  options.methods = {"oracle", "streaming", "quest", "random"};
  absl::StatusOr<HarnessReport> report = RunQualityHarness(SmallTrace(), nullptr, options);
  REQUIRE(report.ok());
  auto all = [&](const std::string& method) {
    for (const QualityRow& row : report->rows) {
      if (row.method == method && row.head_type == "all") return row.quality;
    }
    FAIL("no row for " << method);
    return SelectionQuality{};
  };
  // The oracle's selection is the exact top-k: full recall, and no method attends to
  // more mass with as many tokens.
  CHECK(all("oracle").recall_at_k == 1.0);
  for (const char* m : {"streaming", "quest", "random"}) {
    CHECK(all(m).mass_recall <= all("oracle").mass_recall);
    CHECK(all(m).recall_at_k < 1.0);
  }
  CHECK(all("random").recall_at_k == Approx(1.0 / 16).margin(0.02));
  CHECK(report->k_first == 128);  // 1/16 of the first query position, 2044, rounded
}

TEST_CASE("The harness refuses what it cannot run", "[quality]") {
  HarnessOptions options;
  options.methods = {"pqkv"};
  CHECK(RunQualityHarness(SmallTrace(), nullptr, options).status().code() ==
        absl::StatusCode::kInvalidArgument);
  options.methods = {"bogus"};
  CHECK(RunQualityHarness(SmallTrace(), nullptr, options).status().code() ==
        absl::StatusCode::kInvalidArgument);
  options.methods = {"oracle"};
  options.budget = 0.99;
  CHECK(RunQualityHarness(SmallTrace(), nullptr, options).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pqkv::quality

// quality_bench: does pqkv pick the tokens that matter? Runs a decode trace through a
// real pqkv-server and through the comparison methods, and reports recall@k against the
// exact top-k, attention-mass recall and the attention output's relative error, per head
// type (quality/quality_harness.h; docs/quality.md has the figures and commands).
//
//   bazel run -c opt //bench:quality_bench -- --data generated --tokens 32768 --seed 7
//       --budget 0.0625 --json     (one command line)
//   bazel run -c opt //bench:quality_bench -- --data $PWD/testdata/smollm2-135m
//
// Data: `generated` (workload/long_context_kv.h, shape flags below) or a capture
// directory (tools/capture). Methods: pqkv (each --pq setting), oracle (exact top-k),
// streaming (sinks + a longer recent window), quest (16-token pages, min/max bound),
// random. Every method attends to the same S sinks + W recent tokens plus k = budget x p
// tokens of its choice. Starts and stops its own server unless --server is given.
//
// --json prints one object per (method, PQ setting, head type, budget) with fields method,
// pq, data, tokens, budget, head_type ("all": the mean over every kv head), heads,
// recall_at_k, mass_recall, output_rel_error, retrieve_us (the pqkv rows of head_type all:
// median round trip of one layer's Retrieve, every kv head; 0 otherwise), score_error_mean
// and score_error_max (pqkv: |returned score / exact score - 1| over every returned
// position, the exact score being the GQA softmax-sum over the tokens the server held; -1
// otherwise). Progress goes to a terminal's stderr.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench_setup.h"
#include "client/pqkv_client.h"
#include "quality/data_source.h"
#include "quality/quality_harness.h"
#include "tests/testing/server_process.h"

ABSL_FLAG(std::string, data, "generated", "`generated`, or a capture directory (tools/capture).");
ABSL_FLAG(uint32_t, tokens, 32768, "Generated: positions with K/V (decode queries included).");
ABSL_FLAG(uint64_t, seed, 7, "Generated data's seed (and random selection's).");
ABSL_FLAG(uint32_t, layers, 8, "Generated: layers.");
ABSL_FLAG(uint32_t, kv_heads, 8, "Generated: kv heads per layer.");
ABSL_FLAG(uint32_t, query_heads, 32, "Generated: query heads per layer.");
ABSL_FLAG(uint32_t, head_dim, 128, "Generated: head dimension.");
ABSL_FLAG(double, rope_theta, 5e5, "Generated: RoPE base.");
ABSL_FLAG(uint32_t, queries, 16, "Generated: decode queries (the last positions).");
ABSL_FLAG(std::string, budget, "0.0625",
          "Fractions of the context each method selects (k = budget x p), comma-separated.");
ABSL_FLAG(uint32_t, sinks, 4, "Sink tokens S every method keeps.");
ABSL_FLAG(uint32_t, recent, 64, "Recent window W every method keeps.");
ABSL_FLAG(std::string, methods, "pqkv,oracle,streaming,quest,random", "Methods to run.");
ABSL_FLAG(std::string, pq, "2x6,4x8,4x8+pairs+rerank4",
          "pqkv index settings, MxB[+pairs][+rerankR], comma-separated.");
ABSL_FLAG(uint32_t, kmeans_iterations, 10, "k-means iterations of the pqkv index.");
ABSL_FLAG(std::string, server, "", "A running pqkv-server; empty: start one.");
ABSL_FLAG(bool, json, false, "One JSON object per row instead of the table.");

namespace pqkv {
namespace {

constexpr char kServer[] = "server/pqkv-server";

int Fail(const std::string& what) {
  std::fprintf(stderr, "quality_bench: %s\n", what.c_str());
  return 1;
}

int Run() {
  const std::string data_flag = absl::GetFlag(FLAGS_data);
  const bool generated = data_flag == "generated";
  const absl::Time load_start = absl::Now();
  workload::LongContextSpec spec;
  spec.num_layers = absl::GetFlag(FLAGS_layers);
  spec.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  spec.num_query_heads = absl::GetFlag(FLAGS_query_heads);
  spec.head_dim = absl::GetFlag(FLAGS_head_dim);
  spec.num_tokens = absl::GetFlag(FLAGS_tokens);
  spec.num_queries = absl::GetFlag(FLAGS_queries);
  spec.rope_theta = absl::GetFlag(FLAGS_rope_theta);
  spec.seed = absl::GetFlag(FLAGS_seed);
  absl::StatusOr<workload::KvDataSet> loaded = quality::LoadOrGenerate(data_flag, spec);
  if (!loaded.ok()) return Fail(loaded.status().ToString());
  workload::KvDataSet data = *std::move(loaded);
  const double load_s = absl::ToDoubleSeconds(absl::Now() - load_start);
  const std::string data_name = generated ? "generated" : data.name;

  quality::HarnessOptions options;
  options.sinks = absl::GetFlag(FLAGS_sinks);
  options.recent = absl::GetFlag(FLAGS_recent);
  options.methods = absl::StrSplit(absl::GetFlag(FLAGS_methods), ',', absl::SkipEmpty());
  options.kmeans_iterations = absl::GetFlag(FLAGS_kmeans_iterations);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.pq.clear();
  for (absl::string_view text : absl::StrSplit(absl::GetFlag(FLAGS_pq), ',', absl::SkipEmpty())) {
    absl::StatusOr<quality::PqConfig> config = quality::ParsePqConfig(text);
    if (!config.ok()) return Fail(config.status().ToString());
    options.pq.push_back(*config);
  }
  // Progress rewrites one terminal line; logs (not a terminal) get none.
  const bool terminal = isatty(STDERR_FILENO);
  if (terminal) {
    options.progress = [](const std::string& line) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      std::fflush(stderr);
    };
  }
  std::vector<double> budgets;
  for (absl::string_view text :
       absl::StrSplit(absl::GetFlag(FLAGS_budget), ',', absl::SkipEmpty())) {
    double b = 0;
    if (!absl::SimpleAtod(text, &b))
      return Fail(absl::StrCat("budget '", text, "' is not a number"));
    budgets.push_back(b);
  }

  std::unique_ptr<testing::ServerProcess> own_server;
  std::string address = absl::GetFlag(FLAGS_server);
  const bool needs_server =
      std::find(options.methods.begin(), options.methods.end(), "pqkv") != options.methods.end();
  if (needs_server && address.empty()) {
    absl::StatusOr<std::unique_ptr<testing::ServerProcess>> started =
        testing::ServerProcess::Start(kServer, {"--log_level=warn"});
    if (!started.ok())
      return Fail(absl::StrCat("cannot start ", kServer, ": ", started.status().ToString()));
    own_server = *std::move(started);
    address = own_server->address();
  }
  std::unique_ptr<Client> client;
  if (needs_server) {
    absl::StatusOr<std::unique_ptr<Client>> connected = Client::Connect(address);
    if (!connected.ok()) return Fail(connected.status().ToString());
    client = *std::move(connected);
  }

  if (!absl::GetFlag(FLAGS_json)) {
    std::printf("Setup: commit %s, CPU %s\n", bench::Commit().c_str(), bench::CpuModel().c_str());
    std::printf(
        "Data: %s, %zu layers x %u kv heads x %u query heads x %u dims, %u positions, %zu "
        "decode queries at %u..%u, RoPE base %g (%s in %.1f s)\n",
        data_name.c_str(), data.layers.size(), data.num_kv_heads, data.num_query_heads,
        data.head_dim, data.num_tokens, data.query_positions.size(), data.query_positions.front(),
        data.query_positions.back(), data.rope_theta, generated ? "generated" : "loaded", load_s);
    std::printf("Each method: %u sinks + %u recent + k selected; server %s\n", options.sinks,
                options.recent, address.empty() ? "(none)" : address.c_str());
  }
  for (double budget : budgets) {
    options.budget = budget;
    const absl::Time start = absl::Now();
    absl::StatusOr<quality::HarnessReport> report =
        quality::RunQualityHarness(data, client.get(), options);
    if (terminal) std::fprintf(stderr, "\r\033[K");
    if (!report.ok()) return Fail(report.status().ToString());
    if (absl::GetFlag(FLAGS_json)) {
      for (const quality::QualityRow& row : report->rows) {
        std::printf(
            "{\"method\": \"%s\", \"pq\": \"%s\", \"data\": \"%s\", \"tokens\": %u, \"budget\": "
            "%g, \"head_type\": \"%s\", \"heads\": %u, \"recall_at_k\": %.4f, \"mass_recall\": "
            "%.4f, \"output_rel_error\": %.4f, \"retrieve_us\": %.0f, \"score_error_mean\": "
            "%.4g, \"score_error_max\": %.4g}\n",
            row.method.c_str(), row.pq.c_str(), data_name.c_str(), data.num_tokens, budget,
            row.head_type.c_str(), row.heads, row.quality.recall_at_k, row.quality.mass_recall,
            row.quality.output_rel_error, row.retrieve_median_us, row.score_error_mean,
            row.score_error_max);
      }
      continue;
    }
    std::printf(
        "\nbudget %g: k = %u..%u per kv head; head types %s; %.1f s\n", budget, report->k_first,
        report->k_last,
        report->head_types_measured ? "classified from the data's attention" : "as generated",
        absl::ToDoubleSeconds(absl::Now() - start));
    std::printf("%-10s %-20s %-10s %5s  %9s  %11s  %16s  %11s  %10s  %10s\n", "method", "pq",
                "head_type", "heads", "recall@k", "mass_recall", "output_rel_error", "retrieve_us",
                "score_err", "score_max");
    for (const quality::QualityRow& row : report->rows) {
      std::printf(
          "%-10s %-20s %-10s %5u  %9.4f  %11.4f  %16.4f  %11s  %10s  %10s\n", row.method.c_str(),
          row.pq.empty() ? "-" : row.pq.c_str(), row.head_type.c_str(), row.heads,
          row.quality.recall_at_k, row.quality.mass_recall, row.quality.output_rel_error,
          row.retrieve_median_us > 0 ? absl::StrFormat("%.0f", row.retrieve_median_us).c_str()
                                     : "-",
          row.score_error_mean >= 0 ? absl::StrFormat("%.3g", row.score_error_mean).c_str() : "-",
          row.score_error_max >= 0 ? absl::StrFormat("%.3g", row.score_error_max).c_str() : "-");
    }
    std::printf(
        "retrieve_us: median round trip of one layer's Retrieve (all kv heads, indices "
        "only) over loopback; score_err, score_max: |returned score / exact score - 1|, mean "
        "and largest over every returned position\n");
  }
  return 0;
}

}  // namespace
}  // namespace pqkv

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("quality_bench: retrieval quality of pqkv against exact attention");
  absl::ParseCommandLine(argc, argv);
  return pqkv::Run();
}

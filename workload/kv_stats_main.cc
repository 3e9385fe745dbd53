// kv_stats: prints the validation statistics of kv_statistics.h for a generated
// long-context data set or for a captured one, so the two can be compared.
//
//   bazel run -c opt //workload:kv_stats -- --data generated --tokens 32768 --seed 7
//   bazel run -c opt //workload:kv_stats -- --data generated --layers 30 --kv_heads 3
//       --query_heads 9 --head_dim 64 --rope_theta 1e4 --tokens 8192     (SmolLM2-like)
//   bazel run -c opt //workload:kv_stats -- --data /path/to/capture_dir
//
// Flags:
//   --data        "generated", or a capture directory (kv_dataset_io.h)
//   --tokens --layers --kv_heads --query_heads --head_dim --queries --rope_theta --seed
//                 the generated shape (LongContextSpec; ignored for a capture)
//   --retrieval_fraction --diffuse_fraction   the generated head mix
//   --per_head    one line per kv head in the report (default true)
//   --threads     threads for the statistics (0 = all cores)
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "workload/kv_dataset.h"
#include "workload/kv_dataset_io.h"
#include "workload/kv_statistics.h"
#include "workload/long_context_kv.h"

ABSL_FLAG(std::string, data, "generated", "\"generated\" or a capture directory.");
ABSL_FLAG(uint32_t, tokens, 32768, "Generated: tokens (decode positions included).");
ABSL_FLAG(uint32_t, layers, 8, "Generated: layers.");
ABSL_FLAG(uint32_t, kv_heads, 8, "Generated: kv heads.");
ABSL_FLAG(uint32_t, query_heads, 32, "Generated: query heads (GQA).");
ABSL_FLAG(uint32_t, head_dim, 128, "Generated: head dimension.");
ABSL_FLAG(uint32_t, queries, 16, "Generated: decode queries at the last positions.");
ABSL_FLAG(double, rope_theta, 5e5, "Generated: RoPE base.");
ABSL_FLAG(uint64_t, seed, 1, "Generated: seed.");
ABSL_FLAG(double, retrieval_fraction, 0.05, "Generated: share of retrieval heads.");
ABSL_FLAG(double, diffuse_fraction, 0.25, "Generated: share of diffuse heads.");
ABSL_FLAG(bool, per_head, true, "One report line per kv head.");
ABSL_FLAG(uint32_t, threads, 0, "Threads for the statistics (0 = all cores).");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Prints KV data-set statistics (generated or captured).");
  absl::ParseCommandLine(argc, argv);
  using Clock = std::chrono::steady_clock;
  const std::string source = absl::GetFlag(FLAGS_data);
  pqkv::workload::KvDataSet data;
  const auto start = Clock::now();
  if (source == "generated") {
    pqkv::workload::LongContextSpec spec;
    spec.num_tokens = absl::GetFlag(FLAGS_tokens);
    spec.num_layers = absl::GetFlag(FLAGS_layers);
    spec.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
    spec.num_query_heads = absl::GetFlag(FLAGS_query_heads);
    spec.head_dim = absl::GetFlag(FLAGS_head_dim);
    spec.num_queries = absl::GetFlag(FLAGS_queries);
    spec.rope_theta = absl::GetFlag(FLAGS_rope_theta);
    spec.seed = absl::GetFlag(FLAGS_seed);
    spec.retrieval_fraction = absl::GetFlag(FLAGS_retrieval_fraction);
    spec.diffuse_fraction = absl::GetFlag(FLAGS_diffuse_fraction);
    if (spec.num_kv_heads == 0 || spec.num_query_heads % spec.num_kv_heads != 0 ||
        spec.head_dim % 2 != 0 || spec.head_dim < 32 || spec.num_queries == 0 ||
        spec.num_tokens < 256 + spec.num_queries || spec.num_layers == 0) {
      std::fprintf(stderr,
                   "invalid shape: need kv_heads > 0 dividing query_heads, an even head_dim "
                   ">= 32, layers > 0, queries > 0, tokens >= 256 + queries\n");
      return 2;
    }
    data = pqkv::workload::GenerateLongContext(spec);
  } else {
    absl::StatusOr<pqkv::workload::KvDataSet> loaded = pqkv::workload::LoadKvDataSet(source);
    if (!loaded.ok()) {
      std::fprintf(stderr, "cannot load %s: %s\n", source.c_str(),
                   std::string(loaded.status().message()).c_str());
      return 1;
    }
    data = *std::move(loaded);
  }
  const auto loaded_at = Clock::now();
  const std::vector<pqkv::workload::HeadReport> heads =
      pqkv::workload::MeasureDataSet(data, absl::GetFlag(FLAGS_threads));
  const auto measured_at = Clock::now();
  std::fputs(pqkv::workload::FormatReport(data, heads, absl::GetFlag(FLAGS_per_head)).c_str(),
             stdout);
  std::printf("\n%s: %.2f s, statistics: %.2f s\n",
              source == "generated" ? "generation" : "loading",
              std::chrono::duration<double>(loaded_at - start).count(),
              std::chrono::duration<double>(measured_at - loaded_at).count());
  return 0;
}

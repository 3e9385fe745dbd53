// pqkv_demo: an example worker. Against a running pqkv-server it creates a session,
// uploads a generated prefill with planted high-attention tokens, retrieves on every
// layer, fetches and checks the selected K/V bit for bit, appends decode tokens, and
// prints what it retrieved, its quality against exact attention and its latency.
//
//   bazel run -c opt //examples:pqkv_demo -- --server=localhost:50051
//
// Exit status 0 when every fetched row matched the upload, 1 otherwise.
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "client/pqkv_client.h"
#include "workload/end_to_end_flow.h"

ABSL_FLAG(std::string, server, "localhost:50051", "pqkv-server address.");
ABSL_FLAG(uint32_t, layers, 4, "Layers.");
ABSL_FLAG(uint32_t, kv_heads, 2, "KV heads per layer.");
ABSL_FLAG(uint32_t, query_heads, 8, "Query heads per layer (GQA).");
ABSL_FLAG(uint32_t, head_dim, 128, "Head dimension.");
ABSL_FLAG(uint32_t, tokens, 8192, "Prefill tokens.");
ABSL_FLAG(uint32_t, k, 512, "Tokens retrieved per kv head.");
ABSL_FLAG(uint32_t, planted, 64, "Planted high-attention tokens per kv head.");
ABSL_FLAG(uint32_t, decode_tokens, 64, "Decode tokens appended after the prefill.");
ABSL_FLAG(uint32_t, recent_window, 16, "Recent window W the worker keeps.");
ABSL_FLAG(uint32_t, repeats, 5, "Timed retrievals per layer.");
ABSL_FLAG(uint64_t, seed, 1, "Data seed.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("pqkv_demo: an example worker for pqkv-server");
  absl::ParseCommandLine(argc, argv);
  pqkv::workload::FlowSpec spec;
  spec.num_layers = absl::GetFlag(FLAGS_layers);
  spec.k = absl::GetFlag(FLAGS_k);
  spec.retrieve_repeats = absl::GetFlag(FLAGS_repeats);
  spec.decode_tokens = absl::GetFlag(FLAGS_decode_tokens);
  spec.data.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  spec.data.num_query_heads = absl::GetFlag(FLAGS_query_heads);
  spec.data.head_dim = absl::GetFlag(FLAGS_head_dim);
  spec.data.num_tokens = absl::GetFlag(FLAGS_tokens);
  spec.data.planted_per_head = absl::GetFlag(FLAGS_planted);
  spec.data.recent = absl::GetFlag(FLAGS_recent_window);
  spec.data.seed = absl::GetFlag(FLAGS_seed);

  absl::StatusOr<std::unique_ptr<pqkv::Client>> client =
      pqkv::Client::Connect(absl::GetFlag(FLAGS_server));
  if (!client.ok()) {
    std::fprintf(stderr, "error: %s\n", client.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<pqkv::ServerStats> stats = (*client)->GetServerStats();
  if (stats.ok()) {
    std::printf("server %s: pqkv %s, backend %s, budget %.1f GiB\n",
                absl::GetFlag(FLAGS_server).c_str(), stats->version.c_str(), stats->backend.c_str(),
                stats->bytes_capacity / double(1 << 30));
  }
  std::printf(
      "workload: %u layers x %u kv heads x %u query heads x %u dims, %u tokens fp16, "
      "%u planted tokens per head, k = %u, S = %u, W = %u\n",
      spec.num_layers, spec.data.num_kv_heads, spec.data.num_query_heads, spec.data.head_dim,
      spec.data.num_tokens, spec.data.planted_per_head, spec.k, spec.data.sinks, spec.data.recent);

  absl::StatusOr<pqkv::workload::FlowReport> report =
      pqkv::workload::RunEndToEndFlow(**client, spec);
  if (!report.ok()) {
    std::fprintf(stderr, "error: %s\n", report.status().ToString().c_str());
    return 1;
  }
  std::printf("session %s\n\n", report->session_id.c_str());
  std::printf(
      "layer  upload_ms  index  build_ms  retrieve_us  fetch_us  with_rows_us  rows_by  "
      "planted_recall  recall@k  mass_vs_exact  rows_ok\n");
  uint64_t mismatched = 0;
  for (const pqkv::workload::LayerReport& l : report->layers) {
    const uint64_t rows = l.rows_fetched + l.rows_landed;
    std::printf(
        "%5u  %9.1f  %-5s  %8.1f  %11.0f  %8.0f  %12.0f  %-7s  %14.3f  %8.3f  %13.3f  "
        "%llu/%llu\n",
        l.layer, l.upload_ms, l.index_state.c_str(), l.index_build_ms, l.retrieve_median_us,
        l.fetch_median_us, l.retrieve_with_rows_median_us, l.data_path.c_str(), l.planted_recall,
        l.topk_recall, l.mass_ratio, static_cast<unsigned long long>(rows - l.rows_mismatched),
        static_cast<unsigned long long>(rows));
    mismatched += l.rows_mismatched;
  }
  std::printf("\nlayer 0, kv head 0, best positions: %s ...\n",
              absl::StrJoin(report->layers[0].head0_first_positions, " ").c_str());
  std::printf(
      "decode: %u tokens appended (median %.0f us per token, all layers); the layer "
      "now holds %llu tokens, %llu encoded; planted decode tokens retrieved: %llu/%llu\n",
      spec.decode_tokens, report->decode_append_median_us,
      static_cast<unsigned long long>(report->tokens_after_decode),
      static_cast<unsigned long long>(report->encoded_after_decode),
      static_cast<unsigned long long>(report->decode_planted_found),
      static_cast<unsigned long long>(report->decode_planted_expected));
  std::printf(
      "latencies are medians of %u calls over loopback; retrieve_us is one layer, all "
      "kv heads, indices only; fetch_us a FetchKv of the selection; with_rows_us one "
      "Retrieve that also lands the rows (rows_by: ucx-shm, ucx-put or grpc); quality is "
      "against exact fp32 attention on the same data\n",
      spec.retrieve_repeats);
  if (mismatched > 0) {
    std::printf("FAILED: %llu fetched rows differ from the upload\n",
                static_cast<unsigned long long>(mismatched));
    return 1;
  }
  return 0;
}

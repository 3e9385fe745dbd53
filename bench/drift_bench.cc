// drift_bench: does retrieval quality hold through a long generation whose keys drift
// away from the prefill's (workload/drift_kv.h)? The same decode trace, run three ways
// through real servers, mass recall at every decode query (docs/quality.md, "Codebooks
// that follow the generation"):
//  - frozen: codebooks trained once, at the end of the prefill (--norefresh_codebooks);
//  - refresh: the server's default refresh policy (LayerStore::RefreshIndex, in the
//    background while the decode goes on, as in production, at one decode step per
//    --step_us);
//  - ceiling: for each query a fresh session whose "prefill" is every token so far, so
//    its codebooks were trained on everything at that point.
// Each is compared with exact attention over [0, p] (the query's own key included), as
// quality/quality_harness.h does; the oracle is the exact top-k of the same candidates.
// Also: the refreshes each layer ran and their CPU cost (the server process's CPU time,
// refresh run minus frozen run, per 1000 appended tokens per layer).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench/bench_setup.h"
#include "client/pqkv_client.h"
#include "kernels/dtype_convert.h"
#include "quality/exact_attention.h"
#include "quality/quality_harness.h"
#include "quality/selection_methods.h"
#include "quality/selection_quality.h"
#include "tests/testing/index_wait.h"
#include "tests/testing/server_process.h"
#include "workload/drift_kv.h"
#include "workload/kv_dataset_io.h"

ABSL_FLAG(std::string, data, "generated",
          "`generated` (workload/drift_kv.h), or a capture directory of a long generation "
          "(tools/capture --generate N --last 0: its prompt is the prefill, every generated "
          "position has a query, of which every --query_every-th is used).");
ABSL_FLAG(uint32_t, prefill, 4096, "Prefill tokens.");
ABSL_FLAG(uint32_t, decode, 4096, "Decode tokens after the prefill.");
ABSL_FLAG(uint32_t, query_every, 256, "A decode query every this many positions.");
ABSL_FLAG(double, drift, 1.0, "Share of new-kind keys at the last decode step (0: no drift).");
ABSL_FLAG(uint32_t, layers, 2, "Layers.");
ABSL_FLAG(uint32_t, kv_heads, 4, "KV heads per layer.");
ABSL_FLAG(uint32_t, query_heads, 16, "Query heads per layer.");
ABSL_FLAG(uint32_t, head_dim, 64, "Head dimension.");
ABSL_FLAG(uint64_t, seed, 1, "The trace's seed.");
ABSL_FLAG(double, budget, 0.0625, "k = budget x p tokens selected per kv head.");
ABSL_FLAG(std::string, pq, "default", "pqkv index setting, MxB[+pairs][+rerankR] or default.");
ABSL_FLAG(bool, json, false, "One JSON object per query, then a summary object.");
ABSL_FLAG(uint32_t, step_us, 10000,
          "Wall time of one decode step (the worker's model), slept after each append: a "
          "refresh runs in the background, so how many tokens it lags depends on the pace.");
ABSL_FLAG(std::vector<std::string>, refresh_flags, {},
          "Extra server flags for the refresh run, e.g. --refresh_min_tokens=128.");

namespace pqkv::bench {
namespace {

constexpr char kServer[] = "server/pqkv-server";
constexpr uint32_t kSinks = 4, kRecent = 64;

// The server's CPU time so far (utime + stime of /proc/<pid>/stat), seconds.
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrFormat("/proc/%d/stat", pid));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return double(utime + stime) / sysconf(_SC_CLK_TCK);
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "drift_bench: %s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

// Positions pqkv returned, [query][layer][kv head].
using Picks = std::vector<std::vector<std::vector<std::vector<uint32_t>>>>;

// Uploads [0, prefill) with end_of_prefill on every layer and waits for the indexes.
std::string UploadPrefill(Client& client, const workload::KvDataSet& data,
                          const quality::PqConfig& pq, uint32_t prefill) {
  absl::StatusOr<std::string> id =
      client.CreateSession(quality::SessionFor(data, pq, kSinks, kRecent, 0));
  Check(id.status(), "CreateSession");
  for (uint32_t l = 0; l < data.layers.size(); ++l) {
    const std::vector<uint16_t> keys = workload::RowsOf(data, data.layers[l].keys, 0, prefill);
    const std::vector<uint16_t> values = workload::RowsOf(data, data.layers[l].values, 0, prefill);
    Check(client.UploadPrefill(*id, l, 0, prefill, keys.data(), values.data(), true), "upload");
  }
  Check(testing::WaitForIndexes(client, *id, absl::Minutes(5)), "index build");
  return *id;
}

std::vector<std::vector<uint32_t>> RetrieveLayer(RetrievalStream& stream,
                                                 const workload::KvDataSet& data,
                                                 const quality::PqConfig& pq, const std::string& id,
                                                 uint32_t layer, size_t query_index) {
  const size_t floats = size_t{data.num_query_heads} * data.head_dim;
  const uint32_t p = data.query_positions[query_index];
  RetrieveQuery query;
  query.session_id = id;
  query.query =
      absl::MakeConstSpan(data.layers[layer].queries.data() + query_index * floats, floats);
  query.k = quality::BudgetTokens(absl::GetFlag(FLAGS_budget), p);
  query.rerank = pq.rerank;
  absl::StatusOr<std::vector<RetrieveResult>> results =
      stream.Retrieve(layer, absl::MakeConstSpan(&query, 1));
  Check(results.status(), "Retrieve");
  Check((*results)[0].status, "Retrieve item");
  std::vector<std::vector<uint32_t>> heads;
  for (const pqkv::HeadSelection& head : (*results)[0].heads) heads.push_back(head.positions);
  return heads;
}

struct Run {
  Picks picks;
  double cpu_seconds = 0;           // the server's, over the decode
  std::vector<uint64_t> refreshes;  // per layer
};

// One session decoding the whole trace: appends every decode token, retrieves at queries.
Run Decode(const workload::KvDataSet& data, const quality::PqConfig& pq, uint32_t prefill,
           bool refresh) {
  std::vector<std::string> flags = {"--log_level=warn", "--quality_sample_rate=0",
                                    refresh ? "--refresh_codebooks" : "--norefresh_codebooks"};
  if (refresh) {
    for (const std::string& flag : absl::GetFlag(FLAGS_refresh_flags)) flags.push_back(flag);
  }
  auto server = testing::ServerProcess::Start(kServer, flags);
  Check(server.status(), "server");
  auto client = Client::Connect((*server)->address());
  Check(client.status(), "connect");
  const std::string id = UploadPrefill(**client, data, pq, prefill);
  StreamOptions options;
  options.data_path = DataPath::kGrpc;
  auto stream = (*client)->OpenRetrievalStream(options);
  Check(stream.status(), "stream");
  Run run;
  const double cpu_start = CpuSeconds((*server)->pid());
  uint32_t held = prefill;
  std::vector<uint16_t> k, v;
  for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
    for (; held < data.query_positions[qi]; ++held) {
      workload::TokenKv(data, held, &k, &v);
      Check((*client)->AppendToken(id, held, k.data(), v.data()), "append");
      absl::SleepFor(absl::Microseconds(absl::GetFlag(FLAGS_step_us)));
    }
    run.picks.emplace_back();
    for (uint32_t l = 0; l < data.layers.size(); ++l) {
      run.picks.back().push_back(RetrieveLayer(**stream, data, pq, id, l, qi));
    }
  }
  run.cpu_seconds = CpuSeconds((*server)->pid()) - cpu_start;
  absl::StatusOr<SessionInfo> info = (*client)->GetSession(id);
  Check(info.status(), "GetSession");
  for (const LayerInfo& layer : info->layers) run.refreshes.push_back(layer.index_refreshes);
  return run;
}

// For each query, a session holding every token so far as its prefill.
Picks Ceiling(const workload::KvDataSet& data, const quality::PqConfig& pq) {
  auto server = testing::ServerProcess::Start(
      kServer, {"--log_level=warn", "--quality_sample_rate=0", "--norefresh_codebooks"});
  Check(server.status(), "server");
  auto client = Client::Connect((*server)->address());
  Check(client.status(), "connect");
  StreamOptions options;
  options.data_path = DataPath::kGrpc;
  auto stream = (*client)->OpenRetrievalStream(options);
  Check(stream.status(), "stream");
  Picks picks;
  for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
    const std::string id = UploadPrefill(**client, data, pq, data.query_positions[qi]);
    picks.emplace_back();
    for (uint32_t l = 0; l < data.layers.size(); ++l) {
      picks.back().push_back(RetrieveLayer(**stream, data, pq, id, l, qi));
    }
    Check((*client)->CloseSession(id), "close");
  }
  return picks;
}

// Mass recall of the selections against exact attention, mean over layers and kv heads;
// with `oracle`, that of the exact top-k instead.
double MassRecall(const workload::KvDataSet& data, size_t qi, const Picks* picks) {
  const uint32_t p = data.query_positions[qi], d = data.head_dim, H = data.num_kv_heads;
  const uint32_t group = data.num_query_heads / H;
  const uint32_t k = quality::BudgetTokens(absl::GetFlag(FLAGS_budget), p);
  double sum = 0;
  std::vector<float> keys(size_t{p + 1} * d), values(size_t{p + 1} * d);
  for (uint32_t l = 0; l < data.layers.size(); ++l) {
    const workload::KvLayer& layer = data.layers[l];
    for (uint32_t h = 0; h < H; ++h) {
      for (size_t i = 0; i < keys.size(); ++i) {
        const size_t at = size_t{h} * data.num_tokens * d + i;
        keys[i] = kernels::HalfToFloat(layer.keys[at]);
        values[i] = kernels::HalfToFloat(layer.values[at]);
      }
      const float* queries =
          layer.queries.data() + (qi * data.num_query_heads + size_t{h} * group) * d;
      const quality::HeadAttention attention =
          quality::ComputeHeadAttention(keys.data(), values.data(), p + 1, queries, group, d);
      const std::vector<uint32_t> oracle =
          quality::OracleSelection(attention.gqa_score, kSinks, p - kRecent, k);
      const std::vector<uint32_t>& selected = picks ? (*picks)[qi][l][h] : oracle;
      sum += quality::MeasureSelection(attention, values.data(), d, kSinks, p - kRecent, selected,
                                       oracle)
                 .mass_recall;
    }
  }
  return sum / (data.layers.size() * H);
}

int Main() {
  workload::DriftSpec spec;
  spec.num_layers = absl::GetFlag(FLAGS_layers);
  spec.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  spec.num_query_heads = absl::GetFlag(FLAGS_query_heads);
  spec.head_dim = absl::GetFlag(FLAGS_head_dim);
  spec.prefill_tokens = absl::GetFlag(FLAGS_prefill);
  spec.decode_tokens = absl::GetFlag(FLAGS_decode);
  spec.query_every = absl::GetFlag(FLAGS_query_every);
  spec.drift = absl::GetFlag(FLAGS_drift);
  spec.seed = absl::GetFlag(FLAGS_seed);
  absl::StatusOr<quality::PqConfig> pq = quality::ParsePqConfig(absl::GetFlag(FLAGS_pq));
  Check(pq.status(), "--pq");
  workload::KvDataSet data;
  if (absl::GetFlag(FLAGS_data) == "generated") {
    data = workload::GenerateDriftTrace(spec);
  } else {
    // A capture: its first query position is the prompt's length (the prefill); keep every
    // query_every-th decode query, the last one being the query_every-th.
    absl::StatusOr<workload::KvDataSet> loaded = workload::LoadKvDataSet(absl::GetFlag(FLAGS_data));
    Check(loaded.status(), "--data");
    data = *std::move(loaded);
    spec.prefill_tokens = data.query_positions.front();
    spec.decode_tokens = data.num_tokens - spec.prefill_tokens;
    spec.num_layers = static_cast<uint32_t>(data.layers.size());
    spec.num_kv_heads = data.num_kv_heads;
    spec.num_query_heads = data.num_query_heads;
    spec.head_dim = data.head_dim;
    spec.drift = -1;  // not generated: the Setup line says "captured"
    const size_t floats = size_t{data.num_query_heads} * data.head_dim;
    std::vector<size_t> keep;
    for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
      if ((data.query_positions[qi] - spec.prefill_tokens + 1) % spec.query_every == 0) {
        keep.push_back(qi);
      }
    }
    std::vector<uint32_t> positions;
    for (size_t qi : keep) positions.push_back(data.query_positions[qi]);
    for (workload::KvLayer& layer : data.layers) {
      std::vector<float> queries;
      for (size_t qi : keep) {
        queries.insert(queries.end(), layer.queries.begin() + qi * floats,
                       layer.queries.begin() + (qi + 1) * floats);
      }
      layer.queries = std::move(queries);
    }
    data.query_positions = std::move(positions);
  }
  std::fprintf(stderr,
               "Setup: commit %s; %s; %s: %u prefill + %u decode tokens, %u layers x %u "
               "kv heads x %u query heads x %u dims, %s; pq %s; budget %g\n",
               Commit().c_str(), CpuModel().c_str(), absl::GetFlag(FLAGS_data).c_str(),
               spec.prefill_tokens, spec.decode_tokens, spec.num_layers, spec.num_kv_heads,
               spec.num_query_heads, spec.head_dim,
               spec.drift < 0 ? "captured"
                              : absl::StrFormat("drift %g, seed %llu", spec.drift,
                                                static_cast<unsigned long long>(spec.seed))
                                    .c_str(),
               pq->Name().c_str(), absl::GetFlag(FLAGS_budget));
  const Run frozen = Decode(data, *pq, spec.prefill_tokens, /*refresh=*/false);
  std::fprintf(stderr, "frozen run done\n");
  const Run refreshed = Decode(data, *pq, spec.prefill_tokens, /*refresh=*/true);
  std::fprintf(stderr, "refresh run done\n");
  const Picks ceiling = Ceiling(data, *pq);
  std::fprintf(stderr, "ceiling run done\n");

  const bool json = absl::GetFlag(FLAGS_json);
  if (!json) {
    std::printf("%9s %7s %9s %9s %9s %9s %11s\n", "position", "decoded", "frozen", "refresh",
                "ceiling", "oracle", "ceil-refr");
  }
  double worst_gap = -1, worst_frozen_gap = -1;
  for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
    const uint32_t p = data.query_positions[qi];
    const double f = MassRecall(data, qi, &frozen.picks);
    const double r = MassRecall(data, qi, &refreshed.picks);
    const double c = MassRecall(data, qi, &ceiling);
    const double o = MassRecall(data, qi, nullptr);
    worst_gap = std::max(worst_gap, c - r);
    worst_frozen_gap = std::max(worst_frozen_gap, c - f);
    if (json) {
      std::printf(
          "{\"position\": %u, \"decoded\": %u, \"frozen\": %.4f, \"refresh\": %.4f, "
          "\"ceiling\": %.4f, \"oracle\": %.4f}\n",
          p, p - spec.prefill_tokens + 1, f, r, c, o);
    } else {
      std::printf("%9u %7u %9.4f %9.4f %9.4f %9.4f %11.4f\n", p, p - spec.prefill_tokens + 1, f, r,
                  c, o, c - r);
    }
  }
  uint64_t refreshes = 0;
  for (uint64_t n : refreshed.refreshes) refreshes += n;
  const double appended_k = (data.query_positions.back() - spec.prefill_tokens) / 1000.0;
  const double cpu_per_k_layer =
      (refreshed.cpu_seconds - frozen.cpu_seconds) / appended_k / spec.num_layers;
  if (json) {
    std::printf(
        "{\"worst_ceiling_minus_refresh\": %.4f, \"worst_ceiling_minus_frozen\": %.4f, "
        "\"refreshes\": %llu, \"server_cpu_s_frozen\": %.2f, \"server_cpu_s_refresh\": %.2f, "
        "\"refresh_cpu_s_per_1000_tokens_per_layer\": %.3f}\n",
        worst_gap, worst_frozen_gap, static_cast<unsigned long long>(refreshes), frozen.cpu_seconds,
        refreshed.cpu_seconds, cpu_per_k_layer);
  } else {
    std::printf(
        "\nworst ceiling - refresh: %.4f; worst ceiling - frozen: %.4f\nrefreshes: %llu over "
        "%u layers; server CPU over the decode: frozen %.2f s, refresh %.2f s: %.3f s per 1000 "
        "appended tokens per layer\n",
        worst_gap, worst_frozen_gap, static_cast<unsigned long long>(refreshes), spec.num_layers,
        frozen.cpu_seconds, refreshed.cpu_seconds, cpu_per_k_layer);
  }
  return 0;
}

}  // namespace
}  // namespace pqkv::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Retrieval quality through a drifting long generation.");
  absl::ParseCommandLine(argc, argv);
  return pqkv::bench::Main();
}

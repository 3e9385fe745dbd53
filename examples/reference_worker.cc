// reference_worker: the whole PQCache decode loop against a running pqkv-server, the way
// an inference worker runs it, with its quality and per-layer latency.
//
//   bazel run -c opt //examples:reference_worker -- --server=localhost:50051
//   bazel run -c opt //examples:reference_worker -- --server=... --data=$PWD/testdata/smollm2-135m
//
// 1. Prefill: uploads every layer's K/V (positions before the first decode query) as a
//    prefill would produce them; the server builds each layer's PQ index meanwhile.
// 2. Decode: for each step (position p) and each layer, sends the step's query and gets
//    the top-k positions per kv head and their K/V rows in one round trip (into the
//    stream's UCX receive buffer, or in the gRPC response); checks every row bit for bit
//    against what was uploaded; runs attention over the sinks and recent window it keeps
//    itself plus the retrieved rows; then appends the step's K/V to every layer.
// 3. Prints, per layer, the first step's round trip (right after the upload, it meets the
//    index builds still running) and, over the later steps, the round trip split into
//    server scan (tables, ADC scan, softmax), select (top-k and the exact re-rank), rows
//    (gather and write) and transfer (the rest: wire, client decode), and quality against exact
//    attention: attention-mass recall, the attention output's relative error, recall@k; then the
//    same quality by head type.
//
// Exit status 0 when every row matched, 1 otherwise.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/pqkv_client.h"
#include "kernels/dtype_convert.h"
#include "quality/data_source.h"
#include "quality/exact_attention.h"
#include "quality/quality_harness.h"
#include "quality/selection_methods.h"
#include "workload/kv_statistics.h"
#include "workload/planted_kv.h"

ABSL_FLAG(std::string, server, "localhost:50051", "pqkv-server address.");
ABSL_FLAG(std::string, data, "generated", "`generated`, or a capture directory (tools/capture).");
ABSL_FLAG(uint32_t, tokens, 32768, "Generated: positions with K/V (decode steps included).");
ABSL_FLAG(uint32_t, layers, 8, "Generated: layers.");
ABSL_FLAG(uint32_t, kv_heads, 8, "Generated: kv heads per layer.");
ABSL_FLAG(uint32_t, query_heads, 32, "Generated: query heads per layer.");
ABSL_FLAG(uint32_t, head_dim, 128, "Generated: head dimension.");
ABSL_FLAG(double, rope_theta, 5e5, "Generated: RoPE base.");
ABSL_FLAG(uint32_t, steps, 16, "Generated: decode steps (the last positions).");
ABSL_FLAG(uint64_t, seed, 7, "Generated data's seed.");
ABSL_FLAG(double, budget, 0.0625, "Tokens retrieved per kv head, as a fraction of the context.");
ABSL_FLAG(uint32_t, sinks, 4, "Sink tokens S the worker keeps.");
ABSL_FLAG(uint32_t, recent, 64, "Recent window W the worker keeps.");
ABSL_FLAG(
    std::string, pq, "default",
    "Index setting: default (the server's: one 4-bit sub-space per dimension, no re-rank) or "
    "MxB[+pairs][+rerankR], e.g. 2x6 (PQCache's own) or 4x8+pairs+rerank4 (docs/quality.md).");
ABSL_FLAG(std::string, data_path, "auto", "How rows travel: auto, ucx or grpc.");

namespace pqkv {
namespace {

using workload::KvDataSet;

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "\nreference_worker: %s\n", what.c_str());
  return 1;
}

void ProgressBar(const char* what, size_t done, size_t total) {
  const int width = 40;
  const int filled = static_cast<int>(width * done / std::max<size_t>(total, 1));
  std::fprintf(stderr, "\r%-8s [%s%s] %zu/%zu", what, std::string(filled, '#').c_str(),
               std::string(width - filled, ' ').c_str(), done, total);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

struct LayerStats {
  double first_us = 0;  // the first decode step's round trip, right after the upload
  // Steps after the first.
  std::vector<double> round_trip_us, scan_us, select_us, rows_us, transfer_us;
  double mass = 0, error = 0, recall = 0;
  uint64_t samples = 0;  // (step, kv head) pairs
  uint64_t rows = 0, rows_mismatched = 0;
  std::string data_path;
  double build_ms = 0;
};

struct HeadQuality {
  double mass = 0, error = 0, recall = 0;
};

// fp32 copies of one layer's K and V, [kv_head][token][dim].
struct FloatLayer {
  std::vector<float> keys, values;
};

FloatLayer ToFloatLayer(const workload::KvLayer& layer) {
  FloatLayer out;
  out.keys.resize(layer.keys.size());
  out.values.resize(layer.values.size());
  kernels::ToFloat(kernels::ElementType::kFp16, layer.keys.data(), layer.keys.size(),
                   out.keys.data());
  kernels::ToFloat(kernels::ElementType::kFp16, layer.values.data(), layer.values.size(),
                   out.values.data());
  return out;
}

// The worker's attention for one kv head at position p, against exact attention: it
// attends over the sinks and recent rows it keeps (from the trace) and the retrieved
// rows (from the server), per query head of the group.
HeadQuality Attend(const KvDataSet& data, const FloatLayer& layer, const float* group_queries,
                   uint32_t h, uint32_t p, uint32_t sinks, uint32_t recent,
                   const pqkv::HeadSelection& selected, const uint16_t* got_keys,
                   const uint16_t* got_values) {
  const uint32_t d = data.head_dim, group = data.num_query_heads / data.num_kv_heads;
  const size_t head_offset = static_cast<size_t>(h) * data.num_tokens * d;
  const float* keys = layer.keys.data() + head_offset;
  const float* values = layer.values.data() + head_offset;
  const quality::HeadAttention exact =
      quality::ComputeHeadAttention(keys, values, p + 1, group_queries, group, d);

  // The rows the worker attends over: kept ones, then the retrieved ones as they landed.
  std::vector<uint32_t> positions;
  for (uint32_t t = 0; t < sinks; ++t) positions.push_back(t);
  for (uint32_t t = p - recent; t <= p; ++t) positions.push_back(t);
  const size_t kept = positions.size();
  positions.insert(positions.end(), selected.positions.begin(), selected.positions.end());
  std::vector<float> k(positions.size() * d), v(positions.size() * d);
  for (size_t i = 0; i < kept; ++i) {
    std::memcpy(&k[i * d], keys + static_cast<size_t>(positions[i]) * d, d * sizeof(float));
    std::memcpy(&v[i * d], values + static_cast<size_t>(positions[i]) * d, d * sizeof(float));
  }
  kernels::ToFloat(kernels::ElementType::kFp16, got_keys, selected.positions.size() * d,
                   &k[kept * d]);
  kernels::ToFloat(kernels::ElementType::kFp16, got_values, selected.positions.size() * d,
                   &v[kept * d]);

  HeadQuality q;
  for (uint32_t g = 0; g < group; ++g) {
    const std::vector<double> out =
        quality::AttendOver(k.data(), v.data(), static_cast<uint32_t>(positions.size()),
                            group_queries + static_cast<size_t>(g) * d, d);
    double diff = 0, norm = 0, mass = 0;
    for (uint32_t i = 0; i < d; ++i) {
      diff += (out[i] - exact.output[g][i]) * (out[i] - exact.output[g][i]);
      norm += exact.output[g][i] * exact.output[g][i];
    }
    for (uint32_t t : positions) mass += exact.probs[g][t];
    q.mass += mass / group;
    q.error += std::sqrt(diff / std::max(norm, 1e-30)) / group;
  }
  const std::vector<uint32_t> oracle = quality::OracleSelection(
      exact.gqa_score, sinks, p - recent, static_cast<uint32_t>(selected.positions.size()));
  q.recall = workload::Recall(selected.positions, oracle);
  return q;
}

int Run() {
  workload::LongContextSpec spec;
  spec.num_layers = absl::GetFlag(FLAGS_layers);
  spec.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  spec.num_query_heads = absl::GetFlag(FLAGS_query_heads);
  spec.head_dim = absl::GetFlag(FLAGS_head_dim);
  spec.num_tokens = absl::GetFlag(FLAGS_tokens);
  spec.num_queries = absl::GetFlag(FLAGS_steps);
  spec.rope_theta = absl::GetFlag(FLAGS_rope_theta);
  spec.seed = absl::GetFlag(FLAGS_seed);
  const std::string data_flag = absl::GetFlag(FLAGS_data);
  std::fprintf(stderr, "%s data ...\n", data_flag == "generated" ? "generating" : "loading");
  absl::StatusOr<KvDataSet> loaded = quality::LoadOrGenerate(data_flag, spec);
  if (!loaded.ok()) return Fail(loaded.status().ToString());
  const KvDataSet& data = *loaded;
  const uint32_t L = static_cast<uint32_t>(data.layers.size()), H = data.num_kv_heads;
  const uint32_t d = data.head_dim, group = data.num_query_heads / H;
  const uint32_t sinks = absl::GetFlag(FLAGS_sinks), recent = absl::GetFlag(FLAGS_recent);
  const double budget = absl::GetFlag(FLAGS_budget);
  const uint32_t prefill = data.query_positions.front();
  auto k_at = [&](uint32_t p) { return quality::BudgetTokens(budget, p); };
  if (prefill <= sinks + recent || k_at(data.query_positions.back()) > prefill - sinks - recent) {
    return Fail("the budget does not fit the prefill after the sinks and the recent window");
  }
  absl::StatusOr<quality::PqConfig> pq = quality::ParsePqConfig(absl::GetFlag(FLAGS_pq));
  if (!pq.ok()) return Fail(pq.status().ToString());
  StreamOptions stream_options;
  const std::string path_flag = absl::GetFlag(FLAGS_data_path);
  if (path_flag == "ucx") {
    stream_options.data_path = DataPath::kUcx;
  } else if (path_flag == "grpc") {
    stream_options.data_path = DataPath::kGrpc;
  } else if (path_flag != "auto") {
    return Fail("--data_path must be auto, ucx or grpc");
  }

  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(absl::GetFlag(FLAGS_server));
  if (!client.ok()) return Fail(client.status().ToString());
  absl::StatusOr<ServerStats> stats = (*client)->GetServerStats();
  if (!stats.ok()) return Fail(stats.status().ToString());
  std::printf("server %s: pqkv %s, backend %s\n", absl::GetFlag(FLAGS_server).c_str(),
              stats->version.c_str(), stats->backend.c_str());
  std::printf(
      "data: %s, %u layers x %u kv heads x %u query heads x %u dims, fp16; prefill %u tokens, "
      "%zu decode steps; S = %u, W = %u, k = %.4g of the context (%u..%u), index %s\n",
      data.name.c_str(), L, H, data.num_query_heads, d, prefill, data.query_positions.size(), sinks,
      recent, budget, k_at(prefill), k_at(data.query_positions.back()), pq->Name().c_str());

  absl::StatusOr<std::string> id = (*client)->CreateSession(
      quality::SessionFor(data, *pq, sinks, recent, /*kmeans_iterations=*/0));
  if (!id.ok()) return Fail(id.status().ToString());
  struct Closer {
    Client& client;
    std::string id;
    ~Closer() { client.CloseSession(id).IgnoreError(); }
  } closer{**client, *id};

  // The exact reference's float copies and the retrieval stream come first, so that the
  // first decode step follows the upload at once, as in a serving engine, and meets
  // whatever index builds are still running.
  std::vector<FloatLayer> float_layers(L);
  {
    std::vector<std::thread> workers;
    for (uint32_t l = 0; l < L; ++l) {
      workers.emplace_back([&, l] { float_layers[l] = ToFloatLayer(data.layers[l]); });
      if (workers.size() == std::max(1u, std::thread::hardware_concurrency())) {
        for (std::thread& t : workers) t.join();
        workers.clear();
      }
    }
    for (std::thread& t : workers) t.join();
  }

  const uint32_t k_max = k_at(data.query_positions.back());
  const size_t half = static_cast<size_t>(H) * k_max * d * sizeof(uint16_t);
  stream_options.receive_buffer_bytes = std::max(stream_options.receive_buffer_bytes, 2 * half);
  absl::StatusOr<std::unique_ptr<RetrievalStream>> stream =
      (*client)->OpenRetrievalStream(stream_options);
  if (!stream.ok()) return Fail(stream.status().ToString());
  char* buffer = static_cast<char*>((*stream)->receive_buffer());
  std::vector<char> own_buffer;
  if (buffer == nullptr) {  // gRPC path: rows are copied into any buffer
    own_buffer.resize(2 * half);
    buffer = own_buffer.data();
  }

  // 1. Prefill, layer by layer.
  const absl::Time upload_start = absl::Now();
  for (uint32_t l = 0; l < L; ++l) {
    const std::vector<uint16_t> k = workload::RowsOf(data, data.layers[l].keys, 0, prefill);
    const std::vector<uint16_t> v = workload::RowsOf(data, data.layers[l].values, 0, prefill);
    absl::Status uploaded = (*client)->UploadPrefill(*id, l, 0, prefill, k.data(), v.data(), true);
    if (!uploaded.ok()) return Fail(uploaded.ToString());
    ProgressBar("upload", l + 1, L);
  }
  const double upload_s = absl::ToDoubleSeconds(absl::Now() - upload_start);

  // 2. Decode.
  std::vector<LayerStats> layer_stats(L);
  std::vector<std::vector<HeadQuality>> head_quality(L, std::vector<HeadQuality>(H));
  const size_t steps = data.query_positions.size();
  const size_t query_floats = static_cast<size_t>(data.num_query_heads) * d;
  const absl::Time decode_start = absl::Now();
  for (size_t step = 0; step < steps; ++step) {
    const uint32_t p = data.query_positions[step];
    for (uint32_t l = 0; l < L; ++l) {
      RetrieveQuery query;
      query.session_id = *id;
      query.query =
          absl::MakeConstSpan(data.layers[l].queries.data() + step * query_floats, query_floats);
      query.k = k_at(p);
      query.rerank = pq->rerank;
      query.with_scores = false;  // the decode loop needs positions and rows only
      query.keys_out = buffer;
      query.values_out = buffer + half;
      query.buffer_bytes = half;
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<std::vector<RetrieveResult>> results =
          (*stream)->Retrieve(l, absl::MakeConstSpan(&query, 1));
      const double round_trip =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count();
      if (!results.ok()) return Fail(results.status().ToString());
      const RetrieveResult& r = (*results)[0];
      if (!r.status.ok()) return Fail(r.status.ToString());
      LayerStats& s = layer_stats[l];
      s.data_path = r.data_path;
      if (step == 0 && steps > 1) {
        s.first_us = round_trip;
      } else {
        s.round_trip_us.push_back(round_trip);
        s.scan_us.push_back(r.server_score_us - r.server_select_us);
        s.select_us.push_back(r.server_select_us);
        s.rows_us.push_back(r.server_rows_us);
        s.transfer_us.push_back(round_trip - r.server_score_us - r.server_rows_us);
      }

      // Rows: kv head by kv head, k rows each, in the order of the positions.
      const uint16_t* got_keys = reinterpret_cast<const uint16_t*>(buffer);
      const uint16_t* got_values = reinterpret_cast<const uint16_t*>(buffer + half);
      std::vector<HeadQuality> q(H);
      auto head_work = [&](uint32_t h) {
        const size_t offset = static_cast<size_t>(h) * query.k * d;
        q[h] = Attend(data, float_layers[l],
                      data.layers[l].queries.data() + step * query_floats + size_t{h} * group * d,
                      h, p, sinks, recent, r.heads[h], got_keys + offset, got_values + offset);
      };
      std::vector<std::thread> workers;
      for (uint32_t h = 0; h < H; ++h) workers.emplace_back(head_work, h);
      for (std::thread& t : workers) t.join();
      for (uint32_t h = 0; h < H; ++h) {
        const size_t offset = static_cast<size_t>(h) * query.k * d;
        for (size_t i = 0; i < r.heads[h].positions.size(); ++i) {
          const size_t at =
              (static_cast<size_t>(h) * data.num_tokens + r.heads[h].positions[i]) * d;
          const bool same =
              std::memcmp(got_keys + offset + i * d, &data.layers[l].keys[at], d * 2) == 0 &&
              std::memcmp(got_values + offset + i * d, &data.layers[l].values[at], d * 2) == 0;
          s.rows_mismatched += same ? 0 : 1;
          ++s.rows;
        }
        s.mass += q[h].mass;
        s.error += q[h].error;
        s.recall += q[h].recall;
        ++s.samples;
        head_quality[l][h].mass += q[h].mass / steps;
        head_quality[l][h].error += q[h].error / steps;
        head_quality[l][h].recall += q[h].recall / steps;
      }
    }
    // The step's own K/V joins every layer.
    std::vector<uint16_t> k, v;
    workload::TokenKv(data, p, &k, &v);
    absl::Status appended = (*client)->AppendToken(*id, p, k.data(), v.data());
    if (!appended.ok()) return Fail(appended.ToString());
    ProgressBar("decode", step + 1, steps);
  }
  const double decode_s = absl::ToDoubleSeconds(absl::Now() - decode_start);
  absl::StatusOr<SessionInfo> info = (*client)->GetSession(*id);
  if (info.ok()) {
    for (uint32_t l = 0; l < L && l < info->layers.size(); ++l) {
      layer_stats[l].build_ms = info->layers[l].index_build_ms;
    }
  }

  // 3. Summary.
  std::printf(
      "\nper layer (microseconds): first = the first step's round trip, right after the upload; "
      "the rest are medians over the %zu later steps: round trip = server scan + select + rows + "
      "transfer\n",
      steps > 1 ? steps - 1 : steps);
  std::printf("%5s  %8s  %7s  %9s  %7s  %7s  %7s  %8s  %-7s  %9s  %10s  %8s  %9s\n", "layer",
              "build_ms", "first", "roundtrip", "scan", "select", "rows", "transfer", "rows_by",
              "mass_rec", "out_relerr", "recall@k", "rows_ok");
  uint64_t mismatched = 0;
  double step_us = 0, first_step_us = 0;
  for (uint32_t l = 0; l < L; ++l) {
    const LayerStats& s = layer_stats[l];
    std::printf(
        "%5u  %8.0f  %7.0f  %9.0f  %7.0f  %7.0f  %7.0f  %8.0f  %-7s  %9.4f  %10.4f  %8.4f  %9s\n",
        data.layers[l].layer, s.build_ms, s.first_us, Median(s.round_trip_us), Median(s.scan_us),
        Median(s.select_us), Median(s.rows_us), Median(s.transfer_us), s.data_path.c_str(),
        s.mass / s.samples, s.error / s.samples, s.recall / s.samples,
        absl::StrCat(s.rows - s.rows_mismatched, "/", s.rows).c_str());
    mismatched += s.rows_mismatched;
    step_us += Median(s.round_trip_us);
    first_step_us += s.first_us;
  }

  std::map<std::string, std::vector<HeadQuality>> by_type;
  for (uint32_t l = 0; l < L; ++l) {
    for (uint32_t h = 0; h < H; ++h) {
      const workload::HeadType type =
          data.layers[l].head_types.empty()
              ? workload::ClassifyHead(workload::MeasureHeadAttention(data, l, h))
              : data.layers[l].head_types[h];
      by_type[workload::HeadTypeName(type)].push_back(head_quality[l][h]);
      by_type["all"].push_back(head_quality[l][h]);
    }
  }
  std::printf(
      "\nquality by head type (%s), mean over kv heads:\n",
      data.layers[0].head_types.empty() ? "classified from the data's attention" : "as generated");
  std::printf("%-10s  %5s  %9s  %10s  %8s\n", "head_type", "heads", "mass_rec", "out_relerr",
              "recall@k");
  for (const char* type : {"all", "streaming", "retrieval", "diffuse"}) {
    auto it = by_type.find(type);
    if (it == by_type.end()) continue;
    HeadQuality mean;
    for (const HeadQuality& q : it->second) {
      mean.mass += q.mass / it->second.size();
      mean.error += q.error / it->second.size();
      mean.recall += q.recall / it->second.size();
    }
    std::printf("%-10s  %5zu  %9.4f  %10.4f  %8.4f\n", type, it->second.size(), mean.mass,
                mean.error, mean.recall);
  }
  std::printf(
      "\nprefill upload %.1f s; decode %zu steps in %.1f s (with the exact reference); one "
      "step's retrievals, all layers: %.1f ms (sum of the layers' median round trips); the first "
      "step's, right after the upload: %.1f ms (%.2fx)\n",
      upload_s, steps, decode_s, step_us / 1000, first_step_us / 1000,
      step_us > 0 ? first_step_us / step_us : 0.0);
  std::printf(
      "scan: server tables + ADC scan + softmax; select: server top-k (and the exact re-rank); "
      "rows: server gather + "
      "write; transfer: the rest of the round trip (wire, client decode); quality is against "
      "exact fp32 attention over every token\n");
  if (mismatched > 0) {
    std::printf("FAILED: %llu rows differ from the upload\n",
                static_cast<unsigned long long>(mismatched));
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace pqkv

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("reference_worker: the PQCache decode loop against pqkv-server");
  absl::ParseCommandLine(argc, argv);
  return pqkv::Run();
}

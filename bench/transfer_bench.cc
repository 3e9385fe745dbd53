// transfer_bench: how fast one layer's selected K/V rows reach the worker, per data
// path, against a local memcpy of the same gather measured in the same run.
//
//   bazel run -c opt //bench:transfer_bench -- --sizes_mib=1,8,32 --repeats=30
//   bazel run -c opt //bench:transfer_bench -- --json
//
// Paths (each a real pqkv-server started by the bench, 8 kv heads x 128 dims, fp16):
//   ucx-shm  UCX on this host: the server maps the stream's receive buffer and gathers
//            the rows straight into it
//   ucx-tcp  UCX with UCX_TLS=tcp at both ends: the server gathers into a staging buffer
//            and puts it over TCP (loopback)
//   grpc     the rows in the Retrieve response, copied by the SDK into the caller's buffer
//   memcpy   the floor: the same rows gathered here, from 64 KiB pages like the server's,
//            into a buffer with memcpy (one core)
//   gather   for reference, the same with the server's own row gather (PagedRows::Gather,
//            which prefetches rows ahead), here, on one core
//   indices  for reference, the control plane alone: the same Retrieve without rows
//            (its size column is that of the rows it did not move)
// A path's time is the Retrieve round trip minus the server's scoring time (what the
// worker waits for the rows, control round trip included); the size is the K+V payload
// of one layer. The table gives median and p99 microseconds, GB/s at the median,
// ratio_vs_floor (floor time / path time: 1 is as fast as the floor), and the server's
// own time to gather and write the rows (server_rows_us: for ucx-shm that is the whole
// data-plane transfer, for ucx-tcp it includes the put and its flush) with its ratio to
// the floor (rows_vs_floor).
//
// Delta transfer (--delta_steps > 0): a decode trace over planted keys in which every
// query head's query moves by a fixed angle per step (adjacent-step cosine
// --adjacent_cosine), retrieved with and without a row cache of --cache_slots per kv
// head; prints the rows the cache saved. Rows are checked bit for bit on every path.
//
// --scores=false asks for positions only (RetrieveQuery::with_scores, as the reference
// worker does), a response a third the size here. --server_flags passes flags to the
// servers the bench starts (say --compute_spin_us=0, to see the compute pool sleep at
// once).
//
// --json prints one JSON object per row (fields path, bytes, median_us, p99_us, gbps,
// ratio_vs_floor, server_rows_us; gbps and ratio_vs_floor are null on indices rows;
// delta rows: path "delta", k, cache_slots, adjacent_cosine, steps, bytes_full,
// bytes_sent, saved_fraction) and the setup on stderr.
#include <ucp/api/ucp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_setup.h"
#include "client/pqkv_client.h"
#include "server/memory/page_arena.h"
#include "server/memory/paged_rows.h"
#include "tests/testing/server_process.h"
#include "workload/planted_kv.h"

ABSL_FLAG(std::string, sizes_mib, "1,8,32", "K+V payload sizes of one layer, MiB.");
ABSL_FLAG(uint32_t, repeats, 30, "Timed calls per path and size.");
ABSL_FLAG(std::string, paths, "ucx-shm,ucx-tcp,grpc,memcpy,gather,indices", "Paths to measure.");
ABSL_FLAG(uint32_t, delta_steps, 64, "Decode steps of the delta-transfer trace; 0: skip it.");
ABSL_FLAG(double, adjacent_cosine, 0.9, "Cosine between a query head's consecutive queries.");
ABSL_FLAG(std::string, cache_slots, "1,2,4", "Row cache sizes of the delta trace, in units of k.");
ABSL_FLAG(bool, scores, true,
          "Ask for the selection's scores besides its positions (the SDK's default); false: "
          "positions only, as the reference worker does.");
ABSL_FLAG(std::vector<std::string>, server_flags, {},
          "Extra flags for the servers the bench starts, comma-separated (say "
          "--compute_spin_us=0).");
ABSL_FLAG(bool, json, false, "One JSON object per row instead of the table.");

namespace pqkv {
namespace {

constexpr uint32_t kKvHeads = 8, kQueryHeads = 32, kHeadDim = 128;
constexpr size_t kRowBytes = kHeadDim * 2;  // fp16
constexpr char kServer[] = "server/pqkv-server";

// Bytes of one layer's K+V for k rows per kv head.
size_t PayloadBytes(uint32_t k) { return size_t{2} * kKvHeads * k * kRowBytes; }

struct Layer {
  uint32_t tokens;
  std::vector<uint16_t> keys, values;  // fp16 [kv_head][token][dim]
  std::vector<float> query;            // fp32 [query_head][dim]
};

Layer MakeLayer(uint32_t tokens) {
  workload::PlantedKvSpec spec;
  spec.num_kv_heads = kKvHeads;
  spec.num_query_heads = kQueryHeads;
  spec.head_dim = kHeadDim;
  spec.num_tokens = tokens;
  spec.planted_per_head = 256;
  workload::LayerData data = workload::GeneratePlantedLayer(spec, 0);
  return {tokens, workload::ToHalf(data.keys), workload::ToHalf(data.values), data.query};
}

// One server with the layer uploaded, and a client of it.
struct Served {
  std::unique_ptr<testing::ServerProcess> server;
  std::unique_ptr<Client> client;
  std::string session;
};

Served Serve(const Layer& layer, const char* ucx_tls) {
  if (ucx_tls != nullptr) setenv("UCX_TLS", ucx_tls, 1);
  std::vector<std::string> flags = {"--log_level=warn"};
  for (const std::string& flag : absl::GetFlag(FLAGS_server_flags)) flags.push_back(flag);
  auto server = testing::ServerProcess::Start(kServer, flags);
  if (ucx_tls != nullptr) unsetenv("UCX_TLS");
  if (!server.ok()) {
    std::fprintf(stderr, "cannot start %s: %s\n", kServer, server.status().ToString().c_str());
    std::exit(1);
  }
  Served served{*std::move(server), nullptr, ""};
  served.client = Client::Connect(served.server->address()).value();
  SessionOptions options;
  options.shape = {1, kKvHeads, kQueryHeads, kHeadDim, DType::kFp16};
  served.session = served.client->CreateSession(options).value();
  const absl::Status uploaded = served.client->UploadPrefill(
      served.session, 0, 0, layer.tokens, layer.keys.data(), layer.values.data(), true);
  if (!uploaded.ok()) {
    std::fprintf(stderr, "upload: %s\n", uploaded.ToString().c_str());
    std::exit(1);
  }
  // The first Retrieve waits for the index build; later ones are timed.
  auto stream = served.client->OpenRetrievalStream({.data_path = DataPath::kGrpc}).value();
  RetrieveQuery q{served.session, layer.query, 1};
  stream->Retrieve(0, {&q, 1}).value();
  return served;
}

// Rows of `result` that differ from the upload; keys/values hold them head by head.
size_t Mismatches(const Layer& layer, const RetrieveResult& result, const char* keys,
                  const char* values) {
  size_t bad = 0, row = 0;
  for (uint32_t h = 0; h < result.heads.size(); ++h) {
    for (uint32_t p : result.heads[h].positions) {
      const size_t src = (size_t{h} * layer.tokens + p) * kHeadDim;
      bad += std::memcmp(keys + row * kRowBytes, layer.keys.data() + src, kRowBytes) != 0 ||
             std::memcmp(values + row * kRowBytes, layer.values.data() + src, kRowBytes) != 0;
      ++row;
    }
  }
  return bad;
}

struct Row {
  std::string path;
  size_t bytes = 0;
  double median_us = 0, p99_us = 0, server_rows_us = 0;
};

// Times `repeats` Retrieve calls with rows on `stream`; the rows land in keys/values.
Row TimeRetrieve(const std::string& path, RetrievalStream& stream, const Served& served,
                 const Layer& layer, uint32_t k, char* keys, char* values, uint32_t repeats,
                 std::vector<std::vector<uint32_t>>* selection) {
  const size_t half = PayloadBytes(k) / 2;
  const bool rows = path != "indices";
  RetrieveQuery q{served.session,          layer.query,    k, rows ? keys : nullptr,
                  rows ? values : nullptr, rows ? half : 0};
  q.with_scores = absl::GetFlag(FLAGS_scores);
  std::vector<double> wait_us, rows_us;
  for (uint32_t r = 0; r <= repeats; ++r) {  // the first call warms up
    const auto start = std::chrono::steady_clock::now();
    auto results = stream.Retrieve(0, {&q, 1});
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    if (!results.ok() || !(*results)[0].status.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(),
                   results.ok() ? (*results)[0].status.ToString().c_str()
                                : results.status().ToString().c_str());
      std::exit(1);
    }
    const RetrieveResult& result = (*results)[0];
    const std::string expected = path == "ucx-tcp" ? "ucx-put" : path == "indices" ? "" : path;
    if (result.data_path != expected || (rows && Mismatches(layer, result, keys, values) != 0)) {
      std::fprintf(stderr, "%s: rows came by %s and %zu differ from the upload\n", path.c_str(),
                   result.data_path.c_str(), Mismatches(layer, result, keys, values));
      std::exit(1);
    }
    if (r == 0) {
      selection->clear();
      for (const HeadSelection& head : result.heads) selection->push_back(head.positions);
      continue;
    }
    wait_us.push_back(us - result.server_score_us);
    rows_us.push_back(result.server_rows_us);
  }
  return {path, 2 * half, bench::Percentile(wait_us, 0.5), bench::Percentile(wait_us, 0.99),
          bench::Percentile(rows_us, 0.5)};
}

// Local gathers of the selected rows from 64 KiB pages into one buffer, on one core:
// the floor (a memcpy per row) and, for reference, the server's own row gather
// (PagedRows::Gather, which prefetches rows ahead).
struct LocalGathers {
  Row floor, gather;
};

LocalGathers TimeLocalGathers(const Layer& layer,
                              const std::vector<std::vector<uint32_t>>& selection,
                              uint32_t repeats) {
  auto arena = server::PageArena::Create(
                   size_t{2} * kKvHeads * layer.tokens * kRowBytes + (8 << 20), 64 << 10)
                   .value();
  std::vector<std::unique_ptr<server::PagedRows>> keys, values;
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    for (auto* rows : {&keys, &values}) {
      rows->push_back(std::make_unique<server::PagedRows>(arena.get(), kRowBytes));
      rows->back()->AddPages(arena->Allocate(rows->back()->PagesNeededFor(layer.tokens)).value());
    }
    const size_t at = size_t{h} * layer.tokens * kHeadDim;
    keys.back()->Append(reinterpret_cast<const char*>(layer.keys.data() + at), layer.tokens);
    values.back()->Append(reinterpret_cast<const char*>(layer.values.data() + at), layer.tokens);
  }
  size_t rows = 0;
  for (const auto& head : selection) rows += head.size();
  std::vector<char> out(2 * rows * kRowBytes, 1);
  const std::vector<double> memcpy_us = bench::Time(repeats, [&] {
    char* k_out = out.data();
    char* v_out = out.data() + rows * kRowBytes;
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      for (uint32_t p : selection[h]) {
        std::memcpy(k_out, keys[h]->Row(p), kRowBytes);
        std::memcpy(v_out, values[h]->Row(p), kRowBytes);
        k_out += kRowBytes;
        v_out += kRowBytes;
      }
    }
  });
  const std::vector<double> gather_us = bench::Time(repeats, [&] {
    char* k_out = out.data();
    char* v_out = out.data() + rows * kRowBytes;
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      keys[h]->Gather(selection[h].data(), selection[h].size(), k_out);
      values[h]->Gather(selection[h].data(), selection[h].size(), v_out);
      k_out += selection[h].size() * kRowBytes;
      v_out += selection[h].size() * kRowBytes;
    }
  });
  return {{"memcpy", out.size(), bench::Percentile(memcpy_us, 0.5),
           bench::Percentile(memcpy_us, 0.99), 0},
          {"gather", out.size(), bench::Percentile(gather_us, 0.5),
           bench::Percentile(gather_us, 0.99), 0}};
}

void Print(const Row& row, double floor_us, bool json) {
  // The indices row moves no rows: it has no rate and nothing to set against the floor.
  const bool moved = row.path != "indices";
  const double gbps = row.bytes / row.median_us / 1e3;
  const double ratio = floor_us / row.median_us;
  if (json) {
    std::printf(
        "{\"path\": \"%s\", \"bytes\": %zu, \"median_us\": %.1f, \"p99_us\": %.1f, \"gbps\": %s, "
        "\"ratio_vs_floor\": %s, \"server_rows_us\": %.1f}\n",
        row.path.c_str(), row.bytes, row.median_us, row.p99_us,
        moved ? absl::StrFormat("%.2f", gbps).c_str() : "null",
        moved ? absl::StrFormat("%.3f", ratio).c_str() : "null", row.server_rows_us);
  } else if (moved) {
    std::printf("%-8s %6.0f MiB %10.1f %10.1f %8.2f %8.3f %14.1f %13.3f\n", row.path.c_str(),
                row.bytes / 1048576.0, row.median_us, row.p99_us, gbps, ratio, row.server_rows_us,
                row.server_rows_us > 0 ? floor_us / row.server_rows_us : 0.0);
  } else {
    std::printf("%-8s %6.0f MiB %10.1f %10.1f\n", row.path.c_str(), row.bytes / 1048576.0,
                row.median_us, row.p99_us);
  }
}

// Moves every query head's query by the angle whose cosine is `cosine`, towards a random
// direction orthogonal to it, keeping its norm.
void Drift(std::vector<float>& query, double cosine, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const double sine = std::sqrt(std::max(0.0, 1 - cosine * cosine));
  for (uint32_t q = 0; q < kQueryHeads; ++q) {
    float* v = query.data() + size_t{q} * kHeadDim;
    double norm = 0;
    for (uint32_t i = 0; i < kHeadDim; ++i) norm += double{v[i]} * v[i];
    norm = std::sqrt(norm);
    std::vector<double> r(kHeadDim);
    double dot = 0, rnorm = 0;
    for (uint32_t i = 0; i < kHeadDim; ++i) dot += (r[i] = normal(rng)) * v[i] / norm;
    for (uint32_t i = 0; i < kHeadDim; ++i) rnorm += (r[i] -= dot * v[i] / norm) * r[i];
    rnorm = std::sqrt(rnorm);
    for (uint32_t i = 0; i < kHeadDim; ++i) {
      v[i] = static_cast<float>(cosine * v[i] + sine * norm * r[i] / rnorm);
    }
  }
}

// Delta transfer on a decode trace; returns false if a cached row went wrong.
bool RunDelta(const Served& served, const Layer& layer, uint32_t k, bool json) {
  const uint32_t steps = absl::GetFlag(FLAGS_delta_steps);
  const double cosine = absl::GetFlag(FLAGS_adjacent_cosine);
  auto stream = served.client->OpenRetrievalStream({.data_path = DataPath::kUcx}).value();
  char* keys = static_cast<char*>(stream->receive_buffer());
  char* values = keys + PayloadBytes(k) / 2;
  if (!json) {
    std::printf(
        "\nDelta transfer: %u decode steps, k = %u per kv head of %u tokens, adjacent "
        "query cosine %.2f\n%-12s %14s %14s %8s\n",
        steps, k, layer.tokens, cosine, "cache_slots", "bytes_full", "bytes_sent", "saved");
  }
  for (const std::string& units :
       std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_cache_slots), ','))) {
    const uint32_t slots = k * static_cast<uint32_t>(std::stoul(units));
    std::mt19937 rng(7);  // the same trace for every cache size
    std::vector<float> query = layer.query;
    std::vector<char> cache_k(size_t{kKvHeads} * slots * kRowBytes),
        cache_v(size_t{kKvHeads} * slots * kRowBytes);
    uint64_t full = 0, sent = 0;
    for (uint32_t step = 0; step < steps; ++step) {
      if (step > 0) Drift(query, cosine, rng);
      RetrieveQuery q{served.session, query, k, keys, values, PayloadBytes(k) / 2, slots};
      auto results = stream->Retrieve(0, {&q, 1});
      if (!results.ok() || !(*results)[0].status.ok()) return false;
      const RetrieveResult& result = (*results)[0];
      size_t offset = 0;
      for (uint32_t h = 0; h < kKvHeads; ++h) {
        const HeadSelection& head = result.heads[h];
        for (uint32_t index : head.sent) {
          const size_t slot = size_t{h} * slots + head.slots[index];
          std::memcpy(cache_k.data() + slot * kRowBytes, keys + offset, kRowBytes);
          std::memcpy(cache_v.data() + slot * kRowBytes, values + offset, kRowBytes);
          offset += kRowBytes;
        }
        for (size_t i = 0; i < head.positions.size(); ++i) {  // the cache holds what was chosen
          const size_t slot = size_t{h} * slots + head.slots[i];
          const size_t src = (size_t{h} * layer.tokens + head.positions[i]) * kHeadDim;
          if (std::memcmp(cache_k.data() + slot * kRowBytes, layer.keys.data() + src, kRowBytes) ||
              std::memcmp(cache_v.data() + slot * kRowBytes, layer.values.data() + src,
                          kRowBytes)) {
            return false;
          }
        }
      }
      full += PayloadBytes(k);
      sent += 2 * offset;
    }
    const double saved = 1.0 - static_cast<double>(sent) / full;
    if (json) {
      std::printf(
          "{\"path\": \"delta\", \"k\": %u, \"cache_slots\": %u, \"adjacent_cosine\": %.2f, "
          "\"steps\": %u, \"bytes_full\": %lu, \"bytes_sent\": %lu, \"saved_fraction\": %.3f}\n",
          k, slots, cosine, steps, static_cast<unsigned long>(full),
          static_cast<unsigned long>(sent), saved);
    } else {
      std::printf("%-12u %14lu %14lu %7.1f%%\n", slots, static_cast<unsigned long>(full),
                  static_cast<unsigned long>(sent), 100 * saved);
    }
  }
  return true;
}

int Run() {
  const bool json = absl::GetFlag(FLAGS_json);
  const uint32_t repeats = absl::GetFlag(FLAGS_repeats);
  const std::string paths = "," + absl::GetFlag(FLAGS_paths) + ",";
  auto wanted = [&](const char* path) {
    return paths.find(absl::StrFormat(",%s,", path)) != std::string::npos;
  };
  std::vector<uint32_t> ks;
  for (const std::string& mib :
       std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_sizes_mib), ','))) {
    ks.push_back(static_cast<uint32_t>((std::stoul(mib) << 20) / PayloadBytes(1)));
  }
  const uint32_t k_max = *std::max_element(ks.begin(), ks.end());
  const uint32_t tokens = std::max<uint32_t>(2 * k_max + 96, 16384);
  FILE* info = json ? stderr : stdout;
  std::fprintf(info, "Setup: commit %s; CPU %s, %u cores; UCX %s\n", bench::Commit().c_str(),
               bench::CpuModel().c_str(), std::thread::hardware_concurrency(),
               ucp_get_version_string());
  std::fprintf(info,
               "Shape: one layer of %u tokens, %u kv heads x %u dims, fp16 (%zu-byte rows); %u "
               "timed calls per row; %s\n",
               tokens, kKvHeads, kHeadDim, kRowBytes, repeats,
               absl::GetFlag(FLAGS_scores) ? "positions and scores" : "positions only");
  const Layer layer = MakeLayer(tokens);
  Served local = Serve(layer, nullptr);
  Served tcp;
  if (wanted("ucx-tcp")) tcp = Serve(layer, "tcp");

  // One stream per path, each with a receive buffer for the largest size.
  StreamOptions ucx{.data_path = DataPath::kUcx, .receive_buffer_bytes = PayloadBytes(k_max)};
  std::unique_ptr<RetrievalStream> shm_stream, tcp_stream, grpc_stream;
  if (wanted("ucx-shm")) shm_stream = local.client->OpenRetrievalStream(ucx).value();
  if (wanted("ucx-tcp")) {
    setenv("UCX_TLS", "tcp", 1);
    tcp_stream = tcp.client->OpenRetrievalStream(ucx).value();
    unsetenv("UCX_TLS");
  }
  grpc_stream = local.client->OpenRetrievalStream({.data_path = DataPath::kGrpc}).value();
  std::vector<char> grpc_buffer(PayloadBytes(k_max), 1);

  if (!json) {
    std::printf("\n%-8s %10s %10s %10s %8s %8s %14s %13s\n", "path", "size", "median_us", "p99_us",
                "GB/s", "vs_floor", "server_rows_us", "rows_vs_floor");
  }
  for (uint32_t k : ks) {
    const size_t half = PayloadBytes(k) / 2;
    std::vector<std::vector<uint32_t>> selection;
    std::vector<Row> rows;
    rows.push_back(TimeRetrieve("grpc", *grpc_stream, local, layer, k, grpc_buffer.data(),
                                grpc_buffer.data() + half, repeats, &selection));
    const LocalGathers here = TimeLocalGathers(layer, selection, repeats);
    const Row& floor = here.floor;
    // The control plane alone: the same call without rows.
    const Row control = TimeRetrieve("indices", *grpc_stream, local, layer, k, nullptr, nullptr,
                                     repeats, &selection);
    if (shm_stream) {
      char* buffer = static_cast<char*>(shm_stream->receive_buffer());
      rows.push_back(TimeRetrieve("ucx-shm", *shm_stream, local, layer, k, buffer, buffer + half,
                                  repeats, &selection));
    }
    if (tcp_stream) {
      char* buffer = static_cast<char*>(tcp_stream->receive_buffer());
      rows.push_back(TimeRetrieve("ucx-tcp", *tcp_stream, tcp, layer, k, buffer, buffer + half,
                                  repeats, &selection));
    }
    if (wanted("memcpy")) Print(floor, floor.median_us, json);
    if (wanted("gather")) Print(here.gather, floor.median_us, json);
    for (const Row& row : rows) {
      if (wanted(row.path.c_str())) Print(row, floor.median_us, json);
    }
    if (wanted("indices")) Print(control, floor.median_us, json);
    if (!json && shm_stream) {
      std::printf("  ucx-shm is %.2fx the gRPC path's speed at this size\n",
                  rows[0].median_us / rows[1].median_us);
    }
  }
  if (absl::GetFlag(FLAGS_delta_steps) > 0) {
    const uint32_t k = tokens / 16;
    if (!RunDelta(local, layer, k, json)) {
      std::fprintf(stderr, "delta transfer: a cached row differs from the upload\n");
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace pqkv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return pqkv::Run();
}

// sdk_roundtrip_bench: the C++ SDK's side of bench/python/sdk_overhead_bench.py. Against
// a session that bench already uploaded, it times `repeats` Retrieve round trips (one
// query, rows by UCX into the stream's receive buffer when it opens, else gRPC) and
// prints the per-call microseconds as one JSON object; the Python bench runs it between
// its own timed blocks, against the same server, session and query.
//
//   sdk_roundtrip_bench --server=127.0.0.1:PORT --session=ID --query_file=Q.f32 \
//       --query_heads=32 --head_dim=128 --k=2048 --layers=8 --repeats=100
//
// Layer i of the run is i % layers. Output: {"samples_us": [...], "data_path": "ucx-shm"}.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_join.h"
#include "bench/bench_setup.h"
#include "client/pqkv_client.h"

ABSL_FLAG(std::string, server, "", "pqkv-server address.");
ABSL_FLAG(std::string, session, "", "Session to query (already uploaded).");
ABSL_FLAG(std::string, query_file, "", "The query: raw fp32 [query_head][head_dim].");
ABSL_FLAG(uint32_t, k, 2048, "Tokens selected per kv head.");
ABSL_FLAG(uint32_t, layers, 1, "Layers to cycle through.");
ABSL_FLAG(uint32_t, repeats, 100, "Timed round trips (after one warm-up).");
ABSL_FLAG(bool, with_kv, true, "Ask for the selected rows too.");
ABSL_FLAG(bool, with_scores, true, "Ask for scores too.");
ABSL_FLAG(uint32_t, rerank, 0, "RetrieveQuery.rerank: 0 the session's, 1 off, R re-ranks R x k.");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto fail = [](const absl::Status& status) {
    std::fprintf(stderr, "sdk_roundtrip_bench: %s\n", status.ToString().c_str());
    return 1;
  };
  std::ifstream in(absl::GetFlag(FLAGS_query_file), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty() || bytes.size() % sizeof(float) != 0) {
    return fail(absl::InvalidArgumentError("--query_file is missing or not fp32"));
  }
  std::vector<float> query(bytes.size() / sizeof(float));
  std::memcpy(query.data(), bytes.data(), bytes.size());

  absl::StatusOr<std::unique_ptr<pqkv::Client>> client =
      pqkv::Client::Connect(absl::GetFlag(FLAGS_server));
  if (!client.ok()) return fail(client.status());
  const std::string session = absl::GetFlag(FLAGS_session);
  absl::StatusOr<pqkv::SessionInfo> info = (*client)->GetSession(session);
  if (!info.ok()) return fail(info.status());
  absl::StatusOr<std::unique_ptr<pqkv::RetrievalStream>> stream = (*client)->OpenRetrievalStream();
  if (!stream.ok()) return fail(stream.status());

  const uint32_t k = absl::GetFlag(FLAGS_k);
  const size_t rows_bytes = size_t{info->shape.num_kv_heads} * k * info->shape.row_bytes();
  std::vector<char> own;  // rows by gRPC when the stream has no receive buffer
  char* rows = static_cast<char*>((*stream)->receive_buffer());
  if (rows == nullptr || (*stream)->receive_buffer_bytes() < 2 * rows_bytes) {
    own.resize(2 * rows_bytes);
    rows = own.data();
  }
  pqkv::RetrieveQuery item{.session_id = session, .query = query, .k = k};
  if (absl::GetFlag(FLAGS_with_kv)) {
    item.keys_out = rows;
    item.values_out = rows + rows_bytes;
    item.buffer_bytes = rows_bytes;
  }
  item.with_scores = absl::GetFlag(FLAGS_with_scores);
  item.rerank = absl::GetFlag(FLAGS_rerank);

  uint32_t call = 0;
  std::string data_path;
  absl::Status failed;
  std::vector<double> us = pqkv::bench::Time(absl::GetFlag(FLAGS_repeats), [&] {
    const uint32_t layer = call++ % absl::GetFlag(FLAGS_layers);
    absl::StatusOr<std::vector<pqkv::RetrieveResult>> results = (*stream)->Retrieve(layer, {item});
    if (!results.ok()) {
      failed = results.status();
    } else if (!(*results)[0].status.ok()) {
      failed = (*results)[0].status;
    } else {
      data_path = (*results)[0].data_path;
    }
  });
  if (!failed.ok()) return fail(failed);
  std::printf("{\"samples_us\": [%s], \"data_path\": \"%s\"}\n", absl::StrJoin(us, ", ").c_str(),
              data_path.c_str());
  return 0;
}

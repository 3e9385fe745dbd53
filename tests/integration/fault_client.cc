// A client process for fault_test, to be killed (SIGKILL) in the middle of its work:
//   --mode=upload    creates a session and uploads a patterned prefill of one layer in
//                    calls of --upload_mib MiB (each one AppendKv stream of 1 MiB
//                    messages) without end; prints "uploading <session id>" after the
//                    first call, so that the kill lands inside a later one.
//   --mode=retrieve  creates a session, uploads 8192 tokens and retrieves k = 4000 rows
//                    per kv head with their K and V per call (--data_path: ucx or grpc)
//                    without end; prints "retrieving <session id> <data path>" after the
//                    first call.
// Past --max_upload_mib the upload mode stops uploading and waits to be killed. Any failure
// before the line is printed: "FAILED: ..." and exit 1.
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/pqkv_client.h"
#include "tests/testing/patterned_kv.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address.");
ABSL_FLAG(std::string, mode, "upload", "upload or retrieve.");
ABSL_FLAG(std::string, data_path, "ucx", "retrieve: ucx or grpc.");
ABSL_FLAG(int, upload_mib, 16, "upload: K+V MiB per UploadPrefill call.");
ABSL_FLAG(int, max_upload_mib, 256, "upload: stop uploading after this many MiB.");

namespace {

int Fail(const std::string& what) {
  std::printf("FAILED: %s\n", what.c_str());
  return 1;
}

void Say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

int Upload(pqkv::Client& client, const std::string& id, const pqkv::ModelShape& shape) {
  const size_t token_bytes = 2 * shape.num_kv_heads * shape.row_bytes();  // K+V
  const auto tokens =
      static_cast<uint32_t>((size_t(absl::GetFlag(FLAGS_upload_mib)) << 20) / token_bytes);
  const pqkv::testing::PatternedLayer layer = pqkv::testing::MakePatternedLayer(shape, tokens, 5);
  const size_t max_bytes = size_t(absl::GetFlag(FLAGS_max_upload_mib)) << 20;
  uint64_t begin = 0;
  for (size_t sent = 0; sent < max_bytes; sent += tokens * token_bytes, begin += tokens) {
    const absl::Status uploaded =
        client.UploadPrefill(id, 0, begin, tokens, layer.keys.data(), layer.values.data(), false);
    if (!uploaded.ok()) return Fail(std::string(uploaded.message()));
    if (begin == 0) Say("uploading " + id);
  }
  for (;;) pause();  // waits for the kill
}

int Retrieve(pqkv::Client& client, const std::string& id, const pqkv::ModelShape& shape) {
  constexpr uint32_t kTokens = 8192, kK = 4000;
  const pqkv::testing::PatternedLayer layer = pqkv::testing::MakePatternedLayer(shape, kTokens, 7);
  absl::Status uploaded =
      client.UploadPrefill(id, 0, 0, kTokens, layer.keys.data(), layer.values.data(), true);
  if (!uploaded.ok()) return Fail(std::string(uploaded.message()));
  const bool ucx = absl::GetFlag(FLAGS_data_path) == "ucx";
  auto stream =
      client.OpenRetrievalStream({.data_path = ucx ? pqkv::DataPath::kUcx : pqkv::DataPath::kGrpc});
  if (!stream.ok()) return Fail(std::string(stream.status().message()));
  const size_t bytes = shape.num_kv_heads * kK * shape.row_bytes();
  std::vector<uint8_t> own(ucx ? 0 : 2 * bytes);
  auto* keys = ucx ? static_cast<uint8_t*>((*stream)->receive_buffer()) : own.data();
  uint8_t* values = keys + bytes;
  std::vector<float> query(shape.num_query_heads * shape.head_dim, 0.01f);
  for (uint64_t call = 0;; ++call) {
    query[call % query.size()] += 0.5f;
    pqkv::RetrieveQuery q{id, query, kK, keys, values, bytes};
    auto results = (*stream)->Retrieve(0, {&q, 1});
    if (!results.ok()) return Fail(std::string(results.status().message()));
    if (!(*results)[0].status.ok()) return Fail(std::string((*results)[0].status.message()));
    if (call == 0) Say("retrieving " + id + " " + (*results)[0].data_path);
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto client = pqkv::Client::Connect(absl::GetFlag(FLAGS_server));
  if (!client.ok()) return Fail(std::string(client.status().message()));
  const pqkv::ModelShape shape{1, 2, 8, 128, pqkv::DType::kFp16};
  pqkv::SessionOptions options;
  options.shape = shape;
  auto id = (*client)->CreateSession(options);
  if (!id.ok()) return Fail(std::string(id.status().message()));
  if (absl::GetFlag(FLAGS_mode) == "upload") return Upload(**client, *id, shape);
  if (absl::GetFlag(FLAGS_mode) == "retrieve") return Retrieve(**client, *id, shape);
  return Fail("unknown --mode " + absl::GetFlag(FLAGS_mode));
}

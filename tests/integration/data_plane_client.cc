// A worker process for the data-plane tests that need one of their own:
//   --mode=hammer     uploads a layer and retrieves 16 MiB of rows per call over UCX
//                     forever; prints "hammering" after the first call (to be killed).
//   --mode=roundtrip  uploads a patterned layer, retrieves it over UCX three times and
//                     checks every landed row bit for bit; prints
//                     "roundtrip ok <data path> <bytes>" and exits 0, or says what failed
//                     and exits 1. --expect_path names the data path it must see.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/pqkv_client.h"
#include "tests/testing/patterned_kv.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address.");
ABSL_FLAG(std::string, mode, "roundtrip", "hammer or roundtrip.");
ABSL_FLAG(std::string, expect_path, "", "Data path the roundtrip must see, e.g. ucx-put.");

namespace {

int Fail(const std::string& what) {
  std::printf("FAILED: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto client = pqkv::Client::Connect(absl::GetFlag(FLAGS_server));
  if (!client.ok()) return Fail(std::string(client.status().message()));
  const bool hammer = absl::GetFlag(FLAGS_mode) == "hammer";
  const pqkv::ModelShape shape{1, 8, 32, 128, pqkv::DType::kFp16};
  const size_t tokens = hammer ? 8192 : 3000;
  const uint32_t k = hammer ? 8000 : 1000;
  pqkv::SessionOptions options;
  options.shape = shape;
  auto id = (*client)->CreateSession(options);
  if (!id.ok()) return Fail(std::string(id.status().message()));
  const pqkv::testing::PatternedLayer layer = pqkv::testing::MakePatternedLayer(shape, tokens, 11);
  absl::Status uploaded = (*client)->UploadPrefill(*id, 0, 0, static_cast<uint32_t>(tokens),
                                                   layer.keys.data(), layer.values.data(), true);
  if (!uploaded.ok()) return Fail(std::string(uploaded.message()));
  auto stream = (*client)->OpenRetrievalStream({.data_path = pqkv::DataPath::kUcx});
  if (!stream.ok()) return Fail(std::string(stream.status().message()));
  const size_t bytes = shape.num_kv_heads * k * shape.row_bytes();
  auto* keys = static_cast<uint8_t*>((*stream)->receive_buffer());
  uint8_t* values = keys + bytes;
  std::vector<float> query(shape.num_query_heads * shape.head_dim, 0.01f);
  for (int call = 0; hammer || call < 3; ++call) {
    query[call % query.size()] += 0.5f;
    pqkv::RetrieveQuery q{*id, query, k, keys, values, bytes};
    auto results = (*stream)->Retrieve(0, {&q, 1});
    if (!results.ok()) return Fail(std::string(results.status().message()));
    const pqkv::RetrieveResult& result = (*results)[0];
    if (!result.status.ok()) return Fail(std::string(result.status.message()));
    if (hammer) {
      if (call == 0) {
        std::printf("hammering\n");
        std::fflush(stdout);
      }
      continue;
    }
    const std::string expected = absl::GetFlag(FLAGS_expect_path);
    if (!expected.empty() && result.data_path != expected) {
      return Fail("rows came by " + result.data_path + ", expected " + expected);
    }
    const size_t bad =
        pqkv::testing::CountMismatchedRows(shape, tokens, layer, result, keys, values);
    if (bad != 0) return Fail(std::to_string(bad) + " rows differ from the upload");
    if (call == 2) {
      std::printf("roundtrip ok %s %zu\n", result.data_path.c_str(), 2 * result.kv_bytes);
    }
  }
  return 0;
}

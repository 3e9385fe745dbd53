// Fuzz target: FetchKv. The input is one request's bytes, sent raw to the real service
// (fuzz_server.h): the unary call's parse, the session lookup, the layer, the fetch size
// limit and each head's positions against the sessions "f32" and "f16". Checks: the status
// names bad input (never INTERNAL, UNKNOWN or a hang); an OK answer has one entry per
// requested head with keys and values of one row per position.
#include <cstdint>
#include <string>

#include "pqkv/v1/pqkv.pb.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_server.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  pqkv::fuzz::FuzzServer::Get();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using pqkv::fuzz::FuzzServer;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::string reply;
  const grpc::Status status = FuzzServer::Get().Unary("/pqkv.v1.Pqkv/FetchKv", bytes, &reply);
  pqkv::fuzz::CheckStatusIn("FetchKv", status,
                            {grpc::StatusCode::OK, grpc::StatusCode::INVALID_ARGUMENT,
                             grpc::StatusCode::NOT_FOUND, grpc::StatusCode::OUT_OF_RANGE});
  if (!status.ok()) return 0;
  pqkv::v1::FetchKvRequest request;
  FUZZ_CHECK(request.ParseFromString(bytes), "a request that does not parse was answered OK");
  pqkv::v1::FetchKvResponse response;
  FUZZ_CHECK(response.ParseFromString(reply), "the response does not parse");
  FUZZ_CHECK(response.heads_size() == request.heads_size(), "%d heads answered for %d asked",
             response.heads_size(), request.heads_size());
  const size_t row_bytes = request.session_id() == "f32" ? pqkv::fuzz::kF32HeadDim * 4 : 8 * 2;
  for (int h = 0; h < request.heads_size(); ++h) {
    const size_t want = request.heads(h).positions_size() * row_bytes;
    FUZZ_CHECK(response.heads(h).keys().size() == want && response.heads(h).values().size() == want,
               "head %d: %zu key and %zu value bytes for %zu", h, response.heads(h).keys().size(),
               response.heads(h).values().size(), want);
  }
  return 0;
}

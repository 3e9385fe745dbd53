// Fuzz target: the AppendKv stream and the chunk apply path of the store. Each input first
// gets a fresh session "a" (fp32, 2 layers x 2 kv heads x 16 dims, 2 sub-spaces x 4 bits,
// sink 4, recent 8: 64 tokens train an index), then up to 8 messages (message_framing.h)
// sent as raw bytes on one AppendKv stream: the reactor's parse, the chunk checks (session,
// dtype, layer, token range, sizes, finite values), the paged append, sealing (which starts
// an index build) and appends after it (encoded with the new codebooks). "a" is closed after
// each input, whatever is still building. Checks: the stream ends with a status that names
// bad input, never INTERNAL or UNKNOWN; when OK the response parses and counts at most the
// messages sent.
#include <cstdint>
#include <string>
#include <vector>

#include "pqkv/v1/pqkv.pb.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_server.h"
#include "tests/fuzz/message_framing.h"

namespace {

const std::string& CreateA() {
  static const std::string* request = [] {
    pqkv::v1::CreateSessionRequest create;
    create.set_session_id("a");
    create.mutable_shape()->set_num_layers(2);
    create.mutable_shape()->set_num_kv_heads(2);
    create.mutable_shape()->set_num_query_heads(4);
    create.mutable_shape()->set_head_dim(16);
    create.mutable_shape()->set_dtype(pqkv::v1::DTYPE_FP32);
    create.mutable_index()->set_subspaces(2);
    create.mutable_index()->set_bits(4);
    create.mutable_index()->set_kmeans_iterations(3);
    create.mutable_index()->set_sink_tokens(4);
    create.mutable_index()->set_recent_window(8);
    return new std::string(create.SerializeAsString());
  }();
  return *request;
}

const std::string& CloseA() {
  static const std::string* request = [] {
    pqkv::v1::CloseSessionRequest close;
    close.set_session_id("a");
    return new std::string(close.SerializeAsString());
  }();
  return *request;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  pqkv::fuzz::FuzzServer::Get();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using pqkv::fuzz::FuzzServer;
  FuzzServer& server = FuzzServer::Get();
  const grpc::Status created = server.Unary("/pqkv.v1.Pqkv/CreateSession", CreateA());
  FUZZ_CHECK(created.ok(), "CreateSession(\"a\"): %s", created.error_message().c_str());
  const std::vector<std::string> messages = pqkv::fuzz::SplitMessages(data, size);
  const grpc::Status status = server.AppendKv(messages);
  pqkv::fuzz::CheckStatusIn(
      "AppendKv", status,
      {grpc::StatusCode::OK, grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::NOT_FOUND,
       grpc::StatusCode::OUT_OF_RANGE, grpc::StatusCode::FAILED_PRECONDITION,
       grpc::StatusCode::RESOURCE_EXHAUSTED});
  const grpc::Status closed = server.Unary("/pqkv.v1.Pqkv/CloseSession", CloseA());
  FUZZ_CHECK(closed.ok(), "CloseSession(\"a\"): %s", closed.error_message().c_str());
  return 0;
}

// Fuzz target: the Retrieve stream. The input is up to 8 messages (message_framing.h), each
// sent as raw bytes on one stream to the real service (fuzz_server.h), so they reach the
// reactor's own parse, then the items' validation against the sessions "f32" and "f16",
// scoring (PQ and exact layers), row gathering, row caches (cache_slots) and the data plane
// offer (UCX off). Checks: the stream ends OK or INVALID_ARGUMENT (a message that did not
// parse); each answered request gets one result per item, its request_id back, and
// positions below the session's token count.
#include <cstdint>
#include <string>
#include <vector>

#include "pqkv/v1/pqkv.pb.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_server.h"
#include "tests/fuzz/message_framing.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  pqkv::fuzz::FuzzServer::Get();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using pqkv::fuzz::FuzzServer;
  const std::vector<std::string> messages = pqkv::fuzz::SplitMessages(data, size);
  std::vector<std::string> responses;
  const grpc::Status status = FuzzServer::Get().Retrieve(messages, &responses);
  pqkv::fuzz::CheckStatusIn("Retrieve", status,
                            {grpc::StatusCode::OK, grpc::StatusCode::INVALID_ARGUMENT});
  FUZZ_CHECK(responses.size() <= messages.size(), "%zu responses to %zu requests", responses.size(),
             messages.size());
  for (size_t i = 0; i < responses.size(); ++i) {
    pqkv::v1::RetrieveRequest request;
    FUZZ_CHECK(request.ParseFromString(messages[i]), "request %zu was answered, not parsed", i);
    pqkv::v1::RetrieveResponse response;
    FUZZ_CHECK(response.ParseFromString(responses[i]), "response %zu does not parse", i);
    FUZZ_CHECK(response.request_id() == request.request_id(), "request_id %llu answered as %llu",
               static_cast<unsigned long long>(request.request_id()),
               static_cast<unsigned long long>(response.request_id()));
    FUZZ_CHECK(response.results_size() == request.items_size(), "%d results for %d items",
               response.results_size(), request.items_size());
    for (const pqkv::v1::RetrieveResult& result : response.results()) {
      if (result.status_code() != 0) continue;
      for (const pqkv::v1::HeadSelection& head : result.heads()) {
        for (uint32_t position : head.positions()) {
          FUZZ_CHECK(position < result.num_tokens(), "position %u of %llu tokens", position,
                     static_cast<unsigned long long>(result.num_tokens()));
        }
      }
    }
  }
  return 0;
}

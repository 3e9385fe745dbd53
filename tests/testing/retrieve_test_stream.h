// RetrieveTestStream: a Retrieve stream over the generated stub, for integration tests
// that send requests the SDK would not (many items, raw landings, responses past its
// receive limit). One request and its response per Call; the test fails (REQUIRE) if the
// stream breaks. Not thread-safe.
#ifndef PQKV_TESTS_TESTING_RETRIEVE_TEST_STREAM_H_
#define PQKV_TESTS_TESTING_RETRIEVE_TEST_STREAM_H_

#include <grpcpp/grpcpp.h>

#include <memory>

#include "pqkv/v1/pqkv.grpc.pb.h"
#include "tests/testing/server_process.h"

namespace pqkv::testing {

class RetrieveTestStream {
 public:
  // Opens a stream to `server` on a channel of its own, without message size limits.
  explicit RetrieveTestStream(const ServerProcess& server);
  ~RetrieveTestStream();  // ends the stream

  v1::RetrieveResponse Call(const v1::RetrieveRequest& request);

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Pqkv::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::RetrieveRequest, v1::RetrieveResponse>> stream_;
};

}  // namespace pqkv::testing

#endif  // PQKV_TESTS_TESTING_RETRIEVE_TEST_STREAM_H_

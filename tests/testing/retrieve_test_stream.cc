#include "tests/testing/retrieve_test_stream.h"

#include "catch2/catch.hpp"

namespace pqkv::testing {

RetrieveTestStream::RetrieveTestStream(const ServerProcess& server) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  channel_ = grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Pqkv::NewStub(channel_);
  stream_ = stub_->Retrieve(&context_);
}

RetrieveTestStream::~RetrieveTestStream() {
  stream_->WritesDone();
  stream_->Finish();
}

v1::RetrieveResponse RetrieveTestStream::Call(const v1::RetrieveRequest& request) {
  REQUIRE(stream_->Write(request));
  v1::RetrieveResponse response;
  REQUIRE(stream_->Read(&response));
  return response;
}

}  // namespace pqkv::testing

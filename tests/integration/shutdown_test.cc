// Shutdown of the real server (SIGTERM): an idle Retrieve stream (no request in
// processing) and an idle AppendKv stream (no chunk being applied) are ended at once with
// UNAVAILABLE "server shutting down" instead of holding the server for the whole
// --shutdown_grace_seconds.
#include <grpcpp/grpcpp.h>
#include <sys/wait.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "catch2/catch.hpp"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "tests/testing/server_process.h"

namespace pqkv {
namespace {

TEST_CASE("SIGTERM ends an idle Retrieve stream at once, not after the grace", "[server]") {
  // A grace far past the bound below: waiting it out cannot pass by chance.
  auto started = testing::ServerProcess::Start(
      "server/pqkv-server", {"--log_level=warn", "--noucx", "--shutdown_grace_seconds=30"});
  REQUIRE(started.ok());
  std::unique_ptr<testing::ServerProcess> server = *std::move(started);

  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  std::unique_ptr<v1::Pqkv::Stub> stub = v1::Pqkv::NewStub(channel);
  grpc::ClientContext context;
  auto stream = stub->Retrieve(&context);
  // One answered request: the stream is open at the server, and idle after it.
  v1::RetrieveRequest request;
  request.set_request_id(7);
  REQUIRE(stream->Write(request));
  v1::RetrieveResponse response;
  REQUIRE(stream->Read(&response));
  REQUIRE(response.request_id() == 7);

  // The client waits for a response, as a decode loop between steps does.
  bool read_more = true;
  std::thread reader([&] { read_more = stream->Read(&response); });
  const absl::Time start = absl::Now();
  const int exit_status = server->Stop();
  reader.join();
  const absl::Duration took = absl::Now() - start;
  INFO("SIGTERM to exit took " << absl::FormatDuration(took));
  CHECK(took < absl::Seconds(10));
  CHECK(WIFEXITED(exit_status));
  CHECK(WEXITSTATUS(exit_status) == 0);

  CHECK_FALSE(read_more);
  const grpc::Status status = stream->Finish();
  INFO("status " << status.error_code() << ": " << status.error_message());
  CHECK(status.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(absl::StrContains(status.error_message(), "server shutting down"));
}

TEST_CASE("SIGTERM ends an idle AppendKv stream at once, not after the grace", "[server]") {
  auto started = testing::ServerProcess::Start(
      "server/pqkv-server", {"--log_level=warn", "--noucx", "--shutdown_grace_seconds=30"});
  REQUIRE(started.ok());
  std::unique_ptr<testing::ServerProcess> server = *std::move(started);

  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  std::unique_ptr<v1::Pqkv::Stub> stub = v1::Pqkv::NewStub(channel);
  {
    grpc::ClientContext context;
    v1::CreateSessionRequest request;
    request.set_session_id("s");
    v1::ModelShape* shape = request.mutable_shape();
    shape->set_num_layers(1);
    shape->set_num_kv_heads(1);
    shape->set_num_query_heads(1);
    shape->set_head_dim(8);
    shape->set_dtype(v1::DTYPE_FP32);
    v1::CreateSessionResponse response;
    const grpc::Status status = stub->CreateSession(&context, request, &response);
    INFO(status.error_message());
    REQUIRE(status.ok());
  }
  grpc::ClientContext context;
  v1::AppendKvResponse append_response;
  auto stream = stub->AppendKv(&context, &append_response);
  // One chunk of 16 tokens, applied: the stream is open at the server, and idle after it,
  // as an engine's between two decode steps.
  constexpr uint32_t kTokens = 16;
  std::vector<float> rows(kTokens * 8, 0.5f);
  v1::AppendKvRequest chunk;
  chunk.set_session_id("s");
  chunk.set_num_tokens(kTokens);
  chunk.set_dtype(v1::DTYPE_FP32);
  chunk.mutable_keys()->assign(reinterpret_cast<const char*>(rows.data()),
                               rows.size() * sizeof(float));
  *chunk.mutable_values() = chunk.keys();
  REQUIRE(stream->Write(chunk));
  uint64_t tokens_held = 0;
  for (int attempt = 0; attempt < 10000 && tokens_held < kTokens; ++attempt) {
    grpc::ClientContext get_context;
    v1::GetSessionRequest get;
    get.set_session_id("s");
    v1::GetSessionResponse got;
    REQUIRE(stub->GetSession(&get_context, get, &got).ok());
    REQUIRE(got.session().layers_size() == 1);
    tokens_held = got.session().layers(0).num_tokens();
  }
  REQUIRE(tokens_held == kTokens);

  // The client waits for the stream's status (a thread in a call, so that its transport
  // is polled: otherwise only gRPC's backup poller, every 5 s, answers the server's
  // shutdown).
  grpc::Status status;
  std::thread waiter([&] { status = stream->Finish(); });
  const absl::Time start = absl::Now();
  const int exit_status = server->Stop();
  const absl::Duration took = absl::Now() - start;
  waiter.join();
  INFO("SIGTERM to exit took " << absl::FormatDuration(took));
  CHECK(took < absl::Seconds(10));
  CHECK(WIFEXITED(exit_status));
  CHECK(WEXITSTATUS(exit_status) == 0);

  INFO("status " << status.error_code() << ": " << status.error_message());
  CHECK(status.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(absl::StrContains(status.error_message(), "server shutting down"));
}

}  // namespace
}  // namespace pqkv

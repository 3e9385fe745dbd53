// Shutdown of the real server (SIGTERM): an idle Retrieve stream, one with no request in
// processing, is ended at once with UNAVAILABLE "server shutting down" instead of holding
// the server for the whole --shutdown_grace_seconds.
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

}  // namespace
}  // namespace pqkv

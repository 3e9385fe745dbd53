// UnaryCall: one call of a unary RPC registered raw (grpc::ByteBuffer in and out). It parses
// the request itself and serializes the response into gRPC's response buffer when it
// finishes.
//
// Why raw: gRPC 1.51's generated callback unary handler answers a request that does not
// parse with UNIMPLEMENTED and an empty message before any service code runs
// (CallbackUnaryHandler::RunHandler in grpcpp/impl/codegen/server_callback_handlers.h drops
// the deserialization status); a raw method gets the bytes, so such a request gets
// INVALID_ARGUMENT saying which message did not parse.
//
// Owns the parsed request and the response message until the call is done. Reply may be
// called from any thread, exactly once, and neither request() nor response() is used after
// it. Owned by gRPC; deletes itself in OnDone.
#ifndef PQKV_SERVER_RPC_UNARY_CALL_H_
#define PQKV_SERVER_RPC_UNARY_CALL_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>  // SerializationTraits of protobuf messages

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "server/metrics/metrics.h"

namespace pqkv::server {

template <typename Request, typename Response>
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  // rpc: the method's name, for metrics and messages (a string literal). response: gRPC's
  // response buffer of the call. metrics must outlive the call.
  UnaryCall(const char* rpc, Metrics* metrics, grpc::ByteBuffer* response)
      : rpc_(rpc), metrics_(metrics), response_buffer_(response) {}

  // Returns the caller's principal, or answers the call at once (and returns why) when
  // `principal` is an authentication error or `raw_request` does not parse. Authentication
  // comes first, so that an unauthenticated caller learns nothing from the parse.
  absl::StatusOr<std::string> Start(absl::StatusOr<std::string> principal,
                                    const grpc::ByteBuffer& raw_request) {
    if (!principal.ok()) {
      Reply(principal.status());
      return principal;
    }
    grpc::ByteBuffer bytes(raw_request);  // shares the slices; Deserialize consumes it
    if (!grpc::SerializationTraits<Request>::Deserialize(&bytes, &request_).ok()) {
      const absl::Status status = absl::InvalidArgumentError(
          absl::StrCat("the ", rpc_, " request did not parse as ", request_.GetTypeName()));
      Reply(status);
      return status;
    }
    return principal;
  }

  const Request& request() const { return request_; }
  Response* response() { return &response_; }

  // Counts the status and finishes the call, with the response when `status` is OK.
  void Reply(absl::Status status) {
    if (status.ok()) {
      bool own_buffer = false;
      status = FromGrpcStatus(
          grpc::SerializationTraits<Response>::Serialize(response_, response_buffer_, &own_buffer));
    }
    metrics_->RecordStatus(rpc_, status);
    Finish(ToGrpcStatus(status));
  }

  void OnDone() override { delete this; }

 private:
  const char* const rpc_;
  Metrics* const metrics_;
  grpc::ByteBuffer* const response_buffer_;
  Request request_;
  Response response_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_UNARY_CALL_H_

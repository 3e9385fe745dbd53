// Internals of the SDK shared by its .cc files: the pimpl structs and the conversions
// between the public types and the v1 messages. Not part of the public API.
#ifndef PQKV_CLIENT_CLIENT_INTERNAL_H_
#define PQKV_CLIENT_CLIENT_INTERNAL_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "client/pqkv_client.h"
#include "client/raw_retrieve_stream.h"
#include "client/ucx_receiver.h"
#include "pqkv/v1/pqkv.grpc.pb.h"

namespace pqkv {

// One server's Retrieve stream, opened on first use and reopened after it breaks.
struct ServerStream {
  std::unique_ptr<grpc::ClientContext> context;
  // Declared after context, which it uses: destroyed first.
  std::unique_ptr<RawRetrieveStream> stream;
  // The server's answer to the stream's data plane offer (made when the stream opens,
  // if the stream has a receive buffer); ucx_open says the server writes into it.
  bool ucx_open = false;
  absl::Status ucx_status = absl::FailedPreconditionError("no UCX receive buffer");
};

struct RetrievalStream::Impl {
  Client::Impl* client = nullptr;  // for stubs and session shapes; outlives the stream
  StreamOptions options;
  std::unique_ptr<UcxReceiver> receiver;  // null without UCX
  std::string receiver_error;             // why receiver is null
  std::vector<ServerStream> servers;      // one per endpoint, in endpoint order
  uint64_t next_request_id = 1;
  bool closed = false;
  absl::Status final_status;

  // Opens the stream to server `s`, offering the receive buffer first if there is one.
  absl::Status OpenServer(size_t s);
  // Offsets of [data, data + bytes) in the receive buffer, if it lies inside.
  std::optional<uint64_t> OffsetInBuffer(const void* data, size_t bytes) const;
};

struct Endpoint {
  std::string target;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Pqkv::Stub> stub;
};

struct Client::Impl {
  ClientOptions options;
  // The servers; a session lives on the one RendezvousPick chooses for its id.
  std::vector<Endpoint> endpoints;
  std::vector<std::string> targets;  // endpoints' targets, for RendezvousPick

  size_t EndpointOf(const std::string& session_id) const;
  v1::Pqkv::Stub* StubFor(const std::string& session_id) const {
    return endpoints[EndpointOf(session_id)].stub.get();
  }
  absl::Mutex mu;
  // Shapes of sessions this client has seen; needed to size chunks and fetches.
  std::map<std::string, ModelShape> shapes ABSL_GUARDED_BY(mu);

  // The session's shape, from the cache or from GetSession.
  absl::StatusOr<ModelShape> Shape(const std::string& session_id);
  void ForgetShape(const std::string& session_id);
  // A context with options.call_timeout as its deadline, prepared as below.
  std::unique_ptr<grpc::ClientContext> UnaryContext() const;
  // Adds the credentials every call carries.
  void Prepare(grpc::ClientContext* context) const;
};

v1::DType DTypeToProto(DType dtype);
DType DTypeFromProto(v1::DType dtype);
ModelShape ShapeFromProto(const v1::ModelShape& shape);
void ShapeToProto(const ModelShape& shape, v1::ModelShape* out);
IndexOptions IndexOptionsFromProto(const v1::IndexOptions& index);
SessionInfo SessionInfoFromProto(const v1::SessionInfo& info);

}  // namespace pqkv

#endif  // PQKV_CLIENT_CLIENT_INTERNAL_H_

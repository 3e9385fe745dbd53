// RawRetrieveStream: one Retrieve call whose responses arrive as the bytes gRPC received
// (grpc::ByteBuffer), so that their K/V rows can be copied straight to the caller's
// buffers (retrieve_response_decoder.h) instead of through protobuf strings. A blocking
// interface over gRPC's generic stub and a completion queue of its own.
//
// Not thread-safe: one thread at a time, one operation in flight (like the synchronous
// ClientReaderWriter it replaces). Must outlive nothing; the channel must outlive it.
#ifndef PQKV_CLIENT_RAW_RETRIEVE_STREAM_H_
#define PQKV_CLIENT_RAW_RETRIEVE_STREAM_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <memory>

#include "pqkv/v1/pqkv.pb.h"

namespace pqkv {

class RawRetrieveStream {
 public:
  // Starts the call on `channel` with `context` (which must outlive the stream).
  RawRetrieveStream(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* context);
  ~RawRetrieveStream();
  RawRetrieveStream(const RawRetrieveStream&) = delete;
  RawRetrieveStream& operator=(const RawRetrieveStream&) = delete;

  // False when the stream is broken (then Finish says why).
  bool Write(const v1::RetrieveRequest& request);
  bool Read(grpc::ByteBuffer* response);
  void WritesDone();
  // The call's final status; reads nothing more.
  grpc::Status Finish();

 private:
  // Waits for the one operation in flight; its ok.
  bool Wait();

  grpc::ClientContext* const context_;
  grpc::GenericStub stub_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool started_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

}  // namespace pqkv

#endif  // PQKV_CLIENT_RAW_RETRIEVE_STREAM_H_

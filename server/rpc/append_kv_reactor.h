// AppendKvReactor: serves one AppendKv stream. Each chunk is parsed and applied on the
// compute pool (it copies into pages and may wait on the layer's lock); the next read
// starts only when the chunk is applied, so chunks apply in stream order. The first bad
// chunk, or a message that does not parse, ends the stream with its status; chunks before
// it stay applied.
//
// Shutdown: EndWhenIdle ends the stream with UNAVAILABLE "server shutting down" at once
// when it is waiting for the client's next message, or once the chunk being applied is
// applied (that chunk stays applied; no message is read after it). The server's grace is
// then spent only on chunks in flight.
//
// The method is registered raw (grpc::ByteBuffer both ways): the generated callback
// method reports a message that does not parse as OnReadDone(false), the same as the
// client's end of writes, so a malformed message would end the stream with OK.
//
// Owned by gRPC; deletes itself in OnDone (after calling on_done), which gRPC calls only after
// Finish, which is only called once no pool task refers to the reactor.
#ifndef PQKV_SERVER_RPC_APPEND_KV_REACTOR_H_
#define PQKV_SERVER_RPC_APPEND_KV_REACTOR_H_

#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "server/metrics/metrics.h"
#include "server/runtime/thread_pool.h"
#include "server/store/session_store.h"

namespace pqkv::server {

class AppendKvReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  // principal: the caller, or the authentication error that ends the stream at once.
  // response: gRPC's response buffer, which gets the serialized AppendKvResponse.
  // on_done: called from OnDone, just before the reactor deletes itself.
  AppendKvReactor(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                  absl::StatusOr<std::string> principal, grpc::ByteBuffer* response,
                  std::function<void(AppendKvReactor*)> on_done);

  // Ends the stream (UNAVAILABLE "server shutting down") once no chunk is being applied,
  // at once if none is now. Thread-safe; call only before OnDone (the service calls it
  // under the lock that on_done takes).
  void EndWhenIdle();

  void OnReadDone(bool ok) override;
  void OnDone() override;

 private:
  // Finishes the stream with `status` unless it is finished already.
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Parses the message read last into chunk_ and applies it.
  absl::Status ParseAndApply();
  absl::Status Apply(const v1::AppendKvRequest& chunk);

  SessionStore* const store_;
  ThreadPool* const compute_pool_;
  Metrics* const metrics_;
  const std::string principal_;
  grpc::ByteBuffer* const response_buffer_;
  v1::AppendKvResponse response_;
  grpc::ByteBuffer message_;  // the message being read or applied
  uint64_t messages_read_ = 0;
  v1::AppendKvRequest chunk_;
  // Progress of a long upload, logged every kProgressLogInterval.
  absl::Time last_progress_log_ = absl::Now();
  uint64_t bytes_since_log_ = 0;
  const std::function<void(AppendKvReactor*)> on_done_;
  absl::Mutex mu_;
  bool applying_ ABSL_GUARDED_BY(mu_) = false;  // a chunk is on the compute pool
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish was called
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_APPEND_KV_REACTOR_H_

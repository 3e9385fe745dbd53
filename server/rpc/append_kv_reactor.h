// AppendKvReactor: serves one AppendKv stream. Each chunk is applied on the compute
// pool (it copies into pages and may wait on the layer's lock); the next read starts
// only when the chunk is applied, so chunks apply in stream order. The first bad chunk
// ends the stream with its status; chunks before it stay applied.
//
// Owned by gRPC; deletes itself in OnDone.
#ifndef PQKV_SERVER_RPC_APPEND_KV_REACTOR_H_
#define PQKV_SERVER_RPC_APPEND_KV_REACTOR_H_

#include <memory>

#include "pqkv/v1/pqkv.grpc.pb.h"
#include "server/metrics/metrics.h"
#include "server/runtime/thread_pool.h"
#include "server/store/session_store.h"

namespace pqkv::server {

class AppendKvReactor final : public grpc::ServerReadReactor<v1::AppendKvRequest> {
 public:
  // principal: the caller, or the authentication error that ends the stream at once.
  AppendKvReactor(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                  absl::StatusOr<std::string> principal, v1::AppendKvResponse* response);

  void OnReadDone(bool ok) override;
  void OnDone() override { delete this; }

 private:
  absl::Status Apply(const v1::AppendKvRequest& chunk);

  SessionStore* const store_;
  ThreadPool* const compute_pool_;
  Metrics* const metrics_;
  const std::string principal_;
  v1::AppendKvResponse* const response_;
  v1::AppendKvRequest chunk_;
  // Progress of a long upload, logged every kProgressLogInterval.
  absl::Time last_progress_log_ = absl::Now();
  uint64_t bytes_since_log_ = 0;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_APPEND_KV_REACTOR_H_

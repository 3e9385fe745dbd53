// PqkvService: the v1 gRPC API (callback API) over a SessionStore.
//
// Reactions never block: scoring, fetches and appends run on the compute pool, index
// builds on the store's index pool. Thread-safe; the store and pool must outlive it.
#ifndef PQKV_SERVER_RPC_PQKV_SERVICE_H_
#define PQKV_SERVER_RPC_PQKV_SERVICE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "server/dataplane/ucx_data_plane.h"
#include "server/memory/byte_budget.h"
#include "server/metrics/metrics.h"
#include "server/metrics/quality_sampler.h"
#include "server/rpc/fetch_limits.h"
#include "server/runtime/thread_pool.h"
#include "server/security/token_authenticator.h"
#include "server/store/session_store.h"

namespace pqkv::server {

class AppendKvReactor;
class RetrieveReactor;

// The principal (the name of a tokens file's `name:token` line) to which GetServerStats
// shows server-wide totals when authentication is on.
inline constexpr char kAdminPrincipal[] = "admin";

struct ServiceOptions {
  // Longest a Retrieve item waits for a building index after its request arrived (less
  // when the call's deadline comes first); zero: it never waits, the layer is scored
  // exactly while its index builds.
  absl::Duration max_index_wait = absl::ZeroDuration();
  // Compute backend in use, reported by GetServerStats: "cpu" or "cuda".
  std::string backend = "cpu";
  // Bearer-token authentication, or null: no authentication, every caller is "".
  // GetServerStats shows a principal its own sessions and bytes; server-wide totals go to
  // the principal named kAdminPrincipal and to every caller without authentication.
  const TokenAuthenticator* auth = nullptr;
  // The UCX data plane, or null (data_plane_error says why): rows then travel in
  // gRPC responses only.
  UcxDataPlane* data_plane = nullptr;
  std::string data_plane_error = "disabled";
  // Most bytes of K/V rows that Retrieve may hold gathered at once, server-wide: rows in
  // responses not yet written and staging of UCX puts (RetrieveReactor). Items past it
  // fail with RESOURCE_EXHAUSTED before gathering.
  size_t max_inflight_gather_bytes = size_t{1} << 30;
  // Most bytes all Retrieve streams' row cache directories (cache_slots) may take,
  // server-wide; an item whose directories would pass it fails with RESOURCE_EXHAUSTED.
  size_t max_row_cache_bytes = size_t{256} << 20;
  // Live quality telemetry (--quality_sample_rate), or null: none.
  QualitySampler* quality_sampler = nullptr;
};

// The callback service with every method registered raw (grpc::ByteBuffer in and out):
// Retrieve so that its responses reference gathered K/V rows instead of copying them
// (RetrieveReactor); the others so that a request or message that does not parse gets
// INVALID_ARGUMENT saying so (the generated methods answer UNIMPLEMENTED with no message
// for a unary request, and end an AppendKv stream as if the client had finished:
// UnaryCall, AppendKvReactor).
using PqkvCallbackServiceBase = v1::Pqkv::WithRawCallbackMethod_CreateSession<
    v1::Pqkv::WithRawCallbackMethod_AppendKv<v1::Pqkv::WithRawCallbackMethod_Retrieve<
        v1::Pqkv::WithRawCallbackMethod_FetchKv<v1::Pqkv::WithRawCallbackMethod_CloseSession<
            v1::Pqkv::WithRawCallbackMethod_GetSession<v1::Pqkv::WithRawCallbackMethod_ListSessions<
                v1::Pqkv::WithRawCallbackMethod_GetServerStats<v1::Pqkv::Service>>>>>>>>;

class PqkvService final : public PqkvCallbackServiceBase {
 public:
  // store, compute_pool and metrics must outlive the service.
  PqkvService(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
              const ServiceOptions& options);

  // The unary methods get their request's bytes and answer through a UnaryCall.
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* AppendKv(grpc::CallbackServerContext* context,
                                                      grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Retrieve(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* FetchKv(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetServerStats(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;

  // Before grpc::Server::Shutdown: ends every open Retrieve stream that has no request in
  // processing now, and every AppendKv stream that has no chunk being applied, with
  // UNAVAILABLE "server shutting down"; each other one as soon as its request is answered
  // or its chunk applied. Streams opened after it end the same way. The shutdown's grace
  // is then spent on work in flight only (idle streams would hold it to the end).
  void EndIdleStreams();

 private:
  SessionStore* const store_;
  ThreadPool* const compute_pool_;
  Metrics* const metrics_;
  const ServiceOptions options_;
  std::atomic<uint64_t> retrieve_items_{0};
  // Shared by every Retrieve stream; outlives them (the server is shut down first).
  ByteBudget gather_budget_;
  // Shared by every Retrieve stream's row cache directories.
  ByteBudget row_cache_budget_;
  // Retrieve and AppendKv streams not yet done (each removes itself in OnDone).
  absl::Mutex streams_mu_;
  absl::flat_hash_set<RetrieveReactor*> streams_ ABSL_GUARDED_BY(streams_mu_);
  absl::flat_hash_set<AppendKvReactor*> append_streams_ ABSL_GUARDED_BY(streams_mu_);
  bool ending_streams_ ABSL_GUARDED_BY(streams_mu_) = false;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_PQKV_SERVICE_H_

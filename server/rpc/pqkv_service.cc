#include "server/rpc/pqkv_service.h"

#include "absl/strings/str_cat.h"
#include "server/rpc/append_kv_reactor.h"
#include "server/rpc/proto_convert.h"
#include "server/rpc/retrieve_reactor.h"
#include "server/rpc/unary_call.h"
#include "server/version.h"

namespace pqkv::server {
namespace {

absl::Status FillFetch(const Session& session, const v1::FetchKvRequest& request,
                       v1::FetchKvResponse* response) {
  absl::StatusOr<LayerStore*> layer = session.layer(request.layer());
  if (!layer.ok()) return layer.status();
  const size_t row_bytes = session.config().shape.row_bytes();
  size_t rows = 0;
  for (const v1::HeadPositions& head : request.heads()) rows += head.positions_size();
  if (2 * rows * row_bytes > kMaxFetchBytes) {
    return absl::InvalidArgumentError(absl::StrCat("fetch of ", rows, " rows would return ",
                                                   2 * rows * row_bytes, " bytes, over the ",
                                                   kMaxFetchBytes, "-byte limit: split it"));
  }
  for (const v1::HeadPositions& head : request.heads()) {
    v1::HeadRows* out = response->add_heads();
    out->set_kv_head(head.kv_head());
    std::string* keys = out->mutable_keys();
    std::string* values = out->mutable_values();
    keys->resize(head.positions_size() * row_bytes);
    values->resize(head.positions_size() * row_bytes);
    absl::Status status = (*layer)->Fetch(
        head.kv_head(), absl::MakeConstSpan(head.positions().data(), head.positions_size()),
        keys->data(), values->data());
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace

PqkvService::PqkvService(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                         const ServiceOptions& options)
    : store_(store),
      compute_pool_(compute_pool),
      metrics_(metrics),
      options_(options),
      gather_budget_(options.max_inflight_gather_bytes),
      row_cache_budget_(options.max_row_cache_bytes) {}

grpc::ServerUnaryReactor* PqkvService::CreateSession(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::CreateSessionRequest, v1::CreateSessionResponse>(
      "CreateSession", metrics_, response);
  absl::StatusOr<std::string> principal =
      call->Start(PrincipalOf(options_.auth, *context), *request);
  if (!principal.ok()) return call;
  const v1::CreateSessionRequest& req = call->request();
  absl::StatusOr<SessionConfig> config = SessionConfigFromProto(req.shape(), req.index());
  if (!config.ok()) {
    call->Reply(config.status());
    return call;
  }
  absl::StatusOr<std::shared_ptr<Session>> session =
      store_->CreateSession(req.session_id(), *config, *principal);
  if (session.ok()) {
    call->response()->set_session_id((*session)->id());
    IndexOptionsToProto((*session)->config().index, call->response()->mutable_index());
  }
  call->Reply(session.status());
  return call;
}

grpc::ServerReadReactor<grpc::ByteBuffer>* PqkvService::AppendKv(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  // gRPC calls OnDone only after this returns, so the stream is registered before it
  // can remove itself.
  auto* reactor =
      new AppendKvReactor(store_, compute_pool_, metrics_, PrincipalOf(options_.auth, *context),
                          response, [this](AppendKvReactor* done) {
                            absl::MutexLock lock(&streams_mu_);
                            append_streams_.erase(done);
                          });
  absl::MutexLock lock(&streams_mu_);
  append_streams_.insert(reactor);
  if (ending_streams_) reactor->EndWhenIdle();
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* PqkvService::Retrieve(
    grpc::CallbackServerContext* context) {
  const absl::Time deadline = context->deadline() == std::chrono::system_clock::time_point::max()
                                  ? absl::InfiniteFuture()
                                  : absl::FromChrono(context->deadline());
  // gRPC calls OnDone only after this returns, so the stream is registered before it
  // can remove itself.
  auto* reactor =
      new RetrieveReactor(store_, compute_pool_, metrics_, options_.quality_sampler,
                          PrincipalOf(options_.auth, *context), deadline, options_.max_index_wait,
                          &retrieve_items_, options_.data_plane, options_.data_plane_error,
                          &gather_budget_, &row_cache_budget_, [this](RetrieveReactor* done) {
                            absl::MutexLock lock(&streams_mu_);
                            streams_.erase(done);
                          });
  absl::MutexLock lock(&streams_mu_);
  streams_.insert(reactor);
  if (ending_streams_) reactor->EndWhenIdle();
  return reactor;
}

void PqkvService::EndIdleStreams() {
  absl::MutexLock lock(&streams_mu_);
  ending_streams_ = true;
  // Under streams_mu_ no stream can be deleted (OnDone takes it first).
  for (RetrieveReactor* stream : streams_) stream->EndWhenIdle();
  for (AppendKvReactor* stream : append_streams_) stream->EndWhenIdle();
}

grpc::ServerUnaryReactor* PqkvService::FetchKv(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) {
  auto* call =
      new UnaryCall<v1::FetchKvRequest, v1::FetchKvResponse>("FetchKv", metrics_, response);
  absl::StatusOr<std::string> principal =
      call->Start(PrincipalOf(options_.auth, *context), *request);
  if (!principal.ok()) return call;
  absl::StatusOr<std::shared_ptr<Session>> session =
      store_->Get(call->request().session_id(), *principal);
  if (!session.ok()) {
    call->Reply(session.status());
    return call;
  }
  // Copying up to 64 MiB of rows is too long for a reaction: do it on the compute pool.
  compute_pool_->Schedule([this, call, session = *std::move(session)] {
    v1::FetchKvResponse* response = call->response();
    absl::Status status = FillFetch(*session, call->request(), response);
    if (!status.ok()) response->Clear();
    for (const v1::HeadRows& rows : response->heads()) {
      metrics_->RecordBytesSent("grpc", rows.keys().size() + rows.values().size());
    }
    call->Reply(status);
  });
  return call;
}

// Close, GetSession and ListSessions take every layer's lock (and Close may free
// thousands of pages), so they run on the compute pool, not in the reaction.
grpc::ServerUnaryReactor* PqkvService::CloseSession(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::CloseSessionRequest, v1::CloseSessionResponse>("CloseSession",
                                                                                metrics_, response);
  absl::StatusOr<std::string> principal =
      call->Start(PrincipalOf(options_.auth, *context), *request);
  if (!principal.ok()) return call;
  compute_pool_->Schedule([this, call, principal = *principal] {
    absl::StatusOr<size_t> bytes = store_->Close(call->request().session_id(), principal);
    if (bytes.ok()) call->response()->set_bytes_released(*bytes);
    call->Reply(bytes.status());
  });
  return call;
}

grpc::ServerUnaryReactor* PqkvService::GetSession(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::GetSessionRequest, v1::GetSessionResponse>("GetSession", metrics_,
                                                                            response);
  absl::StatusOr<std::string> principal =
      call->Start(PrincipalOf(options_.auth, *context), *request);
  if (!principal.ok()) return call;
  compute_pool_->Schedule([this, call, principal = *principal] {
    absl::StatusOr<std::shared_ptr<Session>> session =
        store_->Get(call->request().session_id(), principal);
    if (session.ok()) {
      SessionInfoToProto(**session, /*with_layers=*/true, call->response()->mutable_session());
    }
    call->Reply(session.status());
  });
  return call;
}

grpc::ServerUnaryReactor* PqkvService::ListSessions(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::ListSessionsRequest, v1::ListSessionsResponse>("ListSessions",
                                                                                metrics_, response);
  absl::StatusOr<std::string> principal =
      call->Start(PrincipalOf(options_.auth, *context), *request);
  if (!principal.ok()) return call;
  compute_pool_->Schedule([this, call, principal = *principal] {
    for (const std::shared_ptr<Session>& session : store_->List(principal)) {
      SessionInfoToProto(*session, /*with_layers=*/false, call->response()->add_sessions());
    }
    call->Reply(absl::OkStatus());
  });
  return call;
}

grpc::ServerUnaryReactor* PqkvService::GetServerStats(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::GetServerStatsRequest, v1::GetServerStatsResponse>(
      "GetServerStats", metrics_, response);
  absl::StatusOr<std::string> principal =
      call->Start(PrincipalOf(options_.auth, *context), *request);
  if (!principal.ok()) return call;
  // With authentication, a token sees its own sessions and bytes; totals are for the
  // principal named "admin" (kAdminPrincipal) and for every caller without authentication.
  const bool totals = options_.auth == nullptr || *principal == kAdminPrincipal;
  const SessionStoreStats stats = totals ? store_->Stats() : store_->StatsOf(*principal);
  v1::GetServerStatsResponse* out = call->response();
  out->set_num_sessions(stats.num_sessions);
  out->set_bytes_held(stats.bytes_held);
  out->set_bytes_capacity(stats.bytes_capacity);
  out->set_page_bytes(stats.page_bytes);
  out->set_index_builds_pending(stats.index_builds_pending);
  out->set_index_builds_done(stats.index_builds_done);
  out->set_retrieve_items(retrieve_items_.load(std::memory_order_relaxed));
  out->set_backend(options_.backend);
  out->set_ucx_available(options_.data_plane != nullptr);
  if (options_.data_plane == nullptr) out->set_ucx_error(options_.data_plane_error);
  out->set_version(kVersion);
  call->Reply(absl::OkStatus());
  return call;
}

}  // namespace pqkv::server

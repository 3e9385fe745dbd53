#include "server/rpc/pqkv_service.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "server/rpc/append_kv_reactor.h"
#include "server/rpc/proto_convert.h"
#include "server/rpc/retrieve_reactor.h"
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
    : store_(store), compute_pool_(compute_pool), metrics_(metrics), options_(options) {}

void PqkvService::Done(grpc::ServerUnaryReactor* reactor, const char* rpc,
                       const absl::Status& status) {
  metrics_->RecordStatus(rpc, status);
  reactor->Finish(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* PqkvService::CreateSession(grpc::CallbackServerContext* context,
                                                     const v1::CreateSessionRequest* request,
                                                     v1::CreateSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> principal = PrincipalOf(options_.auth, *context);
  if (!principal.ok()) {
    Done(reactor, "CreateSession", principal.status());
    return reactor;
  }
  absl::StatusOr<SessionConfig> config = SessionConfigFromProto(request->shape(), request->index());
  if (!config.ok()) {
    Done(reactor, "CreateSession", config.status());
    return reactor;
  }
  absl::StatusOr<std::shared_ptr<Session>> session =
      store_->CreateSession(request->session_id(), *config, *principal);
  if (session.ok()) {
    response->set_session_id((*session)->id());
    IndexOptionsToProto((*session)->config().index, response->mutable_index());
  }
  Done(reactor, "CreateSession", session.status());
  return reactor;
}

grpc::ServerReadReactor<grpc::ByteBuffer>* PqkvService::AppendKv(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new AppendKvReactor(store_, compute_pool_, metrics_, PrincipalOf(options_.auth, *context),
                             response);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* PqkvService::Retrieve(
    grpc::CallbackServerContext* context) {
  const absl::Time deadline = context->deadline() == std::chrono::system_clock::time_point::max()
                                  ? absl::InfiniteFuture()
                                  : absl::FromChrono(context->deadline());
  return new RetrieveReactor(store_, compute_pool_, metrics_, PrincipalOf(options_.auth, *context),
                             deadline, options_.max_index_wait, &retrieve_items_,
                             options_.data_plane, options_.data_plane_error);
}

grpc::ServerUnaryReactor* PqkvService::FetchKv(grpc::CallbackServerContext* context,
                                               const v1::FetchKvRequest* request,
                                               v1::FetchKvResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> principal = PrincipalOf(options_.auth, *context);
  if (!principal.ok()) {
    Done(reactor, "FetchKv", principal.status());
    return reactor;
  }
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Get(request->session_id(), *principal);
  if (!session.ok()) {
    Done(reactor, "FetchKv", session.status());
    return reactor;
  }
  // Copying up to 64 MiB of rows is too long for a reaction: do it on the compute pool.
  compute_pool_->Schedule([this, reactor, request, response, session = *std::move(session)] {
    absl::Status status = FillFetch(*session, *request, response);
    if (!status.ok()) response->Clear();
    for (const v1::HeadRows& rows : response->heads()) {
      metrics_->RecordBytesSent("grpc", rows.keys().size() + rows.values().size());
    }
    Done(reactor, "FetchKv", status);
  });
  return reactor;
}

// Close, GetSession and ListSessions take every layer's lock (and Close may free
// thousands of pages), so they run on the compute pool, not in the reaction.
grpc::ServerUnaryReactor* PqkvService::CloseSession(grpc::CallbackServerContext* context,
                                                    const v1::CloseSessionRequest* request,
                                                    v1::CloseSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> principal = PrincipalOf(options_.auth, *context);
  if (!principal.ok()) {
    Done(reactor, "CloseSession", principal.status());
    return reactor;
  }
  compute_pool_->Schedule([this, reactor, request, response, principal = *principal] {
    absl::StatusOr<size_t> bytes = store_->Close(request->session_id(), principal);
    if (bytes.ok()) response->set_bytes_released(*bytes);
    Done(reactor, "CloseSession", bytes.status());
  });
  return reactor;
}

grpc::ServerUnaryReactor* PqkvService::GetSession(grpc::CallbackServerContext* context,
                                                  const v1::GetSessionRequest* request,
                                                  v1::GetSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> principal = PrincipalOf(options_.auth, *context);
  if (!principal.ok()) {
    Done(reactor, "GetSession", principal.status());
    return reactor;
  }
  compute_pool_->Schedule([this, reactor, request, response, principal = *principal] {
    absl::StatusOr<std::shared_ptr<Session>> session =
        store_->Get(request->session_id(), principal);
    if (session.ok()) {
      SessionInfoToProto(**session, /*with_layers=*/true, response->mutable_session());
    }
    Done(reactor, "GetSession", session.status());
  });
  return reactor;
}

grpc::ServerUnaryReactor* PqkvService::ListSessions(grpc::CallbackServerContext* context,
                                                    const v1::ListSessionsRequest* request,
                                                    v1::ListSessionsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> principal = PrincipalOf(options_.auth, *context);
  if (!principal.ok()) {
    Done(reactor, "ListSessions", principal.status());
    return reactor;
  }
  compute_pool_->Schedule([this, reactor, response, principal = *principal] {
    for (const std::shared_ptr<Session>& session : store_->List(principal)) {
      SessionInfoToProto(*session, /*with_layers=*/false, response->add_sessions());
    }
    Done(reactor, "ListSessions", absl::OkStatus());
  });
  return reactor;
}

grpc::ServerUnaryReactor* PqkvService::GetServerStats(grpc::CallbackServerContext* context,
                                                      const v1::GetServerStatsRequest* request,
                                                      v1::GetServerStatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> principal = PrincipalOf(options_.auth, *context);
  if (!principal.ok()) {
    Done(reactor, "GetServerStats", principal.status());
    return reactor;
  }
  const SessionStoreStats stats = store_->Stats();
  response->set_num_sessions(stats.num_sessions);
  response->set_bytes_held(stats.bytes_held);
  response->set_bytes_capacity(stats.bytes_capacity);
  response->set_page_bytes(stats.page_bytes);
  response->set_index_builds_pending(stats.index_builds_pending);
  response->set_index_builds_done(stats.index_builds_done);
  response->set_retrieve_items(retrieve_items_.load(std::memory_order_relaxed));
  response->set_backend(options_.backend);
  response->set_ucx_available(options_.data_plane != nullptr);
  if (options_.data_plane == nullptr) response->set_ucx_error(options_.data_plane_error);
  response->set_version(kVersion);
  Done(reactor, "GetServerStats", absl::OkStatus());
  return reactor;
}

}  // namespace pqkv::server

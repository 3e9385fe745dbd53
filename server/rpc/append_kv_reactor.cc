#include "server/rpc/append_kv_reactor.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/rpc/proto_convert.h"
#include "server/runtime/server_logger.h"

namespace pqkv::server {

AppendKvReactor::AppendKvReactor(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                                 absl::StatusOr<std::string> principal,
                                 v1::AppendKvResponse* response)
    : store_(store),
      compute_pool_(compute_pool),
      metrics_(metrics),
      principal_(principal.ok() ? *principal : ""),
      response_(response) {
  if (!principal.ok()) {  // authentication failed: end the stream before reading
    metrics_->RecordStatus("AppendKv", principal.status());
    Finish(ToGrpcStatus(principal.status()));
    return;
  }
  StartRead(&chunk_);
}

void AppendKvReactor::OnReadDone(bool ok) {
  if (!ok) {  // client finished writing (or went away)
    metrics_->RecordStatus("AppendKv", absl::OkStatus());
    Finish(grpc::Status::OK);
    return;
  }
  compute_pool_->Schedule([this] {
    absl::Status status = Apply(chunk_);
    if (!status.ok()) {
      ServerLogger().debug("AppendKv rejected a chunk: {}", status.ToString());
      metrics_->RecordStatus("AppendKv", status);
      // The response message is not sent with an error: say in the message what stays.
      Finish(ToGrpcStatus(absl::Status(
          status.code(), absl::StrCat(status.message(), " (this stream applied ",
                                      response_->chunks_applied(), " chunks before it)"))));
      return;
    }
    StartRead(&chunk_);
  });
}

absl::Status AppendKvReactor::Apply(const v1::AppendKvRequest& chunk) {
  // Looked up per chunk (one map lookup), so that a stream never keeps a closed
  // session's memory alive.
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session, store_->Get(chunk.session_id(), principal_));
  ASSIGN_OR_RETURN(kernels::ElementType dtype, ElementTypeFromProto(chunk.dtype()));
  if (dtype != session->config().shape.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk dtype ", v1::DType_Name(chunk.dtype()), " does not match session \"", session->id(),
        "\"'s ", v1::DType_Name(ElementTypeToProto(session->config().shape.dtype))));
  }
  ASSIGN_OR_RETURN(LayerStore * layer, session->layer(chunk.layer()));
  RETURN_IF_ERROR(
      layer->Append(chunk.token_begin(), chunk.num_tokens(), chunk.keys(), chunk.values()));
  if (chunk.end_of_prefill()) store_->SealPrefill(session, chunk.layer());
  response_->set_chunks_applied(response_->chunks_applied() + 1);
  response_->set_tokens_applied(response_->tokens_applied() + chunk.num_tokens());
  bytes_since_log_ += chunk.keys().size() + chunk.values().size();
  if (absl::Now() - last_progress_log_ >= kProgressLogInterval) {
    ServerLogger().info(
        "session {}: upload in progress, layer {} at token {}; this stream: {} chunks, {} tokens, "
        "{:.1f} MiB in the last {}",
        session->id(), chunk.layer(), chunk.token_begin() + chunk.num_tokens(),
        response_->chunks_applied(), response_->tokens_applied(),
        bytes_since_log_ / double(1 << 20),
        absl::FormatDuration(absl::Now() - last_progress_log_));
    last_progress_log_ = absl::Now();
    bytes_since_log_ = 0;
  }
  return absl::OkStatus();
}

}  // namespace pqkv::server

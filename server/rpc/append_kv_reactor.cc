#include "server/rpc/append_kv_reactor.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/rpc/proto_convert.h"
#include "server/runtime/server_logger.h"

namespace pqkv::server {

AppendKvReactor::AppendKvReactor(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                                 absl::StatusOr<std::string> principal, grpc::ByteBuffer* response,
                                 std::function<void(AppendKvReactor*)> on_done)
    : store_(store),
      compute_pool_(compute_pool),
      metrics_(metrics),
      principal_(principal.ok() ? *principal : ""),
      response_buffer_(response),
      on_done_(std::move(on_done)) {
  absl::MutexLock lock(&mu_);
  if (!principal.ok()) {  // authentication failed: end the stream before reading
    metrics_->RecordStatus("AppendKv", principal.status());
    FinishLocked(ToGrpcStatus(principal.status()));
    return;
  }
  StartRead(&message_);
}

void AppendKvReactor::OnDone() {
  // Finish is called with mu_ held and gRPC may run OnDone at once on another thread: wait
  // for that caller to let go before the mutex is destroyed with this reactor.
  { absl::MutexLock lock(&mu_); }
  if (on_done_) on_done_(this);
  delete this;
}

void AppendKvReactor::EndWhenIdle() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  if (finished_) return;  // already ended (its OnDone is on its way)
  // Waiting for the client's next message: end now (gRPC completes that read, not ok).
  // Applying a chunk: the pool task ends the stream once it is applied.
  if (!applying_) {
    metrics_->RecordStatus("AppendKv", absl::UnavailableError("server shutting down"));
    FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down"));
  }
}

void AppendKvReactor::FinishLocked(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  Finish(status);
}

void AppendKvReactor::OnReadDone(bool ok) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;  // ended while this read was pending (EndWhenIdle)
  if (!ok) {              // client finished writing (or went away)
    bool own_buffer = false;
    const grpc::Status serialized = grpc::SerializationTraits<v1::AppendKvResponse>::Serialize(
        response_, response_buffer_, &own_buffer);
    metrics_->RecordStatus("AppendKv", FromGrpcStatus(serialized));
    FinishLocked(serialized);
    return;
  }
  ++messages_read_;
  applying_ = true;
  compute_pool_->Schedule([this] {
    absl::Status status = ParseAndApply();
    absl::MutexLock lock(&mu_);
    applying_ = false;
    if (!status.ok()) {
      ServerLogger().debug("AppendKv rejected a chunk: {}", status.ToString());
      metrics_->RecordStatus("AppendKv", status);
      // The response message is not sent with an error: say in the message what stays.
      FinishLocked(ToGrpcStatus(absl::Status(
          status.code(), absl::StrCat(status.message(), " (this stream applied ",
                                      response_.chunks_applied(), " chunks before it)"))));
      return;
    }
    if (shutting_down_) {  // this chunk was the work the grace waited for; read no more
      metrics_->RecordStatus("AppendKv", absl::UnavailableError("server shutting down"));
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                absl::StrCat("server shutting down (this stream applied ",
                                             response_.chunks_applied(), " chunks)")));
      return;
    }
    StartRead(&message_);
  });
}

absl::Status AppendKvReactor::ParseAndApply() {
  if (!grpc::SerializationTraits<v1::AppendKvRequest>::Deserialize(&message_, &chunk_).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("AppendKv message ", messages_read_,
                                                   " did not parse as pqkv.v1.AppendKvRequest"));
  }
  return Apply(chunk_);
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
  if (chunk.end_of_prefill()) {
    store_->SealPrefill(session, chunk.layer());
  } else {
    store_->MaybeRefresh(session, chunk.layer());
  }
  response_.set_chunks_applied(response_.chunks_applied() + 1);
  response_.set_tokens_applied(response_.tokens_applied() + chunk.num_tokens());
  bytes_since_log_ += chunk.keys().size() + chunk.values().size();
  if (absl::Now() - last_progress_log_ >= kProgressLogInterval) {
    ServerLogger().info(
        "session {}: upload in progress, layer {} at token {}; this stream: {} chunks, {} tokens, "
        "{:.1f} MiB in the last {}",
        session->id(), chunk.layer(), chunk.token_begin() + chunk.num_tokens(),
        response_.chunks_applied(), response_.tokens_applied(), bytes_since_log_ / double(1 << 20),
        absl::FormatDuration(absl::Now() - last_progress_log_));
    last_progress_log_ = absl::Now();
    bytes_since_log_ = 0;
  }
  return absl::OkStatus();
}

}  // namespace pqkv::server

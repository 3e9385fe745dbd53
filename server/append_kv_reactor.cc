#include "server/append_kv_reactor.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/proto_convert.h"
#include "server/server_logger.h"

namespace pqkv {

AppendKvReactor::AppendKvReactor(SessionStore* store, ThreadPool* compute_pool,
                                 v1::AppendKvResponse* response)
    : store_(store), compute_pool_(compute_pool), response_(response) {
  StartRead(&chunk_);
}

void AppendKvReactor::OnReadDone(bool ok) {
  if (!ok) {  // client finished writing (or went away)
    Finish(grpc::Status::OK);
    return;
  }
  compute_pool_->Schedule([this] {
    absl::Status status = Apply(chunk_);
    if (!status.ok()) {
      ServerLogger().debug("AppendKv rejected a chunk: {}", status.ToString());
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&chunk_);
  });
}

absl::Status AppendKvReactor::Apply(const v1::AppendKvRequest& chunk) {
  if (!session_ || session_->id() != chunk.session_id()) {
    ASSIGN_OR_RETURN(session_, store_->Get(chunk.session_id()));
  }
  if (session_->closed()) {
    return absl::NotFoundError(absl::StrCat("session \"", chunk.session_id(), "\" was closed"));
  }
  ASSIGN_OR_RETURN(kernels::ElementType dtype, ElementTypeFromProto(chunk.dtype()));
  if (dtype != session_->config().shape.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk dtype ", v1::DType_Name(chunk.dtype()), " does not match session \"", session_->id(),
        "\"'s ", v1::DType_Name(ElementTypeToProto(session_->config().shape.dtype))));
  }
  ASSIGN_OR_RETURN(LayerStore * layer, session_->layer(chunk.layer()));
  RETURN_IF_ERROR(
      layer->Append(chunk.token_begin(), chunk.num_tokens(), chunk.keys(), chunk.values()));
  if (chunk.end_of_prefill()) store_->SealPrefill(session_, chunk.layer());
  response_->set_chunks_applied(response_->chunks_applied() + 1);
  response_->set_tokens_applied(response_->tokens_applied() + chunk.num_tokens());
  return absl::OkStatus();
}

}  // namespace pqkv

#include <cstring>

#include "absl/strings/str_cat.h"
#include "client/client_internal.h"
#include "client/pqkv_client.h"
#include "common/grpc_status.h"

namespace pqkv {

RetrievalStream::RetrievalStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RetrievalStream::~RetrievalStream() { Close().IgnoreError(); }

absl::StatusOr<std::vector<RetrieveResult>> RetrievalStream::Retrieve(
    uint32_t layer, absl::Span<const RetrieveQuery> queries) {
  if (impl_->closed) return absl::FailedPreconditionError("the retrieval stream is closed");
  // Buffers for rows are checked before anything is sent: nothing lands out of bounds.
  for (const RetrieveQuery& query : queries) {
    if (query.keys_out == nullptr && query.values_out == nullptr) continue;
    if (query.keys_out == nullptr || query.values_out == nullptr) {
      return absl::InvalidArgumentError("keys_out and values_out must both be set or both null");
    }
    absl::StatusOr<ModelShape> shape = impl_->client->Shape(query.session_id);
    if (!shape.ok()) return shape.status();
    const size_t needed = static_cast<size_t>(shape->num_kv_heads) * query.k * shape->row_bytes();
    if (needed > query.buffer_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session ", query.session_id, ": k = ", query.k, " rows of ", shape->num_kv_heads,
          " kv heads need ", needed, " bytes per buffer, buffers hold ", query.buffer_bytes));
    }
  }
  v1::RetrieveRequest request;
  request.set_request_id(impl_->next_request_id++);
  request.set_layer(layer);
  for (const RetrieveQuery& query : queries) {
    v1::RetrieveItem* item = request.add_items();
    item->set_session_id(query.session_id);
    item->mutable_query()->Add(query.query.begin(), query.query.end());
    item->set_k(query.k);
    item->set_with_kv(query.keys_out != nullptr);
  }
  v1::RetrieveResponse response;
  if (!impl_->stream->Write(request) || !impl_->stream->Read(&response)) {
    absl::Status status = Close();
    return status.ok() ? absl::UnavailableError("the Retrieve stream ended") : status;
  }
  if (response.request_id() != request.request_id() ||
      response.results_size() != request.items_size()) {
    // Out of step with the server: nothing later on this stream can be trusted.
    Close().IgnoreError();
    return absl::InternalError(absl::StrCat("Retrieve response ", response.request_id(),
                                            " does not answer request ", request.request_id(),
                                            "; the stream is closed"));
  }
  std::vector<RetrieveResult> results(response.results_size());
  for (int i = 0; i < response.results_size(); ++i) {
    const v1::RetrieveResult& in = response.results(i);
    RetrieveResult& out = results[i];
    out.session_id = in.session_id();
    out.status = StatusFromCode(in.status_code(), in.error_message());
    out.num_tokens = in.num_tokens();
    out.num_encoded = in.num_encoded();
    for (const v1::HeadSelection& head : in.heads()) {
      out.heads.push_back({std::vector<uint32_t>(head.positions().begin(), head.positions().end()),
                           std::vector<float>(head.scores().begin(), head.scores().end())});
    }
    const RetrieveQuery& query = queries[i];
    if (out.status.ok() && query.keys_out != nullptr) {
      auto* keys = static_cast<char*>(query.keys_out);
      auto* values = static_cast<char*>(query.values_out);
      for (const v1::HeadRows& rows : in.rows()) {
        if (rows.keys().size() != rows.values().size() ||
            out.kv_bytes + rows.keys().size() > query.buffer_bytes) {
          return absl::InternalError("Retrieve rows do not match the request");
        }
        std::memcpy(keys + out.kv_bytes, rows.keys().data(), rows.keys().size());
        std::memcpy(values + out.kv_bytes, rows.values().data(), rows.values().size());
        out.kv_bytes += rows.keys().size();
      }
    }
  }
  return results;
}

absl::Status RetrievalStream::Close() {
  if (impl_->closed) return impl_->final_status;
  impl_->closed = true;
  impl_->stream->WritesDone();
  // Drain anything unread so that Finish can complete.
  v1::RetrieveResponse unread;
  while (impl_->stream->Read(&unread)) {
  }
  impl_->final_status = FromGrpcStatus(impl_->stream->Finish());
  return impl_->final_status;
}

}  // namespace pqkv

#include <grpcpp/impl/codegen/proto_utils.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client_internal.h"
#include "client/pqkv_client.h"
#include "client/retrieve_response_decoder.h"
#include "common/grpc_status.h"

namespace pqkv {
namespace {

// How often, and how far apart, a refused (ABORTED) data plane offer is made again.
constexpr int kOfferAttempts = 50;
constexpr absl::Duration kOfferRetryDelay = absl::Milliseconds(10);

}  // namespace

RetrievalStream::RetrievalStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RetrievalStream::~RetrievalStream() { Close().IgnoreError(); }

void* RetrievalStream::receive_buffer() const {
  return impl_->receiver ? impl_->receiver->data() + UcxReceiver::kCheckBytes : nullptr;
}
size_t RetrievalStream::receive_buffer_bytes() const {
  return impl_->receiver ? impl_->receiver->size() - UcxReceiver::kCheckBytes : 0;
}
const std::string& RetrievalStream::receive_buffer_error() const { return impl_->receiver_error; }

std::optional<uint64_t> RetrievalStream::Impl::OffsetInBuffer(const void* data,
                                                              size_t bytes) const {
  if (!receiver) return std::nullopt;
  // Offsets are from the registered start; the check bytes before the usable space
  // are never a landing.
  const auto begin = reinterpret_cast<uintptr_t>(receiver->data());
  const auto at = reinterpret_cast<uintptr_t>(data);
  if (at < begin + UcxReceiver::kCheckBytes || at - begin > receiver->size() ||
      bytes > receiver->size() - (at - begin)) {
    return std::nullopt;
  }
  return at - begin;
}

absl::Status RetrievalStream::Impl::OpenServer(size_t s) {
  ServerStream& server = servers[s];
  server.context = std::make_unique<grpc::ClientContext>();
  client->Prepare(server.context.get());
  server.stream =
      std::make_unique<RawRetrieveStream>(client->endpoints[s].channel, server.context.get());
  server.ucx_open = false;
  if (!receiver) {
    server.ucx_status =
        absl::FailedPreconditionError(absl::StrCat("no UCX receive buffer: ", receiver_error));
    return absl::OkStatus();
  }
  // The offer goes alone, so that the server's answer decides how items are sent.
  v1::RetrieveRequest offer;
  offer.set_request_id(0);
  *offer.mutable_open_data_plane() = receiver->Offer();
  v1::RetrieveResponse answer;
  // ABORTED: the server still maps the buffer for this stream's previous call, which
  // it is ending; that takes milliseconds.
  for (int attempt = 0; attempt < kOfferAttempts; ++attempt) {
    grpc::ByteBuffer bytes;
    if (!server.stream->Write(offer) || !server.stream->Read(&bytes) ||
        !grpc::SerializationTraits<v1::RetrieveResponse>::Deserialize(&bytes, &answer).ok()) {
      return absl::UnavailableError("the stream broke while opening the UCX data plane");
    }
    if (answer.data_plane().status_code() != static_cast<int>(absl::StatusCode::kAborted)) break;
    absl::SleepFor(kOfferRetryDelay);
  }
  server.ucx_status =
      StatusFromCode(answer.data_plane().status_code(), answer.data_plane().error_message());
  server.ucx_open = server.ucx_status.ok();
  // UCX 1.13 emulates puts over TCP with active messages; they measured slower than
  // gRPC responses (docs/benchmarks.md), so kAuto leaves that path for kUcx.
  if (server.ucx_open && options.data_path == DataPath::kAuto &&
      answer.data_plane().method() == "ucx-put" && answer.data_plane().transports() == "tcp") {
    server.ucx_open = false;
    server.ucx_status = absl::FailedPreconditionError(
        "UCX reaches this server by TCP puts only, slower than gRPC responses; "
        "DataPath::kUcx uses them anyway");
  }
  return absl::OkStatus();
}

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
  // One request per server that holds some of the sessions, all written before any
  // response is read, so the servers work in parallel.
  const size_t servers = impl_->servers.size();
  std::vector<std::vector<size_t>> by_server(servers);  // query indices per server
  for (size_t q = 0; q < queries.size(); ++q) {
    by_server[impl_->client->EndpointOf(queries[q].session_id)].push_back(q);
  }
  const uint64_t request_id = impl_->next_request_id++;
  std::vector<RetrieveResult> results(queries.size());
  std::vector<absl::Status> sent(servers);
  for (size_t s = 0; s < servers; ++s) {
    if (by_server[s].empty()) continue;
    ServerStream& server = impl_->servers[s];
    if (!server.stream) {  // first use, or reopening after a break
      sent[s] = impl_->OpenServer(s);
      if (!sent[s].ok()) continue;
    }
    v1::RetrieveRequest request;
    request.set_request_id(request_id);
    request.set_layer(layer);
    for (size_t q : by_server[s]) {
      const RetrieveQuery& query = queries[q];
      v1::RetrieveItem* item = request.add_items();
      item->set_session_id(query.session_id);
      item->mutable_query()->Add(query.query.begin(), query.query.end());
      item->set_k(query.k);
      item->set_with_kv(query.keys_out != nullptr);
      item->set_cache_slots(query.cache_slots);
      item->set_rerank(query.rerank);
      item->set_omit_scores(!query.with_scores);
      if (query.keys_out == nullptr) continue;
      const std::optional<uint64_t> keys =
          impl_->OffsetInBuffer(query.keys_out, query.buffer_bytes);
      const std::optional<uint64_t> values =
          impl_->OffsetInBuffer(query.values_out, query.buffer_bytes);
      if (server.ucx_open && keys && values) {
        item->mutable_landing()->set_keys_offset(*keys);
        item->mutable_landing()->set_values_offset(*values);
      } else if (impl_->options.data_path == DataPath::kUcx) {
        // UCX or nothing: ask for the indices only and say why the rows did not come.
        item->set_with_kv(false);
        item->set_cache_slots(0);
        results[q].status =
            !server.ucx_open
                ? absl::FailedPreconditionError(absl::StrCat(
                      "the server did not open the UCX data plane: ", server.ucx_status.message()))
                : absl::InvalidArgumentError(
                      "DataPath::kUcx needs keys_out and values_out inside the receive buffer");
      }
    }
    if (!server.stream->Write(request)) sent[s] = absl::UnavailableError("write failed");
  }
  for (size_t s = 0; s < servers; ++s) {
    if (by_server[s].empty()) continue;
    ServerStream& server = impl_->servers[s];
    // Rows go from the received bytes straight into each query's buffers: keys and
    // values of head after head, within buffer_bytes.
    const std::vector<size_t>& mine = by_server[s];
    std::vector<size_t> keys_at(mine.size(), 0), values_at(mine.size(), 0);
    std::vector<bool> overflow(mine.size(), false);
    const RowSink sink = [&](int r, int /*head*/, bool values, size_t bytes) -> char* {
      if (static_cast<size_t>(r) >= mine.size()) return nullptr;
      const RetrieveQuery& query = queries[mine[r]];
      size_t& at = values ? values_at[r] : keys_at[r];
      if (query.keys_out == nullptr || bytes > query.buffer_bytes - at) {
        overflow[r] = true;
        return nullptr;
      }
      char* out = static_cast<char*>(values ? query.values_out : query.keys_out) + at;
      at += bytes;
      return out;
    };
    grpc::ByteBuffer bytes;
    v1::RetrieveResponse response;
    DecodedRows decoded;
    absl::Status status = sent[s];
    if (status.ok() && !server.stream->Read(&bytes)) {
      status = absl::UnavailableError("read failed");
    }
    if (status.ok() && !DecodeRetrieveResponse(&bytes, &response, sink, &decoded)) {
      status = absl::InternalError("a Retrieve response did not parse");
    }
    // Rows that do not fit what was asked mean the two ends disagree (and the server's
    // row cache directories may now claim rows the caller never got): reopen.
    for (size_t r = 0; status.ok() && r < mine.size(); ++r) {
      if (overflow[r] || keys_at[r] != values_at[r]) {
        status = absl::InternalError("Retrieve rows do not match the request");
      }
    }
    if (status.ok() && (response.request_id() != request_id ||
                        response.results_size() != static_cast<int>(by_server[s].size()))) {
      status = absl::InternalError(absl::StrCat("response ", response.request_id(),
                                                " does not answer request ", request_id));
    }
    if (!status.ok()) {
      // This server's stream is broken or out of step: its sessions fail, the others'
      // results stand, and the next call reopens it.
      // A stream the server ended carries its reason in Finish; one that is merely out
      // of step is cancelled first.
      if (status.code() == absl::StatusCode::kInternal) server.context->TryCancel();
      server.stream->WritesDone();
      const absl::Status final = FromGrpcStatus(server.stream->Finish());
      server.stream.reset();
      server.context.reset();
      const std::string why = absl::StrCat(
          "Retrieve stream to ", impl_->client->endpoints[s].target, " broke (", status.message(),
          final.ok() ? "" : absl::StrCat("; ", final.message()), ")");
      // The server's own code when it ended the stream (UNAUTHENTICATED, say), so that
      // callers do not retry what will not work; UNAVAILABLE when the server went away.
      const absl::StatusCode code = !final.ok() && final.code() != absl::StatusCode::kCancelled &&
                                            final.code() != absl::StatusCode::kUnavailable
                                        ? final.code()
                                        : absl::StatusCode::kUnavailable;
      for (size_t q : by_server[s]) {
        results[q].session_id = queries[q].session_id;
        results[q].status = absl::Status(code, why);
      }
      continue;
    }
    for (size_t r = 0; r < by_server[s].size(); ++r) {
      const size_t q = by_server[s][r];
      const v1::RetrieveResult& in = response.results(static_cast<int>(r));
      RetrieveResult& out = results[q];
      out.session_id = in.session_id();
      if (!out.status.ok()) continue;  // refused before sending (DataPath::kUcx)
      out.status = StatusFromCode(in.status_code(), in.error_message());
      out.num_tokens = in.num_tokens();
      out.num_encoded = in.num_encoded();
      for (const v1::HeadSelection& head : in.heads()) {
        out.heads.push_back(
            {std::vector<uint32_t>(head.positions().begin(), head.positions().end()),
             std::vector<float>(head.scores().begin(), head.scores().end()),
             std::vector<uint32_t>(head.slots().begin(), head.slots().end()),
             std::vector<uint32_t>(head.sent().begin(), head.sent().end())});
      }
      out.cache_saved_bytes = in.cache_saved_bytes();
      out.server_score_us = in.score_us();
      out.server_rows_us = in.rows_us();
      out.server_select_us = in.select_us();
      const RetrieveQuery& query = queries[q];
      if (out.status.ok() && !in.landed_by().empty()) {
        out.data_path = in.landed_by();
        out.kv_bytes = in.landed_bytes();
      } else if (out.status.ok() && query.keys_out != nullptr) {
        out.data_path = "grpc";
        out.kv_bytes = keys_at[r];
      }
    }
  }
  return results;
}

absl::Status RetrievalStream::Close() {
  if (impl_->closed) return impl_->final_status;
  impl_->closed = true;
  for (ServerStream& server : impl_->servers) {
    if (!server.stream) continue;
    server.stream->WritesDone();
    // Drain anything unread so that Finish can complete.
    grpc::ByteBuffer unread;
    while (server.stream->Read(&unread)) {
    }
    const absl::Status status = FromGrpcStatus(server.stream->Finish());
    if (impl_->final_status.ok()) impl_->final_status = status;
    server.stream.reset();
    server.context.reset();
  }
  return impl_->final_status;
}

}  // namespace pqkv

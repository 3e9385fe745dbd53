#include "client/pqkv_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client_internal.h"
#include "client/rendezvous.h"
#include "common/grpc_status.h"

namespace pqkv {
namespace {

// Leaves headroom under the server's 64 MiB FetchKv cap.
constexpr size_t kFetchBytesPerCall = size_t{32} << 20;
// Room for the largest fetch response plus framing.
constexpr int kMaxReceiveMessageBytes = 80 << 20;

bool UsesTls(const ClientOptions& options) {
  return options.tls || !options.tls_root_certs.empty() || !options.tls_client_cert.empty();
}

}  // namespace

absl::StatusOr<ModelShape> Client::Impl::Shape(const std::string& session_id) {
  {
    absl::MutexLock lock(&mu);
    auto it = shapes.find(session_id);
    if (it != shapes.end()) return it->second;
  }
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  v1::GetSessionResponse response;
  grpc::Status status = StubFor(session_id)->GetSession(UnaryContext().get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  ModelShape shape = ShapeFromProto(response.session().shape());
  absl::MutexLock lock(&mu);
  shapes[session_id] = shape;
  return shape;
}

void Client::Impl::ForgetShape(const std::string& session_id) {
  absl::MutexLock lock(&mu);
  shapes.erase(session_id);
}

void Client::Impl::Prepare(grpc::ClientContext* context) const {
  // Over TLS the token travels as call credentials (set on the channel); gRPC sends
  // none over plaintext, so there it is added to each call.
  if (!options.auth_token.empty() && !UsesTls(options)) {
    context->AddMetadata("authorization", "Bearer " + options.auth_token);
  }
}

std::unique_ptr<grpc::ClientContext> Client::Impl::UnaryContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  Prepare(context.get());
  context->set_deadline(absl::ToChronoTime(absl::Now() + options.call_timeout));
  return context;
}

namespace {

// "a:1, b:2" -> {"a:1", "b:2"}.
std::vector<std::string> SplitTargets(const std::string& target) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(target, ',', absl::SkipWhitespace())) {
    out.emplace_back(absl::StripAsciiWhitespace(part));
  }
  return out;
}

// "name:port" -> one "address:port" per address the name resolves to (a headless
// Kubernetes Service, say), in a stable order.
absl::StatusOr<std::vector<std::string>> ResolveAll(const std::string& target) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("\"", target, "\" has no :port"));
  }
  const std::string host = target.substr(0, colon), port = target.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int error = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); error != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve \"", host, "\": ", gai_strerror(error)));
  }
  std::set<std::string> addresses;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {0};
    const void* raw =
        a->ai_family == AF_INET6
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr);
    if (inet_ntop(a->ai_family, raw, text, sizeof text) == nullptr) continue;
    addresses.insert(a->ai_family == AF_INET6 ? absl::StrCat("[", text, "]:", port)
                                              : absl::StrCat(text, ":", port));
  }
  freeaddrinfo(found);
  return std::vector<std::string>(addresses.begin(), addresses.end());
}

}  // namespace

size_t Client::Impl::EndpointOf(const std::string& session_id) const {
  return endpoints.size() == 1 ? 0 : RendezvousPick(session_id, targets);
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target,
                                                        const ClientOptions& options) {
  std::vector<std::string> targets = SplitTargets(target);
  if (targets.empty()) return absl::InvalidArgumentError("no server address given");
  if (options.resolve_all_addresses && targets.size() == 1) {
    absl::StatusOr<std::vector<std::string>> resolved = ResolveAll(targets[0]);
    if (!resolved.ok()) return resolved.status();
    targets = *std::move(resolved);
    if (targets.empty()) {
      return absl::UnavailableError(absl::StrCat("\"", target, "\" resolves to no address"));
    }
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  args.SetMaxSendMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (UsesTls(options)) {
    if (options.tls_client_cert.empty() != options.tls_client_key.empty()) {
      return absl::InvalidArgumentError("mutual TLS needs both tls_client_cert and tls_client_key");
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    ssl.pem_cert_chain = options.tls_client_cert;
    ssl.pem_private_key = options.tls_client_key;
    credentials = grpc::SslCredentials(ssl);
    if (!options.auth_token.empty()) {
      credentials = grpc::CompositeChannelCredentials(
          credentials, grpc::AccessTokenCredentials(options.auth_token));
    }
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->targets = targets;
  const auto deadline = absl::ToChronoTime(absl::Now() + options.connect_timeout);
  for (const std::string& t : targets) {
    Endpoint endpoint;
    endpoint.target = t;
    endpoint.channel = grpc::CreateCustomChannel(t, credentials, args);
    if (!endpoint.channel->WaitForConnected(deadline)) {
      return absl::UnavailableError(absl::StrCat("pqkv server at ", t, " not reachable within ",
                                                 absl::FormatDuration(options.connect_timeout)));
    }
    endpoint.stub = v1::Pqkv::NewStub(endpoint.channel);
    impl->endpoints.push_back(std::move(endpoint));
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::StatusOr<std::string> Client::CreateSession(const SessionOptions& options) {
  v1::CreateSessionRequest request;
  // With several servers the id decides the server, so the client picks one when the
  // caller did not.
  std::string id = options.session_id;
  if (id.empty() && impl_->endpoints.size() > 1) {
    absl::BitGen gen;
    id = absl::StrFormat("s-%016x", absl::Uniform<uint64_t>(gen));
  }
  request.set_session_id(id);
  ShapeToProto(options.shape, request.mutable_shape());
  v1::IndexOptions* index = request.mutable_index();
  index->set_subspaces(options.index.subspaces);
  index->set_bits(options.index.bits);
  index->set_kmeans_iterations(options.index.kmeans_iterations);
  if (options.index.sink_tokens) index->set_sink_tokens(*options.index.sink_tokens);
  if (options.index.recent_window) index->set_recent_window(*options.index.recent_window);
  if (options.index.rope_pairs) index->set_rope_pairs(*options.index.rope_pairs);
  if (options.index.rerank) index->set_rerank(*options.index.rerank);
  v1::CreateSessionResponse response;
  grpc::Status status =
      impl_->StubFor(id)->CreateSession(impl_->UnaryContext().get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  absl::MutexLock lock(&impl_->mu);
  impl_->shapes[response.session_id()] = options.shape;
  return response.session_id();
}

absl::Status Client::CloseSession(const std::string& session_id) {
  v1::CloseSessionRequest request;
  request.set_session_id(session_id);
  v1::CloseSessionResponse response;
  grpc::Status status =
      impl_->StubFor(session_id)->CloseSession(impl_->UnaryContext().get(), request, &response);
  impl_->ForgetShape(session_id);
  return FromGrpcStatus(status);
}

absl::Status Client::UploadPrefill(const std::string& session_id, uint32_t layer,
                                   uint64_t token_begin, uint32_t num_tokens, const void* keys,
                                   const void* values, bool end_of_prefill) {
  if (num_tokens == 0) return absl::InvalidArgumentError("num_tokens must be at least 1");
  absl::StatusOr<ModelShape> shape = impl_->Shape(session_id);
  if (!shape.ok()) return shape.status();
  const size_t row_bytes = shape->row_bytes();
  const size_t token_bytes = 2 * row_bytes * shape->num_kv_heads;  // K and V, all heads
  const uint32_t tokens_per_chunk =
      static_cast<uint32_t>(std::max<size_t>(1, impl_->options.upload_chunk_bytes / token_bytes));
  const auto* key_bytes = static_cast<const char*>(keys);
  const auto* value_bytes = static_cast<const char*>(values);

  grpc::ClientContext context;
  impl_->Prepare(&context);
  v1::AppendKvResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::AppendKvRequest>> writer =
      impl_->StubFor(session_id)->AppendKv(&context, &response);
  v1::AppendKvRequest chunk;
  chunk.set_session_id(session_id);
  chunk.set_layer(layer);
  chunk.set_dtype(DTypeToProto(shape->dtype));
  for (uint32_t done = 0; done < num_tokens;) {
    const uint32_t count = std::min(tokens_per_chunk, num_tokens - done);
    chunk.set_token_begin(token_begin + done);
    chunk.set_num_tokens(count);
    chunk.set_end_of_prefill(end_of_prefill && done + count == num_tokens);
    std::string* k = chunk.mutable_keys();
    std::string* v = chunk.mutable_values();
    k->resize(count * row_bytes * shape->num_kv_heads);
    v->resize(k->size());
    // The caller's buffers are [kv_head][token][dim]; a chunk is the same layout over
    // its own token range, so each head contributes one contiguous slice.
    for (uint32_t h = 0; h < shape->num_kv_heads; ++h) {
      const size_t src = (static_cast<size_t>(h) * num_tokens + done) * row_bytes;
      std::memcpy(k->data() + h * count * row_bytes, key_bytes + src, count * row_bytes);
      std::memcpy(v->data() + h * count * row_bytes, value_bytes + src, count * row_bytes);
    }
    if (!writer->Write(chunk)) break;  // the server ended the stream; Finish says why
    done += count;
  }
  writer->WritesDone();
  return FromGrpcStatus(writer->Finish());
}

absl::Status Client::AppendToken(const std::string& session_id, uint64_t position, const void* keys,
                                 const void* values) {
  absl::StatusOr<ModelShape> shape = impl_->Shape(session_id);
  if (!shape.ok()) return shape.status();
  const size_t layer_bytes = shape->row_bytes() * shape->num_kv_heads;
  grpc::ClientContext context;
  impl_->Prepare(&context);
  context.set_deadline(absl::ToChronoTime(absl::Now() + impl_->options.call_timeout));
  v1::AppendKvResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::AppendKvRequest>> writer =
      impl_->StubFor(session_id)->AppendKv(&context, &response);
  v1::AppendKvRequest chunk;
  chunk.set_session_id(session_id);
  chunk.set_dtype(DTypeToProto(shape->dtype));
  chunk.set_token_begin(position);
  chunk.set_num_tokens(1);
  for (uint32_t layer = 0; layer < shape->num_layers; ++layer) {
    chunk.set_layer(layer);
    // One token's [kv_head][dim] is a contiguous slice of [layer][kv_head][dim].
    chunk.set_keys(static_cast<const char*>(keys) + layer * layer_bytes, layer_bytes);
    chunk.set_values(static_cast<const char*>(values) + layer * layer_bytes, layer_bytes);
    if (!writer->Write(chunk)) break;
  }
  writer->WritesDone();
  return FromGrpcStatus(writer->Finish());
}

absl::StatusOr<std::unique_ptr<RetrievalStream>> Client::OpenRetrievalStream(
    const StreamOptions& options) {
  auto impl = std::make_unique<RetrievalStream::Impl>();
  impl->client = impl_.get();
  impl->options = options;
  if (options.data_path == DataPath::kGrpc) {
    impl->receiver_error = "the stream was opened with DataPath::kGrpc";
  } else {
    absl::StatusOr<std::unique_ptr<UcxReceiver>> receiver =
        UcxReceiver::Create(options.receive_buffer_bytes);
    if (receiver.ok()) {
      impl->receiver = *std::move(receiver);
    } else if (options.data_path == DataPath::kUcx) {
      return receiver.status();
    } else {
      impl->receiver_error = std::string(receiver.status().message());
    }
  }
  impl->servers.resize(impl_->endpoints.size());  // each opened on first use
  return std::unique_ptr<RetrievalStream>(new RetrievalStream(std::move(impl)));
}

absl::StatusOr<size_t> Client::FetchKv(const std::string& session_id, uint32_t layer,
                                       absl::Span<const FetchHead> heads, void* keys_out,
                                       void* values_out, size_t buffer_bytes) {
  absl::StatusOr<ModelShape> shape = impl_->Shape(session_id);
  if (!shape.ok()) return shape.status();
  const size_t row_bytes = shape->row_bytes();
  size_t total_rows = 0;
  for (const FetchHead& head : heads) total_rows += head.positions.size();
  if (total_rows * row_bytes > buffer_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("fetch of ", total_rows, " rows needs ", total_rows * row_bytes,
                     " bytes per buffer, buffers hold ", buffer_bytes));
  }
  const size_t rows_per_call = std::max<size_t>(1, kFetchBytesPerCall / (2 * row_bytes));
  auto* k_out = static_cast<char*>(keys_out);
  auto* v_out = static_cast<char*>(values_out);
  size_t written = 0;

  v1::FetchKvRequest request;
  request.set_session_id(session_id);
  request.set_layer(layer);
  size_t rows_in_request = 0;
  const auto flush = [&]() -> absl::Status {
    if (rows_in_request == 0) return absl::OkStatus();
    v1::FetchKvResponse response;
    grpc::Status status =
        impl_->StubFor(session_id)->FetchKv(impl_->UnaryContext().get(), request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    for (const v1::HeadRows& rows : response.heads()) {
      if (rows.keys().size() != rows.values().size() ||
          written + rows.keys().size() > buffer_bytes) {
        return absl::InternalError("FetchKv response does not match the request");
      }
      std::memcpy(k_out + written, rows.keys().data(), rows.keys().size());
      std::memcpy(v_out + written, rows.values().data(), rows.values().size());
      written += rows.keys().size();
    }
    request.clear_heads();
    rows_in_request = 0;
    return absl::OkStatus();
  };
  for (const FetchHead& head : heads) {
    for (size_t i = 0; i < head.positions.size();) {
      const size_t n = std::min(head.positions.size() - i, rows_per_call - rows_in_request);
      v1::HeadPositions* out = request.add_heads();
      out->set_kv_head(head.kv_head);
      out->mutable_positions()->Add(head.positions.begin() + i, head.positions.begin() + i + n);
      rows_in_request += n;
      i += n;
      if (rows_in_request == rows_per_call) {
        absl::Status status = flush();
        if (!status.ok()) return status;
      }
    }
  }
  absl::Status status = flush();
  if (!status.ok()) return status;
  return written;
}

absl::StatusOr<size_t> Client::FetchSelected(const std::string& session_id, uint32_t layer,
                                             const RetrieveResult& result, void* keys_out,
                                             void* values_out, size_t buffer_bytes) {
  if (!result.status.ok()) return result.status;
  std::vector<FetchHead> heads(result.heads.size());
  for (size_t h = 0; h < result.heads.size(); ++h) {
    heads[h].kv_head = static_cast<uint32_t>(h);
    heads[h].positions = result.heads[h].positions;
  }
  return FetchKv(session_id, layer, heads, keys_out, values_out, buffer_bytes);
}

absl::StatusOr<SessionInfo> Client::GetSession(const std::string& session_id) {
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  v1::GetSessionResponse response;
  grpc::Status status =
      impl_->StubFor(session_id)->GetSession(impl_->UnaryContext().get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return SessionInfoFromProto(response.session());
}

absl::StatusOr<std::vector<SessionInfo>> Client::ListSessions() {
  std::vector<SessionInfo> sessions;
  for (const Endpoint& endpoint : impl_->endpoints) {
    v1::ListSessionsResponse response;
    grpc::Status status = endpoint.stub->ListSessions(impl_->UnaryContext().get(),
                                                      v1::ListSessionsRequest(), &response);
    if (!status.ok()) return FromGrpcStatus(status);
    for (const v1::SessionInfo& info : response.sessions()) {
      sessions.push_back(SessionInfoFromProto(info));
    }
  }
  return sessions;
}

absl::StatusOr<std::vector<ServerStats>> Client::GetEndpointStats() {
  std::vector<ServerStats> all;
  for (const Endpoint& endpoint : impl_->endpoints) {
    v1::GetServerStatsResponse response;
    grpc::Status status = endpoint.stub->GetServerStats(impl_->UnaryContext().get(),
                                                        v1::GetServerStatsRequest(), &response);
    if (!status.ok()) {
      return absl::Status(FromGrpcStatus(status).code(),
                          absl::StrCat(endpoint.target, ": ", status.error_message()));
    }
    ServerStats stats;
    stats.endpoint = endpoint.target;
    stats.num_sessions = response.num_sessions();
    stats.bytes_held = response.bytes_held();
    stats.bytes_capacity = response.bytes_capacity();
    stats.page_bytes = response.page_bytes();
    stats.index_builds_pending = response.index_builds_pending();
    stats.index_builds_done = response.index_builds_done();
    stats.retrieve_items = response.retrieve_items();
    stats.backend = response.backend();
    stats.version = response.version();
    all.push_back(std::move(stats));
  }
  return all;
}

absl::StatusOr<ServerStats> Client::GetServerStats() {
  absl::StatusOr<std::vector<ServerStats>> all = GetEndpointStats();
  if (!all.ok()) return all.status();
  ServerStats total = (*all)[0];
  total.endpoint = absl::StrJoin(impl_->targets, ",");
  for (size_t i = 1; i < all->size(); ++i) {
    const ServerStats& s = (*all)[i];
    total.num_sessions += s.num_sessions;
    total.bytes_held += s.bytes_held;
    total.bytes_capacity += s.bytes_capacity;
    total.index_builds_pending += s.index_builds_pending;
    total.index_builds_done += s.index_builds_done;
    total.retrieve_items += s.retrieve_items;
  }
  return total;
}

std::string Client::EndpointFor(const std::string& session_id) const {
  return impl_->endpoints[impl_->EndpointOf(session_id)].target;
}

}  // namespace pqkv

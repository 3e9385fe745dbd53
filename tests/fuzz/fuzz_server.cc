#include "tests/fuzz/fuzz_server.h"

#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/rpc_method.h>
#include <grpcpp/support/sync_stream.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/time/time.h"
#include "server/rpc/fetch_limits.h"
#include "server/runtime/server_logger.h"

namespace pqkv::fuzz {
namespace {

constexpr char kAppendKv[] = "/pqkv.v1.Pqkv/AppendKv";
constexpr char kRetrieve[] = "/pqkv.v1.Pqkv/Retrieve";
constexpr auto kCallTimeout = std::chrono::seconds(10);

[[noreturn]] void SetupFailed(const std::string& what) {
  std::fprintf(stderr, "FuzzServer setup failed: %s\n", what.c_str());
  std::abort();
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + kCallTimeout);
}

// Deterministic finite rows: small integers, so fp16 holds them exactly.
std::string Rows(size_t elements, size_t element_bytes, uint32_t seed) {
  std::string out(elements * element_bytes, '\0');
  for (size_t i = 0; i < elements; ++i) {
    const int v = static_cast<int>((i * 2654435761u + seed * 40503u) % 17) - 8;
    if (element_bytes == 4) {
      const float f = static_cast<float>(v);
      std::memcpy(&out[i * 4], &f, 4);
    } else {  // fp16: sign, 5-bit exponent, 10-bit mantissa of a small integer
      uint16_t h = 0;
      if (v != 0) {
        const int a = v < 0 ? -v : v;
        int e = 0;
        while ((a >> (e + 1)) != 0) ++e;
        const uint16_t mantissa = static_cast<uint16_t>((a << (10 - e)) & 0x3ff);
        h = static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | ((e + 15) << 10) | mantissa);
      }
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

}  // namespace

FuzzServer& FuzzServer::Get() {
  static FuzzServer* server = new FuzzServer();  // never destroyed: threads outlive main
  return *server;
}

FuzzServer::FuzzServer() {
  // Sessions made and closed by every input would log at info.
  server::ServerLogger().set_level(spdlog::level::warn);
  server::SessionStoreOptions store_options;
  store_options.memory_budget_bytes = size_t{256} << 20;
  store_options.page_bytes = size_t{64} << 10;
  store_options.max_sessions = 64;
  store_options.on_index_built = [this](absl::Duration) {
    absl::MutexLock lock(&builds_mu_);
    ++index_builds_;
  };
  absl::StatusOr<std::unique_ptr<server::SessionStore>> store =
      server::SessionStore::Create(store_options);
  if (!store.ok()) SetupFailed(store.status().ToString());
  store_ = *std::move(store);
  compute_pool_ = std::make_unique<server::ThreadPool>("compute", 2);
  server::ServiceOptions options;
  options.max_index_wait = absl::Seconds(2);
  options.max_inflight_gather_bytes = size_t{64} << 20;
  options.max_row_cache_bytes = size_t{16} << 20;
  service_ =
      std::make_unique<server::PqkvService>(store_.get(), compute_pool_.get(), &metrics_, options);
  grpc::ServerBuilder builder;
  builder.RegisterService(service_.get());
  // Loopback TCP, not InProcessChannel: with gRPC 1.51's in-process transport, 20,000
  // Retrieve streams that the server ends before the client half-closes (a request that
  // does not parse) grew RSS by 475 MB, and the fuzzer hit its 2 GB limit within a minute;
  // over TCP the same streams grew it by 8 MB (allocator settling).
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(server::kMaxReceiveMessageBytes);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) SetupFailed("the gRPC server did not start");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                       grpc::InsecureChannelCredentials(), args);

  v1::CreateSessionRequest f32;
  f32.set_session_id("f32");
  f32.mutable_shape()->set_num_layers(2);
  f32.mutable_shape()->set_num_kv_heads(kF32KvHeads);
  f32.mutable_shape()->set_num_query_heads(kF32QueryHeads);
  f32.mutable_shape()->set_head_dim(kF32HeadDim);
  f32.mutable_shape()->set_dtype(v1::DTYPE_FP32);
  f32.mutable_index()->set_subspaces(2);
  f32.mutable_index()->set_bits(4);
  f32.mutable_index()->set_kmeans_iterations(3);
  f32.mutable_index()->set_sink_tokens(4);
  f32.mutable_index()->set_recent_window(8);
  AddSession(f32, kF32Tokens, {0});

  v1::CreateSessionRequest f16;
  f16.set_session_id("f16");
  f16.mutable_shape()->set_num_layers(1);
  f16.mutable_shape()->set_num_kv_heads(1);
  f16.mutable_shape()->set_num_query_heads(1);
  f16.mutable_shape()->set_head_dim(8);
  f16.mutable_shape()->set_dtype(v1::DTYPE_FP16);
  f16.mutable_index()->set_sink_tokens(2);
  f16.mutable_index()->set_recent_window(2);
  AddSession(f16, 16, {0});
}

void FuzzServer::AddSession(const v1::CreateSessionRequest& create, uint32_t tokens,
                            const std::vector<uint32_t>& sealed) {
  grpc::Status status = Unary("/pqkv.v1.Pqkv/CreateSession", create.SerializeAsString());
  if (!status.ok()) SetupFailed("CreateSession: " + status.error_message());
  const v1::ModelShape& shape = create.shape();
  const size_t element_bytes = shape.dtype() == v1::DTYPE_FP32 ? 4 : 2;
  std::vector<std::string> chunks;
  for (uint32_t layer = 0; layer < shape.num_layers(); ++layer) {
    v1::AppendKvRequest chunk;
    chunk.set_session_id(create.session_id());
    chunk.set_layer(layer);
    chunk.set_token_begin(0);
    chunk.set_num_tokens(tokens);
    chunk.set_dtype(shape.dtype());
    const size_t elements = size_t{shape.num_kv_heads()} * tokens * shape.head_dim();
    chunk.set_keys(Rows(elements, element_bytes, 2 * layer));
    chunk.set_values(Rows(elements, element_bytes, 2 * layer + 1));
    for (uint32_t s : sealed) chunk.set_end_of_prefill(chunk.end_of_prefill() || s == layer);
    chunks.push_back(chunk.SerializeAsString());
  }
  int builds_before = 0;
  {
    absl::MutexLock lock(&builds_mu_);
    builds_before = index_builds_;
  }
  status = AppendKv(chunks);
  if (!status.ok()) SetupFailed("AppendKv: " + status.error_message());
  // A sealed layer with enough tokens to train is built in the background: wait for it.
  const uint32_t bits = create.index().bits() != 0 ? create.index().bits() : 6;
  const int builds = tokens >= 4 * (1u << bits) ? static_cast<int>(sealed.size()) : 0;
  const int want = builds_before + builds;
  const auto reached = [this, want]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(builds_mu_) {
    return index_builds_ >= want;
  };
  absl::MutexLock lock(&builds_mu_);
  const bool built = builds_mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(60));
  if (!built) SetupFailed("the index build of session " + create.session_id() + " did not end");
}

grpc::Status FuzzServer::Unary(const std::string& method, const std::string& request,
                               std::string* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::ByteBuffer reply;
  const grpc::internal::RpcMethod rpc(method.c_str(), grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel_.get(), rpc, &context, ToBuffer(request), &reply);
  if (status.ok() && response != nullptr) *response = FromBuffer(reply);
  return status;
}

grpc::Status FuzzServer::AppendKv(const std::vector<std::string>& messages) {
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::ByteBuffer reply;
  const grpc::internal::RpcMethod rpc(kAppendKv, grpc::internal::RpcMethod::CLIENT_STREAMING);
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> stream(
      grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel_.get(), rpc, &context,
                                                                    &reply));
  for (const std::string& message : messages) {
    if (!stream->Write(ToBuffer(message))) break;  // the server ended the stream
  }
  stream->WritesDone();
  return stream->Finish();
}

grpc::Status FuzzServer::Retrieve(const std::vector<std::string>& messages,
                                  std::vector<std::string>* responses) {
  grpc::ClientContext context;
  SetDeadline(&context);
  const grpc::internal::RpcMethod rpc(kRetrieve, grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel_.get(), rpc, &context));
  grpc::ByteBuffer reply;
  for (const std::string& message : messages) {
    if (!stream->Write(ToBuffer(message))) break;
    if (!stream->Read(&reply)) break;
    if (responses != nullptr) responses->push_back(FromBuffer(reply));
  }
  stream->WritesDone();
  while (stream->Read(&reply)) {
  }
  return stream->Finish();
}

}  // namespace pqkv::fuzz

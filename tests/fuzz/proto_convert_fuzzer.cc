// Fuzz target: the proto conversions (server/rpc/proto_convert.h) on a CreateSessionRequest
// as a client sends it: SessionConfigFromProto and its dtype conversion, the defaults it
// fills, ValidateSessionConfig, and for a config the store accepts (within its 256 MiB
// budget and 64 sessions), the session made from it and SessionInfoToProto of it, then
// CloseSession. Checks: the dtype and index options survive a round trip through the
// proto; a session's description has its shape and one entry per layer.
#include <cstdint>
#include <memory>
#include <string>

#include "pqkv/v1/pqkv.pb.h"
#include "server/rpc/proto_convert.h"
#include "server/store/session_config.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_server.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  pqkv::fuzz::FuzzServer::Get();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace v1 = pqkv::v1;
  namespace server = pqkv::server;
  v1::CreateSessionRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;

  const absl::StatusOr<pqkv::kernels::ElementType> dtype =
      server::ElementTypeFromProto(request.shape().dtype());
  if (dtype.ok()) {
    FUZZ_CHECK(server::ElementTypeToProto(*dtype) == request.shape().dtype(),
               "dtype %d does not round-trip", static_cast<int>(request.shape().dtype()));
  }
  const absl::StatusOr<server::SessionConfig> config =
      server::SessionConfigFromProto(request.shape(), request.index());
  FUZZ_CHECK(config.ok() == dtype.ok(), "dtype %s but config %s", dtype.status().ToString().c_str(),
             config.status().ToString().c_str());
  if (!config.ok()) return 0;

  // The options as the server reports them back convert to the same options.
  v1::IndexOptions reported;
  server::IndexOptionsToProto(config->index, &reported);
  const absl::StatusOr<server::SessionConfig> again =
      server::SessionConfigFromProto(request.shape(), reported);
  FUZZ_CHECK(again.ok(), "%s", again.status().ToString().c_str());
  const server::IndexOptions& a = config->index;
  const server::IndexOptions& b = again->index;
  FUZZ_CHECK(a.subspaces == b.subspaces && a.bits == b.bits &&
                 a.kmeans_iterations == b.kmeans_iterations && a.sink_tokens == b.sink_tokens &&
                 a.recent_window == b.recent_window && a.rope_pairs == b.rope_pairs,
             "index options changed through IndexOptionsToProto");

  server::SessionStore& store = pqkv::fuzz::FuzzServer::Get().store();
  if (!server::ValidateSessionConfig(*config, store.Stats().page_bytes).ok()) return 0;
  const absl::StatusOr<std::shared_ptr<server::Session>> session =
      store.CreateSession("p", *config);
  if (!session.ok()) return 0;  // over the budget or the session limit: said so, nothing held
  v1::SessionInfo info;
  server::SessionInfoToProto(**session, /*with_layers=*/true, &info);
  FUZZ_CHECK(info.session_id() == "p", "session id %s", info.session_id().c_str());
  FUZZ_CHECK(info.shape().num_layers() == config->shape.num_layers &&
                 info.shape().num_kv_heads() == config->shape.num_kv_heads &&
                 info.shape().num_query_heads() == config->shape.num_query_heads &&
                 info.shape().head_dim() == config->shape.head_dim &&
                 info.shape().dtype() == request.shape().dtype(),
             "the session's shape is not the one asked for");
  FUZZ_CHECK(info.layers_size() == static_cast<int>(config->shape.num_layers),
             "%d layers described of %u", info.layers_size(), config->shape.num_layers);
  FUZZ_CHECK(store.Close("p").ok(), "Close(\"p\") failed");
  return 0;
}

// Conversions between the v1 wire messages and the server's own types.
#ifndef PQKV_SERVER_RPC_PROTO_CONVERT_H_
#define PQKV_SERVER_RPC_PROTO_CONVERT_H_

#include "absl/status/statusor.h"
#include "pqkv/v1/pqkv.pb.h"
#include "server/store/layer_store.h"
#include "server/store/session.h"
#include "server/store/session_config.h"

namespace pqkv::server {

// Fills PQCache's defaults for unset index options. INVALID_ARGUMENT for an unset or
// unknown dtype; the rest is checked by ValidateSessionConfig.
absl::StatusOr<SessionConfig> SessionConfigFromProto(const v1::ModelShape& shape,
                                                     const v1::IndexOptions& index);
absl::StatusOr<kernels::ElementType> ElementTypeFromProto(v1::DType dtype);
v1::DType ElementTypeToProto(kernels::ElementType type);
void IndexOptionsToProto(const IndexOptions& options, v1::IndexOptions* out);
// Fills `out` with the session's description; per-layer detail when with_layers.
void SessionInfoToProto(const Session& session, bool with_layers, v1::SessionInfo* out);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_PROTO_CONVERT_H_

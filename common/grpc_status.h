// The one place where absl::Status and grpc::Status convert into each other. The two
// code enums share their numbering (checked by static_assert in grpc_status.cc).
#ifndef PQKV_COMMON_GRPC_STATUS_H_
#define PQKV_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace pqkv {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);
// For per-item status codes carried inside messages (google.rpc.Code numbering).
absl::Status StatusFromCode(int code, const std::string& message);
int CodeOf(const absl::Status& status);

}  // namespace pqkv

#endif  // PQKV_COMMON_GRPC_STATUS_H_

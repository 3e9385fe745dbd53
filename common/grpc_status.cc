#include "common/grpc_status.h"

#include <string>

namespace pqkv {

// absl and gRPC number their codes alike (both follow google.rpc.Code); the casts
// below and StatusFromCode rely on it.
#define PQKV_SAME_CODE(absl_code, grpc_code) \
  static_assert(static_cast<int>(absl::StatusCode::absl_code) == grpc::StatusCode::grpc_code)
PQKV_SAME_CODE(kOk, OK);
PQKV_SAME_CODE(kCancelled, CANCELLED);
PQKV_SAME_CODE(kUnknown, UNKNOWN);
PQKV_SAME_CODE(kInvalidArgument, INVALID_ARGUMENT);
PQKV_SAME_CODE(kDeadlineExceeded, DEADLINE_EXCEEDED);
PQKV_SAME_CODE(kNotFound, NOT_FOUND);
PQKV_SAME_CODE(kAlreadyExists, ALREADY_EXISTS);
PQKV_SAME_CODE(kPermissionDenied, PERMISSION_DENIED);
PQKV_SAME_CODE(kResourceExhausted, RESOURCE_EXHAUSTED);
PQKV_SAME_CODE(kFailedPrecondition, FAILED_PRECONDITION);
PQKV_SAME_CODE(kAborted, ABORTED);
PQKV_SAME_CODE(kOutOfRange, OUT_OF_RANGE);
PQKV_SAME_CODE(kUnimplemented, UNIMPLEMENTED);
PQKV_SAME_CODE(kInternal, INTERNAL);
PQKV_SAME_CODE(kUnavailable, UNAVAILABLE);
PQKV_SAME_CODE(kDataLoss, DATA_LOSS);
PQKV_SAME_CODE(kUnauthenticated, UNAUTHENTICATED);
#undef PQKV_SAME_CODE

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return StatusFromCode(status.error_code(), status.error_message());
}

int CodeOf(const absl::Status& status) { return static_cast<int>(status.code()); }

absl::Status StatusFromCode(int code, const std::string& message) {
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(message);
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace pqkv

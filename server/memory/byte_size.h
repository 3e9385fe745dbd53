// Parses human byte sizes for flags: "8589934592", "512MiB", "8GiB", "8G" (powers of 1024).
#ifndef PQKV_SERVER_MEMORY_BYTE_SIZE_H_
#define PQKV_SERVER_MEMORY_BYTE_SIZE_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pqkv::server {

absl::StatusOr<size_t> ParseByteSize(absl::string_view text);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_MEMORY_BYTE_SIZE_H_

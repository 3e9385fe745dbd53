// Whole-file reads for the small files the tools and the server load (capture arrays
// and manifests, PEM certificates).
#ifndef PQKV_COMMON_FILE_CONTENTS_H_
#define PQKV_COMMON_FILE_CONTENTS_H_

#include <string>

#include "absl/status/statusor.h"

namespace pqkv {

// The bytes of `path`, or NOT_FOUND "cannot read <path>".
absl::StatusOr<std::string> ReadFileContents(const std::string& path);

}  // namespace pqkv

#endif  // PQKV_COMMON_FILE_CONTENTS_H_

// The data set a quality tool runs on, named the way their --data flag names it:
// "generated" (GenerateLongContext with `spec`) or a capture directory (LoadKvDataSet).
#ifndef PQKV_QUALITY_DATA_SOURCE_H_
#define PQKV_QUALITY_DATA_SOURCE_H_

#include <string>

#include "absl/status/statusor.h"
#include "workload/kv_dataset.h"
#include "workload/long_context_kv.h"

namespace pqkv::quality {

// INVALID_ARGUMENT for a generated shape GenerateLongContext cannot make; the loader's
// errors for a directory.
absl::StatusOr<workload::KvDataSet> LoadOrGenerate(const std::string& data,
                                                   const workload::LongContextSpec& spec);

}  // namespace pqkv::quality

#endif  // PQKV_QUALITY_DATA_SOURCE_H_

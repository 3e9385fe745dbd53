// Loading and writing a KvDataSet as a capture directory: manifest.json plus one keys,
// values and queries .npy file per layer (the format is tools/capture/README.md).
//
// Pure functions over the file system.
#ifndef PQKV_WORKLOAD_KV_DATASET_IO_H_
#define PQKV_WORKLOAD_KV_DATASET_IO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "workload/kv_dataset.h"

namespace pqkv::workload {

// Reads `dir`/manifest.json and the arrays it names. INVALID_ARGUMENT says which file or
// field does not match (format, RoPE layout, shapes, query positions); NOT_FOUND names a
// missing file.
absl::StatusOr<KvDataSet> LoadKvDataSet(const std::string& dir);

// Writes `data` into `dir` (which must exist) in the same format.
absl::Status WriteKvDataSet(const KvDataSet& data, const std::string& dir);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_KV_DATASET_IO_H_

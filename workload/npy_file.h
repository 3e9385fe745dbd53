// Reading and writing NumPy .npy files (format versions 1-3), the arrays a captured data
// set is made of (tools/capture/README.md). Only what the capture uses: little-endian
// float16 ("<f2") and float32 ("<f4"), C order, any rank.
//
// Pure functions.
#ifndef PQKV_WORKLOAD_NPY_FILE_H_
#define PQKV_WORKLOAD_NPY_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pqkv::workload {

struct NpyArray {
  std::string dtype;  // "<f2" or "<f4"
  std::vector<uint64_t> shape;
  std::vector<uint8_t> data;  // the elements, C order, little-endian

  uint64_t NumElements() const;
};

// Parses a whole .npy file. INVALID_ARGUMENT names what is wrong (not an npy file, an
// unsupported dtype or Fortran order, a data size that does not match the shape).
absl::StatusOr<NpyArray> ParseNpy(const std::string& bytes);
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// The .npy (version 1.0) encoding of `array`.
std::string EncodeNpy(const NpyArray& array);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_NPY_FILE_H_

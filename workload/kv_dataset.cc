#include "workload/kv_dataset.h"

namespace pqkv::workload {

const char* HeadTypeName(HeadType type) {
  switch (type) {
    case HeadType::kStreaming:
      return "streaming";
    case HeadType::kRetrieval:
      return "retrieval";
    case HeadType::kDiffuse:
      return "diffuse";
  }
  return "unknown";
}

}  // namespace pqkv::workload

#include "quality/data_source.h"

#include "absl/status/status.h"
#include "workload/kv_dataset_io.h"

namespace pqkv::quality {

absl::StatusOr<workload::KvDataSet> LoadOrGenerate(const std::string& data,
                                                   const workload::LongContextSpec& spec) {
  if (data != "generated") return workload::LoadKvDataSet(data);
  if (spec.num_kv_heads == 0 || spec.num_query_heads % spec.num_kv_heads != 0 ||
      spec.head_dim % 2 != 0 || spec.head_dim < 32 || spec.num_queries == 0 ||
      spec.num_tokens < 256 + spec.num_queries || spec.num_layers == 0) {
    return absl::InvalidArgumentError(
        "generated shape: layers >= 1, query_heads a multiple of kv_heads, head_dim even and "
        ">= 32, queries >= 1, tokens >= 256 + queries");
  }
  return workload::GenerateLongContext(spec);
}

}  // namespace pqkv::quality

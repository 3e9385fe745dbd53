#include "server/store/session_config.h"

#include "absl/strings/str_cat.h"

namespace pqkv::server {

IndexOptions DefaultIndexOptions(uint32_t head_dim) {
  IndexOptions options;
  if (head_dim > 0 && head_dim % 8 == 0) {
    options.subspaces = head_dim;
    options.bits = 4;
  }
  options.rerank = DefaultRerank(options, head_dim);
  return options;
}

uint32_t DefaultRerank(const IndexOptions& index, uint32_t head_dim) {
  const bool dim4 = index.per_dimension(head_dim) && index.bits == 4 && head_dim % 8 == 0;
  return dim4 ? 1 : kDefaultRerank;
}

absl::Status ValidateSessionConfig(const SessionConfig& config, size_t page_bytes) {
  const ModelShape& s = config.shape;
  const IndexOptions& o = config.index;
  if (s.num_layers == 0 || s.num_layers > kMaxLayers) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.num_layers must be in [1, ", kMaxLayers, "], got ", s.num_layers));
  }
  if (s.num_kv_heads == 0 || s.num_kv_heads > kMaxHeads) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.num_kv_heads must be in [1, ", kMaxHeads, "], got ", s.num_kv_heads));
  }
  if (s.num_layers * s.num_kv_heads > kMaxLayerHeads) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_layers x num_kv_heads = ", s.num_layers * s.num_kv_heads, " exceeds ",
                     kMaxLayerHeads));
  }
  if (s.num_query_heads == 0 || s.num_query_heads > kMaxHeads ||
      s.num_query_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.num_query_heads must be a positive multiple of num_kv_heads (",
                     s.num_kv_heads, ") up to ", kMaxHeads, ", got ", s.num_query_heads));
  }
  if (s.head_dim == 0 || s.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.head_dim must be in [1, ", kMaxHeadDim, "], got ", s.head_dim));
  }
  if (s.row_bytes() > page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("a K/V row of ", s.row_bytes(),
                                                   " bytes does not fit the server's ", page_bytes,
                                                   "-byte pages"));
  }
  if (o.subspaces == 0 || s.head_dim % o.subspaces != 0) {
    return absl::InvalidArgumentError(absl::StrCat("index.subspaces (", o.subspaces,
                                                   ") must divide head_dim (", s.head_dim, ")"));
  }
  if (o.rope_pairs && s.head_dim % (2 * o.subspaces) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("index.rope_pairs needs head_dim (", s.head_dim,
                                                   ") to be a multiple of 2 x subspaces (",
                                                   2 * o.subspaces, ")"));
  }
  if (o.bits < 1 || o.bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("index.bits must be in [1, 8], got ", o.bits));
  }
  if (o.rerank < 1 || o.rerank > kMaxRerank) {
    return absl::InvalidArgumentError(
        absl::StrCat("index.rerank must be in [1, ", kMaxRerank, "] (1: off), got ", o.rerank));
  }
  if (o.kmeans_iterations < 1 || o.kmeans_iterations > kMaxKmeansIterations) {
    return absl::InvalidArgumentError(absl::StrCat("index.kmeans_iterations must be in [1, ",
                                                   kMaxKmeansIterations, "], got ",
                                                   o.kmeans_iterations));
  }
  return absl::OkStatus();
}

}  // namespace pqkv::server

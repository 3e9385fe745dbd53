#include "server/rpc/proto_convert.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace pqkv::server {

absl::StatusOr<kernels::ElementType> ElementTypeFromProto(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FP16:
      return kernels::ElementType::kFp16;
    case v1::DTYPE_BF16:
      return kernels::ElementType::kBf16;
    case v1::DTYPE_FP32:
      return kernels::ElementType::kFp32;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype must be DTYPE_FP16, DTYPE_BF16 or DTYPE_FP32, got ",
                       v1::DType_Name(dtype).empty() ? absl::StrCat(static_cast<int>(dtype))
                                                     : v1::DType_Name(dtype)));
  }
}

v1::DType ElementTypeToProto(kernels::ElementType type) {
  switch (type) {
    case kernels::ElementType::kFp16:
      return v1::DTYPE_FP16;
    case kernels::ElementType::kBf16:
      return v1::DTYPE_BF16;
    case kernels::ElementType::kFp32:
      return v1::DTYPE_FP32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<SessionConfig> SessionConfigFromProto(const v1::ModelShape& shape,
                                                     const v1::IndexOptions& index) {
  SessionConfig config;
  config.shape.num_layers = shape.num_layers();
  config.shape.num_kv_heads = shape.num_kv_heads();
  config.shape.num_query_heads = shape.num_query_heads();
  config.shape.head_dim = shape.head_dim();
  ASSIGN_OR_RETURN(config.shape.dtype, ElementTypeFromProto(shape.dtype()));
  // Neither set: the server's default index; one set: PQCache's value for the other.
  if (index.subspaces() == 0 && index.bits() == 0) {
    config.index = DefaultIndexOptions(config.shape.head_dim);
  }
  if (index.subspaces() != 0) config.index.subspaces = index.subspaces();
  if (index.bits() != 0) config.index.bits = index.bits();
  if (index.kmeans_iterations() != 0) config.index.kmeans_iterations = index.kmeans_iterations();
  if (index.has_sink_tokens()) config.index.sink_tokens = index.sink_tokens();
  if (index.has_recent_window()) config.index.recent_window = index.recent_window();
  if (index.has_rope_pairs()) config.index.rope_pairs = index.rope_pairs();
  config.index.rerank =
      index.has_rerank() ? index.rerank() : DefaultRerank(config.index, config.shape.head_dim);
  return config;
}

void IndexOptionsToProto(const IndexOptions& options, v1::IndexOptions* out) {
  out->set_subspaces(options.subspaces);
  out->set_bits(options.bits);
  out->set_kmeans_iterations(options.kmeans_iterations);
  out->set_sink_tokens(options.sink_tokens);
  out->set_recent_window(options.recent_window);
  out->set_rope_pairs(options.rope_pairs);
  out->set_rerank(options.rerank);
}

namespace {

v1::IndexState IndexStateToProto(IndexState state) {
  switch (state) {
    case IndexState::kOpen:
      return v1::INDEX_STATE_OPEN;
    case IndexState::kBuilding:
      return v1::INDEX_STATE_BUILDING;
    case IndexState::kReady:
      return v1::INDEX_STATE_READY;
    case IndexState::kExact:
      return v1::INDEX_STATE_EXACT;
    case IndexState::kFailed:
      return v1::INDEX_STATE_FAILED;
  }
  return v1::INDEX_STATE_UNSPECIFIED;
}

}  // namespace

void SessionInfoToProto(const Session& session, bool with_layers, v1::SessionInfo* out) {
  const SessionConfig& config = session.config();
  out->set_session_id(session.id());
  v1::ModelShape* shape = out->mutable_shape();
  shape->set_num_layers(config.shape.num_layers);
  shape->set_num_kv_heads(config.shape.num_kv_heads);
  shape->set_num_query_heads(config.shape.num_query_heads);
  shape->set_head_dim(config.shape.head_dim);
  shape->set_dtype(ElementTypeToProto(config.shape.dtype));
  IndexOptionsToProto(config.index, out->mutable_index());
  out->set_age_seconds(absl::ToDoubleSeconds(absl::Now() - session.created()));
  uint64_t bytes = 0;
  for (uint32_t l = 0; l < session.num_layers(); ++l) {
    const LayerStatus status = (*session.layer(l))->Status();
    bytes += status.bytes_held;
    if (!with_layers) continue;
    v1::LayerInfo* info = out->add_layers();
    info->set_layer(l);
    info->set_num_tokens(status.num_tokens);
    info->set_index_state(IndexStateToProto(status.index_state));
    info->set_num_encoded(status.num_encoded);
    info->set_index_build_ms(status.index_build_ms);
    info->set_quality_samples(status.quality_samples);
    info->set_last_mass_recall(status.last_mass_recall);
    info->set_mean_mass_recall(status.mean_mass_recall);
    info->set_training_quantization_error(status.training_quantization_error);
    info->set_appended_quantization_error(status.appended_quantization_error);
    info->set_index_refreshes(status.index_refreshes);
  }
  out->set_bytes_held(bytes + session.metadata_bytes_held());
}

}  // namespace pqkv::server

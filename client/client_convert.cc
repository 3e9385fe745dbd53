// Conversions between the SDK's public types and the v1 messages.
#include "client/client_internal.h"

namespace pqkv {

size_t DTypeBytes(DType dtype) { return dtype == DType::kFp32 ? 4 : 2; }

const char* IndexStateName(IndexState state) {
  switch (state) {
    case IndexState::kUnknown:
      return "unknown";
    case IndexState::kOpen:
      return "open";
    case IndexState::kBuilding:
      return "building";
    case IndexState::kReady:
      return "ready";
    case IndexState::kExact:
      return "exact";
    case IndexState::kFailed:
      return "failed";
  }
  return "unknown";
}

v1::DType DTypeToProto(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
      return v1::DTYPE_FP16;
    case DType::kBf16:
      return v1::DTYPE_BF16;
    case DType::kFp32:
      return v1::DTYPE_FP32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

DType DTypeFromProto(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_BF16:
      return DType::kBf16;
    case v1::DTYPE_FP32:
      return DType::kFp32;
    default:
      return DType::kFp16;
  }
}

ModelShape ShapeFromProto(const v1::ModelShape& shape) {
  ModelShape out;
  out.num_layers = shape.num_layers();
  out.num_kv_heads = shape.num_kv_heads();
  out.num_query_heads = shape.num_query_heads();
  out.head_dim = shape.head_dim();
  out.dtype = DTypeFromProto(shape.dtype());
  return out;
}

void ShapeToProto(const ModelShape& shape, v1::ModelShape* out) {
  out->set_num_layers(shape.num_layers);
  out->set_num_kv_heads(shape.num_kv_heads);
  out->set_num_query_heads(shape.num_query_heads);
  out->set_head_dim(shape.head_dim);
  out->set_dtype(DTypeToProto(shape.dtype));
}

IndexOptions IndexOptionsFromProto(const v1::IndexOptions& index) {
  IndexOptions out;
  out.subspaces = index.subspaces();
  out.bits = index.bits();
  out.kmeans_iterations = index.kmeans_iterations();
  if (index.has_sink_tokens()) out.sink_tokens = index.sink_tokens();
  if (index.has_recent_window()) out.recent_window = index.recent_window();
  if (index.has_rope_pairs()) out.rope_pairs = index.rope_pairs();
  if (index.has_rerank()) out.rerank = index.rerank();
  return out;
}

SessionInfo SessionInfoFromProto(const v1::SessionInfo& info) {
  SessionInfo out;
  out.session_id = info.session_id();
  out.shape = ShapeFromProto(info.shape());
  out.index = IndexOptionsFromProto(info.index());
  out.bytes_held = info.bytes_held();
  out.age_seconds = info.age_seconds();
  for (const v1::LayerInfo& layer : info.layers()) {
    LayerInfo l;
    l.layer = layer.layer();
    l.num_tokens = layer.num_tokens();
    switch (layer.index_state()) {
      case v1::INDEX_STATE_OPEN:
        l.index_state = IndexState::kOpen;
        break;
      case v1::INDEX_STATE_BUILDING:
        l.index_state = IndexState::kBuilding;
        break;
      case v1::INDEX_STATE_READY:
        l.index_state = IndexState::kReady;
        break;
      case v1::INDEX_STATE_EXACT:
        l.index_state = IndexState::kExact;
        break;
      case v1::INDEX_STATE_FAILED:
        l.index_state = IndexState::kFailed;
        break;
      default:
        l.index_state = IndexState::kUnknown;
        break;
    }
    l.num_encoded = layer.num_encoded();
    l.index_build_ms = layer.index_build_ms();
    l.quality_samples = layer.quality_samples();
    l.last_mass_recall = layer.last_mass_recall();
    l.mean_mass_recall = layer.mean_mass_recall();
    l.training_quantization_error = layer.training_quantization_error();
    l.appended_quantization_error = layer.appended_quantization_error();
    l.index_refreshes = layer.index_refreshes();
    out.layers.push_back(l);
  }
  return out;
}

}  // namespace pqkv

#include "workload/kv_dataset_io.h"

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_contents.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "workload/capture_manifest.pb.h"
#include "workload/npy_file.h"

namespace pqkv::workload {
namespace {

constexpr char kFormat[] = "pqkv-capture-v1";

absl::Status WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// Reads an .npy file and checks its dtype and shape.
template <typename T>
absl::StatusOr<std::vector<T>> ReadArray(const std::string& path, const std::string& dtype,
                                         const std::vector<uint64_t>& shape) {
  ASSIGN_OR_RETURN(NpyArray array, ReadNpy(path));
  if (array.dtype != dtype || array.shape != shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds ", array.dtype, " (", absl::StrJoin(array.shape, ", "),
                     "), the manifest needs ", dtype, " (", absl::StrJoin(shape, ", "), ")"));
  }
  std::vector<T> out(array.NumElements());
  std::memcpy(out.data(), array.data.data(), array.data.size());
  return out;
}

template <typename T>
NpyArray ToNpy(const std::vector<T>& values, const std::string& dtype,
               std::vector<uint64_t> shape) {
  NpyArray array;
  array.dtype = dtype;
  array.shape = std::move(shape);
  array.data.resize(values.size() * sizeof(T));
  std::memcpy(array.data.data(), values.data(), array.data.size());
  return array;
}

absl::Status CheckManifest(const CaptureManifest& m, const std::string& path) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (m.format() != kFormat)
    return bad(absl::StrCat("format is '", m.format(), "', want ", kFormat));
  if (m.rope_layout() != "half") {
    return bad(absl::StrCat("rope_layout is '", m.rope_layout(),
                            "'; only \"half\" (Hugging Face rotate_half) is read"));
  }
  if (m.num_kv_heads() == 0 || m.head_dim() == 0 || m.num_tokens() == 0 ||
      m.num_query_heads() % m.num_kv_heads() != 0 || m.num_query_heads() == 0) {
    return bad(
        "num_kv_heads, num_query_heads (a multiple of it), head_dim and num_tokens must "
        "be positive");
  }
  if (m.query_positions().empty()) return bad("query_positions is empty");
  for (int i = 0; i < m.query_positions_size(); ++i) {
    if (m.query_positions(i) >= m.num_tokens() ||
        (i > 0 && m.query_positions(i) <= m.query_positions(i - 1))) {
      return bad("query_positions must be ascending and below num_tokens");
    }
  }
  if (m.layers().empty()) return bad("no layers");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KvDataSet> LoadKvDataSet(const std::string& dir) {
  const std::string manifest_path = absl::StrCat(dir, "/manifest.json");
  ASSIGN_OR_RETURN(std::string json, ReadFileContents(manifest_path));
  CaptureManifest manifest;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  const auto parsed = google::protobuf::util::JsonStringToMessage(json, &manifest, options);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(manifest_path, ": ", std::string(parsed.message())));
  }
  RETURN_IF_ERROR(CheckManifest(manifest, manifest_path));
  KvDataSet data;
  data.name = manifest.model().empty() ? dir : manifest.model();
  data.num_kv_heads = manifest.num_kv_heads();
  data.num_query_heads = manifest.num_query_heads();
  data.head_dim = manifest.head_dim();
  data.num_tokens = manifest.num_tokens();
  data.rope_theta = manifest.rope_theta();
  data.query_positions.assign(manifest.query_positions().begin(), manifest.query_positions().end());
  const std::vector<uint64_t> kv_shape = {data.num_kv_heads, data.num_tokens, data.head_dim};
  const std::vector<uint64_t> query_shape = {data.query_positions.size(), data.num_query_heads,
                                             data.head_dim};
  for (const CaptureLayer& entry : manifest.layers()) {
    KvLayer layer;
    layer.layer = entry.layer();
    ASSIGN_OR_RETURN(layer.keys,
                     ReadArray<uint16_t>(absl::StrCat(dir, "/", entry.keys()), "<f2", kv_shape));
    ASSIGN_OR_RETURN(layer.values,
                     ReadArray<uint16_t>(absl::StrCat(dir, "/", entry.values()), "<f2", kv_shape));
    ASSIGN_OR_RETURN(layer.queries,
                     ReadArray<float>(absl::StrCat(dir, "/", entry.queries()), "<f4", query_shape));
    data.layers.push_back(std::move(layer));
  }
  return data;
}

absl::Status WriteKvDataSet(const KvDataSet& data, const std::string& dir) {
  CaptureManifest manifest;
  manifest.set_format(kFormat);
  manifest.set_model(data.name);
  manifest.set_num_kv_heads(data.num_kv_heads);
  manifest.set_num_query_heads(data.num_query_heads);
  manifest.set_head_dim(data.head_dim);
  manifest.set_rope_theta(data.rope_theta);
  manifest.set_rope_layout("half");
  manifest.set_num_tokens(data.num_tokens);
  manifest.set_prompt_tokens(data.query_positions.empty() ? data.num_tokens
                                                          : data.query_positions.front());
  for (uint32_t p : data.query_positions) manifest.add_query_positions(p);
  const std::vector<uint64_t> kv_shape = {data.num_kv_heads, data.num_tokens, data.head_dim};
  const std::vector<uint64_t> query_shape = {data.query_positions.size(), data.num_query_heads,
                                             data.head_dim};
  for (const KvLayer& layer : data.layers) {
    CaptureLayer* entry = manifest.add_layers();
    entry->set_layer(layer.layer);
    const std::string stem = absl::StrFormat("layer_%02u", layer.layer);
    entry->set_keys(stem + "_keys.npy");
    entry->set_values(stem + "_values.npy");
    entry->set_queries(stem + "_queries.npy");
    RETURN_IF_ERROR(WriteFile(absl::StrCat(dir, "/", entry->keys()),
                              EncodeNpy(ToNpy(layer.keys, "<f2", kv_shape))));
    RETURN_IF_ERROR(WriteFile(absl::StrCat(dir, "/", entry->values()),
                              EncodeNpy(ToNpy(layer.values, "<f2", kv_shape))));
    RETURN_IF_ERROR(WriteFile(absl::StrCat(dir, "/", entry->queries()),
                              EncodeNpy(ToNpy(layer.queries, "<f4", query_shape))));
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  const auto printed = google::protobuf::util::MessageToJsonString(manifest, &json, options);
  if (!printed.ok()) return absl::InternalError(std::string(printed.message()));
  return WriteFile(absl::StrCat(dir, "/manifest.json"), json);
}

}  // namespace pqkv::workload

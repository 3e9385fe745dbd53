#include "workload/kv_dataset_io.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "catch2/catch.hpp"
#include "workload/npy_file.h"

namespace pqkv::workload {
namespace {

std::string TempDir() {
  char pattern[] = "/tmp/kv_dataset_io_test.XXXXXX";
  return mkdtemp(pattern);
}

KvDataSet SmallSet() {
  KvDataSet data;
  data.name = "tiny";
  data.num_kv_heads = 2;
  data.num_query_heads = 4;
  data.head_dim = 8;
  data.num_tokens = 10;
  data.rope_theta = 10000;
  data.query_positions = {8, 9};
  for (uint32_t l : {3u, 7u}) {
    KvLayer layer;
    layer.layer = l;
    for (uint32_t i = 0; i < 2 * 10 * 8; ++i) {
      layer.keys.push_back(static_cast<uint16_t>(i + l));
      layer.values.push_back(static_cast<uint16_t>(3 * i + l));
    }
    for (uint32_t i = 0; i < 2 * 4 * 8; ++i) layer.queries.push_back(0.5f * i - l);
    data.layers.push_back(layer);
  }
  return data;
}

TEST_CASE("A data set survives WriteKvDataSet and LoadKvDataSet", "[workload]") {
  const std::string dir = TempDir();
  const KvDataSet data = SmallSet();
  REQUIRE(WriteKvDataSet(data, dir).ok());
  absl::StatusOr<KvDataSet> loaded = LoadKvDataSet(dir);
  REQUIRE(loaded.ok());
  CHECK(loaded->name == "tiny");
  CHECK(loaded->num_kv_heads == 2);
  CHECK(loaded->num_query_heads == 4);
  CHECK(loaded->head_dim == 8);
  CHECK(loaded->num_tokens == 10);
  CHECK(loaded->rope_theta == 10000);
  CHECK(loaded->query_positions == data.query_positions);
  REQUIRE(loaded->layers.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(loaded->layers[i].layer == data.layers[i].layer);
    CHECK(loaded->layers[i].keys == data.layers[i].keys);
    CHECK(loaded->layers[i].values == data.layers[i].values);
    CHECK(loaded->layers[i].queries == data.layers[i].queries);
  }
}

TEST_CASE("LoadKvDataSet names what does not match", "[workload]") {
  const std::string dir = TempDir();
  REQUIRE(WriteKvDataSet(SmallSet(), dir).ok());
  SECTION("a keys array of the wrong shape") {
    NpyArray wrong{"<f2", {2, 9, 8}, std::vector<uint8_t>(2 * 9 * 8 * 2)};
    std::ofstream(dir + "/layer_03_keys.npy", std::ios::binary) << EncodeNpy(wrong);
    const absl::Status status = LoadKvDataSet(dir).status();
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(status.message()).find("layer_03_keys.npy") != std::string::npos);
  }
  SECTION("a missing file") {
    std::remove((dir + "/layer_07_values.npy").c_str());
    CHECK(LoadKvDataSet(dir).status().code() == absl::StatusCode::kNotFound);
  }
  SECTION("no manifest") {
    CHECK(LoadKvDataSet(dir + "/nowhere").status().code() == absl::StatusCode::kNotFound);
  }
}

TEST_CASE("ParseNpy reads numpy's headers and refuses what it cannot read", "[workload]") {
  // The layout numpy.save writes for np.zeros((2, 3), '<f4'): magic, version 1.0, a
  // little-endian header length, the dict padded with spaces to a 64-byte boundary.
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  header.append(128 - 10 - 1 - header.size(), ' ');
  header.push_back('\n');
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes.push_back(static_cast<char>(header.size()));
  bytes.push_back(0);
  bytes += header + std::string(24, '\0');
  absl::StatusOr<NpyArray> array = ParseNpy(bytes);
  REQUIRE(array.ok());
  CHECK(array->dtype == "<f4");
  CHECK(array->shape == std::vector<uint64_t>{2, 3});
  CHECK(ParseNpy(bytes.substr(0, bytes.size() - 4)).status().code() ==
        absl::StatusCode::kInvalidArgument);
  std::string f8 = bytes;
  f8.replace(f8.find("<f4"), 3, "<f8");
  CHECK(ParseNpy(f8).status().code() == absl::StatusCode::kInvalidArgument);
  std::string fortran = bytes;
  fortran.replace(fortran.find("False"), 5, "True ");
  CHECK(ParseNpy(fortran).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParseNpy("not numpy").status().code() == absl::StatusCode::kInvalidArgument);
  // One-dimensional shapes round-trip with numpy's trailing comma.
  NpyArray one{"<f2", {5}, std::vector<uint8_t>(10)};
  absl::StatusOr<NpyArray> back = ParseNpy(EncodeNpy(one));
  REQUIRE(back.ok());
  CHECK(back->shape == std::vector<uint64_t>{5});
}

}  // namespace
}  // namespace pqkv::workload

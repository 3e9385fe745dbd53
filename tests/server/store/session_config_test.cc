#include "server/store/session_config.h"

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

SessionConfig Llama3_8B() {
  SessionConfig config;
  config.shape = {32, 8, 32, 128, kernels::ElementType::kBf16};
  return config;
}

TEST_CASE(
    "IndexOptions holds PQCache's choices (a session naming no index gets DefaultIndexOptions)",
    "[server]") {
  const IndexOptions defaults;
  CHECK(defaults.subspaces == 2);
  CHECK(defaults.bits == 6);
  CHECK(defaults.kmeans_iterations == 10);
  CHECK(defaults.sink_tokens == 32);
  CHECK(defaults.centroids() == 64);
  CHECK(ValidateSessionConfig(Llama3_8B(), 64 << 10).ok());
  CHECK(Llama3_8B().shape.group_size() == 4);
  CHECK(Llama3_8B().shape.row_bytes() == 256);
}

TEST_CASE("ValidateSessionConfig names the field that is wrong", "[server]") {
  SessionConfig config = Llama3_8B();
  std::string field;
  SECTION("layers") {
    config.shape.num_layers = kMaxLayers + 1;
    field = "num_layers";
  }
  SECTION("kv heads") {
    config.shape.num_kv_heads = 0;
    field = "num_kv_heads";
  }
  SECTION("GQA grouping") {
    config.shape.num_query_heads = 33;
    field = "num_query_heads";
  }
  SECTION("head dim") {
    config.shape.head_dim = kMaxHeadDim + 1;
    field = "head_dim";
  }
  SECTION("sub-spaces") {
    config.index.subspaces = 0;
    field = "subspaces";
  }
  SECTION("bits") {
    config.index.bits = 0;
    field = "bits";
  }
  SECTION("iterations") {
    config.index.kmeans_iterations = kMaxKmeansIterations + 1;
    field = "kmeans_iterations";
  }
  const absl::Status s = ValidateSessionConfig(config, 64 << 10);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find(field) != std::string::npos);
}

}  // namespace
}  // namespace pqkv::server

namespace pqkv::server {
namespace {

TEST_CASE("The default index is one 4-bit sub-space per dimension, without re-rank", "[server]") {
  const uint32_t head_dim = GENERATE(8u, 64u, 128u, 256u);
  const IndexOptions index = DefaultIndexOptions(head_dim);
  CHECK(index.subspaces == head_dim);
  CHECK(index.bits == 4);
  CHECK(index.rerank == 1);
  CHECK(index.per_dimension(head_dim));
  SessionConfig config;
  config.shape = {1, 1, 1, head_dim, kernels::ElementType::kFp16};
  config.index = index;
  CHECK(ValidateSessionConfig(config, 1 << 16).ok());
}

TEST_CASE("Where head_dim is not a multiple of 8 the default is PQCache's 2 x 6 with re-rank",
          "[server]") {
  const uint32_t head_dim = GENERATE(6u, 12u, 100u);
  const IndexOptions index = DefaultIndexOptions(head_dim);
  CHECK(index.subspaces == 2);
  CHECK(index.bits == 6);
  CHECK(index.rerank == kDefaultRerank);
}

TEST_CASE("DefaultRerank is off only for the per-dimension 4-bit index", "[server]") {
  IndexOptions index;
  index.subspaces = 128;
  index.bits = 4;
  CHECK(DefaultRerank(index, 128) == 1);
  index.bits = 6;  // per dimension but not the dim4 scan
  CHECK(DefaultRerank(index, 128) == kDefaultRerank);
  index.subspaces = 32;
  index.bits = 4;  // 4 dimensions per sub-space: the fast scan
  CHECK(DefaultRerank(index, 128) == kDefaultRerank);
  index.subspaces = 2;
  index.bits = 6;
  CHECK(DefaultRerank(index, 128) == kDefaultRerank);
}

}  // namespace
}  // namespace pqkv::server

#include "server/store/session_config.h"

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

SessionConfig Llama3_8B() {
  SessionConfig config;
  config.shape = {32, 8, 32, 128, kernels::ElementType::kBf16};
  return config;
}

TEST_CASE("PQCache's defaults are the session defaults", "[server]") {
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

#include "server/rpc/retrieve_response_encoder.h"

#include <cstring>
#include <string>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  REQUIRE(buffer.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

grpc::Slice Filled(size_t bytes, char first) {
  grpc::Slice slice = NewRowSlice(bytes);
  for (size_t i = 0; i < bytes; ++i) MutableData(slice)[i] = static_cast<char>(first + i * 7);
  return slice;
}

TEST_CASE("EncodeRetrieveResponse writes what protobuf parses as the response with its rows",
          "[server]") {
  v1::RetrieveResponse response;
  response.set_request_id(42);
  response.set_layer(3);
  response.mutable_data_plane()->set_method("ucx-shm");
  for (int i = 0; i < 3; ++i) {
    v1::RetrieveResult* result = response.add_results();
    result->set_session_id("s" + std::to_string(i));
    result->set_num_tokens(1000 + i);
    v1::HeadSelection* head = result->add_heads();
    for (uint32_t p = 0; p < 200; ++p) {  // multi-byte varints and a long packed field
      head->add_positions(7 + 1000 * p);
      head->add_scores(0.5f / (p + 1));
    }
  }
  response.mutable_results(1)->set_status_code(5);
  // Rows for results 0 and 2 (2 heads; one empty), none for result 1.
  const size_t sizes[] = {0, 256, 70000};  // empty, small, bigger than a varint byte
  std::vector<std::vector<HeadRowSlices>> rows(3);
  for (int i : {0, 2}) {
    for (uint32_t h = 0; h < 2; ++h) {
      const size_t bytes = sizes[(i + h) % 3];
      rows[i].push_back({h, Filled(bytes, static_cast<char>(i + h)),
                         Filled(bytes, static_cast<char>(100 + i + h))});
    }
  }
  v1::RetrieveResponse expected = response;
  for (int i : {0, 2}) {
    for (const HeadRowSlices& head : rows[i]) {
      v1::HeadRows* out = expected.mutable_results(i)->add_rows();
      out->set_kv_head(head.kv_head);
      out->set_keys(reinterpret_cast<const char*>(head.keys.begin()), head.keys.size());
      out->set_values(reinterpret_cast<const char*>(head.values.begin()), head.values.size());
    }
  }
  v1::RetrieveResponse parsed;
  REQUIRE(parsed.ParseFromString(Flatten(EncodeRetrieveResponse(response, rows))));
  CHECK(parsed.SerializeAsString() == expected.SerializeAsString());
  CHECK(parsed.results(2).rows(1).keys().size() == sizes[0]);
  CHECK(parsed.results(0).rows(1).values().size() == sizes[1]);
}

TEST_CASE("EncodeRetrieveResponse without rows is the plain serialisation", "[server]") {
  v1::RetrieveResponse response;
  response.set_request_id(1);
  response.add_results()->set_session_id("a");
  v1::RetrieveResponse parsed;
  REQUIRE(parsed.ParseFromString(Flatten(EncodeRetrieveResponse(response, {}))));
  CHECK(parsed.SerializeAsString() == response.SerializeAsString());
}

}  // namespace
}  // namespace pqkv::server

#include "client/retrieve_response_decoder.h"

#include <map>
#include <string>
#include <tuple>

#include "catch2/catch.hpp"

namespace pqkv {
namespace {

grpc::ByteBuffer BufferOf(const std::string& bytes) {
  // Several slices, so that rows straddle slice boundaries as received bytes do.
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < bytes.size(); at += 1000) {
    slices.emplace_back(bytes.data() + at, std::min<size_t>(1000, bytes.size() - at));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

v1::RetrieveResponse ResponseWithRows() {
  v1::RetrieveResponse response;
  response.set_request_id(9);
  response.set_layer(2);
  response.mutable_data_plane()->set_method("ucx-put");
  for (int i = 0; i < 2; ++i) {
    v1::RetrieveResult* result = response.add_results();
    result->set_session_id("s" + std::to_string(i));
    result->set_num_tokens(40960);
    result->set_score_us(12.5);
    // Selections long enough to straddle the 1000-byte slices.
    for (int h = 0; h < 2; ++h) {
      v1::HeadSelection* head = result->add_heads();
      for (uint32_t p = 0; p < 300; ++p) {
        head->add_positions(5 + i + 100 * p + h);
        head->add_scores(0.5f / (p + 1));
        head->add_slots(p);
      }
      head->add_sent(h);
    }
    for (uint32_t h = 0; h < 3; ++h) {
      v1::HeadRows* rows = result->add_rows();
      rows->set_kv_head(h);
      rows->set_keys(std::string(1500 * (h + 1), static_cast<char>('a' + i * 3 + h)));
      rows->set_values(std::string(1500 * (h + 1), static_cast<char>('A' + i * 3 + h)));
    }
  }
  return response;
}

TEST_CASE("DecodeRetrieveResponse hands every row field to the sink and parses the rest",
          "[client]") {
  const v1::RetrieveResponse response = ResponseWithRows();
  grpc::ByteBuffer buffer = BufferOf(response.SerializeAsString());
  std::map<std::tuple<int, int, bool>, std::string> landed;
  const RowSink sink = [&](int result, int head, bool values, size_t bytes) {
    std::string& out = landed[{result, head, values}];
    out.resize(bytes);
    return out.data();
  };
  v1::RetrieveResponse parsed;
  DecodedRows decoded;
  REQUIRE(DecodeRetrieveResponse(&buffer, &parsed, sink, &decoded));
  v1::RetrieveResponse without_rows = response;
  size_t row_bytes = 0;
  for (v1::RetrieveResult& result : *without_rows.mutable_results()) {
    for (const v1::HeadRows& rows : result.rows()) row_bytes += 2 * rows.keys().size();
    result.clear_rows();
  }
  CHECK(parsed.SerializeAsString() == without_rows.SerializeAsString());
  CHECK(decoded.rows_bytes == row_bytes);
  CHECK(decoded.dropped_bytes == 0);
  for (int i = 0; i < 2; ++i) {
    for (int h = 0; h < 3; ++h) {
      CHECK(landed[{i, h, false}] == response.results(i).rows(h).keys());
      CHECK(landed[{i, h, true}] == response.results(i).rows(h).values());
    }
  }
}

TEST_CASE("DecodeRetrieveResponse skips rows the sink refuses and rejects garbage", "[client]") {
  grpc::ByteBuffer buffer = BufferOf(ResponseWithRows().SerializeAsString());
  v1::RetrieveResponse parsed;
  DecodedRows decoded;
  REQUIRE(DecodeRetrieveResponse(
      &buffer, &parsed, [](int, int, bool, size_t) -> char* { return nullptr; }, &decoded));
  CHECK(decoded.rows_bytes == 0);
  CHECK(decoded.dropped_bytes > 0);
  CHECK(parsed.results_size() == 2);
  grpc::ByteBuffer garbage = BufferOf(std::string("\x1a\xff\xff\xff\x0f garbage", 14));
  CHECK_FALSE(DecodeRetrieveResponse(
      &garbage, &parsed, [](int, int, bool, size_t) -> char* { return nullptr; }, &decoded));
}

}  // namespace
}  // namespace pqkv

#include "server/rpc/retrieve_response_encoder.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <string>

namespace pqkv::server {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

constexpr int kResponseResults = v1::RetrieveResponse::kResultsFieldNumber;
constexpr int kResultRows = v1::RetrieveResult::kRowsFieldNumber;
constexpr int kRowsKvHead = v1::HeadRows::kKvHeadFieldNumber;
constexpr int kRowsKeys = v1::HeadRows::kKeysFieldNumber;
constexpr int kRowsValues = v1::HeadRows::kValuesFieldNumber;

uint32_t LengthTag(int field) {
  return WireFormatLite::MakeTag(field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
}

void AppendVarint(uint64_t value, std::string* out) {
  uint8_t bytes[10];
  const uint8_t* end = CodedOutputStream::WriteVarint64ToArray(value, bytes);
  out->append(reinterpret_cast<const char*>(bytes), end - bytes);
}

size_t VarintSize(uint64_t value) { return CodedOutputStream::VarintSize64(value); }

// Bytes of one HeadRows message.
size_t HeadRowsSize(const HeadRowSlices& head) {
  size_t size = 0;
  if (head.kv_head != 0) size += 1 + VarintSize(head.kv_head);
  size += 1 + VarintSize(head.keys.size()) + head.keys.size();
  size += 1 + VarintSize(head.values.size()) + head.values.size();
  return size;
}

grpc::Slice SliceOf(const std::string& bytes) { return grpc::Slice(bytes); }

}  // namespace

grpc::Slice NewRowSlice(size_t bytes) { return grpc::Slice(bytes); }

grpc::ByteBuffer EncodeRetrieveResponse(const v1::RetrieveResponse& response,
                                        const std::vector<std::vector<HeadRowSlices>>& rows) {
  std::vector<grpc::Slice> slices;
  // Everything but the results, then each result with its rows framed around the
  // row slices. Protobuf accepts fields in any order.
  v1::RetrieveResponse top;
  top.set_request_id(response.request_id());
  top.set_layer(response.layer());
  if (response.has_data_plane()) *top.mutable_data_plane() = response.data_plane();
  slices.push_back(SliceOf(top.SerializeAsString()));
  for (int i = 0; i < response.results_size(); ++i) {
    const v1::RetrieveResult& result = response.results(i);
    const size_t fields_size = result.ByteSizeLong();
    const std::vector<HeadRowSlices> none;
    const std::vector<HeadRowSlices>& heads = static_cast<size_t>(i) < rows.size() ? rows[i] : none;
    size_t result_size = fields_size;
    for (const HeadRowSlices& head : heads) {
      const size_t size = HeadRowsSize(head);
      result_size += 1 + VarintSize(size) + size;
    }
    // The result's framing and fields serialised in place in one slice: its positions
    // are most of the response without rows, and are written once.
    const uint32_t tag = LengthTag(kResponseResults);
    grpc::Slice fields(VarintSize(tag) + VarintSize(result_size) + fields_size);
    uint8_t* at = reinterpret_cast<uint8_t*>(MutableData(fields));
    at = CodedOutputStream::WriteVarint32ToArray(tag, at);
    at = CodedOutputStream::WriteVarint64ToArray(result_size, at);
    result.SerializeWithCachedSizesToArray(at);
    slices.push_back(std::move(fields));
    std::string frame;
    for (const HeadRowSlices& head : heads) {
      AppendVarint(LengthTag(kResultRows), &frame);
      AppendVarint(HeadRowsSize(head), &frame);
      if (head.kv_head != 0) {
        AppendVarint(WireFormatLite::MakeTag(kRowsKvHead, WireFormatLite::WIRETYPE_VARINT), &frame);
        AppendVarint(head.kv_head, &frame);
      }
      AppendVarint(LengthTag(kRowsKeys), &frame);
      AppendVarint(head.keys.size(), &frame);
      slices.push_back(SliceOf(frame));
      frame.clear();
      slices.push_back(head.keys);
      AppendVarint(LengthTag(kRowsValues), &frame);
      AppendVarint(head.values.size(), &frame);
      slices.push_back(SliceOf(frame));
      frame.clear();
      slices.push_back(head.values);
    }
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

}  // namespace pqkv::server

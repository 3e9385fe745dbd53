#include "client/retrieve_response_decoder.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <climits>
#include <string>

namespace pqkv {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;
using google::protobuf::io::StringOutputStream;

constexpr int kResponseResults = v1::RetrieveResponse::kResultsFieldNumber;
constexpr int kResultHeads = v1::RetrieveResult::kHeadsFieldNumber;
constexpr int kResultRows = v1::RetrieveResult::kRowsFieldNumber;
constexpr int kRowsKeys = v1::HeadRows::kKeysFieldNumber;
constexpr int kRowsValues = v1::HeadRows::kValuesFieldNumber;

bool IsLength(uint32_t tag, int field) {
  return tag == WireFormatLite::MakeTag(field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
}

// Reads a length prefix that fits what is left of the stream.
bool ReadLength(CodedInputStream* in, uint32_t* length) {
  return in->ReadVarint32(length) && *length <= static_cast<uint32_t>(INT_MAX) &&
         (in->BytesUntilLimit() < 0 || *length <= static_cast<uint32_t>(in->BytesUntilLimit()));
}

// Copies one length-delimited row field to the sink, or skips it.
bool ReadRowField(CodedInputStream* in, int result, int head, bool values, const RowSink& sink,
                  DecodedRows* decoded) {
  uint32_t length = 0;
  if (!ReadLength(in, &length)) return false;
  char* destination = sink(result, head, values, length);
  if (destination == nullptr) {
    decoded->dropped_bytes += length;
    return in->Skip(static_cast<int>(length));
  }
  decoded->rows_bytes += length;
  return in->ReadRaw(destination, static_cast<int>(length));
}

// One HeadRows: keys and values to the sink, kv_head (informational) skipped.
bool ReadHeadRows(CodedInputStream* in, int result, int head, const RowSink& sink,
                  DecodedRows* decoded) {
  uint32_t length = 0;
  if (!ReadLength(in, &length)) return false;
  const CodedInputStream::Limit limit = in->PushLimit(static_cast<int>(length));
  while (uint32_t tag = in->ReadTag()) {
    bool ok;
    if (IsLength(tag, kRowsKeys)) {
      ok = ReadRowField(in, result, head, /*values=*/false, sink, decoded);
    } else if (IsLength(tag, kRowsValues)) {
      ok = ReadRowField(in, result, head, /*values=*/true, sink, decoded);
    } else {
      ok = WireFormatLite::SkipField(in, tag);
    }
    if (!ok) return false;
  }
  if (in->BytesUntilLimit() != 0) return false;  // a 0 tag or an error before the end
  in->PopLimit(limit);
  return true;
}

// One RetrieveResult: rows to the sink, every other field into `out` (a new message).
bool ReadResult(CodedInputStream* in, int result, const RowSink& sink, v1::RetrieveResult* out,
                DecodedRows* decoded) {
  uint32_t length = 0;
  if (!ReadLength(in, &length)) return false;
  const CodedInputStream::Limit limit = in->PushLimit(static_cast<int>(length));
  std::string rest;
  {
    StringOutputStream rest_stream(&rest);
    CodedOutputStream rest_out(&rest_stream);
    int head = 0;
    while (uint32_t tag = in->ReadTag()) {
      bool ok;
      if (IsLength(tag, kResultRows)) {
        ok = ReadHeadRows(in, result, head++, sink, decoded);
      } else if (IsLength(tag, kResultHeads)) {
        // The selections are most of a result's bytes: parsed where they lie.
        ok = WireFormatLite::ReadMessage(in, out->add_heads());
      } else {
        ok = WireFormatLite::SkipField(in, tag, &rest_out);
      }
      if (!ok) return false;
    }
  }
  if (in->BytesUntilLimit() != 0) return false;
  in->PopLimit(limit);
  // The scalar fields; merging keeps the heads parsed above.
  return out->MergeFromString(rest);
}

}  // namespace

bool DecodeRetrieveResponse(grpc::ByteBuffer* buffer, v1::RetrieveResponse* response,
                            const RowSink& sink, DecodedRows* decoded) {
  *decoded = {};
  response->Clear();
  grpc::ProtoBufferReader reader(buffer);
  if (!reader.status().ok()) return false;
  CodedInputStream in(&reader);
  in.SetTotalBytesLimit(INT_MAX);
  std::string rest;
  {
    StringOutputStream rest_stream(&rest);
    CodedOutputStream rest_out(&rest_stream);
    while (uint32_t tag = in.ReadTag()) {
      bool ok;
      if (IsLength(tag, kResponseResults)) {
        const int index = response->results_size();
        ok = ReadResult(&in, index, sink, response->add_results(), decoded);
      } else {
        ok = WireFormatLite::SkipField(&in, tag, &rest_out);
      }
      if (!ok) return false;
    }
    if (!in.ConsumedEntireMessage()) return false;
  }
  // The other top-level fields; merging keeps the results parsed above.
  return response->MergeFromString(rest);
}

}  // namespace pqkv

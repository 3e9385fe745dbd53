// Encodes a RetrieveResponse for the wire without copying its K/V rows: the rows stay in
// the gRPC slices they were gathered into, and the ByteBuffer references them next to
// small slices of protobuf framing. The bytes are exactly a serialised RetrieveResponse
// whose results carry those rows (field `rows`), so any protobuf client parses them.
//
// Pure functions; the slices are reference-counted, so the buffer may outlive `rows`.
#ifndef PQKV_SERVER_RPC_RETRIEVE_RESPONSE_ENCODER_H_
#define PQKV_SERVER_RPC_RETRIEVE_RESPONSE_ENCODER_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <vector>

#include "pqkv/v1/pqkv.pb.h"

namespace pqkv::server {

// One kv head's K and V rows, [row][head_dim] in the session's dtype.
struct HeadRowSlices {
  uint32_t kv_head = 0;
  grpc::Slice keys;
  grpc::Slice values;
};

// A slice of `bytes` uninitialised bytes to gather rows into, and where to write them.
grpc::Slice NewRowSlice(size_t bytes);
inline char* MutableData(grpc::Slice& slice) {
  return reinterpret_cast<char*>(const_cast<uint8_t*>(slice.begin()));
}

// `response`'s results must carry no rows themselves; rows[i] holds result i's (may be
// empty; rows.size() may be less than the number of results).
grpc::ByteBuffer EncodeRetrieveResponse(const v1::RetrieveResponse& response,
                                        const std::vector<std::vector<HeadRowSlices>>& rows);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_RETRIEVE_RESPONSE_ENCODER_H_

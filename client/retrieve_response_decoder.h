// Decodes a RetrieveResponse from the bytes gRPC received without staging its K/V rows in
// protobuf strings: each row field (RetrieveResult.rows[h].keys / .values) is copied
// straight from the received slices to where `sink` says, and every other field is
// parsed into `response` as usual (its results come back without rows).
//
// Pure function; not thread-safe on the same buffer.
#ifndef PQKV_CLIENT_RETRIEVE_RESPONSE_DECODER_H_
#define PQKV_CLIENT_RETRIEVE_RESPONSE_DECODER_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <functional>

#include "pqkv/v1/pqkv.pb.h"

namespace pqkv {

// Where the `bytes` of a row field go: result `result`'s `head`-th HeadRows (in wire
// order), its keys (values = false) or values. Null drops them.
using RowSink = std::function<char*(int result, int head, bool values, size_t bytes)>;

struct DecodedRows {
  size_t rows_bytes = 0;     // row bytes copied to the sink
  size_t dropped_bytes = 0;  // row bytes the sink refused
};

// False when the bytes are not a RetrieveResponse.
bool DecodeRetrieveResponse(grpc::ByteBuffer* buffer, v1::RetrieveResponse* response,
                            const RowSink& sink, DecodedRows* decoded);

}  // namespace pqkv

#endif  // PQKV_CLIENT_RETRIEVE_RESPONSE_DECODER_H_

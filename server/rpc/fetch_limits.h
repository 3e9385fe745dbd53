// Size limits of the messages the server sends and accepts.
#ifndef PQKV_SERVER_RPC_FETCH_LIMITS_H_
#define PQKV_SERVER_RPC_FETCH_LIMITS_H_

#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"

namespace pqkv::server {

// Largest K+V payload of one FetchKv response, or of the with_kv rows of one Retrieve
// response (its items admitted in request order before gathering); bigger ones must be
// split (the C++ SDK splits fetches).
inline constexpr size_t kMaxFetchBytes = size_t{64} << 20;
// Most row cache slots per kv head a Retrieve item may name (delta transfer).
// (The server keeps 12 bytes per slot per kv head and layer for the life of a stream.)
inline constexpr uint32_t kMaxCacheSlots = uint32_t{1} << 16;
// Largest staging buffer (K+V) one item's UCX put may take; the same-host path needs none.
inline constexpr size_t kMaxStagingBytes = size_t{256} << 20;
// Longest the server waits for a UCX put of one item's rows to reach the client.
inline constexpr absl::Duration kLandingTimeout = absl::Seconds(10);
// Gathers of at least this many K+V bytes are split over the compute pool by kv head.
inline constexpr size_t kParallelGatherBytes = size_t{1} << 20;
// Largest message the server accepts (AppendKv chunks, Retrieve batches).
inline constexpr int kMaxReceiveMessageBytes = 64 << 20;

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_FETCH_LIMITS_H_

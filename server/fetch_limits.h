// Size limits of the messages the server sends and accepts.
#ifndef PQKV_SERVER_FETCH_LIMITS_H_
#define PQKV_SERVER_FETCH_LIMITS_H_

#include <cstddef>

namespace pqkv::server {

// Largest K+V payload of one FetchKv response or one Retrieve item with_kv; bigger ones
// must be split (the C++ SDK splits fetches).
inline constexpr size_t kMaxFetchBytes = size_t{64} << 20;
// Largest message the server accepts (AppendKv chunks, Retrieve batches).
inline constexpr int kMaxReceiveMessageBytes = 64 << 20;

}  // namespace pqkv::server

#endif  // PQKV_SERVER_FETCH_LIMITS_H_

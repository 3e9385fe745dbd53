// Rendezvous (highest-random-weight) hashing: which of several servers holds a session.
// Every client computes the same answer from the session id and the endpoint list alone,
// and adding an endpoint moves only the sessions it wins (about 1/N of them).
//
// Pure functions; the hash is fixed (FNV-1a and a SplitMix64 finaliser), not seeded per
// process, so that every client process agrees.
#ifndef PQKV_CLIENT_RENDEZVOUS_H_
#define PQKV_CLIENT_RENDEZVOUS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace pqkv {

uint64_t RendezvousWeight(absl::string_view key, absl::string_view endpoint);

// Index of the endpoint with the highest weight for `key`; endpoints must not be empty.
size_t RendezvousPick(absl::string_view key, const std::vector<std::string>& endpoints);

}  // namespace pqkv

#endif  // PQKV_CLIENT_RENDEZVOUS_H_

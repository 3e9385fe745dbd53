#include "client/rendezvous.h"

namespace pqkv {
namespace {

uint64_t Fnv1a(absl::string_view bytes, uint64_t hash) {
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t RendezvousWeight(absl::string_view key, absl::string_view endpoint) {
  // A separator byte keeps ("ab", "c") and ("a", "bc") apart.
  return Mix(Fnv1a(endpoint, Fnv1a("\x1f", Fnv1a(key, 0xcbf29ce484222325ull))));
}

size_t RendezvousPick(absl::string_view key, const std::vector<std::string>& endpoints) {
  size_t best = 0;
  uint64_t best_weight = 0;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    const uint64_t weight = RendezvousWeight(key, endpoints[i]);
    if (i == 0 || weight > best_weight) {
      best = i;
      best_weight = weight;
    }
  }
  return best;
}

}  // namespace pqkv

// RowCacheDirectory: the server's mirror of one client row cache for one (session,
// layer, kv head): which token position each of the client's `slots` cache slots holds,
// evicting the least recently selected position first. Deterministic, so the client
// never needs its own copy: the server tells it the slot of every selected position.
// Its memory grows with the slots in use (about kBytesPerSlot each), never to `slots` up
// front: a layer of few candidate tokens costs few slots whatever the client's cache size.
//
// Not thread-safe: the owner (one Retrieve stream) serialises calls.
#ifndef PQKV_SERVER_DATAPLANE_ROW_CACHE_DIRECTORY_H_
#define PQKV_SERVER_DATAPLANE_ROW_CACHE_DIRECTORY_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace pqkv::server {

class RowCacheDirectory {
 public:
  // Upper bound of the bytes one slot in use takes (its position, recency links and
  // hash map entry), for charging directories to a budget.
  static constexpr size_t kBytesPerSlot = 48;

  explicit RowCacheDirectory(uint32_t slots) : slots_(slots) {}

  // The client's cache size.
  uint32_t slots() const { return slots_; }
  // Slots that hold a position (allocated; never more than slots()).
  uint32_t used() const { return used_; }
  // How many more slots Place(positions) would put in use: its misses, up to the free
  // slots. Does not change the directory.
  uint32_t NewSlotsFor(absl::Span<const uint32_t> positions) const;

  struct Placement {
    std::vector<uint32_t> slots;  // slot of each selected position, in selection order
    std::vector<uint32_t> sent;   // indices of the selected positions that missed
  };
  // Places one selection of distinct positions (at most slots() of them): hits are
  // marked recently used first, then every miss takes a free slot or the least recently
  // used one, which is never a position of this selection.
  Placement Place(absl::Span<const uint32_t> positions);

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  void Unlink(uint32_t slot);
  void PushFront(uint32_t slot);  // most recently used

  uint32_t slots_;
  absl::flat_hash_map<uint32_t, uint32_t> slot_of_;  // position -> slot
  std::vector<uint32_t> slot_position_;              // slot -> position, for slots in use
  // Recency list over slots in use: head_ most recent, tail_ least.
  std::vector<uint32_t> prev_, next_;
  uint32_t head_ = kNone, tail_ = kNone;
  uint32_t used_ = 0;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_DATAPLANE_ROW_CACHE_DIRECTORY_H_

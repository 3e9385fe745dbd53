#include "server/dataplane/row_cache_directory.h"

#include <algorithm>
#include <cassert>

namespace pqkv::server {

uint32_t RowCacheDirectory::NewSlotsFor(absl::Span<const uint32_t> positions) const {
  uint32_t misses = 0;
  for (uint32_t position : positions) misses += slot_of_.contains(position) ? 0 : 1;
  return std::min(misses, slots_ - used_);
}

void RowCacheDirectory::Unlink(uint32_t slot) {
  if (prev_[slot] != kNone)
    next_[prev_[slot]] = next_[slot];
  else
    head_ = next_[slot];
  if (next_[slot] != kNone)
    prev_[next_[slot]] = prev_[slot];
  else
    tail_ = prev_[slot];
  prev_[slot] = next_[slot] = kNone;
}

void RowCacheDirectory::PushFront(uint32_t slot) {
  prev_[slot] = kNone;
  next_[slot] = head_;
  if (head_ != kNone) prev_[head_] = slot;
  head_ = slot;
  if (tail_ == kNone) tail_ = slot;
}

RowCacheDirectory::Placement RowCacheDirectory::Place(absl::Span<const uint32_t> positions) {
  assert(positions.size() <= slots());
  Placement placement;
  placement.slots.assign(positions.size(), kNone);
  // Hits first, so that no miss below can evict a position this selection needs. They
  // are touched in reverse so that the best-ranked ends up most recent.
  for (size_t i = positions.size(); i-- > 0;) {
    auto it = slot_of_.find(positions[i]);
    if (it == slot_of_.end()) continue;
    placement.slots[i] = it->second;
    Unlink(it->second);
    PushFront(it->second);
  }
  std::vector<bool> missed(positions.size(), false);
  for (size_t i = positions.size(); i-- > 0;) {
    if (placement.slots[i] != kNone) continue;
    missed[i] = true;
    uint32_t slot;
    if (used_ < slots()) {
      // A new slot: the directory grows only as slots come into use.
      slot = used_++;
      slot_position_.push_back(kNone);
      prev_.push_back(kNone);
      next_.push_back(kNone);
    } else {
      slot = tail_;
      Unlink(slot);
      slot_of_.erase(slot_position_[slot]);
    }
    slot_position_[slot] = positions[i];
    slot_of_[positions[i]] = slot;
    PushFront(slot);
    placement.slots[i] = slot;
  }
  for (size_t i = 0; i < positions.size(); ++i) {
    if (missed[i]) placement.sent.push_back(static_cast<uint32_t>(i));
  }
  return placement;
}

}  // namespace pqkv::server

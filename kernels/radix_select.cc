#include "kernels/radix_select.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace pqkv::kernels {
namespace {

// Maps a float to an unsigned key with the same order (negative values reversed).
inline uint32_t OrderedKey(float f) {
  if (f == 0.0f) f = 0.0f;  // -0 and +0 compare equal, so they must share a key
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kDigitBits = 11;  // 3 passes over 32 bits: 11 + 11 + 10
constexpr uint32_t kBuckets = 1u << kDigitBits;

}  // namespace

void SelectTopK(const float* scores, uint32_t begin, uint32_t end, uint32_t k,
                uint32_t* positions_out) {
  if (k == 0) return;
  // Find the k-th largest key T digit by digit from the top: after the passes,
  // `above` keys are > T and `take_equal` of the keys == T complete the k.
  std::vector<uint32_t> histogram(kBuckets);
  std::vector<uint32_t> boundary;  // positions whose key matches the prefix found so far
  uint32_t prefix = 0;
  uint32_t above = 0;
  uint32_t need = k;
  for (int shift = 32 - kDigitBits; shift > -kDigitBits; shift -= kDigitBits) {
    const int bits_here = shift >= 0 ? kDigitBits : kDigitBits + shift;
    const int low = std::max(shift, 0);
    const uint32_t digit_mask = (1u << bits_here) - 1;
    std::fill(histogram.begin(), histogram.end(), 0);
    if (shift == 32 - kDigitBits) {
      for (uint32_t t = begin; t < end; ++t) ++histogram[OrderedKey(scores[t]) >> low];
    } else {
      for (uint32_t t : boundary) ++histogram[(OrderedKey(scores[t]) >> low) & digit_mask];
    }
    uint32_t digit = digit_mask;
    uint32_t count_above = 0;
    while (count_above + histogram[digit] < need) count_above += histogram[digit--];
    need -= count_above;
    above += count_above;
    prefix |= digit << low;
    const uint32_t prefix_mask = ~((1u << low) - 1) | (low == 0 ? 0xffffffffu : 0u);
    std::vector<uint32_t> next;
    if (shift == 32 - kDigitBits) {
      for (uint32_t t = begin; t < end; ++t) {
        if ((OrderedKey(scores[t]) & prefix_mask) == prefix) next.push_back(t);
      }
    } else {
      for (uint32_t t : boundary) {
        if ((OrderedKey(scores[t]) & prefix_mask) == prefix) next.push_back(t);
      }
    }
    boundary.swap(next);
    if (low == 0) break;
  }
  const uint32_t threshold = prefix;

  // Winners in position order: every key above T, and the first `need` equal to T.
  std::vector<uint32_t> winners;
  winners.reserve(k);
  uint32_t equal_taken = 0;
  for (uint32_t t = begin; t < end && winners.size() < k; ++t) {
    const uint32_t key = OrderedKey(scores[t]);
    if (key > threshold || (key == threshold && equal_taken++ < need)) winners.push_back(t);
  }

  // Best first: stable LSD radix sort on the inverted key keeps ties in position order.
  std::vector<uint32_t> keys(k), other(k), other_keys(k);
  for (uint32_t i = 0; i < k; ++i) keys[i] = ~OrderedKey(scores[winners[i]]);
  for (int shift = 0; shift < 32; shift += 8) {
    uint32_t counts[257] = {0};
    for (uint32_t i = 0; i < k; ++i) ++counts[((keys[i] >> shift) & 0xff) + 1];
    if (counts[((keys[0] >> shift) & 0xff) + 1] == k) continue;  // all share this digit
    for (int b = 0; b < 256; ++b) counts[b + 1] += counts[b];
    for (uint32_t i = 0; i < k; ++i) {
      const uint32_t slot = counts[(keys[i] >> shift) & 0xff]++;
      other[slot] = winners[i];
      other_keys[slot] = keys[i];
    }
    winners.swap(other);
    keys.swap(other_keys);
  }
  std::copy(winners.begin(), winners.end(), positions_out);
}

}  // namespace pqkv::kernels

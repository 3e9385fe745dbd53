#include "kernels/radix_select.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/ordered_key.h"
#include "kernels/simd_avx2.h"

namespace pqkv::kernels {
namespace {

constexpr int kDigitBits = 11;  // 3 passes over 32 bits: 11 + 11 + 10
constexpr uint32_t kBuckets = 1u << kDigitBits;
constexpr uint32_t kSamples = 1024;

struct Scratch {
  std::vector<uint32_t> keys, positions, boundary, histogram, winners, winner_keys, sorted,
      sorted_keys;
};
thread_local Scratch scratch;

// The k-th largest of keys[0, count): returns T and sets `need` to how many keys equal
// to T belong to the top k (the others are all > T). Requires 1 <= k <= count.
uint32_t KthLargestKey(const uint32_t* keys, size_t count, uint32_t k, uint32_t* need) {
  std::vector<uint32_t>& histogram = scratch.histogram;
  std::vector<uint32_t>& boundary = scratch.boundary;  // indices into keys
  histogram.resize(kBuckets);
  uint32_t prefix = 0;
  uint32_t remaining = k;
  bool first = true;
  for (int shift = 32 - kDigitBits; shift > -kDigitBits; shift -= kDigitBits) {
    const int low = std::max(shift, 0);
    const uint32_t digit_mask = (1u << (shift >= 0 ? kDigitBits : kDigitBits + shift)) - 1;
    const uint32_t prefix_mask = low == 0 ? 0xffffffffu : ~((1u << low) - 1);
    std::fill(histogram.begin(), histogram.end(), 0);
    if (first) {
      for (size_t i = 0; i < count; ++i) ++histogram[keys[i] >> low];
    } else {
      for (uint32_t i : boundary) ++histogram[(keys[i] >> low) & digit_mask];
    }
    uint32_t digit = digit_mask;
    uint32_t above = 0;
    while (above + histogram[digit] < remaining) above += histogram[digit--];
    remaining -= above;
    prefix |= digit << low;
    if (low == 0) break;
    // Keep only the keys that share the prefix found so far.
    size_t kept = 0;
    if (first) {
      boundary.resize(histogram[digit]);
      for (size_t i = 0; i < count; ++i) {
        if ((keys[i] & prefix_mask) == prefix) boundary[kept++] = static_cast<uint32_t>(i);
      }
    } else {
      for (uint32_t i : boundary) {
        if ((keys[i] & prefix_mask) == prefix) boundary[kept++] = i;
      }
    }
    boundary.resize(kept);
    first = false;
  }
  *need = remaining;
  return prefix;
}

}  // namespace

void SelectTopK(const float* scores, uint32_t begin, uint32_t end, uint32_t k,
                uint32_t* positions_out, TopKOrder order) {
  if (k == 0) return;
  const uint32_t n = end - begin;
  std::vector<uint32_t>& keys = scratch.keys;
  std::vector<uint32_t>& positions = scratch.positions;
  keys.resize(n);
  positions.resize(n);

  // Shortlist: a strided sample estimates a key that somewhat more than k candidates
  // reach; one pass keeps those. When the estimate falls short (or sampling cannot pay
  // off) every candidate is kept. Either way the selection below is exact.
  size_t count = 0;
  bool shortlisted = false;
  if (n >= 8 * kSamples && k <= n / 2) {
    uint32_t sample[kSamples];
    for (uint32_t i = 0; i < kSamples; ++i) {
      sample[i] = OrderedKey(scores[begin + static_cast<uint64_t>(i) * n / kSamples]);
    }
    const double expected_rank = static_cast<double>(k) * kSamples / n;
    const uint32_t rank = std::min<uint32_t>(
        kSamples - 1, static_cast<uint32_t>(expected_rank + 4 * std::sqrt(expected_rank) + 8));
    std::nth_element(sample, sample + rank, sample + kSamples, std::greater<uint32_t>());
    const uint32_t cut = sample[rank];
    if (UseAvx2()) {
      keys.resize(n + 8);  // the vector stores write whole lanes
      positions.resize(n + 8);
      count = avx2::ShortlistKeys(scores, begin, end, cut, keys.data(), positions.data());
    } else {
      for (uint32_t t = begin; t < end; ++t) {
        const uint32_t key = OrderedKey(scores[t]);
        keys[count] = key;
        positions[count] = t;
        count += key >= cut;
      }
    }
    shortlisted = count >= k;
  }
  if (!shortlisted) {
    for (uint32_t t = begin; t < end; ++t) {
      keys[t - begin] = OrderedKey(scores[t]);
      positions[t - begin] = t;
    }
    count = n;
  }

  if (shortlisted && order == TopKOrder::kBestFirst && count <= size_t{k} + k / 2) {
    // A shortlist little longer than k (a re-rank's keeps about 1.3 k of its 4 k
    // candidates) is sorted whole, best first, and its first k kept: a little cheaper
    // than finding the k-th key first (kernel_bench's SelectTopK, 8192 -> 2048: 33.2-33.9
    // -> 30.7-31.4 us). Longer ones (1.6 k when k is 1/16 of the tokens) sort slower than
    // that. The sort is stable and the shortlist in position order, so equal scores stay
    // by lower position.
    for (size_t i = 0; i < count; ++i) keys[i] = ~keys[i];
    SortBestFirst(positions.data(), keys.data(), static_cast<uint32_t>(count));
    std::copy(positions.begin(), positions.begin() + k, positions_out);
    return;
  }

  uint32_t need = 0;
  const uint32_t threshold = KthLargestKey(keys.data(), count, k, &need);

  // Winners in position order: every key above T, and the first `need` equal to T.
  std::vector<uint32_t>& winners = scratch.winners;
  std::vector<uint32_t>& winner_keys = scratch.winner_keys;
  winners.resize(k);
  winner_keys.resize(k);
  // Branch-free: with k a large share of the candidates (re-ranking asks for 4 x k) a
  // branch on each key would be mispredicted about as often as taken.
  uint32_t taken = 0, equal_taken = 0;
  for (size_t i = 0; i < count && taken < k; ++i) {
    const uint32_t key = keys[i];
    const bool equal = key == threshold;
    const bool take = key > threshold || (equal && equal_taken < need);
    equal_taken += equal;
    winners[taken] = positions[i];
    winner_keys[taken] = ~key;  // ascending order of ~key is best first
    taken += take;
  }

  if (order == TopKOrder::kPosition) {
    std::copy(winners.begin(), winners.end(), positions_out);
    return;
  }

  SortBestFirst(winners.data(), winner_keys.data(), k);
  std::copy(winners.begin(), winners.end(), positions_out);
}

void SortBestFirst(uint32_t* positions, uint32_t* inverted_keys, uint32_t k) {
  if (k == 0) return;
  // A stable LSD radix sort on ~key (ascending ~key is best first) keeps ties in the
  // order they came: position order.
  std::vector<uint32_t>& sorted = scratch.sorted;
  std::vector<uint32_t>& sorted_keys = scratch.sorted_keys;
  sorted.resize(k);
  sorted_keys.resize(k);
  uint32_t *from = positions, *from_keys = inverted_keys;
  uint32_t *to = sorted.data(), *to_keys = sorted_keys.data();
  for (int shift = 0; shift < 32; shift += 8) {
    uint32_t counts[257] = {0};
    for (uint32_t i = 0; i < k; ++i) ++counts[((from_keys[i] >> shift) & 0xff) + 1];
    if (counts[((from_keys[0] >> shift) & 0xff) + 1] == k) continue;  // one digit value
    for (int b = 0; b < 256; ++b) counts[b + 1] += counts[b];
    for (uint32_t i = 0; i < k; ++i) {
      const uint32_t slot = counts[(from_keys[i] >> shift) & 0xff]++;
      to[slot] = from[i];
      to_keys[slot] = from_keys[i];
    }
    std::swap(from, to);
    std::swap(from_keys, to_keys);
  }
  if (from != positions) {
    std::copy(from, from + k, positions);
    std::copy(from_keys, from_keys + k, inverted_keys);
  }
}

}  // namespace pqkv::kernels

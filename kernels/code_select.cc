#include "kernels/code_select.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/ordered_key.h"
#include "kernels/simd_avx512.h"

namespace pqkv::kernels {
namespace {

constexpr int kDigitBits = 11;  // 3 passes over 32 bits: 11 + 11 + 10
constexpr uint32_t kBuckets = 1u << kDigitBits;

// What a distinct code (or an exact token) contributes to the selection.
enum Membership : uint8_t { kOut = 0, kTied = 1, kIn = 2 };

struct Scratch {
  std::vector<uint32_t> code_keys, outside, first_digit, keys, weights, boundary, histogram,
      winning, tied_codes, tied, entries, entry_keys, run;
  std::vector<uint8_t> standing;
};
thread_local Scratch scratch;

// The k-th largest key when keys[i] stands for weights[i] tokens: returns T and sets
// `need` to how many tokens with key T belong to the top k (the weight of keys above T
// is k - need). Requires 1 <= k <= the total weight.
uint32_t WeightedKthLargest(const uint32_t* keys, const uint32_t* weights, size_t count, uint32_t k,
                            uint32_t* need) {
  std::vector<uint32_t>& histogram = scratch.histogram;
  std::vector<uint32_t>& boundary = scratch.boundary;  // indices into keys
  histogram.resize(kBuckets);
  boundary.resize(count);
  for (size_t i = 0; i < count; ++i) boundary[i] = static_cast<uint32_t>(i);
  uint32_t prefix = 0;
  uint32_t remaining = k;
  for (int shift = 32 - kDigitBits; shift > -kDigitBits; shift -= kDigitBits) {
    const int low = std::max(shift, 0);
    const uint32_t digit_mask = (1u << (shift >= 0 ? kDigitBits : kDigitBits + shift)) - 1;
    const uint32_t prefix_mask = low == 0 ? 0xffffffffu : ~((1u << low) - 1);
    std::fill(histogram.begin(), histogram.end(), 0);
    for (uint32_t i : boundary) histogram[(keys[i] >> low) & digit_mask] += weights[i];
    uint32_t digit = digit_mask;
    uint32_t above = 0;
    while (above + histogram[digit] < remaining) above += histogram[digit--];
    remaining -= above;
    prefix |= digit << low;
    if (low == 0) break;
    size_t kept = 0;
    for (uint32_t i : boundary) {
      if ((keys[i] & prefix_mask) == prefix) boundary[kept++] = i;
    }
    boundary.resize(kept);
  }
  *need = remaining;
  return prefix;
}

// The winners in ascending position, given T and how many tokens equal to T win: one
// branch-free pass over the candidates' codes (read front to back, so prefetched) with a
// table of where each code stands. A re-rank asks for a quarter of the tokens or more,
// and walking that many codes' lists cost a cache miss per list, then a bitmap to order
// them.
template <bool kScores>
void WinnersInOrder(const CodeScores& in, uint32_t begin, uint32_t end, uint32_t k,
                    uint32_t threshold, uint32_t need, const uint8_t* standing,
                    uint32_t* positions_out, float* scores_out) {
  const uint32_t encoded = static_cast<uint32_t>(in.codes->size());
  const uint16_t* joined = in.codes->joined_codes();
  uint32_t taken = 0, tied = 0;
  const auto offer = [&](uint32_t t, uint8_t where, float score) {
    positions_out[taken] = t;
    if constexpr (kScores) scores_out[taken] = score;
    const bool is_tied = where == kTied;
    taken += (where == kIn) | (is_tied & (tied < need));
    tied += is_tied;
  };
  uint32_t t = begin;
  const uint32_t coded_end = std::min(end, encoded);
  if (UseAvx512() && coded_end > begin) {  // whole blocks of 16, the rest below
    const uint32_t blocks = (coded_end - begin) / 16;
    taken = avx512::CodeWinnersInOrder(joined, in.code_scores, begin, blocks, threshold, need, k,
                                       &tied, positions_out, kScores ? scores_out : nullptr);
    t += 16 * blocks;
  }
  for (; t < coded_end && taken < k; ++t) offer(t, standing[joined[t]], in.code_scores[joined[t]]);
  for (uint32_t t = std::max(begin, encoded); t < end && taken < k; ++t) {
    const float score = in.exact_scores[t - encoded];
    const uint32_t key = OrderedKey(score);
    offer(t, key > threshold ? kIn : key == threshold ? kTied : kOut, score);
  }
}

void SelectInPositionOrder(const CodeScores& in, uint32_t begin, uint32_t end, uint32_t k,
                           uint32_t threshold, uint32_t need, const uint32_t* code_keys,
                           uint32_t* positions_out, float* scores_out) {
  const uint32_t distinct = static_cast<uint32_t>(in.codes->joined_size());
  const uint32_t* histogram = in.codes->joined_histogram();
  std::vector<uint8_t>& standing = scratch.standing;
  standing.resize(distinct);
  for (uint32_t c = 0; c < distinct; ++c) {
    const uint32_t key = code_keys[c];
    standing[c] = (histogram[c] != 0) * ((key > threshold) * kIn + (key == threshold) * kTied);
  }
  if (scores_out != nullptr) {
    WinnersInOrder<true>(in, begin, end, k, threshold, need, standing.data(), positions_out,
                         scores_out);
  } else {
    WinnersInOrder<false>(in, begin, end, k, threshold, need, standing.data(), positions_out,
                          nullptr);
  }
}

}  // namespace

void SelectTopKByCode(const CodeScores& in, uint32_t begin, uint32_t end, uint32_t k,
                      uint32_t* positions_out, float* scores_out, TopKOrder order) {
  if (k == 0) return;
  const PqCodeStore& store = *in.codes;
  const uint32_t encoded = static_cast<uint32_t>(store.size());
  const uint32_t distinct = static_cast<uint32_t>(store.joined_size());
  const uint16_t* joined = store.joined_codes();
  const uint32_t coded_end = std::min(end, encoded);
  const uint32_t exact_begin = std::max(begin, encoded);

  // The k-th largest score, weighing each code by its tokens, less the few tokens
  // outside [begin, end) (the sinks and the recent window of a decode step: weight -1, as
  // uint32), plus the exact tokens: a first radix digit over every code, the rest of the
  // select over those that share it. Every pass over the codes is branch-free: which
  // codes win is data, and mispredicted branches made each pass cost 4-6 cycles a code.
  const uint32_t* histogram = store.joined_histogram();
  const uint32_t num_exact = end > exact_begin ? end - exact_begin : 0;
  std::vector<uint32_t>& code_keys = scratch.code_keys;
  code_keys.resize(distinct);
  for (uint32_t c = 0; c < distinct; ++c) code_keys[c] = OrderedKey(in.code_scores[c]);
  const auto exact_key = [&](uint32_t i) {
    return OrderedKey(in.exact_scores[exact_begin + i - encoded]);
  };
  std::vector<uint32_t>& outside = scratch.outside;  // codes of the encoded tokens outside
  outside.clear();
  for (uint32_t t = 0; t < std::min(begin, encoded); ++t) outside.push_back(joined[t]);
  for (uint32_t t = std::max(begin, coded_end); t < encoded; ++t) outside.push_back(joined[t]);

  // Codes with close scores share a first digit: four interleaved histograms, so that
  // the increments do not wait on each other through memory.
  constexpr int kFirstShift = 32 - kDigitBits;
  constexpr int kCopies = 4;
  std::vector<uint32_t>& buckets = scratch.first_digit;
  buckets.assign(kCopies * kBuckets, 0);
  for (uint32_t c = 0; c < distinct; ++c) {
    buckets[(c % kCopies) * kBuckets + (code_keys[c] >> kFirstShift)] += histogram[c];
  }
  for (uint32_t b = 0; b < kBuckets; ++b) {
    for (int copy = 1; copy < kCopies; ++copy) buckets[b] += buckets[copy * kBuckets + b];
  }
  for (uint32_t c : outside) --buckets[code_keys[c] >> kFirstShift];
  for (uint32_t i = 0; i < num_exact; ++i) ++buckets[exact_key(i) >> kFirstShift];
  uint32_t digit = kBuckets - 1, above = 0;
  while (above + buckets[digit] < k) above += buckets[digit--];

  std::vector<uint32_t>& keys = scratch.keys;
  std::vector<uint32_t>& weights = scratch.weights;
  keys.resize(distinct + outside.size() + num_exact);
  weights.resize(keys.size());
  size_t kept = 0;
  const auto keep = [&](uint32_t key, uint32_t weight) {
    keys[kept] = key;
    weights[kept] = weight;
    kept += (key >> kFirstShift) == digit && weight != 0;
  };
  for (uint32_t c = 0; c < distinct; ++c) keep(code_keys[c], histogram[c]);
  for (uint32_t c : outside) keep(code_keys[c], ~0u);
  for (uint32_t i = 0; i < num_exact; ++i) keep(exact_key(i), 1);
  uint32_t need = 0;
  const uint32_t threshold =
      WeightedKthLargest(keys.data(), weights.data(), kept, k - above, &need);

  if (order == TopKOrder::kPosition) {
    SelectInPositionOrder(in, begin, end, k, threshold, need, code_keys.data(), positions_out,
                          scores_out);
    return;
  }

  // Best first: sort the winning codes, not their tokens (a code stands for several).
  // The codes above T, and those equal to T, in code order.
  std::vector<uint32_t>& winning = scratch.winning;
  std::vector<uint32_t>& tied_codes = scratch.tied_codes;
  winning.resize(distinct);
  tied_codes.resize(distinct);
  size_t num_winning = 0, num_tied_codes = 0;
  for (uint32_t c = 0; c < distinct; ++c) {
    const bool present = histogram[c] != 0;
    winning[num_winning] = c;
    num_winning += present && code_keys[c] > threshold;
    tied_codes[num_tied_codes] = c;
    num_tied_codes += present && code_keys[c] == threshold;
  }
  winning.resize(num_winning);
  tied_codes.resize(num_tied_codes);
  // Where a code stands, for the tokens not listed yet.
  const auto standing = [&](uint32_t key) {
    return key > threshold ? kIn : key == threshold ? kTied : kOut;
  };

  // A code's listed tokens inside [begin, end): its list is in position order, so the
  // tokens outside the range sit at its ends.
  const uint32_t* offsets = store.list_offsets();
  const uint32_t* lists = store.list_tokens();
  const auto listed_in_range = [&](uint32_t c) {
    const uint32_t* first = lists + offsets[c];
    const uint32_t* last = lists + offsets[c + 1];
    while (first < last && *first < begin) ++first;
    while (last > first && last[-1] >= end) --last;
    return std::pair{first, last};
  };
  const uint32_t unlisted_begin = std::max<uint32_t>(begin, store.listed());
  // The tokens equal to T; the first `need` of them by position win.
  std::vector<uint32_t>& tied = scratch.tied;
  tied.clear();
  for (uint32_t c : tied_codes) {
    const auto [first, last] = listed_in_range(c);
    tied.insert(tied.end(), first, last);
  }
  for (uint32_t t = unlisted_begin; t < coded_end; ++t) {
    if (standing(code_keys[joined[t]]) == kTied) tied.push_back(t);
  }
  for (uint32_t i = 0; i < num_exact; ++i) {
    if (exact_key(i) == threshold) tied.push_back(exact_begin + i);
  }
  if (need < tied.size()) std::nth_element(tied.begin(), tied.begin() + need, tied.end());
  tied.resize(need);

  // An entry is a code c < distinct (its listed tokens), or distinct + t for a single token t
  // (not listed yet, or exact); positions stay below 2^32 - distinct.
  std::vector<uint32_t>& entries = scratch.entries;
  std::vector<uint32_t>& entry_keys = scratch.entry_keys;  // ~key: ascending is best first
  entries.clear();
  entry_keys.clear();
  for (uint32_t c : winning) {
    entries.push_back(c);
    entry_keys.push_back(~code_keys[c]);
  }
  for (uint32_t t = unlisted_begin; t < coded_end; ++t) {
    if (standing(code_keys[joined[t]]) != kIn) continue;
    entries.push_back(distinct + t);
    entry_keys.push_back(~code_keys[joined[t]]);
  }
  for (uint32_t i = 0; i < num_exact; ++i) {
    if (exact_key(i) <= threshold) continue;
    entries.push_back(distinct + exact_begin + i);
    entry_keys.push_back(~exact_key(i));
  }
  SortBestFirst(entries.data(), entry_keys.data(), static_cast<uint32_t>(entries.size()));
  uint32_t* out = positions_out;
  // Every token of a run of equal keys has the same score: looked up once per run, since
  // reading a token's code at a random position costs a cache miss in a decode step.
  const auto fill_scores = [&](uint32_t* from, uint32_t* to) {
    if (scores_out == nullptr || from == to) return;
    std::fill(scores_out + (from - positions_out), scores_out + (to - positions_out),
              in.ScoreOf(*from));
  };
  std::vector<uint32_t>& run = scratch.run;
  for (size_t r = 0; r < entries.size();) {
    size_t r_end = r + 1;
    while (r_end < entries.size() && entry_keys[r_end] == entry_keys[r]) ++r_end;
    uint32_t* run_start = out;
    if (r_end == r + 1 && entries[r] < distinct) {  // one code: its list is in order
      const auto [first, last] = listed_in_range(entries[r]);
      out = std::copy(first, last, out);
    } else {  // equal scores from several entries: by position
      run.clear();
      for (size_t i = r; i < r_end; ++i) {
        if (entries[i] < distinct) {
          const auto [first, last] = listed_in_range(entries[i]);
          run.insert(run.end(), first, last);
        } else {
          run.push_back(entries[i] - distinct);
        }
      }
      std::sort(run.begin(), run.end());
      out = std::copy(run.begin(), run.end(), out);
    }
    fill_scores(run_start, out);
    r = r_end;
  }
  // The tied tokens score lowest among the winners.
  std::sort(tied.begin(), tied.end());
  fill_scores(out, std::copy(tied.begin(), tied.end(), out));
}

}  // namespace pqkv::kernels

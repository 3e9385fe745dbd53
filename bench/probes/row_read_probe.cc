// Throwaway probe, not built by Bazel (docs/benchmarks.md, "Settings that read no rows"):
// how fast this machine reads key rows scattered in memory, against a sequential read, and
// whether rows of half the bytes (uint8 instead of fp16) make a re-rank's dot products
// cheaper. One thread.
//
//   g++ -O2 -march=native -o /tmp/row_read_probe bench/probes/row_read_probe.cc && /tmp/row_read_probe
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

volatile long sink;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Reads 256 MB, so that what was cached before is not.
void Evict(const std::vector<char>& junk) {
  long sum = 0;
  for (size_t i = 0; i < junk.size(); i += 64) sum += junk[i];
  sink = sum;
}

constexpr int kDim = 128, kGroup = 4, kTokens = 32768, kHeads = 8, kCandidates = 8192;

// One candidate row's dot products with the group's queries; fp16 or uint8 rows, the next
// rows prefetched 8 ahead.
template <bool kUint8>
void Dots(const void* base, const uint32_t* positions, int n, const float* q, float* out) {
  const size_t row_bytes = kUint8 ? kDim : kDim * 2;
  const char* rows = static_cast<const char*>(base);
  for (int i = 0; i < n; ++i) {
    if (i + 8 < n) {
      const char* ahead = rows + positions[i + 8] * row_bytes;
      for (size_t line = 0; line < row_bytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    }
    const char* row = rows + positions[i] * row_bytes;
    __m512 acc[kGroup];
    for (int g = 0; g < kGroup; ++g) acc[g] = _mm512_setzero_ps();
    for (int d = 0; d < kDim; d += 16) {
      const __m512 k =
          kUint8 ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d))))
                 : _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * d)));
      for (int g = 0; g < kGroup; ++g) {
        acc[g] = _mm512_fmadd_ps(k, _mm512_loadu_ps(q + g * kDim + d), acc[g]);
      }
    }
    for (int g = 0; g < kGroup; ++g) out[g * n + i] = _mm512_reduce_add_ps(acc[g]);
  }
}

}  // namespace

int main() {
  std::vector<char> junk(size_t{256} << 20, 1);
  // Sequential read of 512 MB.
  const size_t kSequential = size_t{512} << 20;
  std::vector<char> buffer(kSequential, 1);
  for (int rep = 0; rep < 3; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    __m256i acc = _mm256_setzero_si256();
    for (size_t i = 0; i < kSequential; i += 32) {
      acc = _mm256_add_epi64(acc, _mm256_load_si256(reinterpret_cast<const __m256i*>(&buffer[i])));
    }
    const double s = Seconds(start);
    sink = _mm256_extract_epi64(acc, 0);
    std::printf("sequential read: %.1f GB/s\n", kSequential / s / 1e9);
  }
  // 65536 random 256-byte rows of a 64 MB region, the next rows prefetched `distance` ahead.
  const size_t kRows = (size_t{64} << 20) / 256;
  std::mt19937 rng(2);
  std::vector<uint32_t> random_rows(65536);
  for (uint32_t& r : random_rows) r = rng() % kRows;
  for (int distance : {0, 4, 8, 16, 32, 64}) {
    double best = 1e9;
    for (int rep = 0; rep < 5; ++rep) {
      Evict(junk);
      const auto start = std::chrono::steady_clock::now();
      __m256i acc = _mm256_setzero_si256();
      for (size_t i = 0; i < random_rows.size(); ++i) {
        if (distance > 0 && i + distance < random_rows.size()) {
          const char* ahead = &buffer[random_rows[i + distance] * size_t{256}];
          for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
        }
        const char* row = &buffer[random_rows[i] * size_t{256}];
        for (int part = 0; part < 8; ++part) {
          acc = _mm256_add_epi64(
              acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * part)));
        }
      }
      best = std::min(best, Seconds(start));
      sink = _mm256_extract_epi64(acc, 0);
    }
    std::printf("random 256-byte rows, prefetch %2d ahead: %.0f ns a row\n", distance,
                best * 1e9 / random_rows.size());
  }
  // A re-rank's reads: 8 heads, 8192 of 32768 rows each in position order, 4 query heads.
  std::vector<std::vector<uint16_t>> fp16(kHeads, std::vector<uint16_t>(size_t{kTokens} * kDim));
  std::vector<std::vector<uint8_t>> uint8(kHeads, std::vector<uint8_t>(size_t{kTokens} * kDim));
  std::vector<std::vector<uint32_t>> positions(kHeads);
  for (int h = 0; h < kHeads; ++h) {
    for (uint16_t& x : fp16[h]) x = 0x3c00 | (rng() & 0x3ff);
    for (uint8_t& x : uint8[h]) x = static_cast<uint8_t>(rng());
    std::vector<uint32_t> all(kTokens);
    for (int i = 0; i < kTokens; ++i) all[i] = i;
    std::shuffle(all.begin(), all.end(), rng);
    positions[h].assign(all.begin(), all.begin() + kCandidates);
    std::sort(positions[h].begin(), positions[h].end());
  }
  std::vector<float> queries(kGroup * kDim, 0.01f), out(kGroup * kCandidates);
  for (bool use_uint8 : {false, true}) {
    std::vector<double> times;
    for (int rep = 0; rep < 15; ++rep) {
      Evict(junk);
      const auto start = std::chrono::steady_clock::now();
      for (int h = 0; h < kHeads; ++h) {
        if (use_uint8) {
          Dots<true>(uint8[h].data(), positions[h].data(), kCandidates, queries.data(), out.data());
        } else {
          Dots<false>(fp16[h].data(), positions[h].data(), kCandidates, queries.data(), out.data());
        }
      }
      times.push_back(Seconds(start) * 1e6);
      sink = static_cast<long>(out[5]);
    }
    std::sort(times.begin(), times.end());
    std::printf("re-rank reads, %s rows, 8 heads x 8192 rows: median %.0f us\n",
                use_uint8 ? "uint8" : "fp16", times[times.size() / 2]);
  }
}

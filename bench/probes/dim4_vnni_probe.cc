// Throwaway probe, not built by Bazel (docs/benchmarks.md, "Settings that read no rows"):
// logits of per-dimension 4-bit keys (d = 128, 64 bytes a token) against 4 int8 query heads
// with AVX-512 VNNI, 8 kv heads x 32K tokens, one thread; random codes, logits only (no
// softmax, no top-k). Blocks of 16 tokens; in each 64-byte group j, byte 4 t + b holds
// token t's dimensions 8 j + b (low nibble) and 8 j + 4 + b (high nibble).
//
//   g++ -O2 -mavx512f -mavx512bw -mavx512vnni -o /tmp/dim4_vnni_probe \
//       bench/probes/dim4_vnni_probe.cc && /tmp/dim4_vnni_probe
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int kDim = 128, kGroup = 4, kTokens = 32768, kHeads = 8;
volatile int sink;

void Scan(const uint8_t* blocks, size_t num_blocks, const int8_t* q, int32_t* out) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512i low_weights[kGroup][kDim / 8], high_weights[kGroup][kDim / 8];
  for (int g = 0; g < kGroup; ++g) {
    for (int j = 0; j < kDim / 8; ++j) {
      int32_t low, high;
      std::memcpy(&low, q + g * kDim + 8 * j, 4);
      std::memcpy(&high, q + g * kDim + 8 * j + 4, 4);
      low_weights[g][j] = _mm512_set1_epi32(low);
      high_weights[g][j] = _mm512_set1_epi32(high);
    }
  }
  for (size_t b = 0; b < num_blocks; ++b) {
    const uint8_t* block = blocks + b * 16 * 64;
    __m512i acc[kGroup];
    for (int g = 0; g < kGroup; ++g) acc[g] = _mm512_setzero_si512();
    for (int j = 0; j < kDim / 8; ++j) {
      const __m512i bytes = _mm512_loadu_si512(block + j * 64);
      const __m512i low = _mm512_and_si512(bytes, nibble);
      const __m512i high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), nibble);
      for (int g = 0; g < kGroup; ++g) {
        acc[g] = _mm512_dpbusd_epi32(acc[g], low, low_weights[g][j]);
        acc[g] = _mm512_dpbusd_epi32(acc[g], high, high_weights[g][j]);
      }
    }
    for (int g = 0; g < kGroup; ++g) _mm512_storeu_si512(out + g * kTokens + b * 16, acc[g]);
  }
}

}  // namespace

int main() {
  std::mt19937 rng(3);
  std::vector<std::vector<uint8_t>> codes(kHeads, std::vector<uint8_t>(size_t{kTokens} * 64));
  for (auto& head : codes) {
    for (uint8_t& x : head) x = static_cast<uint8_t>(rng());
  }
  std::vector<int8_t> q(kGroup * kDim);
  for (int8_t& x : q) x = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
  std::vector<int32_t> out(size_t{kGroup} * kTokens);
  std::vector<char> junk(size_t{256} << 20, 1);
  for (bool cold : {false, true}) {
    std::vector<double> times;
    for (int rep = 0; rep < 21; ++rep) {
      if (cold) {  // read 256 MB so the codes are not cached
        long sum = 0;
        for (size_t i = 0; i < junk.size(); i += 64) sum += junk[i];
        sink = static_cast<int>(sum);
      }
      const auto start = std::chrono::steady_clock::now();
      for (int h = 0; h < kHeads; ++h) Scan(codes[h].data(), kTokens / 16, q.data(), out.data());
      times.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count());
      sink = out[7];
    }
    std::sort(times.begin(), times.end());
    std::printf("%s: 8 kv heads x 32K tokens x 4 query heads, one thread: median %.0f us\n",
                cold ? "cold" : "warm", times[10]);
  }
}

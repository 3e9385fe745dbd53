// Throwaway probe, not built by Bazel (docs/benchmarks.md, "The re-rank on the Intel Xeon,
// again"): the re-rank's row dot products (fp16 rows of 128 dims against 4 query heads,
// AVX-512) over one kv head's 8288 of 32768 rows, in position order, per loop shape:
//   floor     every line of the rows read, nothing else (retrieval_bench's read floor)
//   staged    stops 25-28's RowDots: 16-row chunks copied to L1 behind a 64-line prefetch
//   in-step   RowDots now: rows read in place, each pair prefetching the pair 16 rows on
//   four-row  in step, four rows a step, 16 sums reduced in one vector tree
//   separate  in-step, then a softmax-like pass over the logits (REPS polynomial passes)
//   chunk64   the same two interleaved 64 rows at a time (would the arithmetic overlap
//             the next rows' reads?)
// Keys in 512 MiB with huge pages (SMALL_PAGES=1: 4 KiB); each timing takes a fresh head
// (cold) or, with TWO=1, 8 fresh heads on two threads; SMALL=1 repeats 128 rows (in L1).
// Medians of 40 alternated repeats.
//
//   g++ -O3 -mavx512f -mavx512vl -mf16c -mfma -pthread -o /tmp/rerank_rows_probe \
//       bench/probes/rerank_rows_probe.cc && TWO=1 /tmp/rerank_rows_probe
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

inline __m512 Load16(const void* row, int i) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i)));
}
inline __m256 Fold(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
inline __m256 HorizontalSums(const __m512 (&v)[8]) {
  __m256 f[8];
  for (int i = 0; i < 8; ++i) f[i] = Fold(v[i]);
  const __m256 a = _mm256_hadd_ps(f[0], f[1]), b = _mm256_hadd_ps(f[2], f[3]);
  const __m256 c = _mm256_hadd_ps(f[4], f[5]), d = _mm256_hadd_ps(f[6], f[7]);
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}
constexpr int D = 128, H = 4;
static int REPS = 3;
inline void TwoRows(const void* a, const void* b, const float* queries, size_t n, size_t r, float* out) {
  __m512 sums[8];
  for (__m512& s : sums) s = _mm512_setzero_ps();
  for (int i = 0; i < D; i += 16) {
    const __m512 ka = Load16(a, i), kb = Load16(b, i);
    for (int g = 0; g < H; ++g) {
      const __m512 q = _mm512_loadu_ps(queries + g * D + i);
      sums[g] = _mm512_fmadd_ps(q, ka, sums[g]);
      sums[4 + g] = _mm512_fmadd_ps(q, kb, sums[4 + g]);
    }
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, HorizontalSums(sums));
  for (int g = 0; g < H; ++g) { out[g * n + r] = lanes[g]; out[g * n + r + 1] = lanes[4 + g]; }
}
inline __m512 HorizontalSums16(const __m512 (&v)[16]) {
  __m512 s[8];
  for (int i = 0; i < 8; ++i) s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  __m512 t[4];
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(s[2 * i]), b = _mm512_castps_pd(s[2 * i + 1]);
    t[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88), _mm512_shuffle_f32x4(t[0], t[1], 0xDD));
  const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], 0x88), _mm512_shuffle_f32x4(t[2], t[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(u, w, 0x88), _mm512_shuffle_f32x4(u, w, 0xDD));
}
inline void FourRows(const void* const* rows, const float* queries, size_t n, size_t r, float* out) {
  __m512 sums[16];
  for (__m512& s : sums) s = _mm512_setzero_ps();
  for (int i = 0; i < D; i += 16) {
    __m512 k[4];
    for (int j = 0; j < 4; ++j) k[j] = Load16(rows[j], i);
    for (int g = 0; g < H; ++g) {
      const __m512 q = _mm512_loadu_ps(queries + g * D + i);
      for (int j = 0; j < 4; ++j) sums[4 * j + g] = _mm512_fmadd_ps(q, k[j], sums[4 * j + g]);
    }
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, HorizontalSums16(sums));
  for (int g = 0; g < H; ++g) for (int j = 0; j < 4; ++j) out[g * n + r + j] = lanes[4 * j + g];
}
void Direct4(const void* const* rows, size_t n, const float* q, float* out, size_t ahead) {
  auto pf = [](const void* row) { const char* p = (const char*)row; for (int b = 0; b < 256; b += 64) _mm_prefetch(p + b, _MM_HINT_T2); };
  for (size_t r = 0; r < std::min(n, ahead); ++r) pf(rows[r]);
  for (size_t r = 0; r + 3 < n; r += 4) {
    for (size_t a = r + ahead; a < std::min(n, r + ahead + 4); ++a) pf(rows[a]);
    FourRows(rows + r, q, n, r, out);
  }
}
// Dummy "other" compute: work per element similar to exps (polynomial of ~20 flops).
__attribute__((noinline)) float Other(float* x, size_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (size_t i = 0; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    __m512 p = v;
    for (int k = 0; k < 6; ++k) p = _mm512_fmadd_ps(p, v, _mm512_set1_ps(0.5f));
    _mm512_storeu_ps(x + i, p);
    acc = _mm512_add_ps(acc, p);
  }
  return _mm512_reduce_add_ps(acc);
}
void PartRows(const void* const* rows, size_t n, size_t b, size_t e, const float* q, float* out) {
  auto pf = [](const void* row) { const char* p = (const char*)row; for (int k = 0; k < 256; k += 64) _mm_prefetch(p + k, _MM_HINT_T2); };
  if (b == 0) for (size_t r = 0; r < std::min<size_t>(n, 16); ++r) pf(rows[r]);
  for (size_t r = b; r + 1 < e; r += 2) {
    if (r + 17 < n) { pf(rows[r + 16]); pf(rows[r + 17]); }
    TwoRows(rows[r], rows[r + 1], q, n, r, out);
  }
}
volatile float osink;
void Separate(const void* const* rows, size_t n, const float* q, float* out, int reps) {
  PartRows(rows, n, 0, n, q, out);
  for (int k = 0; k < reps; ++k) osink = Other(out, 4 * n);
}
void Chunked(const void* const* rows, size_t n, const float* q, float* out, int reps, size_t chunk) {
  for (size_t b = 0; b < n; b += chunk) {
    size_t e = std::min(n, b + chunk);
    PartRows(rows, n, b, e, q, out);
    for (int k = 0; k < reps; ++k) for (int g = 0; g < 4; ++g) osink = Other(out + g * n + b, e - b);
  }
}
void Staged(const void* const* rows, size_t n, const float* q, float* out) {
  auto pf = [](const void* row) { const char* p = (const char*)row; for (int b = 0; b < 256; b += 64) _mm_prefetch(p + b, _MM_HINT_T2); };
  alignas(64) char buffer[16 * 256];
  const void* staged[16];
  for (size_t r = 0; r < std::min<size_t>(n, 16); ++r) pf(rows[r]);
  for (size_t begin = 0; begin < n; begin += 16) {
    size_t end = std::min(n, begin + 16);
    for (size_t a = begin + 16; a < std::min(n, end + 16); ++a) pf(rows[a]);
    for (size_t r = begin; r < end; ++r) {
      char* dst = buffer + (r - begin) * 256;
      for (int b = 0; b < 256; b += 64) _mm512_store_si512(dst + b, _mm512_loadu_si512((const char*)rows[r] + b));
      staged[r - begin] = dst;
    }
    for (size_t r = 0; r + 1 < end - begin; r += 2) TwoRows(staged[r], staged[r + 1], q, n, begin + r, out);
  }
}
int main() {
  constexpr size_t kHeadRows = 32768, kPicked = 8288, kHeads = 64;
  std::mt19937 rng(1);
  const size_t bytes = kHeads * kHeadRows * D * 2;
  uint16_t* keys = static_cast<uint16_t*>(aligned_alloc(1 << 21, bytes));
  if (!getenv("SMALL_PAGES")) madvise(keys, bytes, MADV_HUGEPAGE);
  for (size_t i = 0; i < bytes / 2; ++i) keys[i] = 0x3000 + rng() % 0x1000;
  std::vector<float> q(H * D, 0.1f);
  std::vector<std::vector<const void*>> rows(kHeads);
  for (size_t h = 0; h < kHeads; ++h) {
    std::vector<uint32_t> p(kHeadRows);
    for (uint32_t t = 0; t < kHeadRows; ++t) p[t] = t;
    std::shuffle(p.begin(), p.end(), rng);
    p.resize(kPicked);
    std::sort(p.begin(), p.end());
    for (uint32_t t : p) rows[h].push_back(keys + (h * kHeadRows + t) * D);
  }
  size_t head = 0;
  const bool small = getenv("SMALL") != nullptr;
  const bool two = getenv("TWO") != nullptr;
  if (getenv("REPS")) REPS = atoi(getenv("REPS"));
  const std::vector<const void*> small_rows(rows[0].begin(), rows[0].begin() + 128);
  auto time = [&](auto f) {
    const auto start = std::chrono::steady_clock::now();
    if (two) {
      const size_t h0 = head;
      head += 8;
      std::thread t([&] {
        for (int j = 0; j < 4; ++j) f(rows[(h0 + j) % kHeads]);
      });
      for (int j = 4; j < 8; ++j) f(rows[(h0 + j) % kHeads]);
      t.join();
    } else {
      f(small ? small_rows : rows[head++ % kHeads]);
    }
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
        .count();
  };
  const char* names[] = {"floor", "staged", "in-step", "four-row", "separate", "chunk64"};
  const int V = 6;
  std::vector<std::vector<double>> us(V);
  volatile uint64_t sink = 0;
  for (int rep = 0; rep < 40; ++rep) {
    for (int v = 0; v < V; ++v) {
      us[v].push_back(time([&](const std::vector<const void*>& r) {
        const void* const* p = r.data();
        const size_t n = r.size();
        thread_local std::vector<float> out(H * kPicked);
        switch (v) {
          case 0: {
            uint64_t s = 0;
            for (size_t i = 0; i < n; ++i) {
              if (i + 16 < n) {
                for (int b = 0; b < 256; b += 64) __builtin_prefetch((const char*)p[i + 16] + b, 0, 1);
              }
              for (int b = 0; b < 256; b += 64) {
                uint64_t w;
                memcpy(&w, (const char*)p[i] + b, 8);
                s += w;
              }
            }
            sink = sink + s;
            break;
          }
          case 1: Staged(p, n, q.data(), out.data()); break;
          case 2: PartRows(p, n, 0, n, q.data(), out.data()); break;
          case 3: Direct4(p, n, q.data(), out.data(), 16); break;
          case 4: Separate(p, n, q.data(), out.data(), REPS); break;
          case 5: Chunked(p, n, q.data(), out.data(), REPS, 64); break;
        }
      }));
    }
  }
  for (int v = 0; v < V; ++v) {
    std::vector<double>& x = us[v];
    std::nth_element(x.begin(), x.begin() + x.size() / 2, x.end());
    printf("%-9s %7.1f us\n", names[v], x[x.size() / 2]);
  }
}

#include "kernels/pq_code_store.h"

namespace pqkv::kernels {

PqCodeStore::PqCodeStore(int subspaces, int bits) : subspaces_(subspaces), bits_(bits) {
  if (has_joined()) histogram_.assign(joined_size(), 0);
}

void PqCodeStore::Append(const uint8_t* codes, size_t n) {
  const int M = subspaces_;
  codes_.insert(codes_.end(), codes, codes + n * M);
  if (has_joined()) {
    for (size_t t = 0; t < n; ++t) {
      uint32_t joined = 0;
      for (int m = 0; m < M; ++m) joined |= uint32_t{codes[t * M + m]} << (m * bits_);
      joined_.push_back(static_cast<uint16_t>(joined));
      ++histogram_[joined];
    }
  }
  if (has_fast_scan()) {
    blocks_.resize((size_ + n + kBlockTokens - 1) / kBlockTokens * block_bytes(), 0);
    for (size_t i = 0; i < n; ++i) {
      const size_t t = size_ + i;
      uint8_t* block = blocks_.data() + t / kBlockTokens * block_bytes();
      const size_t j = t % kBlockTokens;
      for (int p = 0; p < M / 2; ++p) {
        block[p * kBlockTokens + j] =
            static_cast<uint8_t>(codes[i * M + 2 * p] | (codes[i * M + 2 * p + 1] << 4));
      }
    }
  }
  size_ += n;
}

}  // namespace pqkv::kernels

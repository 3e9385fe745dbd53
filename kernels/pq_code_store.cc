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

void PqCodeStore::Reserve(size_t tokens) {
  codes_.reserve(tokens * subspaces_);
  if (has_joined()) joined_.reserve(tokens);
  if (has_fast_scan()) {
    blocks_.reserve((tokens + kBlockTokens - 1) / kBlockTokens * block_bytes());
  }
}

size_t PqCodeStore::bytes() const {
  return codes_.capacity() + joined_.capacity() * sizeof(uint16_t) +
         histogram_.capacity() * sizeof(uint32_t) + blocks_.capacity();
}

size_t PqCodeStore::BytesFor(int subspaces, int bits, size_t tokens) {
  PqCodeStore shape(subspaces, bits);
  size_t bytes = tokens * subspaces + shape.histogram_.capacity() * sizeof(uint32_t);
  if (shape.has_joined()) bytes += tokens * sizeof(uint16_t);
  if (shape.has_fast_scan()) {
    bytes += (tokens + kBlockTokens - 1) / kBlockTokens * shape.block_bytes();
  }
  return bytes;
}

}  // namespace pqkv::kernels

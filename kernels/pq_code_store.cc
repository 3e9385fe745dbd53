#include "kernels/pq_code_store.h"

#include <algorithm>

#include "kernels/dim4_scan.h"

namespace pqkv::kernels {
namespace {

// Tokens appended past the lists before they are rebuilt: an eighth of the store, and at
// least this many, so that a short prompt's decode tokens do not rebuild at every step.
constexpr size_t kMinUnlisted = 256;

}  // namespace

PqCodeStore::PqCodeStore(int subspaces, int bits, bool per_dimension, bool keep_bytes)
    : subspaces_(subspaces), bits_(bits), per_dimension_(per_dimension), keep_bytes_(keep_bytes) {
  if (has_joined()) {
    histogram_.assign(joined_size(), 0);
    list_offsets_.assign(joined_size() + 1, 0);
  }
}

void PqCodeStore::Append(const uint8_t* codes, size_t n) {
  const int M = subspaces_;
  if (has_bytes()) codes_.insert(codes_.end(), codes, codes + n * M);
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
  if (has_dim4()) {
    dim4_.resize((size_ + n + kDim4BlockTokens - 1) / kDim4BlockTokens * Dim4BlockBytes(M), 0);
    PackDim4(codes, size_, n, M, dim4_.data());
  }
  size_ += n;
  if (has_joined() && size_ - listed_ > std::max(kMinUnlisted, size_ / 8)) RebuildLists();
}

size_t PqCodeStore::capacity() const {
  if (has_bytes()) return codes_.capacity() / subspaces_;
  return dim4_.capacity() / Dim4BlockBytes(subspaces_) * kDim4BlockTokens;
}

void PqCodeStore::CopyCodes(size_t first, size_t n, uint8_t* out) const {
  if (has_bytes()) {
    std::copy(codes_.begin() + first * subspaces_, codes_.begin() + (first + n) * subspaces_, out);
    return;
  }
  UnpackDim4(dim4_.data(), first, n, subspaces_, out);
}

size_t PqCodeStore::num_dim4_blocks() const {
  return (size_ + kDim4BlockTokens - 1) / kDim4BlockTokens;
}

void PqCodeStore::RebuildLists() {
  const size_t distinct = joined_size();
  list_offsets_[0] = 0;
  for (size_t c = 0; c < distinct; ++c) list_offsets_[c + 1] = list_offsets_[c] + histogram_[c];
  // Reuses the offsets as each code's write cursor, then shifts them back.
  list_tokens_.resize(size_);
  for (size_t t = 0; t < size_; ++t) {
    list_tokens_[list_offsets_[joined_[t]]++] = static_cast<uint32_t>(t);
  }
  for (size_t c = distinct; c > 0; --c) list_offsets_[c] = list_offsets_[c - 1];
  list_offsets_[0] = 0;
  listed_ = size_;
}

void PqCodeStore::Reserve(size_t tokens) {
  if (has_bytes()) codes_.reserve(tokens * subspaces_);
  if (has_joined()) {
    joined_.reserve(tokens);
    list_tokens_.reserve(tokens);
  }
  if (has_fast_scan()) {
    blocks_.reserve((tokens + kBlockTokens - 1) / kBlockTokens * block_bytes());
  }
  if (has_dim4()) {
    dim4_.reserve((tokens + kDim4BlockTokens - 1) / kDim4BlockTokens * Dim4BlockBytes(subspaces_));
  }
}

size_t PqCodeStore::bytes() const {
  return codes_.capacity() + joined_.capacity() * sizeof(uint16_t) +
         histogram_.capacity() * sizeof(uint32_t) +
         (list_offsets_.capacity() + list_tokens_.capacity()) * sizeof(uint32_t) +
         blocks_.capacity() + dim4_.capacity();
}

size_t PqCodeStore::BytesFor(int subspaces, int bits, size_t tokens, bool per_dimension,
                             bool keep_bytes) {
  PqCodeStore shape(subspaces, bits, per_dimension, keep_bytes);
  size_t bytes = (shape.has_bytes() ? tokens * subspaces : 0) +
                 (shape.histogram_.capacity() + shape.list_offsets_.capacity()) * sizeof(uint32_t);
  if (shape.has_joined()) bytes += tokens * (sizeof(uint16_t) + sizeof(uint32_t));
  if (shape.has_fast_scan()) {
    bytes += (tokens + kBlockTokens - 1) / kBlockTokens * shape.block_bytes();
  }
  if (shape.has_dim4()) {
    bytes += (tokens + kDim4BlockTokens - 1) / kDim4BlockTokens * Dim4BlockBytes(subspaces);
  }
  return bytes;
}

}  // namespace pqkv::kernels

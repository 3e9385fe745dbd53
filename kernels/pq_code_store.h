// PqCodeStore: the PQ codes of one (layer, kv head), kept in the layouts the scan
// kernels read:
//  - bytes: uint8 [token][M] (the plain kernels, the generic scan and the GPU scorer),
//    always but in a dim4 store made without keep_bytes;
//  - joined: when M * bits <= 12, one uint16 code per token, code = sum_m c_m << (m * bits),
//    and a histogram of those codes, so that scoring works per distinct code; also each
//    code's tokens, so that a top-k can take whole codes without a pass over the tokens
//    (kernels/code_select.h);
//  - fast-scan: when bits == 4 and M is even, blocks of 32 tokens, each block M / 2 rows
//    of 32 bytes; byte j of row p holds token j's codes for sub-spaces 2p (low nibble)
//    and 2p + 1 (high nibble);
//  - dim4: when each sub-space is one dimension (per_dimension), bits == 4 and M % 8 == 0,
//    blocks of 16 tokens in kernels/dim4_scan.h's layout, instead of fast-scan blocks.
//
// Not thread-safe: one writer, and no reader during a write (LayerStore's lock).
#ifndef PQKV_KERNELS_PQ_CODE_STORE_H_
#define PQKV_KERNELS_PQ_CODE_STORE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pqkv::kernels {

class PqCodeStore {
 public:
  static constexpr int kMaxJoinedBits = 12;
  static constexpr size_t kBlockTokens = 32;

  // per_dimension: each sub-space is one dimension of the key (M == head_dim).
  // keep_bytes = false drops the byte layout where the dim4 layout holds the codes (a
  // third of the memory at 4 bits: M / 2 bytes per token instead of 3 M / 2); codes() is
  // then null and CopyCodes unpacks them.
  PqCodeStore(int subspaces, int bits, bool per_dimension = false, bool keep_bytes = true);

  // Appends n tokens' codes, uint8 [n][M].
  void Append(const uint8_t* codes, size_t n);
  // Makes room for `tokens` tokens in every layout, so that appending up to that many
  // allocates nothing; never shrinks.
  void Reserve(size_t tokens);
  // Tokens the store holds room for (Reserve, or what appending left).
  size_t capacity() const;
  // Heap bytes the store holds: its layouts' capacities.
  size_t bytes() const;
  // bytes() of a store of this shape after Reserve(tokens), with no more appended.
  static size_t BytesFor(int subspaces, int bits, size_t tokens, bool per_dimension = false,
                         bool keep_bytes = true);

  size_t size() const { return size_; }
  int subspaces() const { return subspaces_; }
  int bits() const { return bits_; }
  bool has_bytes() const { return !has_dim4() || keep_bytes_; }
  // uint8 [size()][M]; null without has_bytes().
  const uint8_t* codes() const { return has_bytes() ? codes_.data() : nullptr; }
  // Writes the codes of tokens [first, first + n), uint8 [n][M], from whichever layout
  // holds them.
  void CopyCodes(size_t first, size_t n, uint8_t* out) const;

  bool has_joined() const { return subspaces_ * bits_ <= kMaxJoinedBits; }
  // Number of distinct joined codes, 2^(M * bits).
  size_t joined_size() const { return size_t{1} << (subspaces_ * bits_); }
  const uint16_t* joined_codes() const { return joined_.data(); }
  // Tokens per joined code, joined_size() entries.
  const uint32_t* joined_histogram() const { return histogram_.data(); }
  // Tokens by joined code: the tokens [0, listed()) grouped by code, each code's in
  // ascending position, code c's at list_tokens()[list_offsets()[c], list_offsets()[c + 1]).
  // Tokens [listed(), size()) are not listed yet: appends add to them, and the lists are
  // rebuilt (a counting sort) once they pass an eighth of the store, so a decode token
  // costs a few list writes on average and a reader at most a pass over that eighth.
  size_t listed() const { return listed_; }
  const uint32_t* list_offsets() const { return list_offsets_.data(); }
  const uint32_t* list_tokens() const { return list_tokens_.data(); }

  bool has_dim4() const { return per_dimension_ && bits_ == 4 && subspaces_ % 8 == 0; }
  // Blocks of 16 tokens, 8 * M bytes each; the last block is padded with code 0.
  const uint8_t* dim4_blocks() const { return dim4_.data(); }
  size_t num_dim4_blocks() const;

  bool has_fast_scan() const {
    return !has_dim4() && bits_ == 4 && subspaces_ % 2 == 0 && subspaces_ <= 256;
  }
  // Blocks of 32 tokens, 16 * M bytes each; the last block is padded with code 0.
  const uint8_t* fast_scan_blocks() const { return blocks_.data(); }
  size_t num_blocks() const { return (size_ + kBlockTokens - 1) / kBlockTokens; }
  size_t block_bytes() const { return kBlockTokens * subspaces_ / 2; }

 private:
  // Lists every token (counting sort by joined code, stable in position).
  void RebuildLists();

  const int subspaces_;
  const int bits_;
  const bool per_dimension_;
  const bool keep_bytes_;
  size_t size_ = 0;
  std::vector<uint8_t> codes_;
  std::vector<uint16_t> joined_;
  std::vector<uint32_t> histogram_;
  size_t listed_ = 0;
  std::vector<uint32_t> list_offsets_;  // joined_size() + 1
  std::vector<uint32_t> list_tokens_;   // listed_ positions
  std::vector<uint8_t> blocks_;
  std::vector<uint8_t> dim4_;
};

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_PQ_CODE_STORE_H_

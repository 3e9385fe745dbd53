// OrderedKey: maps a float to an unsigned key with the same order (negative values
// reversed; -0 and +0 share a key, as they compare equal). The radix select and its
// AVX2 shortlist pass must agree on it exactly.
#ifndef PQKV_KERNELS_ORDERED_KEY_H_
#define PQKV_KERNELS_ORDERED_KEY_H_

#include <cstdint>
#include <cstring>

namespace pqkv::kernels {

inline uint32_t OrderedKey(float f) {
  if (f == 0.0f) f = 0.0f;
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_ORDERED_KEY_H_

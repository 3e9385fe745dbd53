// How a fuzz input carries several messages of one stream (AppendKv, Retrieve): each is a
// 2-byte little-endian length, then that many bytes (fewer if the input ends first). A
// stream takes at most kMaxStreamMessages; bytes past them are ignored.
#ifndef PQKV_TESTS_FUZZ_MESSAGE_FRAMING_H_
#define PQKV_TESTS_FUZZ_MESSAGE_FRAMING_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pqkv::fuzz {

inline constexpr size_t kMaxStreamMessages = 8;

std::vector<std::string> SplitMessages(const uint8_t* data, size_t size);
// The inverse, for writing seeds. Each message must be under 64 KiB.
std::string JoinMessages(const std::vector<std::string>& messages);

}  // namespace pqkv::fuzz

#endif  // PQKV_TESTS_FUZZ_MESSAGE_FRAMING_H_

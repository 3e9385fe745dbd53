#include "tests/fuzz/message_framing.h"

#include <algorithm>
#include <cassert>

namespace pqkv::fuzz {

std::vector<std::string> SplitMessages(const uint8_t* data, size_t size) {
  std::vector<std::string> messages;
  size_t at = 0;
  while (at + 2 <= size && messages.size() < kMaxStreamMessages) {
    const size_t length = data[at] | size_t{data[at + 1]} << 8;
    at += 2;
    const size_t take = std::min(length, size - at);
    messages.emplace_back(reinterpret_cast<const char*>(data + at), take);
    at += take;
  }
  return messages;
}

std::string JoinMessages(const std::vector<std::string>& messages) {
  std::string out;
  for (const std::string& message : messages) {
    assert(message.size() < (1u << 16));
    out += static_cast<char>(message.size() & 0xff);
    out += static_cast<char>(message.size() >> 8);
    out += message;
  }
  return out;
}

}  // namespace pqkv::fuzz

#include "server/memory/byte_size.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pqkv::server {

absl::StatusOr<size_t> ParseByteSize(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  size_t digits = 0;
  while (digits < text.size() && absl::ascii_isdigit(text[digits])) ++digits;
  uint64_t number = 0;
  if (digits == 0 || !absl::SimpleAtoi(text.substr(0, digits), &number)) {
    return absl::InvalidArgumentError(absl::StrCat("not a byte size: \"", text, "\""));
  }
  std::string unit = absl::AsciiStrToLower(text.substr(digits));
  int shift = -1;
  if (unit.empty() || unit == "b") shift = 0;
  if (unit == "k" || unit == "kib" || unit == "kb") shift = 10;
  if (unit == "m" || unit == "mib" || unit == "mb") shift = 20;
  if (unit == "g" || unit == "gib" || unit == "gb") shift = 30;
  if (unit == "t" || unit == "tib" || unit == "tb") shift = 40;
  if (shift < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown unit in byte size \"", text, "\" (use K, M, G or T)"));
  }
  if (shift > 0 && number > (UINT64_MAX >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat("byte size \"", text, "\" overflows"));
  }
  return static_cast<size_t>(number << shift);
}

}  // namespace pqkv::server

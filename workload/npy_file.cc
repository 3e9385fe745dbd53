#include "workload/npy_file.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_contents.h"

namespace pqkv::workload {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

size_t ElementSize(const std::string& dtype) {
  if (dtype == "<f2") return 2;
  if (dtype == "<f4") return 4;
  return 0;
}

// The value of `key` in the header's Python dict literal, up to the next top-level comma.
absl::StatusOr<std::string> DictValue(absl::string_view header, absl::string_view key) {
  const std::string quoted = absl::StrCat("'", key, "'");
  const size_t at = header.find(quoted);
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("npy header has no ", quoted));
  }
  absl::string_view rest = header.substr(at + quoted.size());
  rest = absl::StripLeadingAsciiWhitespace(rest);
  if (!absl::ConsumePrefix(&rest, ":")) {
    return absl::InvalidArgumentError(absl::StrCat("npy header: no ':' after ", quoted));
  }
  rest = absl::StripLeadingAsciiWhitespace(rest);
  size_t end = 0;
  int depth = 0;
  for (; end < rest.size(); ++end) {
    const char c = rest[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if ((c == ',' || c == '}') && depth == 0) break;
  }
  return std::string(absl::StripAsciiWhitespace(rest.substr(0, end)));
}

absl::StatusOr<std::vector<uint64_t>> ParseShape(absl::string_view text) {
  if (!absl::ConsumePrefix(&text, "(") || !absl::ConsumeSuffix(&text, ")")) {
    return absl::InvalidArgumentError(absl::StrCat("npy shape is not a tuple: ", text));
  }
  std::vector<uint64_t> shape;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    uint64_t n = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &n)) {
      return absl::InvalidArgumentError(absl::StrCat("npy shape entry is not a number: ", part));
    }
    shape.push_back(n);
  }
  return shape;
}

}  // namespace

uint64_t NpyArray::NumElements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<NpyArray> ParseNpy(const std::string& bytes) {
  if (bytes.size() < kMagicSize + 4 || std::memcmp(bytes.data(), kMagic, kMagicSize) != 0) {
    return absl::InvalidArgumentError("not an npy file (no \\x93NUMPY magic)");
  }
  const uint8_t major = static_cast<uint8_t>(bytes[6]);
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return absl::InvalidArgumentError("npy file truncated in its header");
    for (int i = 3; i >= 0; --i)
      header_len = (header_len << 8) | static_cast<uint8_t>(bytes[8 + i]);
    header_start = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("npy format version ", major, " unknown"));
  }
  if (bytes.size() < header_start + header_len) {
    return absl::InvalidArgumentError("npy file truncated in its header");
  }
  const absl::string_view header(bytes.data() + header_start, header_len);
  NpyArray array;
  absl::StatusOr<std::string> descr = DictValue(header, "descr");
  if (!descr.ok()) return descr.status();
  array.dtype = std::string(absl::StripSuffix(absl::StripPrefix(*descr, "'"), "'"));
  if (ElementSize(array.dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("npy dtype ", array.dtype, " unsupported (want <f2 or <f4)"));
  }
  absl::StatusOr<std::string> fortran = DictValue(header, "fortran_order");
  if (!fortran.ok()) return fortran.status();
  if (*fortran != "False") return absl::InvalidArgumentError("npy Fortran order unsupported");
  absl::StatusOr<std::string> shape_text = DictValue(header, "shape");
  if (!shape_text.ok()) return shape_text.status();
  absl::StatusOr<std::vector<uint64_t>> shape = ParseShape(*shape_text);
  if (!shape.ok()) return shape.status();
  array.shape = *std::move(shape);
  const uint64_t data_size = array.NumElements() * ElementSize(array.dtype);
  const size_t data_start = header_start + header_len;
  if (bytes.size() - data_start != data_size) {
    return absl::InvalidArgumentError(absl::StrCat("npy data holds ", bytes.size() - data_start,
                                                   " bytes, its shape needs ", data_size));
  }
  array.data.assign(bytes.begin() + data_start, bytes.end());
  return array;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  absl::StatusOr<std::string> contents = ReadFileContents(path);
  if (!contents.ok()) return contents.status();
  absl::StatusOr<NpyArray> array = ParseNpy(*contents);
  if (!array.ok()) {
    return absl::Status(array.status().code(), absl::StrCat(path, ": ", array.status().message()));
  }
  return array;
}

std::string EncodeNpy(const NpyArray& array) {
  std::string shape = absl::StrJoin(array.shape, ", ");
  if (array.shape.size() == 1) shape += ",";
  std::string header = absl::StrCat("{'descr': '", array.dtype,
                                    "', 'fortran_order': False, 'shape': (", shape, "), }");
  // Pad with spaces and a newline so the data starts at a multiple of 64 bytes.
  const size_t unpadded = kMagicSize + 4 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string out(kMagic, kMagicSize);
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(reinterpret_cast<const char*>(array.data.data()), array.data.size());
  return out;
}

}  // namespace pqkv::workload

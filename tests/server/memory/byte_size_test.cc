#include "server/memory/byte_size.h"

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

TEST_CASE("ParseByteSize reads plain numbers and binary units", "[server]") {
  CHECK(ParseByteSize("4096").value() == 4096);
  CHECK(ParseByteSize("64KiB").value() == 64 << 10);
  CHECK(ParseByteSize("512m").value() == size_t{512} << 20);
  CHECK(ParseByteSize(" 8GiB ").value() == size_t{8} << 30);
  CHECK(ParseByteSize("1T").value() == size_t{1} << 40);
}

TEST_CASE("ParseByteSize rejects what it cannot read", "[server]") {
  CHECK_FALSE(ParseByteSize("").ok());
  CHECK_FALSE(ParseByteSize("GiB").ok());
  CHECK_FALSE(ParseByteSize("8 parsecs").ok());
  CHECK_FALSE(ParseByteSize("99999999999999999999").ok());
  CHECK_FALSE(ParseByteSize("20000000000T").ok());
}

}  // namespace
}  // namespace pqkv::server

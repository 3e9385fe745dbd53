#include "server/dataplane/ucx_worker_address.h"

#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "catch2/catch.hpp"

extern "C" uint16_t ucs_crc16_string(const char* s);

namespace pqkv::server {
namespace {

// Pieces of a v1 worker address (UCX 1.13 layout, see the header).
std::string Header(uint64_t uuid) {
  std::string out(1, '\x20');  // version 0 (v1), flags: worker uuid
  out.append(reinterpret_cast<const char*>(&uuid), sizeof uuid);
  return out;
}

std::string Device(uint8_t md, const std::string& device, bool last, const std::string& ifaces) {
  std::string out(1, static_cast<char>(md));
  out += static_cast<char>(device.size() | (last ? 0x80 : 0));
  return out + device + ifaces;
}

std::string Iface(uint16_t checksum, const std::string& address, bool last) {
  std::string out(reinterpret_cast<const char*>(&checksum), sizeof checksum);
  out += std::string(16, '\x01');  // attributes
  out += static_cast<char>(address.size() | (last ? 0x80 : 0));
  return out + address;
}

std::string TcpDevice(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return std::string{'\0',
                     static_cast<char>(AF_INET),
                     static_cast<char>(a),
                     static_cast<char>(b),
                     static_cast<char>(c),
                     static_cast<char>(d)};
}

const std::string kPort4000("\x0f\xa0", 2);
constexpr uint16_t kShm = 0x1234;  // another transport's checksum

TEST_CASE("UcxWorkerAddress reads a v1 address and its TCP endpoints", "[server]") {
  const std::string address =
      Header(42) + Device(0, "", false, Iface(kShm, "abcdefgh", true)) +
      Device(1, TcpDevice(10, 1, 2, 3), false, Iface(kUcxTcpNameChecksum, kPort4000, true)) +
      Device(1, std::string(1, '\x01') + static_cast<char>(AF_INET) + std::string(16, 'n'), true,
             Iface(kUcxTcpNameChecksum, std::string("\x01\x02", 2), true));
  auto parsed = UcxWorkerAddress::Parse(address, 0);
  REQUIRE(parsed.ok());
  CHECK(parsed->uuid() == 42);
  CHECK(parsed->interfaces() == 3);
  REQUIRE(parsed->tcp_endpoints().size() == 2);
  CHECK(parsed->tcp_endpoints()[0].ToString() == "10.1.2.3:4000");
  CHECK_FALSE(parsed->tcp_endpoints()[0].loopback);
  CHECK(parsed->tcp_endpoints()[1].loopback);
  CHECK(parsed->tcp_endpoints()[1].ToString() == "loopback:258");
  CHECK(parsed->tcp_endpoints()[1].ip[0] == 127);

  SECTION("every truncation is refused") {
    for (size_t n = 0; n < address.size(); ++n) {
      INFO(n);
      CHECK(UcxWorkerAddress::Parse(address.substr(0, n), 0).status().code() ==
            absl::StatusCode::kInvalidArgument);
    }
  }
  SECTION("trailing bytes are refused") {
    auto extended = UcxWorkerAddress::Parse(address + "x", 0);
    CHECK(extended.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(extended.status().message().find("follow its last device") != absl::string_view::npos);
  }
  SECTION("another format version is refused") {
    CHECK(!UcxWorkerAddress::Parse(address, 1).ok());
    std::string v3 = address;
    v3[0] = '\x22';
    CHECK(!UcxWorkerAddress::Parse(v3, 0).ok());
  }
}

TEST_CASE("UcxWorkerAddress refuses TCP interfaces it cannot read", "[server]") {
  const auto parse = [](const std::string& device, const std::string& iface) {
    return UcxWorkerAddress::Parse(
        Header(1) + Device(1, device, true, Iface(kUcxTcpNameChecksum, iface, true)), 0);
  };
  CHECK(parse(TcpDevice(10, 0, 0, 1), kPort4000).ok());
  CHECK(!parse(TcpDevice(10, 0, 0, 1), "\x0f").ok());                  // short port
  CHECK(!parse(TcpDevice(10, 0, 0, 1).substr(0, 5), kPort4000).ok());  // short IPv4
  std::string unix_family = TcpDevice(10, 0, 0, 1);
  unix_family[1] = static_cast<char>(AF_UNIX);
  CHECK(!parse(unix_family, kPort4000).ok());
  std::string flagged = TcpDevice(10, 0, 0, 1);
  flagged[0] = '\x04';
  CHECK(!parse(flagged, kPort4000).ok());
  std::string v6 = std::string{'\0', static_cast<char>(AF_INET6)} + std::string(15, '\0') + "\x01";
  auto parsed = parse(v6, kPort4000);
  REQUIRE(parsed.ok());
  CHECK(parsed->tcp_endpoints()[0].ToString() == "[::1]:4000");
}

TEST_CASE("UcxWorkerAddress bounds every count and length", "[server]") {
  // An md index past UCP_MAX_MDS (v2 extends it to a byte).
  std::string v2 = std::string("\x01\x02", 2) + std::string(8, '\0') + "\x7f\x40" + "\x80";
  CHECK(!UcxWorkerAddress::Parse(v2, 1).ok());
  // More endpoint addresses on one interface than UCP_MAX_LANES.
  std::string iface = Iface(kShm, "ab", true);
  iface[2 + 16] |= 0x40;  // has endpoint addresses
  for (int i = 0; i < 7; ++i)
    iface += std::string(
                 "\x01"
                 "e",
                 2) +
             static_cast<char>(i);
  auto many = UcxWorkerAddress::Parse(Header(1) + Device(0, "", true, iface), 0);
  CHECK(many.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(many.status().message().find("endpoint addresses") != absl::string_view::npos);
  // Interfaces without end: each a last device that never says so, 200 of them.
  std::string endless = Header(1) + Device(0, "", false, "");
  for (int i = 0; i < 200; ++i) endless += Iface(kShm, "", false);
  CHECK(!UcxWorkerAddress::Parse(endless, 0).ok());
  // No devices at all: one 0xff byte, and nothing after it.
  CHECK(UcxWorkerAddress::Parse(Header(1) + "\xff", 0).ok());
  CHECK(!UcxWorkerAddress::Parse(Header(1) + "\xff" + "z", 0).ok());
}

TEST_CASE("UcxWorkerAddress reports the md indices of System V interfaces", "[server]") {
  // md 2 has a System V interface behind another one; md 5 only one; md 0 and 3 none.
  const std::string v1 =
      Header(7) + Device(0, "", false, Iface(kShm, "abcdefgh", true)) +
      Device(2, "guid", false, Iface(kShm, "x", false) + Iface(kUcxSysvNameChecksum, "", true)) +
      Device(3 | 0x80, "", false, "") +  // no interfaces
      Device(5, "guid", true, Iface(kUcxSysvNameChecksum, "", true));
  auto parsed = UcxWorkerAddress::Parse(v1, 0);
  REQUIRE(parsed.ok());
  CHECK(parsed->sysv_md_map() == (uint64_t{1} << 2 | uint64_t{1} << 5));
  // v2: md index 40 in the byte after 127; interface attributes are 8 bytes.
  std::string v2 = std::string("\x01\x02", 2) + std::string(8, '\0') + "\x7f\x28" + "\x80";
  const uint16_t sysv = kUcxSysvNameChecksum;
  v2.append(reinterpret_cast<const char*>(&sysv), sizeof sysv);
  v2 += std::string(8, '\0') + "\x80";
  auto extended = UcxWorkerAddress::Parse(v2, 1);
  INFO(extended.status().message());
  REQUIRE(extended.ok());
  CHECK(extended->sysv_md_map() == uint64_t{1} << 40);
  CHECK(UcxWorkerAddress::Parse(Header(1) + "\xff", 0)->sysv_md_map() == 0);
}

// Bit i set for each md i that has a "sysv" resource in UCX's own description of the
// context ("resource 3  :  md 2  dev 3  flags -- sysv/memory").
uint64_t SysvMdsOf(ucp_context_h context) {
  char* text = nullptr;
  size_t size = 0;
  FILE* out = open_memstream(&text, &size);
  REQUIRE(out != nullptr);
  ucp_context_print_info(context, out);
  std::fclose(out);
  std::istringstream lines(std::string(text, size));
  std::free(text);
  uint64_t map = 0;
  for (std::string line; std::getline(lines, line);) {
    const size_t md = line.find(":  md ");
    if (md == std::string::npos || line.find("sysv/") == std::string::npos) continue;
    map |= uint64_t{1} << std::stoi(line.substr(md + 6));
  }
  return map;
}

TEST_CASE("UcxWorkerAddress reads this UCX's own worker address", "[server]") {
  CHECK(ucs_crc16_string("tcp") == kUcxTcpNameChecksum);
  CHECK(ucs_crc16_string("sysv") == kUcxSysvNameChecksum);
  ucp_config_t* config = nullptr;
  REQUIRE(ucp_config_read(nullptr, nullptr, &config) == UCS_OK);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA;
  ucp_context_h context = nullptr;
  REQUIRE(ucp_init(&params, config, &context) == UCS_OK);
  ucp_config_release(config);
  ucp_worker_params_t worker_params{};
  ucp_worker_h worker = nullptr;
  REQUIRE(ucp_worker_create(context, &worker_params, &worker) == UCS_OK);
  ucp_address_t* own = nullptr;
  size_t bytes = 0;
  REQUIRE(ucp_worker_get_address(worker, &own, &bytes) == UCS_OK);
  const std::string address(reinterpret_cast<const char*>(own), bytes);
  ucp_worker_release_address(worker, own);
  const uint64_t sysv_mds = SysvMdsOf(context);
  ucp_worker_destroy(worker);
  ucp_cleanup(context);
  const uint8_t version = static_cast<uint8_t>(address[0]) & 0xf;
  auto parsed = UcxWorkerAddress::Parse(address, version);
  INFO(parsed.status().message());
  REQUIRE(parsed.ok());
  CHECK(parsed->interfaces() > 0);
  CHECK(parsed->uuid() != 0);
  CHECK(parsed->sysv_md_map() == sysv_mds);
  for (size_t n = 0; n < address.size(); ++n) {
    INFO(n);
    CHECK(!UcxWorkerAddress::Parse(address.substr(0, n), version).ok());
  }
}

}  // namespace
}  // namespace pqkv::server

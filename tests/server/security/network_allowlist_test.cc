#include "server/security/network_allowlist.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <string>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

bool Allows(const NetworkAllowlist& list, const std::string& ip) {
  uint8_t bytes[16];
  if (inet_pton(AF_INET, ip.c_str(), bytes) == 1) return list.Allows(AF_INET, bytes);
  REQUIRE(inet_pton(AF_INET6, ip.c_str(), bytes) == 1);
  return list.Allows(AF_INET6, bytes);
}

TEST_CASE("NetworkAllowlist matches addresses against CIDR prefixes", "[server]") {
  auto list = NetworkAllowlist::Parse("10.1.0.0/16, 192.168.7.5, 172.16.0.128/25,fd00::/8");
  REQUIRE(list.ok());
  CHECK(list->ToString() == "10.1.0.0/16,192.168.7.5/32,172.16.0.128/25,fd00::/8");
  CHECK(Allows(*list, "10.1.0.0"));
  CHECK(Allows(*list, "10.1.255.255"));
  CHECK_FALSE(Allows(*list, "10.2.0.1"));
  CHECK_FALSE(Allows(*list, "10.0.255.255"));
  CHECK(Allows(*list, "192.168.7.5"));
  CHECK_FALSE(Allows(*list, "192.168.7.4"));
  CHECK(Allows(*list, "172.16.0.128"));
  CHECK(Allows(*list, "172.16.0.255"));
  CHECK_FALSE(Allows(*list, "172.16.0.127"));  // the bit just above a /25
  CHECK(Allows(*list, "fd12:3456::1"));
  CHECK_FALSE(Allows(*list, "fe80::1"));
  CHECK_FALSE(Allows(*list, "127.0.0.1"));
  // An IPv4-mapped IPv6 address matches as its IPv4 address, never as IPv6.
  CHECK(Allows(*list, "::ffff:10.1.2.3"));
  CHECK_FALSE(Allows(*list, "::ffff:10.9.2.3"));
  // Host bits given in a network are ignored; /0 is everything of its family.
  auto wide = NetworkAllowlist::Parse("10.1.2.3/8,::/0");
  REQUIRE(wide.ok());
  CHECK(wide->ToString() == "10.0.0.0/8,::/0");
  CHECK(Allows(*wide, "10.200.1.1"));
  CHECK_FALSE(Allows(*wide, "11.0.0.1"));
  CHECK(Allows(*wide, "2001:db8::7"));
  auto all_v4 = NetworkAllowlist::Parse("0.0.0.0/0");
  REQUIRE(all_v4.ok());
  CHECK(Allows(*all_v4, "203.0.113.9"));
  CHECK_FALSE(Allows(*all_v4, "2001:db8::7"));
  CHECK_FALSE(all_v4->Allows(AF_UNIX, reinterpret_cast<const uint8_t*>("xxxxxxxxxxxxxxxx")));
}

TEST_CASE("NetworkAllowlist refuses what is not a list of networks", "[server]") {
  for (const char* bad : {"", " , ", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/",
                          "10.0.0/8", "example.com", "10.0.0.0/8,nonsense", "1.2.3.4/8x"}) {
    INFO(bad);
    auto list = NetworkAllowlist::Parse(bad);
    CHECK(list.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(list.status().message().find("--ucx_allowed_networks") != absl::string_view::npos);
  }
}

TEST_CASE("NetworkAllowlist's default holds loopback and this host's subnets", "[server]") {
  const NetworkAllowlist list = NetworkAllowlist::LoopbackAndLocalSubnets();
  CHECK(Allows(list, "127.0.0.1"));
  CHECK(Allows(list, "127.1.2.3"));
  CHECK(Allows(list, "::1"));
  // A documentation address (TEST-NET-3) is on no interface of a test machine.
  CHECK_FALSE(Allows(list, "203.0.113.77"));
  CHECK(list.ToString().rfind("127.0.0.0/8,::1/128", 0) == 0);
}

}  // namespace
}  // namespace pqkv::server

#include "server/security/network_allowlist.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace pqkv::server {
namespace {

size_t IpBytes(int family) { return family == AF_INET ? 4 : 16; }

// Whether the first `bits` bits of a and b agree.
bool PrefixMatches(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(a, b, whole) != 0) return false;
  if (bits % 8 == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - bits % 8));
  return (a[whole] & mask) == (b[whole] & mask);
}

// The number of leading one bits of a netmask (-1 unless they are contiguous).
int PrefixOf(const uint8_t* mask, size_t bytes) {
  int bits = 0;
  size_t i = 0;
  for (; i < bytes && mask[i] == 0xff; ++i) bits += 8;
  if (i < bytes) {
    uint8_t rest = mask[i];
    while (rest & 0x80) {
      ++bits;
      rest = static_cast<uint8_t>(rest << 1);
    }
    if (rest != 0) return -1;
    for (++i; i < bytes; ++i) {
      if (mask[i] != 0) return -1;
    }
  }
  return bits;
}

}  // namespace

void NetworkAllowlist::Add(int family, const uint8_t* ip, int prefix_bits) {
  Network network{family, {}, prefix_bits};
  std::memcpy(network.bytes.data(), ip, IpBytes(family));
  const int whole = prefix_bits / 8;
  if (whole < static_cast<int>(IpBytes(family))) {
    network.bytes[whole] &= static_cast<uint8_t>(0xff << (8 - prefix_bits % 8));
    for (size_t i = whole + 1; i < IpBytes(family); ++i) network.bytes[i] = 0;
  }
  for (const Network& n : networks_) {
    if (n.family == family && n.prefix_bits == prefix_bits && n.bytes == network.bytes) return;
  }
  networks_.push_back(network);
}

absl::StatusOr<NetworkAllowlist> NetworkAllowlist::Parse(absl::string_view cidrs) {
  NetworkAllowlist list;
  for (absl::string_view entry : absl::StrSplit(cidrs, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) continue;
    const auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("--ucx_allowed_networks: \"", entry, "\" is not a network: ", why));
    };
    const size_t slash = entry.find('/');
    const std::string ip(entry.substr(0, slash));
    uint8_t bytes[16];
    int family = AF_INET;
    if (inet_pton(AF_INET, ip.c_str(), bytes) != 1) {
      family = AF_INET6;
      if (inet_pton(AF_INET6, ip.c_str(), bytes) != 1) {
        return bad("expected an IPv4 or IPv6 address, then /prefix bits");
      }
    }
    const int max_bits = static_cast<int>(IpBytes(family) * 8);
    int bits = max_bits;
    if (slash != absl::string_view::npos &&
        (!absl::SimpleAtoi(entry.substr(slash + 1), &bits) || bits < 0 || bits > max_bits)) {
      return bad(absl::StrCat("the prefix must be a number of bits in [0, ", max_bits, "]"));
    }
    list.Add(family, bytes, bits);
  }
  if (list.networks_.empty()) {
    return absl::InvalidArgumentError(
        "--ucx_allowed_networks is empty: name at least one network (CIDR), or turn the UCX "
        "data plane off with --noucx");
  }
  return list;
}

NetworkAllowlist NetworkAllowlist::LoopbackAndLocalSubnets() {
  NetworkAllowlist list;
  const uint8_t v4_loopback[4] = {127, 0, 0, 0};
  list.Add(AF_INET, v4_loopback, 8);
  uint8_t v6_loopback[16] = {0};
  v6_loopback[15] = 1;
  list.Add(AF_INET6, v6_loopback, 128);
  ifaddrs* interfaces = nullptr;
  if (getifaddrs(&interfaces) != 0) return list;
  for (const ifaddrs* i = interfaces; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_netmask == nullptr) continue;
    const int family = i->ifa_addr->sa_family;
    const uint8_t* ip;
    const uint8_t* mask;
    if (family == AF_INET) {
      ip = reinterpret_cast<const uint8_t*>(
          &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr);
      mask = reinterpret_cast<const uint8_t*>(
          &reinterpret_cast<const sockaddr_in*>(i->ifa_netmask)->sin_addr);
    } else if (family == AF_INET6) {
      ip = reinterpret_cast<const uint8_t*>(
          &reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr);
      mask = reinterpret_cast<const uint8_t*>(
          &reinterpret_cast<const sockaddr_in6*>(i->ifa_netmask)->sin6_addr);
    } else {
      continue;
    }
    // A prefix of 0 (an interface reporting no netmask) would allow every address: such
    // an interface's subnet is left out (its own address still counts, as a host).
    const int bits = PrefixOf(mask, IpBytes(family));
    if (bits > 0) {
      list.Add(family, ip, bits);
    } else if (bits == 0) {
      list.Add(family, ip, 8 * IpBytes(family));
    }
  }
  freeifaddrs(interfaces);
  return list;
}

bool NetworkAllowlist::Allows(int family, const uint8_t* ip) const {
  static constexpr uint8_t kV4Mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (family == AF_INET6 && std::memcmp(ip, kV4Mapped, sizeof kV4Mapped) == 0) {
    return Allows(AF_INET, ip + sizeof kV4Mapped);
  }
  if (family != AF_INET && family != AF_INET6) return false;
  for (const Network& network : networks_) {
    if (network.family == family && PrefixMatches(network.bytes.data(), ip, network.prefix_bits)) {
      return true;
    }
  }
  return false;
}

std::string NetworkAllowlist::ToString() const {
  return absl::StrJoin(networks_, ",", [](std::string* out, const Network& network) {
    char text[INET6_ADDRSTRLEN] = {0};
    inet_ntop(network.family, network.bytes.data(), text, sizeof text);
    absl::StrAppend(out, text, "/", network.prefix_bits);
  });
}

}  // namespace pqkv::server

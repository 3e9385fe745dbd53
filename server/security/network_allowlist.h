// NetworkAllowlist: the IP networks (CIDRs) the server may dial for a client's UCX data
// plane (--ucx_allowed_networks), so that an offer cannot make it probe other hosts.
//
// A value type; const methods are thread-safe.
#ifndef PQKV_SERVER_SECURITY_NETWORK_ALLOWLIST_H_
#define PQKV_SERVER_SECURITY_NETWORK_ALLOWLIST_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pqkv::server {

class NetworkAllowlist {
 public:
  // Comma-separated CIDRs ("127.0.0.0/8,10.0.0.0/16,fd00::/8"); a bare address is a
  // network of that one address (/32 or /128). Spaces around entries are ignored.
  // INVALID_ARGUMENT naming the entry that does not parse, or for an empty list.
  static absl::StatusOr<NetworkAllowlist> Parse(absl::string_view cidrs);
  // Loopback (127.0.0.0/8, ::1/128) and the subnets of this host's interfaces, from
  // getifaddrs (an address and its netmask), so that same-host and same-subnet workers
  // work with no flag.
  static NetworkAllowlist LoopbackAndLocalSubnets();

  // Whether `ip` (network order: 4 bytes for AF_INET, 16 for AF_INET6) is in a network of
  // the list. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches as its IPv4 address.
  bool Allows(int family, const uint8_t* ip) const;
  // The list, comma-separated, each network in canonical form ("127.0.0.0/8,::1/128").
  std::string ToString() const;

 private:
  struct Network {
    int family;                     // AF_INET or AF_INET6
    std::array<uint8_t, 16> bytes;  // network order, host bits zero
    int prefix_bits;
  };
  // Adds family/ip/prefix (host bits cleared), unless already there.
  void Add(int family, const uint8_t* ip, int prefix_bits);
  std::vector<Network> networks_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_SECURITY_NETWORK_ALLOWLIST_H_

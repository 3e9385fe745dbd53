// UcxWorkerAddress: a client's packed UCX worker address (DataPlaneOffer.worker_address),
// parsed and bounds-checked before any of it reaches UCX. UCX 1.13 trusts the addresses it
// is given: ucp_ep_create reads lengths from the bytes without a bound and asserts on an
// unknown format version, so a corrupt address could read past its buffer or end the
// process. Parse walks the whole layout with every length checked against the bytes
// there are, and must end exactly at the last byte; it also pulls out the IP endpoints of
// the address's TCP interfaces (what the server would dial), for --ucx_allowed_networks,
// and the md indices of its System V interfaces (whose rkey sections UCX attaches with
// shmat: PrepareRkey in ucx_offer_check.h checks those).
//
// The layout (UCX 1.13, src/ucp/wireup/address.c, non-unified mode, the default):
//   header: v1: one byte, version in the low 4 bits, flags in the high 4;
//           v2: the version byte, then a flags byte
//   worker uuid (8 bytes: always in v1, in v2 when flagged), client id (8, when flagged),
//   worker name (a length byte and that many bytes, when flagged)
//   then one byte 0xff (no devices), or devices until one is flagged last:
//     md byte (index, "no interfaces" flag; v2: index 127 means the next byte holds it)
//     device length byte (length, last / paths / system-device flags; v2: length 31 means
//       the next byte holds it), a paths byte and a system-device byte when flagged,
//       then the device address
//     interfaces until one is flagged last: a 16-bit transport name checksum, the
//       interface attributes (v1: 16 bytes, v2: 8), a length byte (length, last /
//       has-endpoint flags; v2: 63 means the next byte holds it), the interface address,
//       then when flagged endpoint addresses (a length byte, the address, a lane byte
//       whose top bit marks the last)
//
// A TCP interface (transport "tcp") has a device address of a flags byte, the address
// family and the IP address (4 or 16 bytes), or, flagged loopback, the host's boot and
// network-namespace ids (16 bytes: reachable from the same host only, over 127.0.0.1);
// its interface address is the listening port (2 bytes, network order).
//
// A value type; thread-compatible.
#ifndef PQKV_SERVER_DATAPLANE_UCX_WORKER_ADDRESS_H_
#define PQKV_SERVER_DATAPLANE_UCX_WORKER_ADDRESS_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pqkv::server {

// ucs_crc16_string("tcp"): how a worker address names the TCP transport (checked against
// UCX's own function when the data plane starts).
inline constexpr uint16_t kUcxTcpNameChecksum = 0x19cf;
// ucs_crc16_string("sysv"): the System V shared-memory transport (checked likewise).
inline constexpr uint16_t kUcxSysvNameChecksum = 0x538d;

// An IP endpoint a TCP interface of the address listens on.
struct UcxTcpEndpoint {
  int family = 0;                   // AF_INET or AF_INET6
  std::array<uint8_t, 16> ip = {};  // network order; the first 4 bytes for AF_INET
  uint16_t port = 0;                // host order
  bool loopback = false;            // same host only, reached over the loopback address
  // "192.0.2.7:4000", "[2001:db8::1]:4000", "loopback:4000".
  std::string ToString() const;
};

class UcxWorkerAddress {
 public:
  // INVALID_ARGUMENT, saying what and where, unless `bytes` is a whole worker address of
  // format `version` (0: v1, 1: v2; the low 4 bits of the first byte) as laid out above.
  static absl::StatusOr<UcxWorkerAddress> Parse(absl::string_view bytes, uint8_t version);

  uint64_t uuid() const { return uuid_; }  // 0 when the address carries none
  int interfaces() const { return interfaces_; }
  const std::vector<UcxTcpEndpoint>& tcp_endpoints() const { return tcp_endpoints_; }
  // Bit i set: a device of md index i has a System V ("sysv") interface. UCX 1.13 unpacks
  // the rkey section of remote md i with the component of the local transport whose name
  // checksum matches an interface at md i of this address (ucp_wireup_get_reachable_mds),
  // whatever the section's length, so these are the sections it attaches with shmat.
  uint64_t sysv_md_map() const { return sysv_md_map_; }

 private:
  UcxWorkerAddress() = default;
  uint64_t uuid_ = 0;
  int interfaces_ = 0;
  uint64_t sysv_md_map_ = 0;
  std::vector<UcxTcpEndpoint> tcp_endpoints_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_DATAPLANE_UCX_WORKER_ADDRESS_H_

#include "server/dataplane/ucx_worker_address.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace pqkv::server {
namespace {

// UCX 1.13's address constants (src/ucp/wireup/address.c, src/ucp/core/ucp_types.h).
constexpr uint8_t kVersionV1 = 0, kVersionV2 = 1;
constexpr uint8_t kHeaderDebugInfo = 1 << 0, kHeaderWorkerUuid = 1 << 1, kHeaderClientId = 1 << 2;
constexpr uint8_t kNoDevices = 0xff;
constexpr uint8_t kFlagLast = 0x80;
constexpr uint8_t kMdEmptyDevice = 0x80, kMdMaskV1 = 0x1f, kMdMaskV2 = 0x7f;
constexpr uint8_t kDeviceNumPaths = 0x40, kDeviceSysDevice = 0x20, kDeviceLenMask = 0x1f;
constexpr uint8_t kIfaceHasEpAddr = 0x40, kIfaceLenMask = 0x3f;
constexpr size_t kIfaceAttrV1 = 16, kIfaceAttrV2 = 8;
constexpr int kMaxMds = 64;         // UCP_MAX_MDS
constexpr int kMaxResources = 128;  // UCP_MAX_RESOURCES: interfaces in one address
constexpr int kMaxEpAddresses = 6;  // UCP_MAX_LANES
// uct_tcp_device_addr_t and what follows it.
constexpr uint8_t kTcpDeviceLoopback = 1 << 0;
constexpr size_t kTcpLocalNsBytes = 16;  // uct_iface_local_addr_ns_t

// Reads the address front to back; every read is checked against what is left.
class Reader {
 public:
  explicit Reader(absl::string_view bytes) : bytes_(bytes) {}
  size_t offset() const { return at_; }
  bool done() const { return at_ == bytes_.size(); }
  absl::Status Byte(const char* what, uint8_t* out) {
    absl::string_view one;
    if (absl::Status s = Bytes(what, 1, &one); !s.ok()) return s;
    *out = static_cast<uint8_t>(one[0]);
    return absl::OkStatus();
  }
  absl::Status Bytes(const char* what, size_t n, absl::string_view* out) {
    if (n > bytes_.size() - at_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the worker address is truncated or corrupt: its ", what, " (", n, " bytes at offset ",
          at_, ") runs past its end (", bytes_.size(), " bytes)"));
    }
    *out = bytes_.substr(at_, n);
    at_ += n;
    return absl::OkStatus();
  }
  // A byte whose low bits (`mask`) hold a value; in v2 the value `mask` itself means the
  // next byte holds it (ucp_address_unpack_byte_extended).
  absl::Status Extended(const char* what, uint8_t mask, uint8_t version, uint8_t* flags,
                        uint8_t* value) {
    uint8_t byte;
    if (absl::Status s = Byte(what, &byte); !s.ok()) return s;
    *flags = byte & static_cast<uint8_t>(~mask);
    *value = byte & mask;
    if (version == kVersionV2 && *value == mask) return Byte(what, value);
    return absl::OkStatus();
  }

 private:
  absl::string_view bytes_;
  size_t at_ = 0;
};

#define PQKV_READ(expr)                        \
  do {                                         \
    absl::Status read_status = (expr);         \
    if (!read_status.ok()) return read_status; \
  } while (false)

absl::Status Corrupt(const Reader& reader, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("the worker address is corrupt at offset ", reader.offset(), ": ", why));
}

}  // namespace

std::string UcxTcpEndpoint::ToString() const {
  if (loopback) return absl::StrCat("loopback:", port);
  char text[INET6_ADDRSTRLEN] = {0};
  inet_ntop(family, ip.data(), text, sizeof text);
  return family == AF_INET6 ? absl::StrCat("[", text, "]:", port) : absl::StrCat(text, ":", port);
}

absl::StatusOr<UcxWorkerAddress> UcxWorkerAddress::Parse(absl::string_view bytes, uint8_t version) {
  if (version != kVersionV1 && version != kVersionV2) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker address format ", version, " is not one this server reads"));
  }
  if (bytes.empty() || (static_cast<uint8_t>(bytes[0]) & 0xf) != version) {
    return absl::InvalidArgumentError(
        absl::StrCat("the worker address is not a UCX worker address of this server's format (v",
                     version + 1, "): wrong version in its first byte"));
  }
  Reader reader(bytes);
  UcxWorkerAddress address;
  uint8_t header, flags;
  PQKV_READ(reader.Byte("header", &header));
  if (version == kVersionV1) {
    flags = header >> 4;
  } else {
    PQKV_READ(reader.Byte("header flags", &flags));
  }
  absl::string_view field;
  if (version == kVersionV1 || (flags & kHeaderWorkerUuid) != 0) {
    PQKV_READ(reader.Bytes("worker uuid", sizeof address.uuid_, &field));
    std::memcpy(&address.uuid_, field.data(), sizeof address.uuid_);
  }
  if ((flags & kHeaderClientId) != 0) PQKV_READ(reader.Bytes("client id", 8, &field));
  if ((flags & kHeaderDebugInfo) != 0) {
    uint8_t name_bytes;
    PQKV_READ(reader.Byte("worker name length", &name_bytes));
    PQKV_READ(reader.Bytes("worker name", name_bytes, &field));
  }
  uint8_t first;
  PQKV_READ(reader.Byte("first device", &first));
  if (first == kNoDevices) {
    if (!reader.done()) return Corrupt(reader, "bytes follow an empty device list");
    return address;
  }
  // Re-read as the first device's md byte.
  Reader devices(bytes);
  PQKV_READ(devices.Bytes("header", reader.offset() - 1, &field));
  bool last_device = false;
  while (!last_device) {
    uint8_t md_flags, md_index;
    PQKV_READ(devices.Extended("md index", version == kVersionV1 ? kMdMaskV1 : kMdMaskV2, version,
                               &md_flags, &md_index));
    if (md_index >= kMaxMds) return Corrupt(devices, absl::StrCat("md index ", md_index));
    const bool empty_device = (md_flags & kMdEmptyDevice) != 0;
    uint8_t device_flags, device_bytes;
    PQKV_READ(devices.Extended("device address length", kDeviceLenMask, version, &device_flags,
                               &device_bytes));
    last_device = (device_flags & kFlagLast) != 0;
    if ((device_flags & kDeviceNumPaths) != 0) {
      uint8_t paths = 0;
      PQKV_READ(devices.Byte("device paths", &paths));
      if (paths == 0) return Corrupt(devices, "a device with 0 paths");
    }
    if ((device_flags & kDeviceSysDevice) != 0)
      PQKV_READ(devices.Bytes("system device", 1, &field));
    absl::string_view device;
    PQKV_READ(devices.Bytes("device address", device_bytes, &device));
    bool last_iface = empty_device;
    while (!last_iface) {
      if (++address.interfaces_ > kMaxResources) {
        return Corrupt(devices, absl::StrCat("more than ", kMaxResources, " interfaces"));
      }
      absl::string_view checksum_bytes;
      PQKV_READ(devices.Bytes("transport name checksum", 2, &checksum_bytes));
      uint16_t checksum;
      std::memcpy(&checksum, checksum_bytes.data(), sizeof checksum);
      PQKV_READ(devices.Bytes("interface attributes",
                              version == kVersionV1 ? kIfaceAttrV1 : kIfaceAttrV2, &field));
      uint8_t iface_flags, iface_bytes;
      PQKV_READ(devices.Extended("interface address length", kIfaceLenMask, version, &iface_flags,
                                 &iface_bytes));
      last_iface = (iface_flags & kFlagLast) != 0;
      absl::string_view iface;
      PQKV_READ(devices.Bytes("interface address", iface_bytes, &iface));
      bool last_ep = (iface_flags & kIfaceHasEpAddr) == 0;
      for (int eps = 0; !last_ep; ++eps) {
        if (eps == kMaxEpAddresses) {
          return Corrupt(devices, absl::StrCat("more than ", kMaxEpAddresses,
                                               " endpoint addresses on one interface"));
        }
        uint8_t ep_bytes, lane;
        PQKV_READ(devices.Byte("endpoint address length", &ep_bytes));
        PQKV_READ(devices.Bytes("endpoint address", ep_bytes, &field));
        PQKV_READ(devices.Byte("endpoint lane", &lane));
        last_ep = (lane & kFlagLast) != 0;
      }
      if (checksum == kUcxSysvNameChecksum) address.sysv_md_map_ |= uint64_t{1} << md_index;
      if (checksum != kUcxTcpNameChecksum) continue;
      // What the server would dial: checked in full, so that none is dialled unchecked.
      UcxTcpEndpoint endpoint;
      if (device.size() < 2 || iface.size() != 2) {
        return Corrupt(devices,
                       "a TCP interface whose device or interface address has the "
                       "wrong length");
      }
      const uint8_t tcp_flags = static_cast<uint8_t>(device[0]);
      endpoint.family = static_cast<uint8_t>(device[1]);
      endpoint.port = static_cast<uint16_t>(static_cast<uint8_t>(iface[0]) << 8 |
                                            static_cast<uint8_t>(iface[1]));  // network order
      const size_t ip_bytes = endpoint.family == AF_INET ? 4 : endpoint.family == AF_INET6 ? 16 : 0;
      if (ip_bytes == 0 || (tcp_flags & ~kTcpDeviceLoopback) != 0) {
        return Corrupt(devices, absl::StrCat("a TCP interface of address family ", endpoint.family,
                                             " and flags ", tcp_flags));
      }
      endpoint.loopback = (tcp_flags & kTcpDeviceLoopback) != 0;
      if (device.size() != 2 + (endpoint.loopback ? kTcpLocalNsBytes : ip_bytes)) {
        return Corrupt(devices, "a TCP device address of the wrong length");
      }
      if (endpoint.loopback) {
        // UCX dials the loopback address of its own family.
        if (endpoint.family == AF_INET) {
          endpoint.ip = {127, 0, 0, 1};
        } else {
          endpoint.ip[15] = 1;
        }
      } else {
        std::memcpy(endpoint.ip.data(), device.data() + 2, ip_bytes);
      }
      address.tcp_endpoints_.push_back(endpoint);
    }
  }
  if (!devices.done()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the worker address is corrupt: ", bytes.size() - devices.offset(),
                     " bytes follow its last device"));
  }
  return address;
}

}  // namespace pqkv::server

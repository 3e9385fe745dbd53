// Checks on a client's DataPlaneOffer's rkey before it reaches UCX (its worker address:
// ucx_worker_address.h). UCX 1.13 trusts packed remote keys: a malformed one trips an
// assertion, and a key whose shared-memory segment is gone crashes ucp_ep_rkey_unpack
// (its error path frees what it never set up). So the framing is checked here, and the
// System V segments a key names (the ones a same-host server maps with ucp_rkey_ptr) are
// looked up and pinned while UCX unpacks the key.
//
// Packed key framing in UCX 1.13: a 64-bit memory-domain map, a memory-type byte, then
// per domain in the map a length byte and that many bytes, then at most a system-device
// trailer (a device byte and 3 bytes per distance). A System V section is 12 bytes: the
// segment id (uint32) and the segment's address in the owner (uint64).
//
// Which sections are System V is not in the key: UCX unpacks the section of md index i
// with the transport the client's worker address names at md i, whatever its length
// (UcxWorkerAddress::sysv_md_map). So a section at a System V index must be 12 bytes, and
// sections at other indices are left to UCX as they are: their transports attach no
// System V segment, and taking one for a segment would let forged bytes set the bounds
// of the server's shared-memory path (UcxDataPlane::Connect).
#ifndef PQKV_SERVER_DATAPLANE_UCX_OFFER_CHECK_H_
#define PQKV_SERVER_DATAPLANE_UCX_OFFER_CHECK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pqkv::server {

// A System V shared-memory segment named by a packed key, as the kernel reports it.
struct SysvSegment {
  uint32_t shmid = 0;
  uint64_t owner_address = 0;  // where the segment is mapped in the client
  uint64_t bytes = 0;          // its size
};

// Holds a read-only attachment of a segment, so that it outlives its owner's removal
// while UCX attaches it too. Move-only.
class SysvPin {
 public:
  // INVALID_ARGUMENT when the segment cannot be attached (gone, or not permitted).
  static absl::StatusOr<SysvPin> Attach(uint32_t shmid);
  SysvPin(SysvPin&& other) noexcept : address_(other.address_) { other.address_ = nullptr; }
  SysvPin& operator=(SysvPin&&) = delete;
  ~SysvPin();

 private:
  explicit SysvPin(void* address) : address_(address) {}
  void* address_;
};

// A client's packed key made safe to hand to UCX. System V sections whose segment this
// process can attach are kept and their segments pinned for the object's life; the
// others (a segment that is gone, lives in another host's or IPC namespace's kernel, or
// is not ours to attach) are cut from the key, so UCX never attaches them and reaches
// the buffer by puts instead. Sections at other md indices are kept unchanged.
struct PreparedRkey {
  std::string packed;                 // the key to unpack
  std::vector<SysvSegment> segments;  // the kept System V segments, pinned below
  std::vector<SysvPin> pins;
  int dropped_sections = 0;  // System V sections cut from the key
};

// `sysv_md_map`: bit i set when md index i of the client's worker address has a System V
// interface (UcxWorkerAddress::sysv_md_map). INVALID_ARGUMENT for a key whose framing is
// corrupt, that is not for host memory, or whose section at a System V index is not 12 bytes.
absl::StatusOr<PreparedRkey> PrepareRkey(const std::string& rkey, uint64_t sysv_md_map);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_DATAPLANE_UCX_OFFER_CHECK_H_

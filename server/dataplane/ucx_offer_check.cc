#include "server/dataplane/ucx_offer_check.h"

#include <sys/ipc.h>
#include <sys/shm.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace pqkv::server {
namespace {

constexpr size_t kSysvSectionBytes = sizeof(uint32_t) + sizeof(uint64_t);
constexpr uint8_t kHostMemory = 0;  // UCS_MEMORY_TYPE_HOST

absl::Status Corrupt() { return absl::InvalidArgumentError("the rkey is truncated or corrupt"); }

}  // namespace

absl::StatusOr<PreparedRkey> PrepareRkey(const std::string& rkey, uint64_t sysv_md_map) {
  constexpr size_t kHeader = sizeof(uint64_t) + 1;
  if (rkey.size() < kHeader) {
    return absl::InvalidArgumentError(
        absl::StrCat("the rkey is ", rkey.size(), " bytes, too short"));
  }
  uint64_t md_map = 0;
  std::memcpy(&md_map, rkey.data(), sizeof md_map);
  if (static_cast<uint8_t>(rkey[sizeof md_map]) != kHostMemory) {
    return absl::InvalidArgumentError("the rkey is not for host memory");
  }
  PreparedRkey prepared;
  uint64_t kept_map = md_map;
  std::string sections;
  size_t at = kHeader;
  for (int md = 0; md < 64; ++md) {
    if ((md_map >> md & 1) == 0) continue;
    if (at >= rkey.size()) return Corrupt();
    const size_t section = static_cast<uint8_t>(rkey[at]);
    if (section > rkey.size() - at - 1) return Corrupt();
    const char* body = rkey.data() + at + 1;
    bool keep = true;
    if ((sysv_md_map >> md & 1) != 0) {
      // UCX would read a shmid from it whatever its length (see the header).
      if (section != kSysvSectionBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("the rkey is corrupt: its section at System V md index ", md, " is ",
                         section, " bytes, not ", kSysvSectionBytes));
      }
      SysvSegment segment;
      std::memcpy(&segment.shmid, body, sizeof segment.shmid);
      std::memcpy(&segment.owner_address, body + sizeof segment.shmid,
                  sizeof segment.owner_address);
      // Attached first, so that the size read next is that of the segment now held.
      absl::StatusOr<SysvPin> pin = SysvPin::Attach(segment.shmid);
      shmid_ds info{};
      keep = pin.ok() && shmctl(static_cast<int>(segment.shmid), IPC_STAT, &info) == 0;
      if (keep) {
        segment.bytes = info.shm_segsz;
        prepared.segments.push_back(segment);
        prepared.pins.push_back(*std::move(pin));
      } else {
        kept_map &= ~(uint64_t{1} << md);
        ++prepared.dropped_sections;
      }
    }
    if (keep) sections.append(rkey, at, 1 + section);
    at += 1 + section;
  }
  const size_t trailer = rkey.size() - at;
  if (trailer != 0 && (trailer - 1) % 3 != 0) return Corrupt();
  prepared.packed.assign(reinterpret_cast<const char*>(&kept_map), sizeof kept_map);
  prepared.packed += rkey[sizeof md_map];  // memory type
  prepared.packed += sections;
  prepared.packed.append(rkey, at, trailer);
  return prepared;
}

absl::StatusOr<SysvPin> SysvPin::Attach(uint32_t shmid) {
  void* address = shmat(static_cast<int>(shmid), nullptr, SHM_RDONLY);
  if (address == reinterpret_cast<void*>(-1)) {
    return absl::InvalidArgumentError(absl::StrCat("stale rkey: shared memory segment ", shmid,
                                                   " cannot be attached (", std::strerror(errno),
                                                   ")"));
  }
  return SysvPin(address);
}

SysvPin::~SysvPin() {
  if (address_ != nullptr) shmdt(address_);
}

}  // namespace pqkv::server

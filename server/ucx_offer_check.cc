#include "server/ucx_offer_check.h"

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

absl::Status CheckWorkerAddress(const std::string& address, uint8_t version) {
  if (address.size() < 2 || (static_cast<uint8_t>(address[0]) & 0xf) != version) {
    return absl::InvalidArgumentError(
        "the worker address is not a UCX 1.13 worker address (wrong format version)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SysvSegment>> CheckPackedRkey(const std::string& rkey) {
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
  std::vector<SysvSegment> segments;
  size_t at = kHeader;
  for (int md = 0; md < 64; ++md) {
    if ((md_map >> md & 1) == 0) continue;
    if (at >= rkey.size()) return Corrupt();
    const size_t section = static_cast<uint8_t>(rkey[at++]);
    if (section > rkey.size() - at) return Corrupt();
    if (section == kSysvSectionBytes) {
      SysvSegment segment;
      std::memcpy(&segment.shmid, rkey.data() + at, sizeof segment.shmid);
      std::memcpy(&segment.owner_address, rkey.data() + at + sizeof segment.shmid,
                  sizeof segment.owner_address);
      shmid_ds info{};
      if (shmctl(static_cast<int>(segment.shmid), IPC_STAT, &info) != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("stale rkey: its shared memory segment ", segment.shmid,
                         " is gone or not ours to use (", std::strerror(errno), ")"));
      }
      segment.bytes = info.shm_segsz;
      segments.push_back(segment);
    }
    at += section;
  }
  const size_t trailer = rkey.size() - at;
  if (trailer != 0 && (trailer - 1) % 3 != 0) return Corrupt();
  return segments;
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

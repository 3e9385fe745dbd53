// Fuzz target: the check of a client's UCX data plane offer before any of it reaches UCX
// (server/dataplane/ucx_offer_check.h). The input is a DataPlaneOffer's bytes as a client
// sends it in a Retrieve request: UcxWorkerAddress::Parse on its worker address and PrepareRkey
// on its packed remote key (framing, memory type, the sections at the address's System V md
// indices, whose segments are looked up and pinned, and the trailer). Checks: a prepared key
// is the offered key less the sections it dropped, one pin per kept segment, and preparing it
// again changes nothing.
#include <cstdint>
#include <string>

#include "pqkv/v1/pqkv.pb.h"
#include "server/dataplane/ucx_offer_check.h"
#include "server/dataplane/ucx_worker_address.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace server = pqkv::server;
  pqkv::v1::DataPlaneOffer offer;
  if (!offer.ParseFromArray(data, static_cast<int>(size))) return 0;
  const std::string& address = offer.worker_address();
  uint64_t sysv_md_map = 0;  // of the format that parses (its first byte names one)
  // The worker address is parsed whole (every length bounded) before UCX sees it. The walk
  // is deterministic and must end at the last byte, so an address one byte short of one
  // that parses never does.
  for (const uint8_t version : {0, 1}) {
    absl::StatusOr<server::UcxWorkerAddress> parsed =
        server::UcxWorkerAddress::Parse(address, version);
    if (!parsed.ok()) {
      FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument &&
                     !parsed.status().message().empty(),
                 "%s", parsed.status().ToString().c_str());
      continue;
    }
    FUZZ_CHECK(parsed->interfaces() <= 128, "%d interfaces", parsed->interfaces());
    sysv_md_map = parsed->sysv_md_map();
    for (const server::UcxTcpEndpoint& endpoint : parsed->tcp_endpoints()) {
      FUZZ_CHECK(!endpoint.ToString().empty(), "an endpoint without a name");
    }
    FUZZ_CHECK(
        !server::UcxWorkerAddress::Parse(absl::string_view(address).substr(0, address.size() - 1),
                                         version)
             .ok(),
        "a %zu-byte address parses, and so does its first %zu bytes", address.size(),
        address.size() - 1);
  }

  absl::StatusOr<server::PreparedRkey> prepared = server::PrepareRkey(offer.rkey(), sysv_md_map);
  if (!prepared.ok()) {
    FUZZ_CHECK(prepared.status().code() == absl::StatusCode::kInvalidArgument, "%s",
               prepared.status().ToString().c_str());
    return 0;
  }
  constexpr size_t kSysvSection = 1 + 12;  // length byte, shmid, owner address
  FUZZ_CHECK(
      prepared->packed.size() + kSysvSection * prepared->dropped_sections == offer.rkey().size(),
      "%zu-byte key prepared as %zu bytes with %d sections dropped", offer.rkey().size(),
      prepared->packed.size(), prepared->dropped_sections);
  FUZZ_CHECK(prepared->pins.size() == prepared->segments.size(), "%zu pins for %zu segments",
             prepared->pins.size(), prepared->segments.size());
  FUZZ_CHECK(prepared->packed.compare(8, 1, offer.rkey(), 8, 1) == 0, "memory type changed");
  // The kept segments are pinned, so preparing the prepared key keeps all of them.
  absl::StatusOr<server::PreparedRkey> again = server::PrepareRkey(prepared->packed, sysv_md_map);
  FUZZ_CHECK(again.ok(), "the prepared key is refused: %s", again.status().ToString().c_str());
  FUZZ_CHECK(again->packed == prepared->packed && again->dropped_sections == 0,
             "preparing the prepared key changed it (%d more sections dropped)",
             again->dropped_sections);
  return 0;
}

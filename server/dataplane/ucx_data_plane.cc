#include "server/dataplane/ucx_data_plane.h"

#include <poll.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/dataplane/ucx_offer_check.h"
#include "server/dataplane/ucx_worker_address.h"

// libucs's (exported, not in its public headers): how addresses name transports.
extern "C" uint16_t ucs_crc16_string(const char* s);

namespace pqkv::server {
namespace {

absl::Status UcxError(absl::StatusCode code, const char* what, ucs_status_t status) {
  return absl::Status(code, absl::StrCat(what, ": ", ucs_status_string(status)));
}

void OnEndpointError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  static_cast<UcxPeer::Health*>(arg)->MarkFailed(ucs_status_string(status));
}

// The transports of an endpoint's lanes ("tcp", "rc_mlx5,ud_mlx5", ...), read from
// ucp_ep_print_info: UCX 1.13 has no query for them. Empty if the text is not as expected.
std::string LaneTransports(ucp_ep_h ep) {
  char* text = nullptr;
  size_t size = 0;
  FILE* out = open_memstream(&text, &size);
  if (out == nullptr) return "";
  ucp_ep_print_info(ep, out);
  std::fclose(out);
  std::vector<std::string> names;
  // Lane lines read "#  lane[0]:  2:tcp/lo.0 md[1] ...": the name follows "N:" up to "/".
  for (absl::string_view line : absl::StrSplit(absl::string_view(text, size), '\n')) {
    const size_t lane = line.find("lane[");
    if (lane == absl::string_view::npos) continue;
    const size_t colon = line.find(':', line.find("]:", lane) + 2);
    const size_t slash = line.find('/', colon);
    if (colon == absl::string_view::npos || slash == absl::string_view::npos) continue;
    std::string name(line.substr(colon + 1, slash - colon - 1));
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  std::free(text);
  return absl::StrJoin(names, ",");
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxDataPlane>> UcxDataPlane::Create(
    int workers, NetworkAllowlist allowed_networks) {
  if (workers < 1) return absl::InvalidArgumentError("the UCX data plane needs at least 1 worker");
  if (ucs_crc16_string("tcp") != kUcxTcpNameChecksum ||
      ucs_crc16_string("sysv") != kUcxSysvNameChecksum) {
    return absl::UnavailableError(
        "this UCX names transports in worker addresses differently from UCX 1.13: the server "
        "cannot check offers' TCP endpoints and System V keys");
  }
  std::unique_ptr<UcxDataPlane> plane(new UcxDataPlane(std::move(allowed_networks)));
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_config_read", status);
  // Without posix shared memory the server never unpacks a posix key, whose segment
  // (a /proc/<pid>/fd link) cannot be pinned against its owner going away; clients'
  // buffers are System V segments (UCX allocates those first), or reached by puts.
  if (std::getenv("UCX_TLS") == nullptr) ucp_config_modify(config, "TLS", "^posix");
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;  // several workers, each used by one thread at a time
  status = ucp_init(&params, config, &plane->context_);
  ucp_config_release(config);
  if (status != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_init", status);
  for (int w = 0; w < workers; ++w) {
    auto worker = std::make_unique<UcxWorker>();
    ucp_worker_params_t worker_params{};
    worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    worker_params.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // serialised by worker->mu
    absl::MutexLock lock(&worker->mu);
    status = ucp_worker_create(plane->context_, &worker_params, &worker->handle);
    if (status != UCS_OK) {
      worker->handle = nullptr;
      return UcxError(absl::StatusCode::kUnavailable, "ucp_worker_create", status);
    }
    UcxWorker* const created = worker.get();
    plane->workers_.push_back(std::move(worker));  // destroyed with the plane on any error below
    ucp_address_t* own = nullptr;
    size_t own_bytes = 0;
    status = ucp_worker_get_address(created->handle, &own, &own_bytes);
    if (status != UCS_OK) {
      return UcxError(absl::StatusCode::kUnavailable, "ucp_worker_get_address", status);
    }
    const std::string own_address(reinterpret_cast<const char*>(own), own_bytes);
    ucp_worker_release_address(created->handle, own);
    if (w == 0) plane->address_version_ = static_cast<uint8_t>(own_address[0]) & 0xf;
    // Clients' addresses are parsed as this one is: if it does not parse (another UCX
    // version, UCX_UNIFIED_MODE), no offer would be checked, so there is no data plane.
    absl::StatusOr<UcxWorkerAddress> parsed =
        UcxWorkerAddress::Parse(own_address, plane->address_version_);
    if (!parsed.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "this UCX's own worker address is not in the format the server checks offers "
          "against (UCX 1.13, UCX_UNIFIED_MODE=n): ",
          parsed.status().message()));
    }
    if (parsed->uuid() != 0) plane->own_uuids_.push_back(parsed->uuid());
    int fd = -1;
    if (ucp_worker_get_efd(created->handle, &fd) == UCS_OK) plane->event_fds_.push_back(fd);
  }
  if (plane->event_fds_.size() != plane->workers_.size()) plane->event_fds_.clear();
  plane->progress_ = std::thread([p = plane.get()] { p->ProgressLoop(); });
  return plane;
}

void UcxDataPlane::ProgressLoop() {
  std::vector<pollfd> events;
  for (int fd : event_fds_) events.push_back({fd, POLLIN, 0});
  while (!stop_.load(std::memory_order_relaxed)) {
    bool busy = false;
    for (const std::unique_ptr<UcxWorker>& worker : workers_) {
      absl::MutexLock lock(&worker->mu);
      while (ucp_worker_progress(worker->handle) != 0) {
      }
      // UCS_ERR_BUSY: events arrived meanwhile; progress again before sleeping.
      if (!events.empty() && ucp_worker_arm(worker->handle) == UCS_ERR_BUSY) busy = true;
    }
    if (busy) continue;
    for (pollfd& event : events) event.revents = 0;
    poll(events.data(), events.size(), /*timeout_ms=*/10);
  }
}

UcxDataPlane::~UcxDataPlane() {
  if (progress_.joinable()) {
    stop_.store(true);
    progress_.join();
  }
  for (const std::unique_ptr<UcxWorker>& worker : workers_) {
    absl::MutexLock lock(&worker->mu);
    if (worker->handle != nullptr) ucp_worker_destroy(worker->handle);
    worker->handle = nullptr;
  }
  if (context_ != nullptr) ucp_cleanup(context_);
}

absl::StatusOr<std::unique_ptr<UcxPeer>> UcxDataPlane::Connect(const v1::DataPlaneOffer& offer) {
  const uint64_t buffer_address = offer.buffer_address();
  const uint64_t buffer_bytes = offer.buffer_bytes();
  if (offer.worker_address().empty() || offer.rkey().empty() || buffer_bytes == 0) {
    return absl::InvalidArgumentError(
        "the data plane offer needs a worker address, an rkey and a buffer of at least 1 byte");
  }
  absl::StatusOr<UcxWorkerAddress> address =
      UcxWorkerAddress::Parse(offer.worker_address(), address_version_);
  if (!address.ok()) return address.status();
  if (address->uuid() != 0 &&
      std::find(own_uuids_.begin(), own_uuids_.end(), address->uuid()) != own_uuids_.end()) {
    return absl::InvalidArgumentError("the worker address is this server's own");
  }
  for (const UcxTcpEndpoint& endpoint : address->tcp_endpoints()) {
    if (!allowed_networks_.Allows(endpoint.family, endpoint.ip.data())) {
      return absl::PermissionDeniedError(
          absl::StrCat("the worker address names TCP endpoint ", endpoint.ToString(),
                       ", outside the networks this server may dial for a data plane "
                       "(--ucx_allowed_networks=",
                       allowed_networks_.ToString(), ")"));
    }
  }
  // Pinned, the key's segments cannot vanish while UCX attaches them in the unpack below;
  // those that cannot be pinned are cut from the key. Which sections UCX takes for System
  // V segments follows from the address the endpoint is created with, this one.
  absl::StatusOr<PreparedRkey> rkey = PrepareRkey(offer.rkey(), address->sysv_md_map());
  if (!rkey.ok()) return rkey.status();
  UcxWorker* worker = workers_[next_worker_.fetch_add(1) % workers_.size()].get();
  std::unique_ptr<UcxPeer> peer(new UcxPeer(this, worker, buffer_address, buffer_bytes));
  void* flush = nullptr;
  {
    absl::MutexLock lock(&worker->mu);
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(offer.worker_address().data());
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = OnEndpointError;
    params.err_handler.arg = peer->health_;
    const ucs_status_t status = ucp_ep_create(worker->handle, &params, &peer->ep_);
    if (status != UCS_OK) {
      peer->ep_ = nullptr;
      return UcxError(absl::StatusCode::kInvalidArgument,
                      "cannot reach the client's UCX worker address", status);
    }
    // Completes once every lane is connected (see the header: nothing may be queued
    // behind a lane still connecting when the key is unpacked).
    ucp_request_param_t flush_params{};
    flush = ucp_ep_flush_nbx(peer->ep_, &flush_params);
  }
  if (absl::Status connected = Wait(*worker, flush, absl::Now() + kConnectTimeout);
      !connected.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the client's UCX worker did not answer: ",
        connected.code() == absl::StatusCode::kDeadlineExceeded
            ? absl::StrCat("no connection within ", absl::FormatDuration(kConnectTimeout))
            : std::string(connected.message())));
  }
  absl::MutexLock lock(&worker->mu);
  if (peer->health_->failed) {
    return absl::UnavailableError(
        absl::StrCat("the client's UCX endpoint failed: ", peer->health_->failure));
  }
  ucs_status_t status = ucp_ep_rkey_unpack(peer->ep_, rkey->packed.data(), &peer->rkey_);
  if (status != UCS_OK) {
    peer->rkey_ = nullptr;
    return UcxError(absl::StatusCode::kInvalidArgument, "cannot unpack the client's rkey", status);
  }
  peer->transports_ = LaneTransports(peer->ep_);
  // The buffer is UCX shared memory on this host: map it and gather straight into it,
  // but only a System V segment the kernel says holds the whole offered range, that
  // starts with the client's check bytes (so it is this client's buffer, not a segment
  // of the same id in another IPC namespace), and for one stream at a time.
  void* mapped = nullptr;
  if (ucp_rkey_ptr(peer->rkey_, buffer_address, &mapped) != UCS_OK || mapped == nullptr) {
    return peer;
  }
  for (const SysvSegment& segment : rkey->segments) {
    if (buffer_address < segment.owner_address ||
        buffer_address - segment.owner_address >= segment.bytes) {
      continue;
    }
    if (buffer_bytes > segment.bytes - (buffer_address - segment.owner_address)) {
      return absl::InvalidArgumentError(absl::StrCat("the offered buffer of ", buffer_bytes,
                                                     " bytes runs past its shared memory segment (",
                                                     segment.bytes, " bytes)"));
    }
    const std::string& check = offer.buffer_check();
    if (check.size() < kMinCheckBytes || check.size() > buffer_bytes ||
        std::memcmp(mapped, check.data(), check.size()) != 0) {
      return peer;  // not provably the client's buffer: puts only
    }
    absl::MutexLock segments_lock(&segments_mu_);
    if (!mapped_segments_.insert(segment.shmid).second) {
      // Usually the client's previous stream on this buffer, still ending: retry.
      return absl::AbortedError(absl::StrCat("shared memory segment ", segment.shmid,
                                             " is already the buffer of another stream"));
    }
    peer->mapped_ = static_cast<char*>(mapped);
    peer->shmid_ = segment.shmid;
    return peer;
  }
  return peer;  // mapped, but through no segment the key named: puts only
}

UcxPeer::UcxPeer(UcxDataPlane* plane, UcxWorker* worker, uint64_t remote_address,
                 uint64_t buffer_bytes)
    : plane_(plane),
      worker_(worker),
      remote_address_(remote_address),
      buffer_bytes_(buffer_bytes),
      health_(new Health()) {}

UcxPeer::~UcxPeer() {
  if (mapped_ != nullptr) {
    absl::MutexLock lock(&plane_->segments_mu_);
    plane_->mapped_segments_.erase(shmid_);
  }
  absl::MutexLock lock(&worker_->mu);
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
  // Every write has finished or closed the endpoint, so nothing else is in flight.
  if (CloseEndpointLocked()) delete health_;
}

bool UcxPeer::CloseEndpointLocked() {
  if (ep_ == nullptr) return true;
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  params.flags = UCP_EP_CLOSE_FLAG_FORCE;  // the client may be gone: do not wait for it
  void* request = ucp_ep_close_nbx(ep_, &params);
  ep_ = nullptr;
  if (request == nullptr || UCS_PTR_IS_ERR(request)) return true;
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (ucp_request_check_status(request) == UCS_INPROGRESS && absl::Now() < deadline) {
    ucp_worker_progress(worker_->handle);
  }
  const bool closed = ucp_request_check_status(request) != UCS_INPROGRESS;
  // Not closed: its error handler may still run, so health_ must stay valid (leaked).
  ucp_request_free(request);
  return closed;
}

void UcxPeer::Health::MarkFailed(const char* reason) {
  failed = true;
  failure = reason;
}

absl::Status UcxPeer::CheckBounds(uint64_t offset, uint64_t bytes) const {
  if (offset > buffer_bytes_ || bytes > buffer_bytes_ - offset) {
    return absl::OutOfRangeError(absl::StrCat("rows of ", bytes, " bytes at offset ", offset,
                                              " do not fit the client's registered buffer of ",
                                              buffer_bytes_, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status UcxPeer::Write(absl::Span<const Chunk> chunks, absl::Duration timeout) {
  for (const Chunk& chunk : chunks) {
    absl::Status status = CheckBounds(chunk.offset, chunk.bytes);
    if (!status.ok()) return status;
  }
  const absl::Time deadline = absl::Now() + timeout;
  void* flush = nullptr;
  {
    absl::MutexLock lock(&worker_->mu);
    if (health_->failed || ep_ == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("the client's UCX endpoint failed: ", health_->failure));
    }
    ucp_request_param_t params{};
    for (const Chunk& chunk : chunks) {
      if (chunk.bytes == 0) continue;
      void* put =
          ucp_put_nbx(ep_, chunk.src, chunk.bytes, remote_address_ + chunk.offset, rkey_, &params);
      if (UCS_PTR_IS_ERR(put)) {
        // Earlier puts may still read the sources: the endpoint goes, and with it they.
        health_->MarkFailed(ucs_status_string(UCS_PTR_STATUS(put)));
        CloseEndpointLocked();
        return UcxError(absl::StatusCode::kUnavailable, "ucp_put_nbx", UCS_PTR_STATUS(put));
      }
      if (put != nullptr) ucp_request_free(put);  // the flush below waits for it
    }
    flush = ucp_ep_flush_nbx(ep_, &params);
  }
  absl::Status waited = UcxDataPlane::Wait(*worker_, flush, deadline);
  if (!waited.ok()) {
    // Timed out or failed: close the endpoint so that no put reads the sources after
    // this returns; the stream's later writes fail at once.
    absl::MutexLock lock(&worker_->mu);
    health_->MarkFailed(waited.code() == absl::StatusCode::kDeadlineExceeded
                            ? "the client did not take the rows in time"
                            : std::string(waited.message()).c_str());
    CloseEndpointLocked();
    return absl::UnavailableError(absl::StrCat("UCX put to the client failed: ", health_->failure,
                                               " (is its UCX worker progressed?)"));
  }
  return absl::OkStatus();
}

absl::Status UcxDataPlane::Wait(UcxWorker& worker, void* request, absl::Time deadline) {
  if (request == nullptr) return absl::OkStatus();
  if (UCS_PTR_IS_ERR(request)) {
    return UcxError(absl::StatusCode::kUnavailable, "UCX", UCS_PTR_STATUS(request));
  }
  // The lock is taken per round, so that streams sharing the worker progress too while
  // one client is slow.
  for (uint64_t round = 0;; ++round) {
    bool idle;
    {
      absl::MutexLock lock(&worker.mu);
      idle = ucp_worker_progress(worker.handle) == 0;
      const ucs_status_t status = ucp_request_check_status(request);
      if (status != UCS_INPROGRESS) {
        ucp_request_free(request);
        return status == UCS_OK ? absl::OkStatus()
                                : UcxError(absl::StatusCode::kUnavailable, "UCX transfer", status);
      }
      if ((round & 255) == 0 && absl::Now() > deadline) {
        ucp_request_free(request);  // released by UCX when the endpoint closes
        return absl::DeadlineExceededError("timed out");
      }
    }
    if (idle && round > 1024) absl::SleepFor(absl::Microseconds(20));  // a slow client
  }
}

}  // namespace pqkv::server

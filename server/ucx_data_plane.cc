#include "server/ucx_data_plane.h"

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
#include "server/ucx_offer_check.h"

namespace pqkv::server {
namespace {

absl::Status UcxError(absl::StatusCode code, const char* what, ucs_status_t status) {
  return absl::Status(code, absl::StrCat(what, ": ", ucs_status_string(status)));
}

void OnEndpointError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  static_cast<UcxPeer*>(arg)->MarkFailed(ucs_status_string(status));
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

absl::StatusOr<std::unique_ptr<UcxDataPlane>> UcxDataPlane::Create(int workers) {
  if (workers < 1) return absl::InvalidArgumentError("the UCX data plane needs at least 1 worker");
  std::unique_ptr<UcxDataPlane> plane(new UcxDataPlane());
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_config_read", status);
  // Without posix shared memory the server never unpacks a posix key, whose segment
  // (a /proc/<pid>/fd link) cannot be pinned against its owner going away; clients'
  // buffers are System V segments (UCX allocates those first), or reached by puts.
  if (std::getenv("UCX_TLS") == nullptr) ucp_config_modify(config, "TLS", "^posix");
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA;
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
    if (w == 0) {
      ucp_address_t* own = nullptr;
      size_t own_bytes = 0;
      status = ucp_worker_get_address(worker->handle, &own, &own_bytes);
      if (status != UCS_OK) {
        return UcxError(absl::StatusCode::kUnavailable, "ucp_worker_get_address", status);
      }
      plane->address_version_ = *reinterpret_cast<const uint8_t*>(own) & 0xf;
      ucp_worker_release_address(worker->handle, own);
    }
    plane->workers_.push_back(std::move(worker));
  }
  return plane;
}

UcxDataPlane::~UcxDataPlane() {
  for (const std::unique_ptr<UcxWorker>& worker : workers_) {
    absl::MutexLock lock(&worker->mu);
    if (worker->handle != nullptr) ucp_worker_destroy(worker->handle);
    worker->handle = nullptr;
  }
  if (context_ != nullptr) ucp_cleanup(context_);
}

absl::StatusOr<std::unique_ptr<UcxPeer>> UcxDataPlane::Connect(const std::string& worker_address,
                                                               uint64_t buffer_address,
                                                               uint64_t buffer_bytes,
                                                               const std::string& rkey) {
  if (worker_address.empty() || rkey.empty() || buffer_bytes == 0) {
    return absl::InvalidArgumentError(
        "the data plane offer needs a worker address, an rkey and a buffer of at least 1 byte");
  }
  if (absl::Status framed = CheckWorkerAddress(worker_address, address_version_); !framed.ok()) {
    return framed;
  }
  absl::StatusOr<std::vector<SysvSegment>> segments = CheckPackedRkey(rkey);
  if (!segments.ok()) return segments.status();
  // Pinned, the segments cannot vanish while UCX attaches them in the unpack below.
  std::vector<SysvPin> pins;
  for (const SysvSegment& segment : *segments) {
    absl::StatusOr<SysvPin> pin = SysvPin::Attach(segment.shmid);
    if (!pin.ok()) return pin.status();
    pins.push_back(*std::move(pin));
  }
  UcxWorker* worker = workers_[next_worker_.fetch_add(1) % workers_.size()].get();
  std::unique_ptr<UcxPeer> peer(new UcxPeer(this, worker, buffer_address, buffer_bytes));
  absl::MutexLock lock(&worker->mu);
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = OnEndpointError;
  params.err_handler.arg = peer.get();
  ucs_status_t status = ucp_ep_create(worker->handle, &params, &peer->ep_);
  if (status != UCS_OK) {
    peer->ep_ = nullptr;
    return UcxError(absl::StatusCode::kInvalidArgument,
                    "cannot reach the client's UCX worker address", status);
  }
  // ucp_ep_rkey_unpack reads the packed key; copy it so that the buffer is writable.
  std::vector<char> packed(rkey.begin(), rkey.end());
  status = ucp_ep_rkey_unpack(peer->ep_, packed.data(), &peer->rkey_);
  if (status != UCS_OK) {
    peer->rkey_ = nullptr;
    return UcxError(absl::StatusCode::kInvalidArgument, "cannot unpack the client's rkey", status);
  }
  peer->transports_ = LaneTransports(peer->ep_);
  // The buffer is UCX shared memory on this host: map it and gather straight into it,
  // but only where the kernel says the offered range lies inside the segment, and only
  // for one stream at a time (another stream offering the same segment is refused).
  void* mapped = nullptr;
  if (ucp_rkey_ptr(peer->rkey_, buffer_address, &mapped) != UCS_OK || mapped == nullptr) {
    return peer;
  }
  for (const SysvSegment& segment : *segments) {
    if (buffer_address < segment.owner_address ||
        buffer_address - segment.owner_address > segment.bytes) {
      continue;
    }
    if (buffer_bytes > segment.bytes - (buffer_address - segment.owner_address)) {
      return absl::InvalidArgumentError(absl::StrCat("the offered buffer of ", buffer_bytes,
                                                     " bytes runs past its shared memory segment (",
                                                     segment.bytes, " bytes)"));
    }
    absl::MutexLock segments_lock(&segments_mu_);
    if (!mapped_segments_.insert(segment.shmid).second) {
      return absl::InvalidArgumentError(absl::StrCat("shared memory segment ", segment.shmid,
                                                     " is already the buffer of another stream"));
    }
    peer->mapped_ = static_cast<char*>(mapped);
    peer->shmid_ = segment.shmid;
    return peer;
  }
  return absl::InvalidArgumentError(
      "the offered buffer address lies outside the shared memory segment of its rkey");
}

UcxPeer::~UcxPeer() {
  if (mapped_ != nullptr) {
    absl::MutexLock lock(&plane_->segments_mu_);
    plane_->mapped_segments_.erase(shmid_);
  }
  absl::MutexLock lock(&worker_->mu);
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
  if (ep_ == nullptr) return;
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  params.flags = UCP_EP_CLOSE_FLAG_FORCE;  // the client may be gone: do not wait for it
  void* request = ucp_ep_close_nbx(ep_, &params);
  UcxDataPlane::WaitLocked(*worker_, request, absl::Now() + absl::Seconds(5), nullptr)
      .IgnoreError();
  // Writes given up on complete (with an error) once the endpoint is closed.
  for (void* abandoned : abandoned_) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (ucp_request_check_status(abandoned) == UCS_INPROGRESS && absl::Now() < deadline) {
      ucp_worker_progress(worker_->handle);
    }
    ucp_request_free(abandoned);
  }
}

void UcxPeer::MarkFailed(const char* reason) {
  failed_ = true;
  failure_ = reason;
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
  if (mapped_ != nullptr) {
    for (const Chunk& chunk : chunks) {
      std::memcpy(mapped_ + chunk.offset, chunk.src, chunk.bytes);
    }
    return absl::OkStatus();
  }
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&worker_->mu);
  if (failed_)
    return absl::UnavailableError(absl::StrCat("the client's UCX endpoint failed: ", failure_));
  absl::Status result;
  ucp_request_param_t params{};
  for (const Chunk& chunk : chunks) {
    if (chunk.bytes == 0) continue;
    void* request =
        ucp_put_nbx(ep_, chunk.src, chunk.bytes, remote_address_ + chunk.offset, rkey_, &params);
    // The flush below waits for every put; only an immediate error is looked at here.
    if (UCS_PTR_IS_ERR(request)) {
      return UcxError(absl::StatusCode::kUnavailable, "ucp_put_nbx", UCS_PTR_STATUS(request));
    }
    if (request != nullptr) ucp_request_free(request);
  }
  return UcxDataPlane::WaitLocked(*worker_, ucp_ep_flush_nbx(ep_, &params), deadline, this);
}

absl::Status UcxDataPlane::WaitLocked(UcxWorker& worker, void* request, absl::Time deadline,
                                      UcxPeer* peer) {
  if (request == nullptr) return absl::OkStatus();
  if (UCS_PTR_IS_ERR(request)) {
    return UcxError(absl::StatusCode::kUnavailable, "UCX", UCS_PTR_STATUS(request));
  }
  ucs_status_t status;
  uint64_t spins = 0;
  while ((status = ucp_request_check_status(request)) == UCS_INPROGRESS) {
    ucp_worker_progress(worker.handle);
    // Check the clock only now and then: progress calls are cheap.
    if ((++spins & 1023) == 0 && absl::Now() > deadline) break;
  }
  if (status == UCS_INPROGRESS) {
    // The endpoint is given up: no more writes; the request completes when it closes.
    if (peer != nullptr) {
      peer->MarkFailed("timed out");
      peer->abandoned_.push_back(request);
    } else {
      ucp_request_free(request);  // released by UCX once it completes
    }
    return absl::UnavailableError(
        "the client did not take the rows in time (is its UCX worker progressed?)");
  }
  ucp_request_free(request);
  if (status != UCS_OK) {
    if (peer != nullptr && peer->failed_) {
      return absl::UnavailableError(
          absl::StrCat("the client's UCX endpoint failed: ", peer->failure_));
    }
    return UcxError(absl::StatusCode::kUnavailable, "UCX transfer", status);
  }
  return absl::OkStatus();
}

}  // namespace pqkv::server

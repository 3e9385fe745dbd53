// UcxDataPlane: the server's end of the UCX data plane. It owns one UCX context and a
// few workers, and connects to clients' receive buffers (UcxPeer) to write selected K/V
// rows into them. The server never maps or packs memory of its own for remote access: a
// client can receive, never read.
//
// How a peer is written, the fastest that measured here (docs/benchmarks.md):
// - "ucx-shm": the client's buffer is a UCX System V segment on this host that the server
//   can attach and that starts with the client's check bytes, so ucp_rkey_ptr maps it
//   into the server and rows are gathered straight into it: one copy.
// - "ucx-put": otherwise (another host, or UCX_TLS without shared memory) rows are
//   gathered into a staging buffer and written with ucp_put_nbx over the transport UCX
//   picks (tcp, rc/dc verbs), then the endpoint is flushed, so the rows are in the
//   client's buffer when Write returns. Endpoints use UCP_ERR_HANDLING_MODE_PEER so a
//   client that disappears fails its own writes, not the server.
//
// UCX settings pass through its environment (UCX_TLS, UCX_NET_DEVICES, ...).
//
// UCX 1.13 trusts the worker addresses and remote keys it is given (malformed or stale
// ones end the process), so Connect checks offers first: the worker address is parsed
// whole with every length bounded (ucx_worker_address.h), the IP endpoints of its TCP
// interfaces must lie in the allowed networks (--ucx_allowed_networks), and the key's
// framing and segments are checked (ucx_offer_check.h). That stops corrupt, foreign and
// stale offers and probes of other hosts, not a peer that crafts a well-framed bad one:
// expose the data plane to authenticated workers only (--auth_tokens_file).
//
// Endpoint lifetime, and UCX 1.13's "got REQ message" assertion (ucp_request.c:684): when
// an endpoint's lanes are discarded (ucp_ep_close_nbx with FORCE, or the endpoint failing)
// while a wireup REQUEST message waits in a transport endpoint's pending queue, UCX 1.13
// aborts the process (upstream dropped the assertion in 1.14, commit 9ccaf31). The server
// queues such a message when ucp_ep_rkey_unpack must resolve the client's endpoint id for
// puts by active messages, and it waits while the lane is not connected yet (a TCP
// connect in progress): a peer torn down in that window, as when an offer failed right
// after unpacking, aborted the server. So Connect first flushes the new endpoint, bounded
// by kConnectTimeout: the flush completes only once every lane is connected, and fails
// (nothing queued but the flush) for an address nobody answers. Only then is the key
// unpacked, and its REQUEST goes out at once instead of waiting in a queue.
//
// Thread-safe. The plane has a few UCX workers (--ucx_workers), each created
// UCS_THREAD_MODE_SERIALIZED and used under its own lock, so puts of peers on different
// workers run in parallel; peers are spread over them in turn. A progress thread of the
// plane's own progresses every worker whenever it has events (and at least every 10 ms),
// so that a client's worker connecting back to answer the server's wireup request is
// accepted at once, not at the server's next transfer: a client whose reply waited in a
// queue that long aborted in the same UCX assertion when the server went away. A UcxPeer
// must be destroyed before its UcxDataPlane.
#ifndef PQKV_SERVER_DATAPLANE_UCX_DATA_PLANE_H_
#define PQKV_SERVER_DATAPLANE_UCX_DATA_PLANE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "pqkv/v1/pqkv.pb.h"
#include "server/security/network_allowlist.h"

// UCX handles, kept opaque so that users of this header need not include UCX.
struct ucp_context;
struct ucp_worker;
struct ucp_ep;
struct ucp_rkey;

namespace pqkv::server {

class UcxDataPlane;

// One UCX worker and the lock every call on it takes.
struct UcxWorker {
  absl::Mutex mu;
  ucp_worker* handle ABSL_GUARDED_BY(mu) = nullptr;
};

// Fewest check bytes (DataPlaneOffer.buffer_check) a mapped buffer must carry.
inline constexpr size_t kMinCheckBytes = 16;

// One client's registered receive buffer, reached through one endpoint.
class UcxPeer {
 public:
  ~UcxPeer();
  UcxPeer(const UcxPeer&) = delete;
  UcxPeer& operator=(const UcxPeer&) = delete;

  // "ucx-shm" or "ucx-put" (see the file comment).
  const char* method() const { return mapped_ != nullptr ? "ucx-shm" : "ucx-put"; }
  uint64_t buffer_bytes() const { return buffer_bytes_; }
  // The transports of the endpoint's lanes, comma-separated ("tcp"; empty if unknown).
  const std::string& transports() const { return transports_; }
  // With "ucx-shm": the client's buffer mapped into this process, buffer_bytes long;
  // otherwise null.
  char* mapped() const { return mapped_; }

  // One contiguous write: `bytes` from `src` to `offset` in the client's buffer.
  struct Chunk {
    uint64_t offset;
    const void* src;
    size_t bytes;
  };
  // "ucx-put" peers: writes every chunk and waits until they are in the client's buffer
  // or `timeout` passes ("ucx-shm" peers are written through mapped()). OUT_OF_RANGE (nothing
  // written) when a chunk leaves the registered buffer; UNAVAILABLE when the client is gone or does
  // not take the data in time, and then the endpoint is closed (later writes fail at once) before
  // this returns, so no put reads the sources afterwards.
  absl::Status Write(absl::Span<const Chunk> chunks, absl::Duration timeout);

  // Checks [offset, offset + bytes) against the registered buffer.
  absl::Status CheckBounds(uint64_t offset, uint64_t bytes) const;

  // Whether the client is gone, as UCX's endpoint error handler reports it (under
  // worker->mu, during progress). Its own allocation: it outlives a peer whose endpoint
  // would not close, since the handler may still run then.
  struct Health {
    bool failed = false;
    std::string failure;
    void MarkFailed(const char* reason);
  };

 private:
  friend class UcxDataPlane;
  UcxPeer(UcxDataPlane* plane, UcxWorker* worker, uint64_t remote_address, uint64_t buffer_bytes);
  // Force-closes the endpoint and waits for it (bounded); true when it closed.
  bool CloseEndpointLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_->mu);

  UcxDataPlane* const plane_;
  UcxWorker* const worker_;  // owned by plane_
  const uint64_t remote_address_;
  const uint64_t buffer_bytes_;
  Health* const health_;  // owned; leaked only if the endpoint never closes
  ucp_ep* ep_ = nullptr;
  ucp_rkey* rkey_ = nullptr;
  std::string transports_;
  char* mapped_ = nullptr;
  uint32_t shmid_ = 0;  // the System V segment mapped_ points into
};

class UcxDataPlane {
 public:
  // How long Connect waits for a new endpoint's lanes to connect.
  static constexpr absl::Duration kConnectTimeout = absl::Seconds(2);

  // Opens the UCX context and `workers` workers; an error when UCX cannot start here (the
  // server then serves rows in gRPC responses only). Offers may name TCP endpoints in
  // `allowed_networks` only.
  static absl::StatusOr<std::unique_ptr<UcxDataPlane>> Create(
      int workers = 1,
      NetworkAllowlist allowed_networks = NetworkAllowlist::LoopbackAndLocalSubnets());
  ~UcxDataPlane();
  UcxDataPlane(const UcxDataPlane&) = delete;
  UcxDataPlane& operator=(const UcxDataPlane&) = delete;

  // Connects to a client's buffer from its offer. INVALID_ARGUMENT for an address or
  // rkey UCX cannot use (or this server's own worker address), or a buffer range its
  // segment does not hold; PERMISSION_DENIED for a worker address with a TCP endpoint
  // outside the allowed networks; UNAVAILABLE when the client's worker does not answer
  // within kConnectTimeout; ABORTED when another stream maps the same buffer (the
  // client's previous stream, still ending: retry).
  absl::StatusOr<std::unique_ptr<UcxPeer>> Connect(const v1::DataPlaneOffer& offer);

 private:
  friend class UcxPeer;
  explicit UcxDataPlane(NetworkAllowlist allowed_networks)
      : allowed_networks_(std::move(allowed_networks)) {}
  // Progresses `worker` (taking its lock round by round) until `request` (a UCX request
  // pointer or status) completes, or DEADLINE_EXCEEDED at `deadline`; frees it.
  static absl::Status Wait(UcxWorker& worker, void* request, absl::Time deadline);
  // The progress thread's loop (see the file comment), until stop_.
  void ProgressLoop();

  ucp_context* context_ = nullptr;
  uint8_t address_version_ = 0;  // format version of this UCX's worker addresses
  NetworkAllowlist allowed_networks_;
  std::vector<uint64_t> own_uuids_;  // of the workers' addresses: never dialled
  std::vector<std::unique_ptr<UcxWorker>> workers_;
  std::atomic<uint32_t> next_worker_{0};
  std::vector<int> event_fds_;  // the workers' wakeup fds (none: polled every 10 ms)
  std::atomic<bool> stop_{false};
  std::thread progress_;
  // Segments mapped by live peers: one stream per client buffer.
  absl::Mutex segments_mu_;
  absl::flat_hash_set<uint32_t> mapped_segments_ ABSL_GUARDED_BY(segments_mu_);
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_DATAPLANE_UCX_DATA_PLANE_H_

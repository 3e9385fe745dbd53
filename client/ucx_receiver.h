// UcxReceiver: the client's end of the UCX data plane. It owns a UCX context and
// worker, and one receive buffer that servers write selected K/V rows into.
//
// The buffer is allocated by UCX (ucp_mem_map with ALLOCATE, which takes sysv or posix
// shared memory first) so that a server on the same host can map it and gather rows
// straight into it; across hosts servers put into it over TCP or verbs. It is
// page-locked (mlock) and, where a CUDA device is present, registered with CUDA
// (cudaHostRegister) so copies to the GPU are DMA. Only this buffer is registered: a
// server can write it and nothing else of the client's.
//
// A progress thread drives the worker, sleeping on its wakeup fd between events: some
// transports (TCP) complete a server's put only while the receiving worker progresses.
//
// Thread-safe after Create: the worker is used by the progress thread only. The destructor
// first lets the worker send what it has queued (at most 1 s): a server that writes by
// emulated puts (TCP) asks this worker for its endpoint id, and UCX 1.13 aborts the
// process when a reply still queued is dropped. Destroy the receiver while the servers it
// offered to are still up; one that goes away in the moment the reply is being sent can
// still abort the process (UCX 1.13; the assertion is gone in 1.14).
#ifndef PQKV_CLIENT_UCX_RECEIVER_H_
#define PQKV_CLIENT_UCX_RECEIVER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "pqkv/v1/pqkv.pb.h"

struct ucp_context;
struct ucp_worker;
struct ucp_mem;

namespace pqkv {

class UcxReceiver {
 public:
  // A receive buffer of at least `bytes` usable bytes after the check (rounded up to
  // whole pages by UCX).
  static absl::StatusOr<std::unique_ptr<UcxReceiver>> Create(size_t bytes);
  ~UcxReceiver();
  UcxReceiver(const UcxReceiver&) = delete;
  UcxReceiver& operator=(const UcxReceiver&) = delete;

  // The whole registered buffer; its first kCheckBytes hold check() (see below).
  char* data() const { return data_; }
  size_t size() const { return size_; }
  // Random bytes written at the start of the buffer, for DataPlaneOffer.buffer_check:
  // a server that maps the buffer proves it is this one by finding them there. Callers
  // must not write over them; usable space starts at data() + kCheckBytes.
  static constexpr size_t kCheckBytes = 64;
  const std::string& check() const { return check_; }
  // The DataPlaneOffer of this buffer: worker address, buffer, rkey, check bytes.
  v1::DataPlaneOffer Offer() const;
  const std::string& worker_address() const { return worker_address_; }
  const std::string& rkey() const { return rkey_; }
  // Whether mlock succeeded (RLIMIT_MEMLOCK may forbid it) and whether CUDA pinned it.
  bool page_locked() const { return page_locked_; }
  bool cuda_registered() const { return cuda_registered_; }

 private:
  UcxReceiver() = default;
  void ProgressLoop();

  ucp_context* context_ = nullptr;
  ucp_worker* worker_ = nullptr;
  ucp_mem* memh_ = nullptr;
  char* data_ = nullptr;
  size_t size_ = 0;
  std::string worker_address_;
  std::string rkey_;
  std::string check_;
  bool page_locked_ = false;
  bool cuda_registered_ = false;
  std::atomic<bool> stop_{false};
  std::thread progress_;
};

}  // namespace pqkv

#endif  // PQKV_CLIENT_UCX_RECEIVER_H_

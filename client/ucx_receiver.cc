#include "client/ucx_receiver.h"

#include <poll.h>
#include <sys/mman.h>
#include <ucp/api/ucp.h>

#include <cstring>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cuda_host_register.h"

namespace pqkv {
namespace {

absl::Status UcxError(const char* what, ucs_status_t status) {
  return absl::UnavailableError(
      absl::StrCat("UCX data plane: ", what, ": ", ucs_status_string(status)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxReceiver>> UcxReceiver::Create(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("a receive buffer needs at least 1 byte");
  std::unique_ptr<UcxReceiver> receiver(new UcxReceiver());
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UcxError("ucp_config_read", status);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  status = ucp_init(&params, config, &receiver->context_);
  ucp_config_release(config);
  if (status != UCS_OK) return UcxError("ucp_init", status);

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;  // the progress thread only
  status = ucp_worker_create(receiver->context_, &worker_params, &receiver->worker_);
  if (status != UCS_OK) return UcxError("ucp_worker_create", status);
  ucp_address_t* address = nullptr;
  size_t address_bytes = 0;
  status = ucp_worker_get_address(receiver->worker_, &address, &address_bytes);
  if (status != UCS_OK) return UcxError("ucp_worker_get_address", status);
  receiver->worker_address_.assign(reinterpret_cast<const char*>(address), address_bytes);
  ucp_worker_release_address(receiver->worker_, address);

  ucp_mem_map_params_t map{};
  map.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                   UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  map.address = nullptr;
  map.length = bytes + kCheckBytes;
  map.flags = UCP_MEM_MAP_ALLOCATE;
  status = ucp_mem_map(receiver->context_, &map, &receiver->memh_);
  if (status != UCS_OK) return UcxError("ucp_mem_map", status);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  status = ucp_mem_query(receiver->memh_, &attr);
  if (status != UCS_OK) return UcxError("ucp_mem_query", status);
  receiver->data_ = static_cast<char*>(attr.address);
  receiver->size_ = attr.length;
  void* packed = nullptr;
  size_t packed_bytes = 0;
  status = ucp_rkey_pack(receiver->context_, receiver->memh_, &packed, &packed_bytes);
  if (status != UCS_OK) return UcxError("ucp_rkey_pack", status);
  receiver->rkey_.assign(static_cast<const char*>(packed), packed_bytes);
  ucp_rkey_buffer_release(packed);

  absl::BitGen random;
  receiver->check_.resize(kCheckBytes);
  for (char& c : receiver->check_) c = static_cast<char>(absl::Uniform<uint8_t>(random));
  std::memcpy(receiver->data_, receiver->check_.data(), kCheckBytes);

  // Pinned: the kernel may not page it out, and the GPU can DMA from it.
  receiver->page_locked_ = mlock(receiver->data_, receiver->size_) == 0;
  receiver->cuda_registered_ = CudaHostRegisterIfPresent(receiver->data_, receiver->size_);
  receiver->progress_ = std::thread([r = receiver.get()] { r->ProgressLoop(); });
  return receiver;
}

v1::DataPlaneOffer UcxReceiver::Offer() const {
  v1::DataPlaneOffer offer;
  offer.set_worker_address(worker_address_);
  offer.set_buffer_address(reinterpret_cast<uintptr_t>(data_));
  offer.set_buffer_bytes(size_);
  offer.set_rkey(rkey_);
  offer.set_buffer_check(check_);
  return offer;
}

UcxReceiver::~UcxReceiver() {
  if (progress_.joinable()) {
    stop_.store(true);
    ucp_worker_signal(worker_);
    progress_.join();
  }
  if (worker_ != nullptr) {
    // The worker may still be connecting back to a server to answer its wireup request;
    // UCX 1.13 aborts the process if ucp_worker_destroy drops such a queued message, so
    // let it go out first (bounded: a server that is gone never takes it).
    ucp_request_param_t params{};
    void* flush = ucp_worker_flush_nbx(worker_, &params);
    if (UCS_PTR_IS_PTR(flush)) {
      const absl::Time deadline = absl::Now() + absl::Seconds(1);
      while (ucp_request_check_status(flush) == UCS_INPROGRESS && absl::Now() < deadline) {
        ucp_worker_progress(worker_);
      }
      ucp_request_free(flush);
    }
  }
  if (cuda_registered_) CudaHostUnregister(data_);
  if (page_locked_) munlock(data_, size_);
  if (memh_ != nullptr) ucp_mem_unmap(context_, memh_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

void UcxReceiver::ProgressLoop() {
  int fd = -1;
  const bool wakeup = ucp_worker_get_efd(worker_, &fd) == UCS_OK;
  while (!stop_.load(std::memory_order_relaxed)) {
    while (ucp_worker_progress(worker_) != 0) {
    }
    if (wakeup) {
      const ucs_status_t armed = ucp_worker_arm(worker_);
      if (armed == UCS_ERR_BUSY) continue;  // events arrived meanwhile
      if (armed == UCS_OK) {
        pollfd events{fd, POLLIN, 0};
        poll(&events, 1, /*timeout_ms=*/100);
        continue;
      }
    }
    // No wakeup fd on these transports: poll the worker every millisecond.
    pollfd none{-1, 0, 0};
    poll(&none, 0, 1);
  }
}

}  // namespace pqkv

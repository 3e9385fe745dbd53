#include "server/memory/byte_budget.h"

#include <cassert>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pqkv::server {

ByteBudget::Reservation::Reservation(Reservation&& other) noexcept
    : budget_(std::exchange(other.budget_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

ByteBudget::Reservation& ByteBudget::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void ByteBudget::Reservation::Release() {
  if (budget_ != nullptr && bytes_ > 0) {
    budget_->in_use_.fetch_sub(bytes_, std::memory_order_relaxed);
  }
  budget_ = nullptr;
  bytes_ = 0;
}

void ByteBudget::Reservation::Absorb(Reservation other) {
  if (other.budget_ == nullptr) return;
  assert(budget_ == nullptr || budget_ == other.budget_);
  budget_ = std::exchange(other.budget_, nullptr);
  bytes_ += std::exchange(other.bytes_, 0);
}

absl::StatusOr<ByteBudget::Reservation> ByteBudget::TryReserve(size_t bytes) {
  size_t in_use = in_use_.load(std::memory_order_relaxed);
  do {
    if (bytes > capacity_ - in_use) {
      return absl::ResourceExhaustedError(absl::StrCat(bytes, " bytes do not fit: ", in_use, " of ",
                                                       capacity_, " bytes are in use"));
    }
  } while (!in_use_.compare_exchange_weak(in_use, in_use + bytes, std::memory_order_relaxed));
  return Reservation(this, bytes);
}

}  // namespace pqkv::server

// ByteBudget: bytes reserved against a fixed capacity, for memory outside the page arena
// that must still be bounded server-wide (the K/V rows Retrieve gathers into responses).
// A Reservation gives its bytes back when it is destroyed or released.
//
// Thread-safe (one atomic count; reserving never blocks). The budget must outlive every
// Reservation taken from it.
#ifndef PQKV_SERVER_MEMORY_BYTE_BUDGET_H_
#define PQKV_SERVER_MEMORY_BYTE_BUDGET_H_

#include <atomic>
#include <cstddef>

#include "absl/status/statusor.h"

namespace pqkv::server {

class ByteBudget {
 public:
  // Bytes held against a ByteBudget; move-only. A default-constructed one holds none.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept;
    Reservation& operator=(Reservation&& other) noexcept;
    ~Reservation() { Release(); }

    size_t bytes() const { return bytes_; }
    // Gives the bytes back now (nothing happens the second time).
    void Release();
    // Takes over `other`'s bytes, which must be of the same budget (or none).
    void Absorb(Reservation other);

   private:
    friend class ByteBudget;
    Reservation(ByteBudget* budget, size_t bytes) : budget_(budget), bytes_(bytes) {}
    ByteBudget* budget_ = nullptr;
    size_t bytes_ = 0;
  };

  explicit ByteBudget(size_t capacity_bytes) : capacity_(capacity_bytes) {}
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Reserves `bytes`, or RESOURCE_EXHAUSTED (nothing reserved) when they would take the
  // bytes in use past the capacity; the message gives the three numbers.
  absl::StatusOr<Reservation> TryReserve(size_t bytes);

  size_t capacity() const { return capacity_; }
  size_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

 private:
  const size_t capacity_;
  std::atomic<size_t> in_use_{0};
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_MEMORY_BYTE_BUDGET_H_

// PageArena: one reserved region of memory, carved into fixed-size pages, that holds
// every session's K/V. One region (not a vector per tensor) so that a data plane can
// register the whole store with a transport once.
//
// Thread-safe. The arena owns the region; a page belongs to whoever allocated it until
// it is freed. Capacity is the memory budget: allocation beyond it fails with
// RESOURCE_EXHAUSTED and never touches the OS allocator.
//
// With huge_pages the region asks for transparent huge pages (madvise, where the kernel's
// THP mode is "madvise" or "always"): a re-rank or a row fetch touches a few rows in each
// of thousands of 4 KiB pages, and on the Intel Xeon of docs/benchmarks.md the re-rank's
// dot products over cold rows took 1.1-1.2x as long on 4 KiB pages (TLB misses). Freeing
// a page still returns its memory (the huge page is split).
#ifndef PQKV_SERVER_MEMORY_PAGE_ARENA_H_
#define PQKV_SERVER_MEMORY_PAGE_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace pqkv::server {

class PageArena {
 public:
  // Reserves `capacity_bytes` (rounded down to whole pages) of address space; physical
  // memory is only committed as pages are written. page_bytes must be a multiple of 4096.
  static absl::StatusOr<std::unique_ptr<PageArena>> Create(size_t capacity_bytes,
                                                           size_t page_bytes,
                                                           bool huge_pages = true);
  ~PageArena();

  PageArena(const PageArena&) = delete;
  PageArena& operator=(const PageArena&) = delete;

  // Allocates `count` pages, all or none. RESOURCE_EXHAUSTED says how many were asked
  // for and how many are free.
  absl::StatusOr<std::vector<uint32_t>> Allocate(size_t count);
  // Returns pages to the arena and their physical memory to the OS.
  void Free(const std::vector<uint32_t>& pages);

  // Start of page `page`; valid while the page is allocated.
  char* PageData(uint32_t page) const { return base_ + static_cast<size_t>(page) * page_bytes_; }

  size_t page_bytes() const { return page_bytes_; }
  size_t capacity_bytes() const { return num_pages_ * page_bytes_; }
  size_t bytes_in_use() const;

 private:
  PageArena(char* base, size_t num_pages, size_t page_bytes);

  char* const base_;
  const size_t num_pages_;
  const size_t page_bytes_;

  mutable absl::Mutex mu_;
  // Pages never handed out start at next_fresh_; freed pages wait in free_list_.
  size_t next_fresh_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<uint32_t> free_list_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_MEMORY_PAGE_ARENA_H_

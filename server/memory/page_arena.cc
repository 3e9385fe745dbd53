#include "server/memory/page_arena.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pqkv::server {

absl::StatusOr<std::unique_ptr<PageArena>> PageArena::Create(size_t capacity_bytes,
                                                             size_t page_bytes, bool huge_pages) {
  if (page_bytes == 0 || page_bytes % 4096 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page size ", page_bytes, " is not a positive multiple of 4096"));
  }
  const size_t num_pages = capacity_bytes / page_bytes;
  if (num_pages == 0 || num_pages > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("memory budget ", capacity_bytes,
                                                   " bytes gives ", num_pages, " pages of ",
                                                   page_bytes, " bytes"));
  }
  // MAP_NORESERVE: reserve address space only; pages are committed on first write.
  void* base = mmap(nullptr, num_pages * page_bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot reserve ", num_pages * page_bytes, " bytes for the K/V arena: ", strerror(errno)));
  }
  // A hint: a kernel without THP (or with it set to "never") refuses it, and the arena
  // works the same on 4 KiB pages.
  if (huge_pages) madvise(base, num_pages * page_bytes, MADV_HUGEPAGE);
  return std::unique_ptr<PageArena>(new PageArena(static_cast<char*>(base), num_pages, page_bytes));
}

PageArena::PageArena(char* base, size_t num_pages, size_t page_bytes)
    : base_(base), num_pages_(num_pages), page_bytes_(page_bytes) {}

PageArena::~PageArena() { munmap(base_, num_pages_ * page_bytes_); }

absl::StatusOr<std::vector<uint32_t>> PageArena::Allocate(size_t count) {
  absl::MutexLock lock(&mu_);
  const size_t free_pages = free_list_.size() + (num_pages_ - next_fresh_);
  if (count > free_pages) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "K/V memory budget exhausted: need ", count, " pages (", count * page_bytes_, " bytes), ",
        free_pages, " of ", num_pages_, " free (budget ", num_pages_ * page_bytes_, " bytes)"));
  }
  std::vector<uint32_t> pages;
  pages.reserve(count);
  while (pages.size() < count && !free_list_.empty()) {
    pages.push_back(free_list_.back());
    free_list_.pop_back();
  }
  while (pages.size() < count) pages.push_back(static_cast<uint32_t>(next_fresh_++));
  return pages;
}

void PageArena::Free(const std::vector<uint32_t>& pages) {
  for (uint32_t page : pages) madvise(PageData(page), page_bytes_, MADV_DONTNEED);
  absl::MutexLock lock(&mu_);
  free_list_.insert(free_list_.end(), pages.begin(), pages.end());
}

size_t PageArena::bytes_in_use() const {
  absl::MutexLock lock(&mu_);
  return (next_fresh_ - free_list_.size()) * page_bytes_;
}

}  // namespace pqkv::server

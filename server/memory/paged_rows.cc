#include "server/memory/paged_rows.h"

#include <cassert>
#include <cstring>

namespace pqkv::server {

PagedRows::PagedRows(PageArena* arena, size_t row_bytes)
    : arena_(arena),
      row_bytes_(row_bytes),
      rows_per_page_(arena->page_bytes() / row_bytes),
      page_shift_((rows_per_page_ & (rows_per_page_ - 1)) == 0 ? __builtin_ctzll(rows_per_page_)
                                                               : -1) {
  assert(rows_per_page_ > 0);
}

PagedRows::~PagedRows() { arena_->Free(pages_); }

size_t PagedRows::PagesNeededFor(size_t extra_rows) const {
  const size_t capacity = pages_.size() * rows_per_page_;
  const size_t wanted = num_rows_ + extra_rows;
  if (wanted <= capacity) return 0;
  return (wanted - capacity + rows_per_page_ - 1) / rows_per_page_;
}

void PagedRows::Gather(const uint32_t* rows, size_t count, char* out) const {
  // Far enough ahead to cover a miss's latency, near enough that the lines are still
  // in cache when copied.
  constexpr size_t kPrefetchRows = 8;
  constexpr size_t kLineBytes = 64;
  for (size_t i = 0; i < count; ++i) {
    if (i + kPrefetchRows < count) {
      const char* ahead = Row(rows[i + kPrefetchRows]);
      for (size_t at = 0; at < row_bytes_; at += kLineBytes) __builtin_prefetch(ahead + at);
    }
    std::memcpy(out + i * row_bytes_, Row(rows[i]), row_bytes_);
  }
}

void PagedRows::AddPages(const std::vector<uint32_t>& pages) {
  pages_.insert(pages_.end(), pages.begin(), pages.end());
}

void PagedRows::Append(const char* src, size_t count) {
  assert(PagesNeededFor(count) == 0);
  while (count > 0) {
    const size_t in_page = num_rows_ % rows_per_page_;
    const size_t n = std::min(count, rows_per_page_ - in_page);
    char* dst = arena_->PageData(pages_[num_rows_ / rows_per_page_]) + in_page * row_bytes_;
    std::memcpy(dst, src, n * row_bytes_);
    src += n * row_bytes_;
    num_rows_ += n;
    count -= n;
  }
}

}  // namespace pqkv::server

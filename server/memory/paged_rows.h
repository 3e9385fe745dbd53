// PagedRows: a growing sequence of fixed-size rows (one token's K or V for one kv head)
// stored in PageArena pages, rows_per_page rows to a page.
//
// Not thread-safe: the owner (LayerStore) serialises appends against reads. Owns its
// pages and returns them to the arena on destruction.
#ifndef PQKV_SERVER_MEMORY_PAGED_ROWS_H_
#define PQKV_SERVER_MEMORY_PAGED_ROWS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "server/memory/page_arena.h"

namespace pqkv::server {

class PagedRows {
 public:
  PagedRows(PageArena* arena, size_t row_bytes);
  ~PagedRows();

  PagedRows(const PagedRows&) = delete;
  PagedRows& operator=(const PagedRows&) = delete;

  // Pages needed so that `extra_rows` more rows fit.
  size_t PagesNeededFor(size_t extra_rows) const;
  // Adopts pages (from PageArena::Allocate) that later appends fill.
  void AddPages(const std::vector<uint32_t>& pages);
  // Appends `count` rows from `src` (count * row_bytes bytes). Requires room for them
  // (PagesNeededFor(count) == 0).
  void Append(const char* src, size_t count);

  // Row `row` (< size()), row_bytes bytes.
  const char* Row(size_t row) const {
    // A shift where the rows per page are a power of two (the usual page and row sizes):
    // a division per row was a tenth of a re-rank, which looks up thousands of rows.
    if (page_shift_ >= 0) {
      return arena_->PageData(pages_[row >> page_shift_]) +
             (row & (rows_per_page_ - 1)) * row_bytes_;
    }
    return arena_->PageData(pages_[row / rows_per_page_]) + (row % rows_per_page_) * row_bytes_;
  }
  // Copies the rows `rows` (each < size()) back to back into `out`, in the order given.
  // Selected rows lie at random in the pages, so each row's cache lines are prefetched a
  // few rows ahead: the copy then waits on memory bandwidth rather than on one miss after
  // another (about 1.3x a plain memcpy loop on one core, docs/benchmarks.md).
  void Gather(const uint32_t* rows, size_t count, char* out) const;

  size_t size() const { return num_rows_; }
  size_t row_bytes() const { return row_bytes_; }
  size_t bytes_held() const { return pages_.size() * arena_->page_bytes(); }

 private:
  PageArena* const arena_;
  const size_t row_bytes_;
  const size_t rows_per_page_;
  const int page_shift_;  // log2(rows_per_page_), or -1 when it is not a power of two
  std::vector<uint32_t> pages_;
  size_t num_rows_ = 0;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_MEMORY_PAGED_ROWS_H_

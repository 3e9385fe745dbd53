// Session: one inference sequence's cache: its config and one LayerStore per layer.
//
// Thread-safe: the config is immutable and each LayerStore locks itself. Owned by
// SessionStore through shared_ptr, so calls in flight keep a closed session alive
// until they finish; its pages return to the arena when the last reference goes.
#ifndef PQKV_SERVER_STORE_SESSION_H_
#define PQKV_SERVER_STORE_SESSION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/index/gpu_scorer.h"
#include "server/memory/page_arena.h"
#include "server/store/layer_store.h"
#include "server/store/session_config.h"

namespace pqkv::server {

class Session {
 public:
  // A session that held this many bytes or more (bytes_held) trims glibc's heaps
  // (malloc_trim) when it is destroyed, handing back the free memory its structures and
  // its calls' buffers left there.
  static constexpr size_t kTrimAfterBytes = size_t{1} << 20;

  // arena: shared, so that a session released by a task that outlives the store (at
  // shutdown) still returns its pages to a live arena. gpu: the CUDA backend or null;
  // must outlive the session. owner: the principal that created it ("" without
  // authentication).
  // metadata_pages: arena pages (from PageArena::Allocate, never written, so never
  // resident) that charge MetadataBytes(config) to the memory budget; the session frees
  // them when it is destroyed.
  Session(std::string id, const SessionConfig& config, std::shared_ptr<PageArena> arena,
          GpuScorer* gpu = nullptr, std::string owner = "",
          std::vector<uint32_t> metadata_pages = {});
  ~Session();

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Heap bytes a session of `config` takes before it holds any K/V: the Session and one
  // empty LayerStore per layer (LayerStore::MetadataBytes). SessionStore charges them to
  // the memory budget, in whole arena pages, before it creates the session.
  static size_t MetadataBytes(const SessionConfig& config);

  const std::string& id() const { return id_; }
  // A number no other Session of this process has had (1, 2, ...): tells this session
  // apart from an earlier or later one created under the same id, e.g. for state kept
  // beside it by id (a Retrieve stream's row cache directories).
  uint64_t serial() const { return serial_; }
  const std::string& owner() const { return owner_; }
  const SessionConfig& config() const { return config_; }
  absl::Time created() const { return created_; }
  // Marks the session used at `at` (every call that names it does, through SessionStore).
  void Touch(absl::Time at = absl::Now()) {
    last_used_ns_.store(absl::ToUnixNanos(at), std::memory_order_relaxed);
  }
  absl::Time last_used() const {
    return absl::FromUnixNanos(last_used_ns_.load(std::memory_order_relaxed));
  }

  // The layer, or INVALID_ARGUMENT when out of range.
  absl::StatusOr<LayerStore*> layer(uint32_t layer) const;
  uint32_t num_layers() const { return static_cast<uint32_t>(layers_.size()); }

  // Set by SessionStore::Close; queued index builds of a closed session are skipped.
  void MarkClosed() { closed_.store(true, std::memory_order_relaxed); }
  bool closed() const { return closed_.load(std::memory_order_relaxed); }

  // Bytes charged to the memory budget: every layer's K/V pages plus the metadata pages.
  size_t bytes_held() const;
  // The metadata pages' bytes alone (MetadataBytes rounded up to whole pages).
  size_t metadata_bytes_held() const { return metadata_pages_.size() * arena_->page_bytes(); }

 private:
  const std::string id_;
  const uint64_t serial_;
  const std::string owner_;
  const SessionConfig config_;
  const absl::Time created_;
  const std::shared_ptr<PageArena> arena_;  // declared before layers_: outlives them
  const std::vector<uint32_t> metadata_pages_;
  std::vector<std::unique_ptr<LayerStore>> layers_;
  std::atomic<bool> closed_{false};
  std::atomic<int64_t> last_used_ns_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_STORE_SESSION_H_

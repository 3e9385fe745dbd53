// SessionStore: the server's live sessions, the page arena that holds their K/V (its
// capacity is the memory budget), and the background pool that builds layer indexes.
//
// Thread-safe. Owns the arena and the pool; sessions are shared with calls in flight.
#ifndef PQKV_SERVER_STORE_SESSION_STORE_H_
#define PQKV_SERVER_STORE_SESSION_STORE_H_

#include <atomic>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/index/gpu_scorer.h"
#include "server/memory/page_arena.h"
#include "server/runtime/thread_pool.h"
#include "server/store/session.h"
#include "server/store/session_config.h"

namespace pqkv::server {

struct SessionStoreOptions {
  size_t memory_budget_bytes = size_t{8} << 30;
  size_t page_bytes = size_t{64} << 10;
  // Whether the K/V arena asks for transparent huge pages (--huge_pages; PageArena).
  bool huge_pages = true;
  int index_threads = 1;
  // Niceness of the index threads (0-19; --index_nice): decode-time work gets the cores
  // first while builds run.
  int index_nice = 0;
  // Live sessions at most (--max_sessions); CreateSession past it is RESOURCE_EXHAUSTED.
  size_t max_sessions = 4096;
  // The CUDA backend, or null for the CPU one; must outlive the store.
  GpuScorer* gpu = nullptr;
  // Sessions unused for this long are closed by a background sweep; zero: never.
  absl::Duration session_ttl = absl::ZeroDuration();
  // When sessions' layers retrain their codebooks during decoding.
  RefreshPolicy refresh;
  // Called on the index thread after each layer's index build, with its duration.
  std::function<void(absl::Duration)> on_index_built;
};

struct SessionStoreStats {
  size_t num_sessions = 0;
  // Arena bytes in use: K/V pages and the pages that charge sessions' metadata.
  size_t bytes_held = 0;
  size_t bytes_capacity = 0;
  size_t page_bytes = 0;
  size_t index_builds_pending = 0;
  size_t index_builds_done = 0;
  size_t index_refreshes_done = 0;  // codebook retrainings during decoding
};

class SessionStore {
 public:
  static absl::StatusOr<std::unique_ptr<SessionStore>> Create(const SessionStoreOptions& options);

  // Creates a session under `requested_id`, or a fresh id when it is empty. Its metadata
  // (Session::MetadataBytes, rounded up to whole pages) is charged to the arena first.
  // ALREADY_EXISTS for a live id; INVALID_ARGUMENT for a bad id or config;
  // RESOURCE_EXHAUSTED, with the numbers, at max_sessions or when the metadata does not
  // fit the memory budget.
  absl::StatusOr<std::shared_ptr<Session>> CreateSession(const std::string& requested_id,
                                                         const SessionConfig& config,
                                                         const std::string& owner = "");
  // NOT_FOUND for an unknown id or one `principal` does not own (sessions belong to the
  // principal that created them; "" without authentication). Marks the session used.
  absl::StatusOr<std::shared_ptr<Session>> Get(const std::string& id,
                                               const std::string& principal = "") const;
  // Removes the session; returns the bytes its K/V held. Storage is freed as soon as
  // calls in flight on the session finish.
  absl::StatusOr<size_t> Close(const std::string& id, const std::string& principal = "");
  // The sessions `principal` owns.
  std::vector<std::shared_ptr<Session>> List(const std::string& principal = "") const;

  // Marks the layer's prefill complete and queues its index build when it needs one.
  void SealPrefill(const std::shared_ptr<Session>& session, uint32_t layer);
  // After tokens were appended to `layer`: schedules a retraining of its codebooks on the
  // index pool when the layer's refresh policy asks for one (LayerStore::ClaimRefresh).
  void MaybeRefresh(const std::shared_ptr<Session>& session, uint32_t layer);

  // Server-wide totals.
  SessionStoreStats Stats() const;
  // The same, but num_sessions and bytes_held count only the sessions `principal` owns.
  SessionStoreStats StatsOf(const std::string& principal) const;

  // Closes every session last used before now - ttl; returns how many. The sweep thread
  // calls it; tests call it with a chosen `now`.
  size_t ExpireIdleSessions(absl::Time now, absl::Duration ttl);

  ~SessionStore();

 private:
  SessionStore(std::unique_ptr<PageArena> arena, const SessionStoreOptions& options);
  void SweepLoop();

  // Declared first so that it is destroyed last, after every session's pages are freed.
  // Shared with every session, which may outlive the store by a task's reference.
  const std::shared_ptr<PageArena> arena_;
  GpuScorer* const gpu_;
  const size_t max_sessions_;
  mutable absl::Mutex mu_;
  // Keyed by (owner, id): each principal has its own id space.
  std::map<std::string, std::shared_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> index_builds_done_{0};
  std::atomic<size_t> index_refreshes_done_{0};
  const absl::Duration session_ttl_;
  const std::function<void(absl::Duration)> on_index_built_;
  const RefreshPolicy refresh_;
  absl::Mutex sweep_mu_;
  bool stopping_ ABSL_GUARDED_BY(sweep_mu_) = false;
  std::thread sweeper_;  // runs SweepLoop when session_ttl_ > 0
  // Declared last so that it is destroyed first: queued builds finish before the rest.
  ThreadPool index_pool_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_STORE_SESSION_STORE_H_

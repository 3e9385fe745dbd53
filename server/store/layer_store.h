// LayerStore: one layer of one session: its K/V rows per kv head (paged, in the
// uploaded dtype), its PQ index (codebook and codes per kv head) and the index's state.
//
// Thread-safe. Appends and index installation take the layer's lock exclusively;
// Retrieve and Fetch share it. Codebook training (BuildIndex) runs outside the lock on
// a snapshot of the keys, so uploads and retrievals on other layers never wait on it,
// and uploads to this layer wait only while the snapshot is copied.
#ifndef PQKV_SERVER_STORE_LAYER_STORE_H_
#define PQKV_SERVER_STORE_LAYER_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/pq_code_store.h"
#include "server/index/gpu_scorer.h"
#include "server/index/head_scorer.h"
#include "server/index/pq_codebook.h"
#include "server/memory/page_arena.h"
#include "server/memory/paged_rows.h"
#include "server/runtime/thread_pool.h"
#include "server/store/session_config.h"

namespace pqkv::server {

enum class IndexState {
  kOpen,      // prefill not complete: every token scored exactly
  kBuilding,  // codebooks training: Retrieve scores exactly (or waits, until its deadline)
  kReady,     // scored from PQ codes
  kExact,     // too few tokens to train: scored exactly
  kFailed,    // training failed, or its codes did not fit the memory budget: scored exactly
};

// How well one answered selection matches exact attention over the tokens the layer
// held when it was scored (the metrics of quality/selection_quality.h, without the
// query's own key, which the server does not hold yet).
struct SelectionQualitySample {
  // Softmax mass of the sinks, the recent window and the selected tokens, averaged over
  // every query head.
  double mass_recall = 0;
  // |selected ∩ exact top-k of the candidates| / k, averaged over the kv heads.
  double recall_at_k = 0;
};

struct LayerStatus {
  uint64_t num_tokens = 0;
  IndexState index_state = IndexState::kOpen;
  uint64_t num_encoded = 0;
  double index_build_ms = 0;
  size_t bytes_held = 0;  // K/V pages and the pages charging the PQ index
  // Live quality samples of this layer's Retrieve items (MeasureQuality).
  uint64_t quality_samples = 0;
  double last_mass_recall = 0;
  double mean_mass_recall = 0;
  // The drift signal: mean squared quantization error |k - k^|^2 per key of the keys the
  // codebooks were trained on (a sample), and of the latest appended tokens (an
  // exponential average over about 64; 0 before any).
  double training_quantization_error = 0;
  double appended_quantization_error = 0;
  // Times the codebooks were retrained during decoding (RefreshIndex).
  uint64_t index_refreshes = 0;
};

struct LayerSelection {
  uint64_t num_tokens = 0;           // tokens the layer held when scored
  uint64_t num_encoded = 0;          // of which scored from codes
  std::vector<HeadSelection> heads;  // one per kv head
};

class LayerStore {
 public:
  // gpu: the CUDA backend, or null for the CPU one; must outlive the store.
  LayerStore(uint32_t layer, const SessionConfig& config, PageArena* arena,
             GpuScorer* gpu = nullptr);
  // Releases the layer's device memory on the GPU scorer, if any, and the pages that
  // charge its PQ index.
  ~LayerStore();

  LayerStore(const LayerStore&) = delete;
  LayerStore& operator=(const LayerStore&) = delete;

  // Heap bytes one LayerStore of `config` takes before it holds any token: the object and
  // its per-kv-head row lists (with the allocator's per-block overhead, about). Charged
  // to the memory budget with the session (Session::MetadataBytes).
  static size_t MetadataBytes(const SessionConfig& config);

  // Appends num_tokens tokens at token_begin, which must equal the tokens held. Once the
  // index is ready their codes are charged to the memory budget too (RESOURCE_EXHAUSTED
  // with the numbers when they do not fit).
  // keys, values: [kv_head][token][head_dim] in the session's dtype, finite (NaN or Inf
  // is refused, naming the first such row). All or nothing: on error nothing changes.
  absl::Status Append(uint64_t token_begin, uint32_t num_tokens, absl::string_view keys,
                      absl::string_view values);

  // Marks the prefill complete. Returns true when the caller must run BuildIndex (on
  // the index pool); false when the layer is already sealed or too short to train.
  bool SealPrefill();

  // Trains the codebooks and encodes every token. Call once after SealPrefill() == true.
  // The codebooks and codes are charged to the memory budget (arena pages) before they
  // are installed; when they do not fit, the layer is kFailed (scored exactly) and the
  // log says so with the numbers.
  // The kv heads are built in parallel on `pool` and the calling thread (ParallelFor; pool
  // may be null, and may be the pool the caller runs on).
  void BuildIndex(ThreadPool* pool = nullptr);
  // Whether the codebooks should be retrained now (config().refresh: the appended tokens'
  // mean quantization error has drifted, or the layer has grown); true at most once until
  // RefreshIndex ends, so the caller schedules exactly one.
  bool ClaimRefresh();
  // Retrains the codebooks on every token held now (the same sampling as BuildIndex),
  // encodes them, and swaps index and codes in at once under the lock, encoding the
  // tokens appended meanwhile. Retrieve keeps using the old index until the swap and
  // never waits for the training. The new index is charged to the memory budget before
  // training, beside the old; when it does not fit the refresh is skipped (logged).
  void RefreshIndex(ThreadPool* pool = nullptr);

  // Instead of BuildIndex, when the build will not run (its session closed): the layer
  // is scored exactly from now on.
  void AbandonBuild();

  // While the index is building, keeps `ready` to run (on the building thread, with no
  // lock held) when the build ends, and returns true. Otherwise returns false and leaves
  // `ready` untouched. Lets a caller wait for the index without holding a thread.
  bool DeferUntilIndexSettled(absl::AnyInvocable<void() &&>& ready);

  // Scores every token against `query` (fp32 [query_head][head_dim]) and selects the top
  // k candidates per kv head. While the index is building it waits until `deadline` (a
  // past one: not at all) and, if the build has not ended then, scores every token
  // exactly, as before the prefill was sealed.
  // A fully encoded layer is scored on the GPU when the store has one; otherwise the kv
  // heads are scored in parallel on `pool` and the calling thread (pool may be null).
  // `plain` runs the foundation's plain CPU kernels instead of the fast ones. With
  // rerank > 1 the scan picks rerank x k candidates (at most all of them), the latest
  // appended ones join them (RefreshPolicy::exact_tail), and RerankExact keeps the best k
  // by exact score.
  absl::StatusOr<LayerSelection> Retrieve(absl::Span<const float> query, uint32_t k,
                                          absl::Time deadline, ThreadPool* pool = nullptr,
                                          bool plain = false, uint32_t rerank = 0) const;

  // Copies the K and V rows of `positions` for `kv_head` into keys_out and values_out,
  // each positions.size() * row_bytes bytes, in the order given.
  absl::Status Fetch(uint32_t kv_head, absl::Span<const uint32_t> positions, char* keys_out,
                     char* values_out) const;

  // Measures `selected` (per kv head, the positions Retrieve returned for `query` when the
  // layer held `num_tokens` tokens) against exact attention over those tokens, and adds
  // it to the layer's quality (Status). For live sampling, off the request path: the lock
  // is held only to note where the rows lie (rows never move while the session lives),
  // so appends do not wait for the scoring.
  absl::StatusOr<SelectionQualitySample> MeasureQuality(
      absl::Span<const float> query, uint64_t num_tokens,
      const std::vector<std::vector<uint32_t>>& selected) const;

  LayerStatus Status() const;
  // Bytes of one K (or V) row of one kv head.
  size_t row_bytes() const { return config_.shape.row_bytes(); }

 private:
  // Leaves the building state; runs what DeferUntilIndexSettled kept.
  void SettleIndex(IndexState state, std::vector<PqCodebook> codebooks,
                   std::vector<kernels::PqCodeStore> codes, double build_ms);
  // Makes the index pages charge the codebooks and codes of `tokens` tokens per kv head,
  // growing every code store's capacity (by half at least) when it holds less; with
  // `codebooks` and `codes` about to be installed, or the installed ones (null). Nothing
  // changes on RESOURCE_EXHAUSTED, which gives the numbers.
  absl::Status ReserveIndexLocked(size_t tokens, const std::vector<PqCodebook>& codebooks,
                                  std::vector<kernels::PqCodeStore>& codes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Trains one codebook per kv head on tokens [0, tokens) and encodes them (kv heads in
  // parallel on pool); *training_error is the mean squared quantization error of a sample.
  absl::Status TrainHeads(size_t tokens, ThreadPool* pool, absl::Time start,
                          std::vector<PqCodebook>* codebooks,
                          std::vector<kernels::PqCodeStore>* codes, double* training_error) const;
  // After an append: whether the refresh policy asks for a retraining now; if so marks it
  // queued and lets ClaimRefresh hand it out once (decided here, under the lock Append
  // already holds, so that the append path takes no second lock).
  void NoteRefreshDueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Encodes tokens [num_encoded_, num_tokens_) with the installed codebooks.
  void EncodeTailLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies kv head h's keys [0, n) as fp32 [n][head_dim].
  std::vector<float> KeysAsFloatLocked(uint32_t h, size_t begin, size_t end) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // The CUDA retrieval of a fully encoded layer; an error falls back to the CPU.
  absl::StatusOr<std::vector<HeadSelection>> RetrieveOnGpu(absl::Span<const float> query,
                                                           uint32_t candidate_begin,
                                                           uint32_t candidate_end, uint32_t k) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const uint32_t layer_;
  const SessionConfig config_;
  PageArena* const arena_;
  // Whether code stores keep their one-byte-per-code layout beside the dim4 blocks: only
  // the GPU scorer reads it on the Retrieve path (the plain path unpacks).
  bool KeepCodeBytes() const { return gpu_ != nullptr; }

  GpuScorer* const gpu_;
  // The layer's id on gpu_ (its codebooks and codes stay on the device); 0 without one.
  const uint64_t gpu_layer_;

  mutable absl::Mutex mu_;
  uint64_t num_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  // One entry per kv head; the vectors are fixed at construction, the rows are guarded.
  std::vector<std::unique_ptr<PagedRows>> keys_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<PagedRows>> values_ ABSL_GUARDED_BY(mu_);
  IndexState index_state_ ABSL_GUARDED_BY(mu_) = IndexState::kOpen;
  std::vector<PqCodebook> codebooks_ ABSL_GUARDED_BY(mu_);        // per kv head once ready
  std::vector<kernels::PqCodeStore> codes_ ABSL_GUARDED_BY(mu_);  // per kv head once ready
  uint64_t num_encoded_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t prefill_tokens_ ABSL_GUARDED_BY(mu_) = 0;  // held when the prefill was sealed
  // Arena pages (never written, so never resident) that charge the codebooks' and code
  // stores' heap bytes to the memory budget; freed with the layer.
  std::vector<uint32_t> index_pages_ ABSL_GUARDED_BY(mu_);
  double index_build_ms_ ABSL_GUARDED_BY(mu_) = 0;
  // Codebook refresh (ClaimRefresh, RefreshIndex): tokens the codebooks were trained on,
  // their relative quantization error, and the error sums of the tokens appended since.
  uint64_t trained_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  double training_error_ ABSL_GUARDED_BY(mu_) = 0;
  double recent_error_ ABSL_GUARDED_BY(mu_) = 0;          // exponential average, latest tokens
  uint64_t appended_tokens_ ABSL_GUARDED_BY(mu_) = 0;     // measured since the training
  bool refresh_queued_ ABSL_GUARDED_BY(mu_) = false;      // due or running, until it ends
  std::atomic<bool> refresh_due_{false};                  // due and not yet claimed
  uint64_t next_refresh_check_ ABSL_GUARDED_BY(mu_) = 0;  // after a refused refresh
  uint64_t refreshes_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<absl::AnyInvocable<void() &&>> settle_waiters_ ABSL_GUARDED_BY(mu_);

  mutable absl::Mutex quality_mu_;
  mutable uint64_t quality_samples_ ABSL_GUARDED_BY(quality_mu_) = 0;
  mutable double last_mass_recall_ ABSL_GUARDED_BY(quality_mu_) = 0;
  mutable double mass_recall_sum_ ABSL_GUARDED_BY(quality_mu_) = 0;
};

const char* IndexStateName(IndexState state);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_STORE_LAYER_STORE_H_

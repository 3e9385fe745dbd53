#include "server/store/layer_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/dtype_convert.h"
#include "kernels/radix_select.h"
#include "server/index/exact_rerank.h"
#include "server/index/head_scorer.h"
#include "server/runtime/parallel_for.h"
#include "server/runtime/server_logger.h"

namespace pqkv::server {

const char* IndexStateName(IndexState state) {
  switch (state) {
    case IndexState::kOpen:
      return "open";
    case IndexState::kBuilding:
      return "building";
    case IndexState::kReady:
      return "ready";
    case IndexState::kExact:
      return "exact";
    case IndexState::kFailed:
      return "failed";
  }
  return "unknown";
}

namespace {

// Keys per kv head whose quantization error a build measures (an even sample), and the
// most tokens of one append whose error is measured (a decode step's, not a prefill
// chunk's tail).
constexpr size_t kErrorSampleTokens = 2048;

// The drift signal averages the appended tokens' quantization error over about this many
// of the latest (an exponential average).
constexpr double kDriftWindowTokens = 64;

// Where the first NaN or Inf of a chunk lies, "kv head 1, token 12" (the token's position
// in the layer); `bytes` is laid out [kv_head][token][dim] for `num_tokens` tokens and is
// known to hold one.
std::string FirstNonFiniteRow(const ModelShape& shape, absl::string_view bytes, uint32_t num_tokens,
                              uint64_t token_begin) {
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
    for (uint32_t t = 0; t < num_tokens; ++t) {
      const char* row =
          bytes.data() + (static_cast<size_t>(h) * num_tokens + t) * shape.row_bytes();
      if (!kernels::AllFinite(shape.dtype, row, shape.head_dim)) {
        return absl::StrCat("kv head ", h, ", token ", token_begin + t);
      }
    }
  }
  return "an unknown row";
}

}  // namespace

LayerStore::LayerStore(uint32_t layer, const SessionConfig& config, PageArena* arena,
                       GpuScorer* gpu)
    : layer_(layer),
      config_(config),
      arena_(arena),
      gpu_(gpu),
      gpu_layer_(gpu != nullptr ? gpu->RegisterLayer() : 0) {
  absl::MutexLock lock(&mu_);
  for (uint32_t h = 0; h < config_.shape.num_kv_heads; ++h) {
    keys_.push_back(std::make_unique<PagedRows>(arena_, config_.shape.row_bytes()));
    values_.push_back(std::make_unique<PagedRows>(arena_, config_.shape.row_bytes()));
  }
}

LayerStore::~LayerStore() {
  if (gpu_ != nullptr) gpu_->ReleaseLayer(gpu_layer_);
  absl::MutexLock lock(&mu_);
  if (!index_pages_.empty()) arena_->Free(index_pages_);
}

size_t LayerStore::MetadataBytes(const SessionConfig& config) {
  // glibc malloc: 16 bytes of header and alignment per block, about.
  constexpr size_t kBlockOverhead = 16;
  const size_t heads = config.shape.num_kv_heads;
  const size_t per_row_list =
      sizeof(std::unique_ptr<PagedRows>) + sizeof(PagedRows) + kBlockOverhead;
  return sizeof(LayerStore) + kBlockOverhead + 2 * (heads * per_row_list + kBlockOverhead);
}

absl::Status LayerStore::Append(uint64_t token_begin, uint32_t num_tokens, absl::string_view keys,
                                absl::string_view values) {
  const ModelShape& shape = config_.shape;
  if (num_tokens == 0) return absl::InvalidArgumentError("num_tokens must be at least 1");
  const size_t head_bytes = static_cast<size_t>(num_tokens) * shape.row_bytes();
  const size_t expected = head_bytes * shape.num_kv_heads;
  if (keys.size() != expected || values.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer_, ": ", num_tokens, " tokens x ", shape.num_kv_heads,
                     " kv heads x ", shape.head_dim, " dims need ", expected,
                     " bytes of keys and of values, got ", keys.size(), " and ", values.size()));
  }
  // Values are refused as keys are: a NaN or Inf row sent to the worker turns its attention
  // output into NaN.
  const size_t elements = expected / kernels::ElementBytes(shape.dtype);
  for (const auto& [what, bytes] : {std::pair{"keys", keys}, std::pair{"values", values}}) {
    if (!kernels::AllFinite(shape.dtype, bytes.data(), elements)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer_, ": ", what, " contain NaN or Inf (first at ",
                       FirstNonFiniteRow(shape, bytes, num_tokens, token_begin), ")"));
    }
  }

  absl::MutexLock lock(&mu_);
  if (token_begin != num_tokens_) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer_, " holds tokens [0, ", num_tokens_,
                     "); a chunk must start at ", num_tokens_, ", got token_begin ", token_begin,
                     token_begin > num_tokens_ ? " (gap)" : " (overlap)"));
  }
  if (num_tokens_ + num_tokens > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer_, " would exceed ", UINT32_MAX, " tokens"));
  }
  // Every kv head's K and V rows grow alike, so one head tells how many pages each needs.
  const size_t pages_per_tensor = keys_[0]->PagesNeededFor(num_tokens);
  const size_t tensors = 2 * shape.num_kv_heads;
  std::vector<uint32_t> pages;
  if (pages_per_tensor > 0) {
    absl::StatusOr<std::vector<uint32_t>> allocated = arena_->Allocate(pages_per_tensor * tensors);
    if (!allocated.ok()) return allocated.status();
    pages = *std::move(allocated);
  }
  // Then the new tokens' codes: pages charging them, and code stores with room for them (so
  // that encoding allocates nothing uncharged). A refusal gives the K/V pages back: a
  // failed append changes nothing.
  if (index_state_ == IndexState::kReady) {
    if (absl::Status charged = ReserveIndexLocked(num_tokens_ + num_tokens, codebooks_, codes_);
        !charged.ok()) {
      if (!pages.empty()) arena_->Free(pages);
      return charged;
    }
  }
  for (size_t i = 0; pages_per_tensor > 0 && i < tensors; ++i) {
    std::vector<uint32_t> slice(pages.begin() + i * pages_per_tensor,
                                pages.begin() + (i + 1) * pages_per_tensor);
    (i % 2 == 0 ? keys_ : values_)[i / 2]->AddPages(slice);
  }
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
    keys_[h]->Append(keys.data() + h * head_bytes, num_tokens);
    values_[h]->Append(values.data() + h * head_bytes, num_tokens);
  }
  num_tokens_ += num_tokens;
  if (index_state_ == IndexState::kReady) {
    EncodeTailLocked();
    NoteRefreshDueLocked();
  }
  return absl::OkStatus();
}

bool LayerStore::SealPrefill() {
  absl::MutexLock lock(&mu_);
  if (index_state_ != IndexState::kOpen) return false;
  if (num_tokens_ < config_.index.min_training_tokens()) {
    index_state_ = IndexState::kExact;
    return false;
  }
  index_state_ = IndexState::kBuilding;
  prefill_tokens_ = num_tokens_;
  return true;
}

std::vector<float> LayerStore::KeysAsFloatLocked(uint32_t h, size_t begin, size_t end) const {
  const uint32_t dim = config_.shape.head_dim;
  std::vector<float> out((end - begin) * dim);
  for (size_t t = begin; t < end; ++t) {
    kernels::ToFloat(config_.shape.dtype, keys_[h]->Row(t), dim, out.data() + (t - begin) * dim);
  }
  return out;
}

absl::Status LayerStore::TrainHeads(size_t tokens, ThreadPool* pool, absl::Time start,
                                    std::vector<PqCodebook>* codebooks,
                                    std::vector<kernels::PqCodeStore>* codes,
                                    double* training_error) const {
  const ModelShape& shape = config_.shape;
  const IndexOptions& options = config_.index;
  const uint32_t H = shape.num_kv_heads;
  std::vector<std::optional<PqCodebook>> trained(H);
  codes->clear();
  for (uint32_t h = 0; h < H; ++h) {
    codes->emplace_back(options.subspaces, options.bits, options.per_dimension(shape.head_dim),
                        KeepCodeBytes());
  }
  std::vector<absl::Status> statuses(H);
  std::vector<double> errors(H, 0);
  std::vector<size_t> measured(H, 0);
  absl::Mutex progress_mu;
  absl::Time last_progress_log = start;
  uint32_t heads_done = 0;
  ParallelFor(pool, static_cast<int>(H), [&](int h) {
    // The lock only long enough to note where the rows lie (they never move while the
    // layer lives): converting them under it would hold off appends, and the Retrieve
    // calls queued behind a waiting append, for milliseconds at this thread's low priority.
    std::vector<const char*> rows(tokens);
    {
      absl::ReaderMutexLock lock(&mu_);
      for (size_t t = 0; t < tokens; ++t) rows[t] = keys_[h]->Row(t);
    }
    std::vector<float> keys(tokens * shape.head_dim);
    for (size_t t = 0; t < tokens; ++t) {
      kernels::ToFloat(shape.dtype, rows[t], shape.head_dim, keys.data() + t * shape.head_dim);
    }
    // With the CUDA backend, k-means assigns on the device (its own stream per head).
    const std::unique_ptr<NearestCentroidAssigner> assigner =
        gpu_ != nullptr ? gpu_->NewKMeansAssigner() : nullptr;
    PqTrainOptions train_options;
    train_options.assigner = assigner.get();
    absl::StatusOr<PqCodebook> codebook =
        PqCodebook::Train(keys.data(), tokens, shape.head_dim, options.subspaces, options.bits,
                          options.kmeans_iterations, options.rope_pairs, train_options);
    if (!codebook.ok()) {
      statuses[h] = codebook.status();
      return;
    }
    std::vector<uint8_t> head_codes(tokens * options.subspaces);
    codebook->Encode(keys.data(), tokens, head_codes.data());
    (*codes)[h].Append(head_codes.data(), tokens);
    // The drift signal's reference: the training keys' own quantization error, on an even
    // sample of at most kErrorSampleTokens keys (a full pass would add a tenth to a build).
    const size_t step = std::max<size_t>(1, tokens / kErrorSampleTokens);
    for (size_t t = 0; t < tokens; t += step, ++measured[h]) {
      errors[h] += codebook->SquaredError(keys.data() + t * shape.head_dim, 1,
                                          head_codes.data() + t * options.subspaces);
    }
    trained[h].emplace(*std::move(codebook));
    absl::MutexLock lock(&progress_mu);
    ++heads_done;
    if (absl::Now() - last_progress_log >= kProgressLogInterval) {
      ServerLogger().info("layer {} index build: {} of {} kv heads trained in {}", layer_,
                          heads_done, H, absl::FormatDuration(absl::Now() - start));
      last_progress_log = absl::Now();
    }
  });
  codebooks->clear();
  double error = 0;
  size_t keys_measured = 0;
  for (uint32_t h = 0; h < H; ++h) {
    if (!statuses[h].ok()) return statuses[h];
    codebooks->push_back(*std::move(trained[h]));
    error += errors[h];
    keys_measured += measured[h];
  }
  *training_error = keys_measured > 0 ? error / keys_measured : 0;
  return absl::OkStatus();
}

void LayerStore::BuildIndex(ThreadPool* pool) {
  const absl::Time start = absl::Now();
  size_t snapshot_tokens = 0;
  {
    absl::ReaderMutexLock lock(&mu_);
    snapshot_tokens = num_tokens_;
  }
  std::vector<PqCodebook> codebooks;
  std::vector<kernels::PqCodeStore> codes;
  double training_error = 0;
  const absl::Status status =
      TrainHeads(snapshot_tokens, pool, start, &codebooks, &codes, &training_error);
  const double build_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  if (!status.ok()) {
    ServerLogger().error("layer {} index build failed, scoring exactly: {}", layer_,
                         status.ToString());
    SettleIndex(IndexState::kFailed, {}, {}, build_ms);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    trained_tokens_ = snapshot_tokens;
    training_error_ = training_error;
  }
  SettleIndex(IndexState::kReady, std::move(codebooks), std::move(codes), build_ms);
}

void LayerStore::NoteRefreshDueLocked() {
  const RefreshPolicy& policy = config_.refresh;
  if (!policy.enabled || index_state_ != IndexState::kReady || refresh_queued_ ||
      num_tokens_ < next_refresh_check_) {
    return;
  }
  const uint64_t appended = num_tokens_ - trained_tokens_;
  if (appended < policy.min_tokens) return;
  const bool drifted = training_error_ > 0 && appended_tokens_ > 0 &&
                       recent_error_ >= policy.drift_ratio * training_error_;
  const bool grown = appended >= policy.growth * static_cast<double>(trained_tokens_);
  if (!drifted && !grown) return;
  refresh_queued_ = true;
  refresh_due_.store(true, std::memory_order_release);
}

bool LayerStore::ClaimRefresh() { return refresh_due_.exchange(false, std::memory_order_acq_rel); }

void LayerStore::RefreshIndex(ThreadPool* pool) {
  const absl::Time start = absl::Now();
  const uint32_t H = config_.shape.num_kv_heads;
  size_t snapshot_tokens = 0;
  std::vector<uint32_t> pages;
  {
    // The new codebooks and codes are charged before training, beside the index in use.
    absl::MutexLock lock(&mu_);
    snapshot_tokens = num_tokens_;
    size_t bytes = 0;
    for (const PqCodebook& codebook : codebooks_) bytes += codebook.bytes();
    bytes +=
        H * kernels::PqCodeStore::BytesFor(static_cast<int>(config_.index.subspaces),
                                           static_cast<int>(config_.index.bits), snapshot_tokens,
                                           config_.index.per_dimension(config_.shape.head_dim),
                                           KeepCodeBytes());
    absl::StatusOr<std::vector<uint32_t>> charged =
        arena_->Allocate((bytes + arena_->page_bytes() - 1) / arena_->page_bytes());
    if (!charged.ok()) {
      ServerLogger().warn("layer {}: codebook refresh for {} tokens skipped, memory: {}", layer_,
                          snapshot_tokens, charged.status().ToString());
      refresh_queued_ = false;
      next_refresh_check_ = num_tokens_ + config_.refresh.min_tokens;
      return;
    }
    pages = *std::move(charged);
  }
  std::vector<PqCodebook> codebooks;
  std::vector<kernels::PqCodeStore> codes;
  double training_error = 0;
  absl::Status status =
      TrainHeads(snapshot_tokens, pool, start, &codebooks, &codes, &training_error);
  absl::MutexLock lock(&mu_);
  refresh_queued_ = false;
  if (status.ok()) {
    // Swap the pages first: ReserveIndexLocked then charges the tokens appended since.
    std::swap(index_pages_, pages);
    status = ReserveIndexLocked(num_tokens_, codebooks, codes);
    if (!status.ok()) std::swap(index_pages_, pages);
  }
  arena_->Free(pages);  // the old index's on success, else the refresh's own
  if (!status.ok()) {
    ServerLogger().warn("layer {}: codebook refresh for {} tokens failed, keeping the old: {}",
                        layer_, snapshot_tokens, status.ToString());
    next_refresh_check_ = num_tokens_ + config_.refresh.min_tokens;
    return;
  }
  // Retrieve holds the lock shared while it scores: it sees the old index or the new one,
  // never a mix.
  codebooks_ = std::move(codebooks);
  codes_ = std::move(codes);
  num_encoded_ = snapshot_tokens;
  trained_tokens_ = snapshot_tokens;
  training_error_ = training_error;
  recent_error_ = 0;
  appended_tokens_ = 0;
  EncodeTailLocked();  // tokens appended while training, with the new codebooks
  ++refreshes_;
  index_build_ms_ = absl::ToDoubleMilliseconds(absl::Now() - start);
  if (gpu_ != nullptr) gpu_->ResetLayer(gpu_layer_);
}

void LayerStore::AbandonBuild() { SettleIndex(IndexState::kFailed, {}, {}, 0); }

void LayerStore::SettleIndex(IndexState state, std::vector<PqCodebook> codebooks,
                             std::vector<kernels::PqCodeStore> codes, double build_ms) {
  std::vector<absl::AnyInvocable<void() &&>> waiters;
  {
    absl::MutexLock lock(&mu_);
    index_build_ms_ = build_ms;
    if (state == IndexState::kReady) {
      // Tokens appended while training are encoded below: room for them too.
      if (absl::Status charged = ReserveIndexLocked(num_tokens_, codebooks, codes); !charged.ok()) {
        ServerLogger().error("layer {} index dropped, scoring exactly: {}", layer_,
                             charged.ToString());
        state = IndexState::kFailed;
        codebooks.clear();
        codes.clear();
      }
    }
    if (state == IndexState::kReady) {
      codebooks_ = std::move(codebooks);
      num_encoded_ = codes.empty() ? 0 : codes[0].size();
      codes_ = std::move(codes);
      EncodeTailLocked();  // tokens appended while training
    }
    index_state_ = state;
    waiters.swap(settle_waiters_);
  }
  for (auto& waiter : waiters) std::move(waiter)();
}

bool LayerStore::DeferUntilIndexSettled(absl::AnyInvocable<void() &&>& ready) {
  absl::MutexLock lock(&mu_);
  if (index_state_ != IndexState::kBuilding) return false;
  settle_waiters_.push_back(std::move(ready));
  return true;
}

absl::Status LayerStore::ReserveIndexLocked(size_t tokens, const std::vector<PqCodebook>& codebooks,
                                            std::vector<kernels::PqCodeStore>& codes) {
  if (codes.empty()) return absl::OkStatus();
  const IndexOptions& options = config_.index;
  // Grown by half at least, so that one token at a time costs amortised O(1) copies.
  size_t capacity = codes[0].capacity();
  if (tokens > capacity) capacity = std::max(tokens, capacity + capacity / 2);
  size_t bytes = 0;
  for (const PqCodebook& codebook : codebooks) bytes += codebook.bytes();
  bytes += codes.size() *
           kernels::PqCodeStore::BytesFor(static_cast<int>(options.subspaces),
                                          static_cast<int>(options.bits), capacity,
                                          options.per_dimension(config_.shape.head_dim),
                                          KeepCodeBytes());
  const size_t pages = (bytes + arena_->page_bytes() - 1) / arena_->page_bytes();
  if (pages > index_pages_.size()) {
    absl::StatusOr<std::vector<uint32_t>> more = arena_->Allocate(pages - index_pages_.size());
    if (!more.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "layer ", layer_, ": the PQ index of ", codes.size(), " kv heads for ", tokens,
          " tokens (", options.subspaces, " x ", options.bits, " bits) needs ", bytes,
          " bytes of codebooks and codes, which does not fit the memory budget: ",
          more.status().message()));
    }
    index_pages_.insert(index_pages_.end(), more->begin(), more->end());
  }
  for (kernels::PqCodeStore& store : codes) store.Reserve(capacity);
  return absl::OkStatus();
}

void LayerStore::EncodeTailLocked() {
  const size_t begin = num_encoded_;
  const size_t end = num_tokens_;
  if (end == begin) return;
  const uint32_t M = config_.index.subspaces;
  const uint32_t H = config_.shape.num_kv_heads;
  const uint32_t dim = config_.shape.head_dim;
  // The drift signal: how well the codebooks reconstruct the tokens appended lately
  // (per token, the mean over kv heads), against how well they reconstruct their
  // training keys. A large chunk (a prefill's tail) is not a decode step: not measured.
  const bool measure = end - begin <= kErrorSampleTokens;
  std::vector<double> token_error(measure ? end - begin : 0, 0.0);
  for (uint32_t h = 0; h < H; ++h) {
    const std::vector<float> keys = KeysAsFloatLocked(h, begin, end);
    std::vector<uint8_t> codes((end - begin) * M);
    codebooks_[h].Encode(keys.data(), end - begin, codes.data());
    codes_[h].Append(codes.data(), end - begin);
    for (size_t i = 0; i < token_error.size(); ++i) {
      token_error[i] += codebooks_[h].SquaredError(keys.data() + i * dim, 1, codes.data() + i * M);
    }
  }
  for (double error : token_error) {
    // An exponential average over about kDriftWindowTokens tokens: a distribution that
    // starts moving shows within that many steps, not diluted by everything since the
    // training.
    const double mean = error / H;
    recent_error_ =
        appended_tokens_ == 0 ? mean : recent_error_ + (mean - recent_error_) / kDriftWindowTokens;
    ++appended_tokens_;
  }
  num_encoded_ = end;
}

absl::StatusOr<LayerSelection> LayerStore::Retrieve(absl::Span<const float> query, uint32_t k,
                                                    absl::Time deadline, ThreadPool* pool,
                                                    bool plain, uint32_t rerank) const {
  const ModelShape& shape = config_.shape;
  const size_t expected = static_cast<size_t>(shape.num_query_heads) * shape.head_dim;
  if (query.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("query has ", query.size(), " floats; ",
                                                   shape.num_query_heads, " query heads x ",
                                                   shape.head_dim, " dims need ", expected));
  }
  for (float x : query) {
    if (!std::isfinite(x)) return absl::InvalidArgumentError("query contains NaN or Inf");
  }

  const bool ready = mu_.ReaderLockWhenWithDeadline(
      absl::Condition(
          +[](const LayerStore* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return self->index_state_ != IndexState::kBuilding;
          },
          this),
      deadline);
  // The lock is held either way. Still building at the deadline: every token is scored
  // exactly below (the codes are not installed yet), so the item is answered, never
  // failed, and never sees a half-built index.
  struct Unlock {
    absl::Mutex* mu;
    ~Unlock() { mu->ReaderUnlock(); }
  } unlock{&mu_};
  (void)ready;

  const uint64_t n = num_tokens_;
  const uint32_t sinks = config_.index.sink_tokens;
  const uint32_t recent = config_.index.recent_window;
  const uint64_t candidate_end = n > recent ? n - recent : 0;
  const uint64_t candidate_begin = std::min<uint64_t>(sinks, candidate_end);
  const uint64_t candidates = candidate_end - candidate_begin;
  if (candidates == 0) {
    if (n == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer_, " holds no tokens: no candidates to select from"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer_, " has ", n, " tokens, all within the ", sinks,
                     " sink tokens and the recent window of ", recent,
                     ": no candidates to select from (it needs more than ",
                     uint64_t{sinks} + recent, " tokens)"));
  }
  if (k == 0 || k > candidates) {
    return absl::InvalidArgumentError(absl::StrCat("k = ", k, " but layer ", layer_, " has ",
                                                   candidates, " candidate tokens (", n,
                                                   " held, minus ", sinks, " sinks and ", recent,
                                                   " recent); k must be in [1, ", candidates, "]"));
  }

  const uint32_t k_final = k;
  // Re-ranking only refines PQ scores; exactly scored layers are exact already.
  const bool reranks = rerank > 1 && index_state_ == IndexState::kReady;
  if (reranks) k = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{k} * rerank, candidates));

  LayerSelection selection;
  selection.num_tokens = n;
  const bool use_codes = index_state_ == IndexState::kReady;
  selection.num_encoded = use_codes ? num_encoded_ : 0;
  selection.heads.resize(shape.num_kv_heads);
  // Head h's keys as the scorers read them; codes only once the index is ready.
  auto head_keys = [&](int h, bool with_codes) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    HeadKeys keys;
    keys.rows = keys_[h].get();
    keys.num_tokens = n;
    keys.dtype = shape.dtype;
    keys.head_dim = static_cast<int>(shape.head_dim);
    if (with_codes) {
      keys.codebook = &codebooks_[h];
      keys.codes = &codes_[h];
    }
    return keys;
  };
  auto group_queries_of = [&](int h) {
    return query.data() + static_cast<size_t>(h) * shape.group_size() * shape.head_dim;
  };
  // Re-ranking: the exact tail, the latest appended candidates, whose codes may come from
  // codebooks that never saw their distribution (a refresh lands later), are re-ranked
  // whatever the scan thought of them.
  const bool refines = reranks && k > k_final;
  uint64_t tail_begin = candidate_end;
  if (refines && config_.refresh.enabled && config_.refresh.exact_tail > 0) {
    tail_begin = std::max({candidate_begin, prefill_tokens_,
                           candidate_end - std::min<uint64_t>(candidate_end,
                                                              config_.refresh.exact_tail)});
  }
  auto rerank_head = [&](int h) {
    HeadSelection& head = selection.heads[h];
    if (head.overflow) return;
    if (tail_begin < candidate_end) {
      std::vector<uint32_t>& positions = head.positions;
      positions.erase(std::remove_if(positions.begin(), positions.end(),
                                     [&](uint32_t t) { return t >= tail_begin; }),
                      positions.end());
      for (uint64_t t = tail_begin; t < candidate_end; ++t) {
        positions.push_back(static_cast<uint32_t>(t));
      }
      head.scores.clear();  // RerankExact reads positions only
    }
    head = RerankExact(head_keys(h, use_codes), group_queries_of(h),
                       static_cast<int>(shape.group_size()),
                       static_cast<uint32_t>(candidate_begin),
                       static_cast<uint32_t>(candidate_end), head, k_final);
  };
  bool scored = false;
  if (gpu_ != nullptr && !plain && use_codes && num_encoded_ == n) {
    absl::StatusOr<std::vector<HeadSelection>> heads = RetrieveOnGpu(
        query, static_cast<uint32_t>(candidate_begin), static_cast<uint32_t>(candidate_end), k);
    // On error the CPU scores below; the GPU scorer logs it (rate-limited) and remembers.
    if (heads.ok()) {
      selection.heads = *std::move(heads);
      scored = true;
      if (refines) ParallelFor(pool, static_cast<int>(shape.num_kv_heads), rerank_head);
    }
  }
  if (!scored) {
    // Candidates for the re-rank come in position order: it reads their rows front to back
    // and skips sorting them. A head's re-rank follows its scan on the same thread, while
    // the scan's tables and the select's codes are still in that core's caches.
    const kernels::TopKOrder order =
        refines ? kernels::TopKOrder::kPosition : kernels::TopKOrder::kBestFirst;
    ParallelFor(pool, static_cast<int>(shape.num_kv_heads), [&](int h) {
      const HeadKeys keys = head_keys(h, use_codes);
      const int group = static_cast<int>(shape.group_size());
      const uint32_t begin = static_cast<uint32_t>(candidate_begin);
      const uint32_t end = static_cast<uint32_t>(candidate_end);
      selection.heads[h] =
          plain ? ScoreAndSelectPlain(keys, group_queries_of(h), group, begin, end, k)
                : ScoreAndSelect(keys, group_queries_of(h), group, begin, end, k, order);
      if (refines) rerank_head(h);
    });
  }
  // Finite queries and keys can still overflow fp32 logits (values near 1e19); the
  // selection is then meaningless, so say so instead of returning it.
  for (const HeadSelection& head : selection.heads) {
    if (head.overflow) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer_, ": query x key logits overflow fp32; check the query and key scale"));
    }
  }
  return selection;
}

absl::StatusOr<std::vector<HeadSelection>> LayerStore::RetrieveOnGpu(absl::Span<const float> query,
                                                                     uint32_t candidate_begin,
                                                                     uint32_t candidate_end,
                                                                     uint32_t k) const {
  const ModelShape& shape = config_.shape;
  // The scorer keeps each head's codebook and codes on the device; it reads only what
  // it does not hold yet (the codebooks once, then the codes of new tokens).
  GpuLayerInput input;
  input.layer = gpu_layer_;
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
    input.head_centroids.push_back(codebooks_[h].centroids().data());
    input.head_codes.push_back(codes_[h].codes());
  }
  // Queries in the codebooks' dimension order (kv head h's group is contiguous); every
  // head of a layer has the same order, so without RoPE pairs the query is used as is.
  std::vector<float> ordered;
  if (codebooks_[0].permutes()) {
    ordered.resize(query.size());
    const size_t group_floats = static_cast<size_t>(shape.group_size()) * shape.head_dim;
    for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
      codebooks_[h].PermuteDims(query.data() + h * group_floats, shape.group_size(),
                                ordered.data() + h * group_floats);
    }
  }
  input.kv_heads = static_cast<int>(shape.num_kv_heads);
  input.query_heads = static_cast<int>(shape.num_query_heads);
  input.pq = codebooks_[0].shape();
  input.queries = ordered.empty() ? query.data() : ordered.data();
  input.num_tokens = static_cast<uint32_t>(num_tokens_);
  input.candidate_begin = candidate_begin;
  input.candidate_end = candidate_end;
  input.k = k;
  return gpu_->ScoreLayer(input);
}

absl::Status LayerStore::Fetch(uint32_t kv_head, absl::Span<const uint32_t> positions,
                               char* keys_out, char* values_out) const {
  if (kv_head >= config_.shape.num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_head ", kv_head, " out of range [0, ", config_.shape.num_kv_heads, ")"));
  }
  absl::ReaderMutexLock lock(&mu_);
  for (uint32_t position : positions) {
    if (position >= num_tokens_) {
      return absl::InvalidArgumentError(absl::StrCat("position ", position, " out of range: layer ",
                                                     layer_, " holds ", num_tokens_, " tokens"));
    }
  }
  keys_[kv_head]->Gather(positions.data(), positions.size(), keys_out);
  values_[kv_head]->Gather(positions.data(), positions.size(), values_out);
  return absl::OkStatus();
}

absl::StatusOr<SelectionQualitySample> LayerStore::MeasureQuality(
    absl::Span<const float> query, uint64_t num_tokens,
    const std::vector<std::vector<uint32_t>>& selected) const {
  const ModelShape& shape = config_.shape;
  const uint32_t H = shape.num_kv_heads;
  const int group = static_cast<int>(shape.group_size());
  if (query.size() != static_cast<size_t>(shape.num_query_heads) * shape.head_dim ||
      selected.size() != H) {
    return absl::InvalidArgumentError("the query or the selection does not fit the layer");
  }
  const size_t n = num_tokens;
  std::vector<const void*> rows(n * H);  // [kv head][token]
  {
    absl::ReaderMutexLock lock(&mu_);
    if (n > num_tokens_) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer_, " holds ", num_tokens_, " tokens, not ", n));
    }
    for (uint32_t h = 0; h < H; ++h) {
      for (size_t t = 0; t < n; ++t) rows[h * n + t] = keys_[h]->Row(t);
    }
  }
  const uint32_t recent = config_.index.recent_window;
  const uint32_t candidate_end = static_cast<uint32_t>(n > recent ? n - recent : 0);
  const uint32_t candidate_begin = std::min(config_.index.sink_tokens, candidate_end);
  std::vector<float> scores(n);
  std::vector<uint32_t> exact_top;
  SelectionQualitySample sample;
  for (uint32_t h = 0; h < H; ++h) {
    if (!ScoreExactRows(rows.data() + h * n, n, shape.dtype, static_cast<int>(shape.head_dim),
                        query.data() + static_cast<size_t>(h) * group * shape.head_dim, group,
                        scores.data())) {
      return absl::OutOfRangeError("a logit is not finite");
    }
    // Every score is a sum over the group of softmax probabilities: mass / group.
    double mass = 0;
    for (uint32_t t = 0; t < candidate_begin; ++t) mass += scores[t];
    for (size_t t = candidate_end; t < n; ++t) mass += scores[t];
    for (uint32_t t : selected[h]) {
      if (t < candidate_begin || t >= candidate_end) {
        return absl::InvalidArgumentError(absl::StrCat("position ", t, " is not a candidate"));
      }
      mass += scores[t];
    }
    sample.mass_recall += mass / group;
    const uint32_t k = static_cast<uint32_t>(selected[h].size());
    if (k > 0 && k <= candidate_end - candidate_begin) {
      exact_top.resize(k);
      kernels::SelectTopK(scores.data(), candidate_begin, candidate_end, k, exact_top.data());
      std::sort(exact_top.begin(), exact_top.end());
      uint32_t hits = 0;
      for (uint32_t t : selected[h]) {
        hits += std::binary_search(exact_top.begin(), exact_top.end(), t) ? 1 : 0;
      }
      sample.recall_at_k += static_cast<double>(hits) / k;
    }
  }
  sample.mass_recall /= H;
  sample.recall_at_k /= H;
  absl::MutexLock lock(&quality_mu_);
  ++quality_samples_;
  last_mass_recall_ = sample.mass_recall;
  mass_recall_sum_ += sample.mass_recall;
  return sample;
}

LayerStatus LayerStore::Status() const {
  LayerStatus status;
  {
    absl::MutexLock lock(&quality_mu_);
    status.quality_samples = quality_samples_;
    status.last_mass_recall = last_mass_recall_;
    status.mean_mass_recall = quality_samples_ > 0 ? mass_recall_sum_ / quality_samples_ : 0;
  }
  absl::ReaderMutexLock lock(&mu_);
  status.num_tokens = num_tokens_;
  status.index_state = index_state_;
  status.num_encoded = num_encoded_;
  status.index_build_ms = index_build_ms_;
  status.training_quantization_error = training_error_;
  status.appended_quantization_error = appended_tokens_ > 0 ? recent_error_ : 0;
  status.index_refreshes = refreshes_;
  for (const auto& rows : keys_) status.bytes_held += rows->bytes_held();
  for (const auto& rows : values_) status.bytes_held += rows->bytes_held();
  status.bytes_held += index_pages_.size() * arena_->page_bytes();
  return status;
}

}  // namespace pqkv::server

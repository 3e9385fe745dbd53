#include "server/rpc/retrieve_reactor.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/grpc_status.h"
#include "server/rpc/fetch_limits.h"
#include "server/rpc/retrieve_response_encoder.h"
#include "server/runtime/parallel_for.h"
#include "server/store/session_config.h"

namespace pqkv::server {

RetrieveReactor::RetrieveReactor(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                                 QualitySampler* quality_sampler,
                                 absl::StatusOr<std::string> principal, absl::Time call_deadline,
                                 absl::Duration max_index_wait,
                                 std::atomic<uint64_t>* items_counter, UcxDataPlane* data_plane,
                                 std::string data_plane_error, ByteBudget* gather_budget,
                                 ByteBudget* row_cache_budget,
                                 std::function<void(RetrieveReactor*)> on_done)
    : store_(store),
      compute_pool_(compute_pool),
      metrics_(metrics),
      quality_sampler_(quality_sampler),
      principal_(principal.ok() ? *principal : ""),
      call_deadline_(call_deadline),
      max_index_wait_(max_index_wait),
      items_counter_(items_counter),
      data_plane_(data_plane),
      data_plane_error_(std::move(data_plane_error)),
      gather_budget_(gather_budget),
      row_cache_budget_(row_cache_budget),
      on_done_(std::move(on_done)) {
  if (!principal.ok()) {
    metrics_->RecordStatus("Retrieve", principal.status());
    absl::MutexLock lock(&mu_);
    finished_ = true;
    Finish(ToGrpcStatus(principal.status()));
    return;
  }
  StartRead(&request_buffer_);
}

void RetrieveReactor::OnReadDone(bool ok) {
  if (!ok) {
    absl::MutexLock lock(&mu_);
    reads_done_ = true;
    MaybeFinishLocked();
    return;
  }
  {
    // Shutting down: a request that arrives now is not processed (the stream ends
    // UNAVAILABLE; the client retries elsewhere).
    absl::MutexLock lock(&mu_);
    if (shutting_down_ || finished_) {
      MaybeFinishLocked();
      return;
    }
  }
  // The raw method hands over bytes; a request that does not parse ends the stream.
  const grpc::Status parsed =
      grpc::SerializationTraits<v1::RetrieveRequest>::Deserialize(&request_buffer_, &request_);
  if (!parsed.ok()) {
    metrics_->RecordStatus("Retrieve", absl::InvalidArgumentError("malformed request"));
    absl::MutexLock lock(&mu_);
    reads_done_ = true;
    final_status_ = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "a Retrieve request did not parse as pqkv.v1.RetrieveRequest");
    MaybeFinishLocked();
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    processing_ = true;
  }
  request_start_ = absl::Now();
  wait_until_ = std::min(call_deadline_, request_start_ + max_index_wait_);
  response_ = std::make_unique<v1::RetrieveResponse>();
  response_->set_request_id(request_.request_id());
  response_->set_layer(request_.layer());
  const int items = request_.items_size();
  for (int i = 0; i < items; ++i) response_->add_results();
  rows_.assign(items, {});
  pending_.assign(items, std::nullopt);
  if (request_.has_open_data_plane()) {
    compute_pool_->Schedule([this] {
      OpenDataPlane();
      StartItems();
    });
    return;
  }
  StartItems();
}

void RetrieveReactor::DropClosedRowCaches() {
  absl::MutexLock lock(&cache_mu_);
  for (auto it = row_caches_.begin(); it != row_caches_.end();) {
    std::shared_ptr<Session> session = it->second.session.lock();
    if (session == nullptr || session->closed()) {
      row_caches_.erase(it++);  // its budget comes back
    } else {
      ++it;
    }
  }
}

void RetrieveReactor::StartItems() {
  // No item of this stream runs now: a cheap moment to give back closed sessions' caches.
  DropClosedRowCaches();
  const int items = request_.items_size();
  if (items == 0) {
    CompleteRequest();
    return;
  }
  // Items run in parallel, so two that share one row cache (same session, cache_slots)
  // would update its directory in an order the client cannot know: the later are refused.
  // They are answered here, so that the last item to finish is always a pool task's.
  absl::flat_hash_set<std::string> cached;
  std::vector<int> scheduled;
  for (int i = 0; i < items; ++i) {
    const v1::RetrieveItem& item = request_.items(i);
    if (!item.with_kv() || item.cache_slots() == 0 || cached.insert(item.session_id()).second) {
      scheduled.push_back(i);
      continue;
    }
    response_->mutable_results(i)->set_session_id(item.session_id());
    SetItemError(i, absl::InvalidArgumentError(
                        "an earlier item of this request already uses this session's row cache "
                        "(cache_slots): send one such item per session and request"));
  }
  if (scheduled.empty()) {
    CompleteRequest();
    return;
  }
  items_left_.store(static_cast<int>(scheduled.size()), std::memory_order_relaxed);
  for (int i : scheduled) compute_pool_->Schedule([this, i] { StartItem(i); });
}

void RetrieveReactor::OpenDataPlane() {
  const v1::DataPlaneOffer& offer = request_.open_data_plane();
  peer_.reset();
  absl::StatusOr<std::unique_ptr<UcxPeer>> peer =
      data_plane_ == nullptr ? absl::FailedPreconditionError(absl::StrCat(
                                   "this server has no UCX data plane: ", data_plane_error_))
                             : data_plane_->Connect(offer);
  v1::DataPlaneStatus* status = response_->mutable_data_plane();
  if (!peer.ok()) {
    metrics_->RecordStatus("Retrieve", peer.status());
    peer_error_ = std::string(peer.status().message());
    status->set_status_code(CodeOf(peer.status()));
    status->set_error_message(peer_error_);
    return;
  }
  peer_ = *std::move(peer);
  status->set_method(peer_->method());
  status->set_transports(peer_->transports());
}

void RetrieveReactor::OnDone() {
  // Nothing else refers to the reactor now; the endpoint closes on the pool.
  if (peer_ != nullptr) {
    compute_pool_->Schedule([peer = std::move(peer_)]() mutable { peer.reset(); });
  }
  if (on_done_) on_done_(this);
  // Finish is called under mu_ (MaybeFinishLocked), and gRPC may call OnDone on another
  // thread before that caller has unlocked: wait for it, so that it never unlocks a mutex
  // of a deleted reactor.
  { absl::MutexLock lock(&mu_); }
  delete this;
}

void RetrieveReactor::StartItem(int i) {
  const v1::RetrieveItem& item = request_.items(i);
  response_->mutable_results(i)->set_session_id(item.session_id());
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Get(item.session_id(), principal_);
  absl::StatusOr<LayerStore*> layer =
      session.ok() ? (*session)->layer(request_.layer()) : session.status();
  if (!layer.ok()) {
    SetItemError(i, layer.status());
    ItemDone();
    return;
  }
  // While the layer's index builds, the item is scored exactly at once; or, with a wait
  // bound (--max_index_wait_seconds > 0), parked until the build ends instead of holding a
  // pool thread.
  absl::AnyInvocable<void()&&> score_later = [this, i, session = *session, layer = *layer] {
    compute_pool_->Schedule([this, i, session, layer] {
      ScoreItem(i, session, *layer, /*parked=*/true);
      ItemDone();
    });
  };
  if (max_index_wait_ > absl::ZeroDuration() && (*layer)->DeferUntilIndexSettled(score_later)) {
    return;
  }
  ScoreItem(i, *session, **layer, /*parked=*/false);
  ItemDone();
}

void RetrieveReactor::ItemDone() {
  if (items_left_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  GatherResponseRows();
  CompleteRequest();
}

void RetrieveReactor::SetItemError(int i, const absl::Status& status) {
  metrics_->RecordStatus("Retrieve", status);
  v1::RetrieveResult* result = response_->mutable_results(i);
  result->set_status_code(CodeOf(status));
  result->set_error_message(std::string(status.message()));
}

void RetrieveReactor::SetRowsError(int i, const absl::Status& status, bool reset_cache) {
  const v1::RetrieveItem& item = request_.items(i);
  if (reset_cache && item.cache_slots() > 0) ResetRowCache(item.session_id());
  rows_[i].clear();
  v1::RetrieveResult* result = response_->mutable_results(i);
  result->Clear();
  result->set_session_id(item.session_id());
  SetItemError(i, status);
}

void RetrieveReactor::RecordItemOk(int i, absl::Time scoring_start) {
  items_counter_->fetch_add(1, std::memory_order_relaxed);
  metrics_->RecordStatus("Retrieve", absl::OkStatus());
  const absl::Time now = absl::Now();
  metrics_->RecordRetrieveItem(now - request_start_, now - scoring_start);
}

void RetrieveReactor::ScoreItem(int i, const std::shared_ptr<Session>& session,
                                const LayerStore& layer, bool parked) {
  const v1::RetrieveItem& item = request_.items(i);
  const absl::Time scoring_start = absl::Now();
  // An item that asks for no particular re-ranking gets the session's.
  const uint32_t rerank = item.rerank() == 0 ? session->config().index.rerank : item.rerank();
  // A parked item is answered when the build ends; if that was past its bound, it says so.
  absl::StatusOr<LayerSelection> selection =
      parked && absl::Now() > wait_until_
          ? absl::DeadlineExceededError(absl::StrCat(
                "layer ", request_.layer(),
                "'s index was still building when the wait bound passed (the call's deadline "
                "or the server's max index wait of ",
                absl::FormatDuration(max_index_wait_), ")"))
      : item.rerank() > kMaxRerank
          ? absl::InvalidArgumentError(
                absl::StrCat("rerank = ", item.rerank(), " exceeds the limit of ", kMaxRerank))
          : layer.Retrieve(absl::MakeConstSpan(item.query().data(), item.query_size()), item.k(),
                           wait_until_, compute_pool_, /*plain=*/false, rerank);
  if (!selection.ok()) {
    SetItemError(i, selection.status());
    return;
  }
  if (quality_sampler_ != nullptr) {
    quality_sampler_->MaybeSample(session, request_.layer(),
                                  absl::MakeConstSpan(item.query().data(), item.query_size()),
                                  *selection, rerank);
  }
  v1::RetrieveResult* result = response_->mutable_results(i);
  const absl::Time rows_start = absl::Now();
  const double score_us = absl::ToDoubleMicroseconds(rows_start - scoring_start);
  result->set_score_us(score_us);
  // Heads run in parallel: split the wall time in the ratio of the per-head times.
  double scan_us = 0, select_us = 0;
  for (const HeadSelection& head : selection->heads) {
    scan_us += head.scan_us;
    select_us += head.select_us + head.rerank_us;  // the response's select includes the re-rank
  }
  // (The GPU backend measures no scan time per head: no split then.)
  if (scan_us > 0) result->set_select_us(score_us * select_us / (scan_us + select_us));
  result->set_num_tokens(selection->num_tokens);
  result->set_num_encoded(selection->num_encoded);
  for (const HeadSelection& head : selection->heads) {
    v1::HeadSelection* out = result->add_heads();
    out->mutable_positions()->Add(head.positions.begin(), head.positions.end());
    if (!item.omit_scores()) out->mutable_scores()->Add(head.scores.begin(), head.scores.end());
  }
  if (item.with_kv()) {
    std::vector<std::vector<uint32_t>> missed;
    absl::StatusOr<HeadRowList> rows =
        RowsToSend(item, session, *selection, layer.row_bytes(), &missed, result);
    absl::Status status = rows.status();
    if (status.ok() && !item.has_landing()) {
      // Gathered, if admitted, once every item is scored (GatherResponseRows).
      status = PendRows(i, session, layer, *rows, scoring_start, rows_start);
      if (status.ok()) return;
    } else if (status.ok()) {
      status = LandRows(layer, *rows, item.landing(), result);
    }
    if (!status.ok()) {
      // The client will not store these rows: its cache directory must not claim them.
      SetRowsError(i, status, /*reset_cache=*/rows.ok());
      return;
    }
    result->set_rows_us(absl::ToDoubleMicroseconds(absl::Now() - rows_start));
  }
  RecordItemOk(i, scoring_start);
}

absl::Status RetrieveReactor::PendRows(int i, std::shared_ptr<Session> session,
                                       const LayerStore& layer, const HeadRowList& rows,
                                       absl::Time scoring_start, absl::Time rows_start) {
  size_t total_rows = 0;
  for (absl::Span<const uint32_t> head : rows) total_rows += head.size();
  const size_t bytes = 2 * total_rows * layer.row_bytes();
  if (bytes > kMaxFetchBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "with_kv would return ", bytes, " bytes for one item, over the ", kMaxFetchBytes,
        "-byte limit: lower k, open the UCX data plane or fetch with FetchKv"));
  }
  PendingRows& pending = pending_[i].emplace();
  pending.session = std::move(session);
  pending.layer = &layer;
  pending.positions.reserve(rows.size());
  for (absl::Span<const uint32_t> head : rows)
    pending.positions.emplace_back(head.begin(), head.end());
  pending.bytes = bytes;
  pending.scoring_start = scoring_start;
  pending.rows_us = absl::ToDoubleMicroseconds(absl::Now() - rows_start);
  return absl::OkStatus();
}

void RetrieveReactor::GatherResponseRows() {
  // Admitted in request order, so which items fit does not depend on which item was
  // scored first; the rest fail before any of their rows are gathered.
  std::vector<int> admitted;
  size_t response_bytes = 0;
  for (int i = 0; i < static_cast<int>(pending_.size()); ++i) {
    if (!pending_[i].has_value()) continue;
    const size_t bytes = pending_[i]->bytes;
    absl::Status status;
    if (bytes > kMaxFetchBytes - response_bytes) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "the request's with_kv rows exceed ", kMaxFetchBytes,
          " bytes in one response: this item's ", bytes, " bytes do not fit after the ",
          response_bytes, " of earlier items; ask for fewer sessions' rows per request"));
    } else {
      absl::StatusOr<ByteBudget::Reservation> reserved = gather_budget_->TryReserve(bytes);
      if (reserved.ok()) {
        gathered_.push_back(*std::move(reserved));
        response_bytes += bytes;
        admitted.push_back(i);
        continue;
      }
      status = absl::ResourceExhaustedError(absl::StrCat(
          "this item's with_kv rows would pass the server's budget of rows gathered and not yet "
          "written (--max_inflight_gather_bytes): ",
          reserved.status().message(), "; retry, or ask for fewer rows per request"));
    }
    pending_[i].reset();
    SetRowsError(i, status, /*reset_cache=*/true);
  }
  // Items in parallel when there is enough to copy; each also splits its heads (AddRows).
  std::vector<absl::Status> status(admitted.size());
  std::vector<double> gather_us(admitted.size());
  ParallelFor(response_bytes >= kParallelGatherBytes ? compute_pool_ : nullptr,
              static_cast<int>(admitted.size()), [&](int j) {
                const PendingRows& pending = *pending_[admitted[j]];
                const absl::Time start = absl::Now();
                const HeadRowList rows(pending.positions.begin(), pending.positions.end());
                status[j] =
                    AddRows(*pending.layer, rows, metrics_, compute_pool_, &rows_[admitted[j]]);
                gather_us[j] = absl::ToDoubleMicroseconds(absl::Now() - start);
              });
  for (size_t j = 0; j < admitted.size(); ++j) {
    const int i = admitted[j];
    if (!status[j].ok()) {
      SetRowsError(i, status[j], /*reset_cache=*/true);
      continue;
    }
    response_->mutable_results(i)->set_rows_us(pending_[i]->rows_us + gather_us[j]);
    RecordItemOk(i, pending_[i]->scoring_start);
  }
  pending_.clear();  // the sessions' references go
}

absl::StatusOr<RetrieveReactor::HeadRowList> RetrieveReactor::RowsToSend(
    const v1::RetrieveItem& item, const std::shared_ptr<Session>& session,
    const LayerSelection& selection, size_t row_bytes, std::vector<std::vector<uint32_t>>* missed,
    v1::RetrieveResult* result) {
  HeadRowList rows(selection.heads.size());
  const uint32_t slots = item.cache_slots();
  if (slots == 0) {
    for (size_t h = 0; h < rows.size(); ++h) rows[h] = selection.heads[h].positions;
    return rows;
  }
  if (slots < item.k() || slots > kMaxCacheSlots) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache_slots = ", slots, " must be 0 or in [k = ", item.k(), ", ", kMaxCacheSlots, "]"));
  }
  missed->assign(rows.size(), {});
  absl::MutexLock lock(&cache_mu_);
  RowCache& cache = row_caches_[std::make_pair(item.session_id(), request_.layer())];
  // Another instance of the session (the id closed or expired and created again) holds
  // other rows under the same positions: its directory says nothing about this one.
  std::vector<RowCacheDirectory>& directories = cache.heads;
  const auto over_budget = [&](size_t bytes, const absl::Status& refused) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this item's row cache directories (cache_slots) need ", bytes,
                     " more bytes, past the server's budget for row cache directories "
                     "(--max_row_cache_bytes): ",
                     refused.message(), "; lower cache_slots or k, or close sessions or streams"));
  };
  if (cache.session_serial != session->serial() || directories.size() != rows.size() ||
      directories[0].slots() != slots) {
    cache.charged.Release();
    directories.clear();
    // Each directory's own object; its slots are charged as they come into use.
    const size_t bytes = rows.size() * sizeof(RowCacheDirectory);
    absl::StatusOr<ByteBudget::Reservation> reserved = row_cache_budget_->TryReserve(bytes);
    if (!reserved.ok()) {
      row_caches_.erase(std::make_pair(item.session_id(), request_.layer()));
      return over_budget(bytes, reserved.status());
    }
    cache.charged = *std::move(reserved);
    cache.session_serial = session->serial();
    cache.session = session;
    directories.assign(rows.size(), RowCacheDirectory(slots));
  }
  // Charged before anything is placed, so that a refused item leaves the directories as
  // they were (the client's cache is unchanged too).
  size_t new_slots = 0;
  for (size_t h = 0; h < rows.size(); ++h) {
    new_slots += directories[h].NewSlotsFor(selection.heads[h].positions);
  }
  if (new_slots > 0) {
    const size_t bytes = new_slots * RowCacheDirectory::kBytesPerSlot;
    absl::StatusOr<ByteBudget::Reservation> reserved = row_cache_budget_->TryReserve(bytes);
    if (!reserved.ok()) return over_budget(bytes, reserved.status());
    cache.charged.Absorb(*std::move(reserved));
  }
  uint64_t saved_rows = 0;
  for (size_t h = 0; h < rows.size(); ++h) {
    const std::vector<uint32_t>& positions = selection.heads[h].positions;
    RowCacheDirectory::Placement placement = directories[h].Place(positions);
    v1::HeadSelection* head = result->mutable_heads(static_cast<int>(h));
    head->mutable_slots()->Add(placement.slots.begin(), placement.slots.end());
    head->mutable_sent()->Add(placement.sent.begin(), placement.sent.end());
    (*missed)[h].reserve(placement.sent.size());
    for (uint32_t index : placement.sent) (*missed)[h].push_back(positions[index]);
    rows[h] = (*missed)[h];
    saved_rows += positions.size() - placement.sent.size();
  }
  result->set_cache_saved_bytes(saved_rows * 2 * row_bytes);
  metrics_->RecordCacheSavedBytes(saved_rows * 2 * row_bytes);
  return rows;
}

void RetrieveReactor::ResetRowCache(const std::string& session_id) {
  absl::MutexLock lock(&cache_mu_);
  row_caches_.erase(std::make_pair(session_id, request_.layer()));
}

absl::Status RetrieveReactor::LandRows(const LayerStore& layer, const HeadRowList& rows,
                                       const v1::KvLanding& landing, v1::RetrieveResult* result) {
  if (peer_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the item names a landing but this stream has no open UCX data plane",
        peer_error_.empty() ? " (send open_data_plane first)" : absl::StrCat(": ", peer_error_),
        "; omit the landing to get the rows in the response"));
  }
  const size_t row_bytes = layer.row_bytes();
  size_t total_rows = 0;
  for (absl::Span<const uint32_t> head : rows) total_rows += head.size();
  const uint64_t bytes = total_rows * row_bytes;
  for (uint64_t offset : {landing.keys_offset(), landing.values_offset()}) {
    absl::Status status = peer_->CheckBounds(offset, bytes);
    if (!status.ok()) return absl::InvalidArgumentError(status.message());
  }
  const uint64_t lo = std::min(landing.keys_offset(), landing.values_offset());
  const uint64_t hi = std::max(landing.keys_offset(), landing.values_offset());
  if (bytes > 0 && hi - lo < bytes) {
    return absl::InvalidArgumentError(absl::StrCat("the keys (offset ", landing.keys_offset(),
                                                   ") and values (offset ", landing.values_offset(),
                                                   ") landings of ", bytes, " bytes overlap"));
  }
  // Same host: gather from the pages straight into the client's buffer. Otherwise
  // gather into a staging buffer, which holds the gather budget while it lives, and put it.
  ByteBudget::Reservation staging_budget;  // declared first: released after the staging
  std::vector<char> staging;
  char* keys_out;
  char* values_out;
  if (peer_->mapped() != nullptr) {
    keys_out = peer_->mapped() + landing.keys_offset();
    values_out = peer_->mapped() + landing.values_offset();
  } else {
    if (2 * bytes > kMaxStagingBytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the rows would take ", 2 * bytes, " bytes of staging for a UCX put, over the ",
          kMaxStagingBytes, "-byte limit per item: lower k"));
    }
    absl::StatusOr<ByteBudget::Reservation> reserved = gather_budget_->TryReserve(2 * bytes);
    if (!reserved.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the rows' staging for a UCX put would pass the server's budget of rows gathered and "
          "not yet written (--max_inflight_gather_bytes): ",
          reserved.status().message(), "; retry, or ask for fewer rows per request"));
    }
    staging_budget = *std::move(reserved);
    staging.resize(2 * bytes);
    keys_out = staging.data();
    values_out = staging.data() + bytes;
  }
  absl::Status gathered = GatherRows(layer, rows, keys_out, values_out, compute_pool_);
  if (!gathered.ok()) return gathered;
  if (peer_->mapped() == nullptr) {
    const UcxPeer::Chunk chunks[] = {{landing.keys_offset(), keys_out, bytes},
                                     {landing.values_offset(), values_out, bytes}};
    absl::Status status = peer_->Write(chunks, kLandingTimeout);
    if (!status.ok()) return status;
  }
  result->set_landed_bytes(bytes);
  result->set_landed_by(peer_->method());
  metrics_->RecordBytesSent(peer_->method(), 2 * bytes);
  return absl::OkStatus();
}

absl::Status RetrieveReactor::AddRows(const LayerStore& layer, const HeadRowList& rows,
                                      Metrics* metrics, ThreadPool* pool,
                                      std::vector<HeadRowSlices>* out) {
  const size_t row_bytes = layer.row_bytes();
  size_t total_rows = 0;
  for (absl::Span<const uint32_t> head : rows) total_rows += head.size();
  // Gathered straight into the slices the response will reference: no copy when it is
  // serialised.
  std::vector<char*> keys_out(rows.size()), values_out(rows.size());
  out->resize(rows.size());
  for (size_t h = 0; h < rows.size(); ++h) {
    HeadRowSlices& head = (*out)[h];
    head.kv_head = static_cast<uint32_t>(h);
    head.keys = NewRowSlice(rows[h].size() * row_bytes);
    head.values = NewRowSlice(rows[h].size() * row_bytes);
    keys_out[h] = MutableData(head.keys);
    values_out[h] = MutableData(head.values);
  }
  absl::Status status = GatherHeads(layer, rows, keys_out, values_out, pool);
  if (!status.ok()) return status;
  metrics->RecordBytesSent("grpc", 2 * total_rows * row_bytes);
  return absl::OkStatus();
}

absl::Status RetrieveReactor::GatherRows(const LayerStore& layer, const HeadRowList& rows,
                                         char* keys_out, char* values_out, ThreadPool* pool) {
  std::vector<char*> keys(rows.size()), values(rows.size());
  size_t offset = 0;
  for (size_t h = 0; h < rows.size(); ++h) {
    keys[h] = keys_out + offset;
    values[h] = values_out + offset;
    offset += rows[h].size() * layer.row_bytes();
  }
  return GatherHeads(layer, rows, keys, values, pool);
}

absl::Status RetrieveReactor::GatherHeads(const LayerStore& layer, const HeadRowList& rows,
                                          const std::vector<char*>& keys_out,
                                          const std::vector<char*>& values_out, ThreadPool* pool) {
  size_t total_rows = 0;
  for (absl::Span<const uint32_t> head : rows) total_rows += head.size();
  // Copies of a few hundred KiB are done before another thread could join in.
  const bool parallel = 2 * total_rows * layer.row_bytes() >= kParallelGatherBytes;
  std::vector<absl::Status> status(rows.size());
  ParallelFor(parallel ? pool : nullptr, static_cast<int>(rows.size()), [&](int h) {
    status[h] = layer.Fetch(static_cast<uint32_t>(h), rows[h], keys_out[h], values_out[h]);
  });
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void RetrieveReactor::CompleteRequest() {
  bool read_now;
  Outbound outbound{std::make_unique<grpc::ByteBuffer>(EncodeRetrieveResponse(*response_, rows_)),
                    std::move(gathered_)};
  gathered_.clear();
  response_.reset();
  rows_.clear();
  {
    absl::MutexLock lock(&mu_);
    processing_ = false;
    outbox_.push_back(std::move(outbound));
    if (!writing_) {
      writing_ = true;
      StartWrite(outbox_.front().message.get());
    }
    if (shutting_down_) {
      read_now = false;  // finished once the outbox drains (OnWriteDone)
    } else {
      read_now = outbox_.size() < kMaxQueuedResponses;
      read_deferred_ = !read_now;
    }
    if (read_now) ++starting_reads_;
  }
  if (read_now) StartDecidedRead();
}

void RetrieveReactor::StartDecidedRead() {
  StartRead(&request_buffer_);
  absl::MutexLock lock(&mu_);
  --starting_reads_;
  MaybeFinishLocked();  // EndWhenIdle may have come meanwhile
}

void RetrieveReactor::OnWriteDone(bool ok) {
  bool read_now = false;
  {
    absl::MutexLock lock(&mu_);
    outbox_.pop_front();  // its rows' gather budget comes back
    writing_ = false;
    if (!ok) outbox_.clear();  // the client is gone; nobody will read the rest
    if (!outbox_.empty()) {
      writing_ = true;
      StartWrite(outbox_.front().message.get());
    }
    if (read_deferred_ && outbox_.size() < kMaxQueuedResponses && !shutting_down_) {
      read_deferred_ = false;
      read_now = true;
      ++starting_reads_;
    } else {
      if (shutting_down_) read_deferred_ = false;  // that read will never be started
      MaybeFinishLocked();
    }
  }
  if (read_now) StartDecidedRead();
}

void RetrieveReactor::EndWhenIdle() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  if (!processing_ && !writing_) read_deferred_ = false;
  MaybeFinishLocked();
}

void RetrieveReactor::MaybeFinishLocked() {
  if (finished_ || processing_ || writing_ || read_deferred_ || starting_reads_ > 0) return;
  if (!reads_done_ && !shutting_down_) return;
  finished_ = true;
  // A read may still be pending: gRPC completes it (not ok) before OnDone.
  if (shutting_down_ && !reads_done_ && final_status_.ok()) {
    final_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down");
  }
  Finish(final_status_);
}

}  // namespace pqkv::server

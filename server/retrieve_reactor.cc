#include "server/retrieve_reactor.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/grpc_status.h"
#include "server/fetch_limits.h"

namespace pqkv::server {

RetrieveReactor::RetrieveReactor(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                                 absl::StatusOr<std::string> principal, absl::Time call_deadline,
                                 absl::Duration max_index_wait,
                                 std::atomic<uint64_t>* items_counter)
    : store_(store),
      compute_pool_(compute_pool),
      metrics_(metrics),
      principal_(principal.ok() ? *principal : ""),
      call_deadline_(call_deadline),
      max_index_wait_(max_index_wait),
      items_counter_(items_counter) {
  if (!principal.ok()) {
    metrics_->RecordStatus("Retrieve", principal.status());
    absl::MutexLock lock(&mu_);
    finished_ = true;
    Finish(ToGrpcStatus(principal.status()));
    return;
  }
  StartRead(&request_);
}

void RetrieveReactor::OnReadDone(bool ok) {
  if (!ok) {
    absl::MutexLock lock(&mu_);
    reads_done_ = true;
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
  if (items == 0) {
    CompleteRequest();
    return;
  }
  items_left_.store(items, std::memory_order_relaxed);
  for (int i = 0; i < items; ++i) compute_pool_->Schedule([this, i] { StartItem(i); });
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
  // While the layer's index builds, park the item instead of holding a pool thread.
  absl::AnyInvocable<void()&&> score_later = [this, i, session = *session, layer = *layer] {
    compute_pool_->Schedule([this, i, session, layer] {
      ScoreItem(i, *layer, /*parked=*/true);
      ItemDone();
    });
  };
  if ((*layer)->DeferUntilIndexSettled(score_later)) return;
  ScoreItem(i, **layer, /*parked=*/false);
  ItemDone();
}

void RetrieveReactor::ItemDone() {
  if (items_left_.fetch_sub(1, std::memory_order_acq_rel) == 1) CompleteRequest();
}

void RetrieveReactor::SetItemError(int i, const absl::Status& status) {
  metrics_->RecordStatus("Retrieve", status);
  v1::RetrieveResult* result = response_->mutable_results(i);
  result->set_status_code(CodeOf(status));
  result->set_error_message(std::string(status.message()));
}

void RetrieveReactor::ScoreItem(int i, const LayerStore& layer, bool parked) {
  const v1::RetrieveItem& item = request_.items(i);
  const absl::Time scoring_start = absl::Now();
  // A parked item is answered when the build ends; if that was past its bound, it says so.
  absl::StatusOr<LayerSelection> selection =
      parked && absl::Now() > wait_until_
          ? absl::DeadlineExceededError(absl::StrCat(
                "layer ", request_.layer(),
                "'s index was still building when the wait bound passed (the call's deadline "
                "or the server's max index wait of ",
                absl::FormatDuration(max_index_wait_), ")"))
          : layer.Retrieve(absl::MakeConstSpan(item.query().data(), item.query_size()), item.k(),
                           wait_until_, compute_pool_);
  if (!selection.ok()) {
    SetItemError(i, selection.status());
    return;
  }
  v1::RetrieveResult* result = response_->mutable_results(i);
  result->set_num_tokens(selection->num_tokens);
  result->set_num_encoded(selection->num_encoded);
  for (const HeadSelection& head : selection->heads) {
    v1::HeadSelection* out = result->add_heads();
    out->mutable_positions()->Add(head.positions.begin(), head.positions.end());
    out->mutable_scores()->Add(head.scores.begin(), head.scores.end());
  }
  if (item.with_kv()) {
    absl::Status status = AddRows(layer, *selection, metrics_, result);
    if (!status.ok()) {
      result->Clear();
      result->set_session_id(item.session_id());
      SetItemError(i, status);
      return;
    }
  }
  items_counter_->fetch_add(1, std::memory_order_relaxed);
  metrics_->RecordStatus("Retrieve", absl::OkStatus());
  const absl::Time now = absl::Now();
  metrics_->RecordRetrieveItem(now - request_start_, now - scoring_start);
}

absl::Status RetrieveReactor::AddRows(const LayerStore& layer, const LayerSelection& selection,
                                      Metrics* metrics, v1::RetrieveResult* result) {
  const size_t row_bytes = layer.row_bytes();
  size_t rows = 0;
  for (const HeadSelection& head : selection.heads) rows += head.positions.size();
  if (2 * rows * row_bytes > kMaxFetchBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "with_kv would return ", 2 * rows * row_bytes, " bytes for one item, over the ",
        kMaxFetchBytes, "-byte limit: lower k or fetch the rows with FetchKv"));
  }
  for (size_t h = 0; h < selection.heads.size(); ++h) {
    const std::vector<uint32_t>& positions = selection.heads[h].positions;
    v1::HeadRows* out = result->add_rows();
    out->set_kv_head(static_cast<uint32_t>(h));
    out->mutable_keys()->resize(positions.size() * row_bytes);
    out->mutable_values()->resize(positions.size() * row_bytes);
    absl::Status status = layer.Fetch(static_cast<uint32_t>(h), positions,
                                      out->mutable_keys()->data(), out->mutable_values()->data());
    if (!status.ok()) return status;
    metrics->RecordBytesSent("grpc", 2 * positions.size() * row_bytes);
  }
  return absl::OkStatus();
}

void RetrieveReactor::CompleteRequest() {
  // Rows of many with_kv items could together pass what a client accepts in one
  // message; drop rows from the last items first and say why in those items.
  size_t rows_bytes = 0;
  for (const v1::RetrieveResult& result : response_->results()) {
    for (const v1::HeadRows& rows : result.rows()) rows_bytes += 2 * rows.keys().size();
  }
  for (int i = response_->results_size() - 1; i >= 0 && rows_bytes > kMaxFetchBytes; --i) {
    v1::RetrieveResult* result = response_->mutable_results(i);
    if (result->rows_size() == 0) continue;
    for (const v1::HeadRows& rows : result->rows()) rows_bytes -= 2 * rows.keys().size();
    const std::string session_id = result->session_id();
    result->Clear();
    result->set_session_id(session_id);
    SetItemError(i, absl::ResourceExhaustedError(absl::StrCat(
                        "the request's with_kv rows exceed ", kMaxFetchBytes,
                        " bytes in one response: ask for fewer sessions' rows per request")));
  }
  bool read_now;
  {
    absl::MutexLock lock(&mu_);
    processing_ = false;
    outbox_.push_back(std::move(response_));
    if (!writing_) {
      writing_ = true;
      StartWrite(outbox_.front().get());
    }
    read_now = outbox_.size() < kMaxQueuedResponses;
    read_deferred_ = !read_now;
  }
  if (read_now) StartRead(&request_);
}

void RetrieveReactor::OnWriteDone(bool ok) {
  bool read_now = false;
  {
    absl::MutexLock lock(&mu_);
    outbox_.pop_front();
    writing_ = false;
    if (!ok) outbox_.clear();  // the client is gone; nobody will read the rest
    if (!outbox_.empty()) {
      writing_ = true;
      StartWrite(outbox_.front().get());
    }
    if (read_deferred_ && outbox_.size() < kMaxQueuedResponses) {
      read_deferred_ = false;
      read_now = true;
    } else {
      MaybeFinishLocked();
    }
  }
  if (read_now) StartRead(&request_);
}

void RetrieveReactor::MaybeFinishLocked() {
  if (finished_ || !reads_done_ || processing_ || writing_ || read_deferred_) return;
  finished_ = true;
  Finish(grpc::Status::OK);
}

}  // namespace pqkv::server

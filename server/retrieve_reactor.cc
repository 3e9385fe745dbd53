#include "server/retrieve_reactor.h"

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace pqkv {

RetrieveReactor::RetrieveReactor(SessionStore* store, ThreadPool* compute_pool,
                                 absl::Time deadline, std::atomic<uint64_t>* items_counter)
    : store_(store),
      compute_pool_(compute_pool),
      deadline_(deadline),
      items_counter_(items_counter) {
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
  for (int i = 0; i < items; ++i) {
    compute_pool_->Schedule([this, i] {
      ProcessItem(i);
      if (items_left_.fetch_sub(1, std::memory_order_acq_rel) == 1) CompleteRequest();
    });
  }
}

void RetrieveReactor::ProcessItem(int i) {
  const v1::RetrieveItem& item = request_.items(i);
  v1::RetrieveResult* result = response_->mutable_results(i);
  result->set_session_id(item.session_id());
  absl::StatusOr<LayerSelection> selection = [&]() -> absl::StatusOr<LayerSelection> {
    absl::StatusOr<std::shared_ptr<Session>> session = store_->Get(item.session_id());
    if (!session.ok()) return session.status();
    absl::StatusOr<LayerStore*> layer = (*session)->layer(request_.layer());
    if (!layer.ok()) return layer.status();
    return (*layer)->Retrieve(absl::MakeConstSpan(item.query().data(), item.query_size()),
                              item.k(), deadline_);
  }();
  if (!selection.ok()) {
    result->set_status_code(static_cast<int>(selection.status().code()));
    result->set_error_message(std::string(selection.status().message()));
    return;
  }
  result->set_num_tokens(selection->num_tokens);
  result->set_num_encoded(selection->num_encoded);
  for (const HeadSelection& head : selection->heads) {
    v1::HeadSelection* out = result->add_heads();
    out->mutable_positions()->Add(head.positions.begin(), head.positions.end());
    out->mutable_scores()->Add(head.scores.begin(), head.scores.end());
  }
  items_counter_->fetch_add(1, std::memory_order_relaxed);
}

void RetrieveReactor::CompleteRequest() {
  {
    absl::MutexLock lock(&mu_);
    processing_ = false;
    outbox_.push_back(std::move(response_));
    if (!writing_) {
      writing_ = true;
      StartWrite(outbox_.front().get());
    }
  }
  StartRead(&request_);
}

void RetrieveReactor::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  outbox_.pop_front();
  writing_ = false;
  if (!ok) outbox_.clear();  // the client is gone; nobody will read the rest
  if (!outbox_.empty()) {
    writing_ = true;
    StartWrite(outbox_.front().get());
    return;
  }
  MaybeFinishLocked();
}

void RetrieveReactor::MaybeFinishLocked() {
  if (finished_ || !reads_done_ || processing_ || writing_) return;
  finished_ = true;
  Finish(grpc::Status::OK);
}

}  // namespace pqkv

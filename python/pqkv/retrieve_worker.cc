#include "python/pqkv/retrieve_worker.h"

#include <utility>

namespace pqkv::python {

RetrieveWorker::RetrieveWorker(RetrievalStream* stream)
    : stream_(stream), thread_([this] { Loop(); }) {}

RetrieveWorker::~RetrieveWorker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void RetrieveWorker::Submit(std::shared_ptr<RetrieveCall> call) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(call));
}

absl::StatusOr<std::vector<RetrieveResult>> RetrieveWorker::RunNow(
    uint32_t layer, absl::Span<const RetrieveQuery> queries) {
  absl::MutexLock lock(&stream_mu_);
  return stream_->Retrieve(layer, queries);
}

absl::Status RetrieveWorker::CloseStream() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &RetrieveWorker::Idle));
  }
  absl::MutexLock lock(&stream_mu_);
  return stream_->Close();
}

void RetrieveWorker::Loop() {
  for (;;) {
    std::shared_ptr<RetrieveCall> call;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &RetrieveWorker::HasWorkOrStops));
      if (queue_.empty()) return;  // stopping, and everything queued has run
      call = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
    }
    call->results = RunNow(call->layer, call->queries);
    call->done.Notify();
    absl::MutexLock lock(&mu_);
    running_ = false;
  }
}

}  // namespace pqkv::python

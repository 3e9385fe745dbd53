// RetrieveWorker: runs one RetrievalStream's Retrieve calls on a thread of its own, in the
// order they were submitted, so that the thread that submits them (a Python worker, with
// the GIL released) computes the previous layer meanwhile. Calls made with RunNow run on
// the caller's thread; the stream takes one call at a time either way.
//
// Neither side polls: on a machine that shares its cores with a server, a polling
// client thread takes the cores the server needs to answer (measured with 200 us of
// polling: no gain in bench/python/sdk_overhead_bench's pipelined loop).
//
// Thread-safe. The stream must outlive the worker; the destructor runs what is queued.
#ifndef PQKV_PYTHON_PQKV_RETRIEVE_WORKER_H_
#define PQKV_PYTHON_PQKV_RETRIEVE_WORKER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "client/pqkv_client.h"

namespace pqkv::python {

// One submitted request and, once `done` is notified, its outcome.
struct RetrieveCall {
  uint32_t layer = 0;
  std::vector<RetrieveQuery> queries;  // their `query` spans point into query_values
  std::vector<std::vector<float>> query_values;
  absl::StatusOr<std::vector<RetrieveResult>> results;
  absl::Notification done;
};

class RetrieveWorker {
 public:
  explicit RetrieveWorker(RetrievalStream* stream);
  ~RetrieveWorker();
  RetrieveWorker(const RetrieveWorker&) = delete;
  RetrieveWorker& operator=(const RetrieveWorker&) = delete;

  // Queues `call`; its `done` is notified when it has run.
  void Submit(std::shared_ptr<RetrieveCall> call);
  // Runs a call on this thread, between queued ones.
  absl::StatusOr<std::vector<RetrieveResult>> RunNow(uint32_t layer,
                                                     absl::Span<const RetrieveQuery> queries);
  // Waits until every submitted call has run, then closes the stream (later calls fail
  // with its FAILED_PRECONDITION); returns the stream's final status.
  absl::Status CloseStream();

 private:
  void Loop();
  bool HasWorkOrStops() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !running_; }

  RetrievalStream* const stream_;
  absl::Mutex stream_mu_;  // one Retrieve at a time on the stream
  absl::Mutex mu_;
  std::deque<std::shared_ptr<RetrieveCall>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool running_ ABSL_GUARDED_BY(mu_) = false;  // the thread is running a call
  std::thread thread_;
};

}  // namespace pqkv::python

#endif  // PQKV_PYTHON_PQKV_RETRIEVE_WORKER_H_

// RetrieveReactor: serves one Retrieve stream. Each request is answered by one response,
// in order. A request's items (one per session) are scored in parallel on the compute
// pool; an item whose layer index is still building is scored exactly at once (or, with
// a wait bound, parked on the layer, no thread waiting, and scored when the build ends).
// The last item to finish queues the response
// and starts the next read, so one request is in processing at a time while responses
// drain behind it.
//
// A request may open the stream's UCX data plane (open_data_plane); with_kv items that
// name a landing then have their rows written into the client's registered buffer before
// the response is sent, and the stream's UcxPeer is released when the stream ends.
// Items with cache_slots use the stream's row cache directories (delta transfer): only
// rows the client's cache misses are sent. A directory belongs to one session instance:
// a session closed (or expired) and created again under the same id starts cold.
// Directories grow with the slots in use, never to cache_slots up front, and are charged
// to the server-wide row_cache_budget (--max_row_cache_bytes): an item whose directories
// would pass it fails with RESOURCE_EXHAUSTED. A closed session's directories are
// dropped (and their bytes given back) when the stream's next request arrives.
//
// Rows bound for the response (with_kv, no landing) are gathered only after every item
// of the request is scored, and only for the items admitted in request order: those whose
// rows fit what is left of the response's kMaxFetchBytes and of the server-wide gather
// budget (gather_budget, --max_inflight_gather_bytes). The others fail with
// RESOURCE_EXHAUSTED before anything is gathered. An admitted item holds its bytes of the
// budget until its response is written; a UCX put's staging holds them while it runs.
//
// Per-item errors (unknown session, bad layer, k, query) go into the item's result;
// the stream itself only ends when the client ends it. The next request is read only
// while fewer than kMaxQueuedResponses responses wait to be written, so a client that
// does not read cannot make the server buffer without bound.
//
// Shutdown: EndWhenIdle ends the stream with UNAVAILABLE "server shutting down" as soon as
// no request is in processing and no response waits to be written (at once when idle); no
// request is read after it. The server's grace is then spent only on work in flight.
//
// Owned by gRPC; deletes itself in OnDone (after calling on_done), which gRPC calls only after
// Finish, which is only called once no pool task refers to the reactor.
#ifndef PQKV_SERVER_RPC_RETRIEVE_REACTOR_H_
#define PQKV_SERVER_RPC_RETRIEVE_REACTOR_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "server/dataplane/row_cache_directory.h"
#include "server/dataplane/ucx_data_plane.h"
#include "server/memory/byte_budget.h"
#include "server/metrics/metrics.h"
#include "server/metrics/quality_sampler.h"
#include "server/rpc/retrieve_response_encoder.h"
#include "server/runtime/thread_pool.h"
#include "server/store/layer_store.h"
#include "server/store/session_store.h"

namespace pqkv::server {

inline constexpr size_t kMaxQueuedResponses = 2;

// The method is registered raw (grpc::ByteBuffer both ways) so that responses can
// reference the slices rows were gathered into instead of copying them into protobuf
// strings (retrieve_response_encoder.h); requests are parsed here.
class RetrieveReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // An item for a layer whose index is building is scored exactly at once when
  // max_index_wait is zero; otherwise it is parked until the build ends, at most until the
  // call's deadline and max_index_wait after its request arrived (then DEADLINE_EXCEEDED).
  // items_counter counts answered items.
  // principal: the caller, or the authentication error that ends the stream at once.
  // data_plane: the server's UCX end, or null (data_plane_error says why) when UCX is off.
  // gather_budget: the server-wide budget of gathered rows not yet written;
  // row_cache_budget: that of row cache directories; both must outlive the reactor.
  // quality_sampler: live quality telemetry of answered items, or null.
  RetrieveReactor(SessionStore* store, ThreadPool* compute_pool, Metrics* metrics,
                  QualitySampler* quality_sampler, absl::StatusOr<std::string> principal,
                  absl::Time call_deadline, absl::Duration max_index_wait,
                  std::atomic<uint64_t>* items_counter, UcxDataPlane* data_plane,
                  std::string data_plane_error, ByteBudget* gather_budget,
                  ByteBudget* row_cache_budget, std::function<void(RetrieveReactor*)> on_done);

  // Ends the stream (UNAVAILABLE "server shutting down") once nothing is in processing or
  // waiting to be written, at once if so now. Thread-safe; call only before OnDone (the
  // service calls it under the lock that on_done takes).
  void EndWhenIdle();

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  // Closing a UCX endpoint may wait for the transport: done on the pool, not here.
  void OnDone() override;

 private:
  // Opens the data plane the current request offers; the result goes in the response.
  void OpenDataPlane();
  // Schedules every item of the current request.
  void StartItems();
  // Looks up item `i` of request_ and scores it now, or once its layer's index is built.
  void StartItem(int i);
  // Scores item `i` of `session` into response_->results(i); `parked` when it waited for
  // the index.
  void ScoreItem(int i, const std::shared_ptr<Session>& session, const LayerStore& layer,
                 bool parked);
  void SetItemError(int i, const absl::Status& status);
  // Fails with_kv item `i` after its rows were chosen: clears its result (and, when
  // `reset_cache`, its row cache directory, whose rows the client will not get).
  void SetRowsError(int i, const absl::Status& status, bool reset_cache);
  // Counts item `i` as answered OK (scoring began at scoring_start).
  void RecordItemOk(int i, absl::Time scoring_start);
  // Positions whose rows to send, per kv head.
  using HeadRowList = std::vector<absl::Span<const uint32_t>>;
  // The rows to send for `item` of `session`: every selected row (spans of `selection`),
  // or with a row cache those it misses (spans of `*missed`); fills the heads' slots and
  // sent lists of `result`.
  absl::StatusOr<HeadRowList> RowsToSend(const v1::RetrieveItem& item,
                                         const std::shared_ptr<Session>& session,
                                         const LayerSelection& selection, size_t row_bytes,
                                         std::vector<std::vector<uint32_t>>* missed,
                                         v1::RetrieveResult* result);
  // Forgets the row cache directory of (session, layer): the next selection sends all.
  void ResetRowCache(const std::string& session_id);
  // Keeps item `i`'s rows for the response in pending_[i], to gather once admitted;
  // INVALID_ARGUMENT when they alone pass kMaxFetchBytes.
  absl::Status PendRows(int i, std::shared_ptr<Session> session, const LayerStore& layer,
                        const HeadRowList& rows, absl::Time scoring_start, absl::Time rows_start);
  // Once every item is scored: admits the pending rows in request order against the
  // response's cap and the gather budget, fails the rest, and gathers the admitted.
  void GatherResponseRows();
  // Gathers the K and V rows of `rows` (per kv head) into new slices in `out` (with_kv,
  // no landing).
  static absl::Status AddRows(const LayerStore& layer, const HeadRowList& rows, Metrics* metrics,
                              ThreadPool* pool, std::vector<HeadRowSlices>* out);
  // Copies the K and V rows of `rows` kv head by kv head into keys_out / values_out
  // (each head's rows after the previous head's), the heads in parallel on `pool`.
  static absl::Status GatherRows(const LayerStore& layer, const HeadRowList& rows, char* keys_out,
                                 char* values_out, ThreadPool* pool);
  // The same into one destination per head.
  static absl::Status GatherHeads(const LayerStore& layer, const HeadRowList& rows,
                                  const std::vector<char*>& keys_out,
                                  const std::vector<char*>& values_out, ThreadPool* pool);
  // Writes the K and V rows of `rows` into the client's buffer at `landing`.
  absl::Status LandRows(const LayerStore& layer, const HeadRowList& rows,
                        const v1::KvLanding& landing, v1::RetrieveResult* result);
  // Counts an item as answered; the last one completes the request.
  void ItemDone();
  // Called once the current request's last item is done.
  void CompleteRequest();
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts a read decided under mu_ (counted in starting_reads_), then finishes if due
  // meanwhile.
  void StartDecidedRead();

  SessionStore* const store_;
  ThreadPool* const compute_pool_;
  Metrics* const metrics_;
  QualitySampler* const quality_sampler_;
  const std::string principal_;
  const absl::Time call_deadline_;
  const absl::Duration max_index_wait_;
  std::atomic<uint64_t>* const items_counter_;
  UcxDataPlane* const data_plane_;
  const std::string data_plane_error_;
  ByteBudget* const gather_budget_;
  ByteBudget* const row_cache_budget_;
  const std::function<void(RetrieveReactor*)> on_done_;

  // The open data plane; replaced only between requests, read by the items' tasks.
  std::unique_ptr<UcxPeer> peer_;
  std::string peer_error_;  // why peer_ is null after an offer

  // The row cache of one (session id, layer): one directory per kv head, for the session
  // instance whose Session::serial() it records (a new instance replaces it, cold).
  struct RowCache {
    uint64_t session_serial = 0;
    std::weak_ptr<Session> session;  // dropped once it is closed
    std::vector<RowCacheDirectory> heads;
    // The row cache budget its directories hold: their objects and slots in use.
    ByteBudget::Reservation charged;
  };
  // Drops the row caches of closed sessions.
  void DropClosedRowCaches();
  absl::Mutex cache_mu_;
  absl::flat_hash_map<std::pair<std::string, uint32_t>, RowCache> row_caches_
      ABSL_GUARDED_BY(cache_mu_);

  // The request being read or processed; untouched by reactions while processing.
  grpc::ByteBuffer request_buffer_;
  v1::RetrieveRequest request_;
  std::unique_ptr<v1::RetrieveResponse> response_;
  // Rows of each result of response_, kept out of the message (see the class comment).
  std::vector<std::vector<HeadRowSlices>> rows_;
  // An item's rows bound for the response, chosen but not yet gathered.
  struct PendingRows {
    std::shared_ptr<Session> session;  // keeps `layer` alive
    const LayerStore* layer = nullptr;
    std::vector<std::vector<uint32_t>> positions;  // per kv head, the rows to send
    size_t bytes = 0;                              // K and V
    absl::Time scoring_start;
    double rows_us = 0;  // choosing them (row cache); the gather adds its own time
  };
  // Per item of request_: written by the item's task only, read once all are done.
  std::vector<std::optional<PendingRows>> pending_;
  // The gather budget held by the current request's admitted rows.
  std::vector<ByteBudget::Reservation> gathered_;
  std::atomic<int> items_left_{0};
  // Until when the current request's parked items may wait for a building index.
  absl::Time wait_until_;
  absl::Time request_start_;  // when the current request was read

  absl::Mutex mu_;
  bool processing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // A read is due but waits for the outbox to drain (backpressure on slow readers).
  bool read_deferred_ ABSL_GUARDED_BY(mu_) = false;
  // EndWhenIdle was called: no more reads; finish once idle.
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  // Reads decided under mu_ and being started outside it: no Finish until they are
  // (StartRead after Finish uses a stream gRPC may have freed).
  int starting_reads_ ABSL_GUARDED_BY(mu_) = 0;
  // A response and the gather budget its rows hold until it is written.
  struct Outbound {
    std::unique_ptr<grpc::ByteBuffer> message;
    std::vector<ByteBudget::Reservation> gathered;
  };
  // Responses waiting to be written; the front one is in flight while writing_.
  std::deque<Outbound> outbox_ ABSL_GUARDED_BY(mu_);
  // OK, or why the stream ended early (a request that did not parse).
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RPC_RETRIEVE_REACTOR_H_

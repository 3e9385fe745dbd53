// pqkv C++ SDK: the one header a worker includes to talk to pqkv-server.
//
// A Client owns one gRPC channel to one server. Typical use, per sequence:
//
//   auto client = pqkv::Client::Connect("localhost:50051").value();
//   std::string id = client->CreateSession({.shape = shape}).value();
//   for (layer ...) client->UploadPrefill(id, layer, 0, n, keys, values);   // prefill
//   auto stream = client->OpenRetrievalStream().value();
//   for (step ...) {
//     for (layer ...) {
//       // Indices and K/V rows in one round trip, written by the server (UCX) into
//       // the stream's page-locked receive buffer.
//       auto* rows = static_cast<char*>(stream->receive_buffer());
//       auto results = stream->Retrieve(layer, {{.session_id = id, .query = query, .k = k,
//           .keys_out = rows, .values_out = rows + half, .buffer_bytes = half}}).value();
//     }
//     client->AppendToken(id, position, new_k, new_v);
//   }
//   client->CloseSession(id);
//
// Thread safety: Client is safe for concurrent use. A RetrievalStream is used by one
// thread at a time; open one per decoding thread. Both must be destroyed on an
// application thread, not inside a gRPC callback.
//
// Layouts: K/V are raw little-endian values of the session's dtype; a layer's K (or V)
// is [kv_head][token][head_dim]. Queries are fp32 [query_head][head_dim], post-RoPE.
#ifndef PQKV_CLIENT_PQKV_CLIENT_H_
#define PQKV_CLIENT_PQKV_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace pqkv {

enum class DType { kFp16, kBf16, kFp32 };
size_t DTypeBytes(DType dtype);

struct ModelShape {
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t num_query_heads = 0;  // a multiple of num_kv_heads (GQA)
  uint32_t head_dim = 0;
  DType dtype = DType::kFp16;
  // Bytes of one token's K (or V) row for one kv head.
  size_t row_bytes() const { return head_dim * DTypeBytes(dtype); }
};

// Zero / unset fields take the server's defaults (PQCache's: M = 2, b = 6, 10 k-means
// iterations, 32 sinks; recent window 64; and exact re-ranking of 4 x k candidates).
struct IndexOptions {
  uint32_t subspaces = 0;
  uint32_t bits = 0;
  uint32_t kmeans_iterations = 0;
  std::optional<uint32_t> sink_tokens;
  std::optional<uint32_t> recent_window;
  // Keep RoPE pairs (i, i + head_dim/2, Hugging Face layout) in one sub-space. Free at
  // query time; see the proto.
  std::optional<bool> rope_pairs;
  // Exact re-ranking for the session's queries that leave RetrieveQuery::rerank at 0:
  // rerank x k PQ candidates scored exactly; 1: off; at most 64. Server default 4.
  std::optional<uint32_t> rerank;
};

struct SessionOptions {
  std::string session_id;  // empty: a random id (server-chosen with one server)
  ModelShape shape;
  IndexOptions index;
};

enum class IndexState { kUnknown, kOpen, kBuilding, kReady, kExact, kFailed };
const char* IndexStateName(IndexState state);

struct LayerInfo {
  uint32_t layer = 0;
  uint64_t num_tokens = 0;
  IndexState index_state = IndexState::kUnknown;
  uint64_t num_encoded = 0;
  double index_build_ms = 0;
  // Live quality samples of the layer's Retrieve items (server --quality_sample_rate) and
  // their attention-mass recall: the last one's and the mean.
  uint64_t quality_samples = 0;
  double last_mass_recall = 0;
  double mean_mass_recall = 0;
  // The drift signal: mean squared quantization error per key of the training keys and
  // of the latest appended tokens (an exponential average over about 64); and how often
  // the server retrained the codebooks while decoding.
  double training_quantization_error = 0;
  double appended_quantization_error = 0;
  uint64_t index_refreshes = 0;
};

struct SessionInfo {
  std::string session_id;
  ModelShape shape;
  IndexOptions index;  // every field filled with the value in force
  uint64_t bytes_held = 0;
  double age_seconds = 0;
  std::vector<LayerInfo> layers;  // empty in ListSessions
};

struct ServerStats {
  std::string endpoint;  // the server, or all of them (comma-separated) for totals
  uint64_t num_sessions = 0;
  uint64_t bytes_held = 0;
  uint64_t bytes_capacity = 0;
  uint64_t page_bytes = 0;
  uint64_t index_builds_pending = 0;
  uint64_t index_builds_done = 0;
  uint64_t retrieve_items = 0;
  std::string backend;
  std::string version;
};

// One session's query for one layer.
struct RetrieveQuery {
  std::string session_id;
  absl::Span<const float> query;  // fp32 [query_head][head_dim]
  uint32_t k = 0;                 // tokens to select per kv head
  // Optional: buffers of buffer_bytes each that receive the selected tokens' K and V
  // rows in the same round trip, [kv_head][rank][head_dim] in the session's dtype
  // (rank as in the result's positions). Null: indices only. When both lie inside the
  // stream's receive buffer (RetrievalStream::receive_buffer) the server writes the
  // rows there itself over UCX; anywhere else they arrive in the gRPC response and are
  // copied in.
  void* keys_out = nullptr;
  void* values_out = nullptr;
  size_t buffer_bytes = 0;
  // Delta transfer: the caller keeps a row cache of cache_slots slots per kv head for
  // this session and layer (at least k; 0: no cache). The server then sends only the
  // rows that cache misses: keys_out/values_out receive, kv head by kv head, the rows of
  // heads[h].sent in that order ([kv_head][sent][head_dim]; the buffers must still hold
  // k rows per head), and heads[h].slots says which slot holds every selected position.
  // The caller copies row j of head h into slot heads[h].slots[heads[h].sent[j]]. The
  // server's record of the cache lives as long as the stream and the session: a new
  // stream starts cold, so does a session created again under a closed or expired id,
  // and a caller that cannot store a result's rows must reopen the stream. One item per
  // session and request may use the cache (later ones fail with INVALID_ARGUMENT).
  uint32_t cache_slots = 0;
  // Exact re-ranking: the server's PQ scan picks rerank x k candidates per kv head and
  // the server keeps the best k by exact score from its stored keys. 0: the session's
  // (IndexOptions::rerank, 4 unless set); 1: off; at most 64. Costs (rerank x k) x group
  // dot products per kv head on the server.
  uint32_t rerank = 0;
  // False: the result's heads carry positions only (scores stay empty), a response a
  // third to a half the size; docs/benchmarks.md measures the round trip both ways.
  bool with_scores = true;
};

struct HeadSelection {
  std::vector<uint32_t> positions;  // best first
  // GQA sum of softmax attention, per position; empty when the query set with_scores false.
  std::vector<float> scores;
  // With cache_slots: the cache slot of each position, and the indices into positions
  // of the rows sent with this result (the misses), in the order they were written.
  std::vector<uint32_t> slots;
  std::vector<uint32_t> sent;
};

struct RetrieveResult {
  std::string session_id;
  absl::Status status;  // per item: the other items of a batch are unaffected
  uint64_t num_tokens = 0;
  uint64_t num_encoded = 0;
  std::vector<HeadSelection> heads;  // one per kv head
  size_t kv_bytes = 0;               // bytes written to each of keys_out / values_out
  // How the rows arrived: "ucx-shm" (the server, on this host, wrote them into the
  // receive buffer), "ucx-put" (UCX puts over the network), "grpc" (in the response);
  // empty without rows.
  std::string data_path;
  uint64_t cache_saved_bytes = 0;  // K+V bytes the row cache made unnecessary
  // Server time on this item, microseconds: scoring and top-k; gathering and writing rows.
  double server_score_us = 0;
  double server_rows_us = 0;
  // Of server_score_us, top-k selection and re-ranking (0: not measured apart).
  double server_select_us = 0;
};

// How a RetrievalStream receives K/V rows.
enum class DataPath {
  // UCX when it starts here and the server offers it (except where UCX could only put
  // over TCP, which measured slower than gRPC here), else gRPC responses.
  kAuto,
  kUcx,   // UCX or fail: OpenRetrievalStream and Retrieve report why it cannot be used
  kGrpc,  // rows always travel in gRPC responses
};

struct StreamOptions {
  DataPath data_path = DataPath::kAuto;
  // Bytes of the stream's receive buffer (UCX): page-locked host memory, registered
  // with UCX and, where a CUDA device is present, with CUDA.
  size_t receive_buffer_bytes = size_t{64} << 20;
};

// Rows to fetch for one kv head.
struct FetchHead {
  uint32_t kv_head = 0;
  std::vector<uint32_t> positions;
};

struct ClientOptions {
  // Target size of one AppendKv message.
  size_t upload_chunk_bytes = size_t{1} << 20;
  // Sent as `authorization: Bearer <token>` on every call when not empty (servers
  // started with --auth_tokens_file require one; sessions belong to their token).
  std::string auth_token;
  // With one target "name:port", resolve the name to all its addresses and spread
  // sessions over them (a headless Kubernetes Service); otherwise the name is one server.
  bool resolve_all_addresses = false;
  // TLS to every server (servers started with --tls_cert_file speak nothing else). Also
  // on when any PEM below is set. tls_root_certs: the CAs that sign the servers'
  // certificates (PEM; empty: the system's roots). For mutual TLS (servers with
  // --tls_client_ca_file): this client's certificate chain and private key (PEM).
  // tls_server_name: the name to check the certificates against instead of the target's
  // host (e.g. connecting by IP address to a server certified for a DNS name). Only the
  // gRPC path is encrypted: rows that UCX puts across hosts (DataPath::kUcx) are not.
  bool tls = false;
  std::string tls_root_certs;
  std::string tls_client_cert;
  std::string tls_client_key;
  std::string tls_server_name;
  // Deadline of unary calls (create, close, fetch, info).
  absl::Duration call_timeout = absl::Seconds(60);
  // How long Connect waits for the server to become reachable.
  absl::Duration connect_timeout = absl::Seconds(10);
};

// A bidirectional Retrieve stream: one request per layer per decode step. It must not
// outlive the Client that opened it.
class RetrievalStream {
 public:
  ~RetrievalStream();
  RetrievalStream(const RetrievalStream&) = delete;
  RetrievalStream& operator=(const RetrievalStream&) = delete;

  // Sends one layer's queries (one per session) and waits for their selections, in the
  // order of `queries`. A per-session problem is in that result's status; an error
  // status here means the stream broke and must be reopened.
  absl::StatusOr<std::vector<RetrieveResult>> Retrieve(uint32_t layer,
                                                       absl::Span<const RetrieveQuery> queries);
  // Ends the stream; returns its final status. Called by the destructor if needed.
  absl::Status Close();

  // The receive buffer servers write rows into (UCX), or null with DataPath::kGrpc or
  // when UCX could not start under kAuto (receive_buffer_error says why). Place
  // keys_out / values_out inside it to take rows without a copy.
  void* receive_buffer() const;
  size_t receive_buffer_bytes() const;
  const std::string& receive_buffer_error() const;

 private:
  friend class Client;
  struct Impl;
  explicit RetrievalStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Client {
 public:
  // Connects to `target`: one server ("host:port" or any gRPC target) or several,
  // comma-separated ("a:50051,b:50051"; see also resolve_all_addresses). With several,
  // each session lives on one server, chosen by rendezvous hashing of its id, and every
  // call for it goes there; a server that is down fails only its own sessions
  // (UNAVAILABLE). Waits until every server is reachable: UNAVAILABLE naming the first
  // that is not within options.connect_timeout.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target,
                                                         const ClientOptions& options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Returns the session id.
  absl::StatusOr<std::string> CreateSession(const SessionOptions& options);
  absl::Status CloseSession(const std::string& session_id);

  // Uploads tokens [token_begin, token_begin + num_tokens) of one layer. keys and values:
  // [kv_head][token][head_dim], num_kv_heads * num_tokens * head_dim elements each, all
  // finite (the server refuses NaN and Inf).
  // end_of_prefill: this call completes the layer's prefill, so the server builds its
  // index now (pass false for all but the last call of a chunked prefill; a layer never
  // completed is scored exactly). Any size: sent in chunks of about upload_chunk_bytes.
  absl::Status UploadPrefill(const std::string& session_id, uint32_t layer, uint64_t token_begin,
                             uint32_t num_tokens, const void* keys, const void* values,
                             bool end_of_prefill);

  // Appends one decoded token at `position` to every layer. keys and values:
  // [layer][kv_head][head_dim].
  absl::Status AppendToken(const std::string& session_id, uint64_t position, const void* keys,
                           const void* values);

  absl::StatusOr<std::unique_ptr<RetrievalStream>> OpenRetrievalStream(
      const StreamOptions& options = {});

  // Fetches K and V rows into caller buffers of `buffer_bytes` each: the heads in the
  // order given, each head's rows in its positions' order, [row][head_dim] in dtype.
  // Returns the bytes written to each buffer. Big fetches are split into several calls.
  absl::StatusOr<size_t> FetchKv(const std::string& session_id, uint32_t layer,
                                 absl::Span<const FetchHead> heads, void* keys_out,
                                 void* values_out, size_t buffer_bytes);
  // FetchKv of everything `result` selected, kv head by kv head.
  absl::StatusOr<size_t> FetchSelected(const std::string& session_id, uint32_t layer,
                                       const RetrieveResult& result, void* keys_out,
                                       void* values_out, size_t buffer_bytes);

  absl::StatusOr<SessionInfo> GetSession(const std::string& session_id);
  // Sessions of every server.
  absl::StatusOr<std::vector<SessionInfo>> ListSessions();
  // Totals over every server (backend and version of the first).
  absl::StatusOr<ServerStats> GetServerStats();
  // One entry per server, in the order given to Connect.
  absl::StatusOr<std::vector<ServerStats>> GetEndpointStats();
  // The server that holds (or would hold) `session_id`.
  std::string EndpointFor(const std::string& session_id) const;

 private:
  friend class RetrievalStream;  // reads session shapes from Impl
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pqkv

#endif  // PQKV_CLIENT_PQKV_CLIENT_H_

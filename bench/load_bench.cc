// load_bench: many sessions decoding at once against one server, through the C++ SDK.
// Each of --sessions sessions uploads a prefill of --tokens tokens on every layer, then
// runs --steps decode steps: per layer one Retrieve with rows (with_kv; the rows land in
// the stream's receive buffer, UCX where the server offers it, else in the gRPC response
// and a buffer here), then one AppendToken. The sessions are spread round-robin over
// --streams threads, each with its own RetrievalStream; a thread's Retrieve call carries
// one query per session it drives (one request per layer per step, as a batching worker
// sends it). Queries are fresh Gaussian vectors every step; results carry positions
// only (with_scores false), as the reference worker asks.
//
//   bazel build //bench:load_bench
//   bazel-bin/bench/load_bench --sessions=64 --steps=1000
//   bazel-bin/bench/load_bench --sessions=4 --steps=5 --json      # as the smoke test does
//   bazel-bin/bench/load_bench --server=host:50051 --server_pid=1234   # a running server
//
// Flags: --sessions, --steps, --streams (threads, one RetrievalStream each), --layers,
// --kv_heads, --query_heads, --head_dim (fp16), --tokens (prefill per session), --k
// (rows per kv head per Retrieve), --sample_every (check the rows of every n-th Retrieve
// call of each stream bit for bit; 0: never), --server / --server_pid (use a running
// server; its RSS only with its pid, and only on this host), --server_flags (for the
// server the bench starts), --json.
//
// K/V are deterministic per (session, layer, kv head, token, dim) (KvHalf below), prefill
// and appended tokens alike, so checked rows are recomputed rather than stored.
//
// Reports: errors (count and the first few messages), rows checked and how many differed,
// median and p99 microseconds per call kind (upload: one layer's UploadPrefill; retrieve:
// one stream's Retrieve of one layer; append: one AppendToken), and the server's RSS
// (/proc/<pid>/status VmRSS) at start, after prefill, before the sessions close, at its
// peak (VmHWM) and at the end, once every session is closed. Decoding starts when the
// server has no index build pending (the wait is reported). --json prints one JSON
// object with the same fields and the setup on stderr. Exits 1 on any error or differing
// row. --rounds=N runs the whole load N times on the same server: timings are the last
// round's, rows and errors all rounds', and the RSS at each round's end is reported (the
// start is the first round's: the server before any call).
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "bench/bench_setup.h"
#include "client/pqkv_client.h"
#include "tests/testing/server_process.h"

ABSL_FLAG(uint32_t, sessions, 64, "Concurrent sessions.");
ABSL_FLAG(uint32_t, steps, 1000, "Decode steps per session.");
ABSL_FLAG(uint32_t, streams, 4, "Threads, each with one RetrievalStream, sharing the sessions.");
ABSL_FLAG(uint32_t, layers, 4, "Layers per session.");
ABSL_FLAG(uint32_t, kv_heads, 2, "KV heads.");
ABSL_FLAG(uint32_t, query_heads, 8, "Query heads (a multiple of kv_heads).");
ABSL_FLAG(uint32_t, head_dim, 128, "Head dimension (fp16).");
ABSL_FLAG(uint32_t, tokens, 2048, "Prefill tokens per session.");
ABSL_FLAG(uint32_t, k, 64, "Rows per kv head per Retrieve.");
ABSL_FLAG(uint32_t, sample_every, 16,
          "Check the rows of every n-th Retrieve call of each stream; 0: never.");
ABSL_FLAG(std::string, server, "", "Use this running server instead of starting one.");
ABSL_FLAG(int, server_pid, 0, "With --server: its pid on this host, for its RSS.");
ABSL_FLAG(std::vector<std::string>, server_flags, {},
          "Extra flags for the server the bench starts, comma-separated.");
ABSL_FLAG(bool, json, false, "One JSON object instead of the text report.");
ABSL_FLAG(uint32_t, rounds, 1,
          "Run the whole load this many times on the same server (timings of the last, rows "
          "and errors of all; RSS at every round's end).");

namespace pqkv {
namespace {

constexpr char kServer[] = "server/pqkv-server";
constexpr size_t kMaxErrorMessages = 5;

struct Shape {
  uint32_t layers, kv_heads, query_heads, head_dim, tokens, k;
  size_t row_bytes() const { return size_t{head_dim} * 2; }
};

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The fp16 bits of one K (is_value false) or V element: sign and 10 mantissa bits from a
// hash of its coordinates, exponent 13..16 (magnitudes 0.25 to 4), always finite.
uint16_t KvHalf(uint32_t session, uint32_t layer, uint32_t head, uint64_t token, uint32_t dim,
                bool is_value) {
  const uint64_t h =
      Mix(Mix(Mix((uint64_t{session} << 32) | (layer << 16) | (head << 1) | (is_value ? 1 : 0)) ^
              token) ^
          dim);
  return static_cast<uint16_t>(((h >> 15) & 1) << 15 | (13 + (h & 3)) << 10 | ((h >> 2) & 0x3ff));
}

// One layer's K or V for tokens [begin, begin + n): [kv_head][token][dim].
void FillLayer(const Shape& s, uint32_t session, uint32_t layer, uint64_t begin, uint32_t n,
               bool is_value, std::vector<uint16_t>* out) {
  out->resize(size_t{s.kv_heads} * n * s.head_dim);
  size_t i = 0;
  for (uint32_t h = 0; h < s.kv_heads; ++h) {
    for (uint32_t t = 0; t < n; ++t) {
      for (uint32_t d = 0; d < s.head_dim; ++d) {
        (*out)[i++] = KvHalf(session, layer, h, begin + t, d, is_value);
      }
    }
  }
}

// Rows of `result` (heads' positions, kv head by kv head) that differ from the upload.
size_t Mismatches(const Shape& s, uint32_t session, uint32_t layer, const RetrieveResult& result,
                  const char* keys, const char* values) {
  std::vector<uint16_t> k_row(s.head_dim), v_row(s.head_dim);
  size_t bad = 0, row = 0;
  for (uint32_t h = 0; h < result.heads.size(); ++h) {
    for (uint32_t p : result.heads[h].positions) {
      for (uint32_t d = 0; d < s.head_dim; ++d) {
        k_row[d] = KvHalf(session, layer, h, p, d, false);
        v_row[d] = KvHalf(session, layer, h, p, d, true);
      }
      bad += std::memcmp(keys + row * s.row_bytes(), k_row.data(), s.row_bytes()) != 0 ||
             std::memcmp(values + row * s.row_bytes(), v_row.data(), s.row_bytes()) != 0;
      ++row;
    }
  }
  return bad;
}

struct ProcMemory {
  long rss_kib = -1, hwm_kib = -1;
};

ProcMemory ReadMemory(pid_t pid) {
  ProcMemory m;
  if (pid <= 0) return m;
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string key;
  long value;
  while (in >> key) {
    if (key == "VmRSS:" && in >> value) m.rss_kib = value;
    if (key == "VmHWM:" && in >> value) m.hwm_kib = value;
  }
  return m;
}

// Errors from every thread: a count and the first few messages.
class Errors {
 public:
  void Add(const std::string& what) {
    absl::MutexLock lock(&mu_);
    ++count_;
    if (messages_.size() < kMaxErrorMessages) messages_.push_back(what);
  }
  uint64_t count() const {
    absl::MutexLock lock(&mu_);
    return count_;
  }
  std::vector<std::string> messages() const {
    absl::MutexLock lock(&mu_);
    return messages_;
  }

 private:
  mutable absl::Mutex mu_;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> messages_ ABSL_GUARDED_BY(mu_);
};

// What one stream's thread measured.
struct Timings {
  std::vector<double> upload_us, retrieve_us, append_us;
  uint64_t rows_checked = 0, rows_mismatched = 0, items = 0;
  std::string data_path;
};

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
      .count();
}

// One stream's thread: creates and uploads its sessions, waits for `go`, decodes, closes.
void RunStream(Client& client, const Shape& s, uint32_t stream_index, uint32_t streams,
               uint32_t num_sessions, uint32_t steps, uint32_t sample_every,
               absl::BlockingCounter& prefilled, absl::Notification& go,
               absl::BlockingCounter& decoded, absl::Notification& close, Errors& errors,
               Timings& t) {
  std::vector<uint32_t> mine;  // global session numbers
  for (uint32_t i = stream_index; i < num_sessions; i += streams) mine.push_back(i);
  std::vector<std::string> ids(mine.size());
  std::vector<bool> alive(mine.size(), false);
  std::vector<uint16_t> keys, values;
  for (size_t j = 0; j < mine.size(); ++j) {
    SessionOptions options;
    options.shape = {s.layers, s.kv_heads, s.query_heads, s.head_dim, DType::kFp16};
    auto id = client.CreateSession(options);
    if (!id.ok()) {
      errors.Add(absl::StrCat("create: ", id.status().ToString()));
      continue;
    }
    ids[j] = *id;
    alive[j] = true;
    for (uint32_t layer = 0; layer < s.layers; ++layer) {
      FillLayer(s, mine[j], layer, 0, s.tokens, false, &keys);
      FillLayer(s, mine[j], layer, 0, s.tokens, true, &values);
      const auto start = std::chrono::steady_clock::now();
      const absl::Status up =
          client.UploadPrefill(ids[j], layer, 0, s.tokens, keys.data(), values.data(), true);
      t.upload_us.push_back(Since(start));
      if (!up.ok()) {
        errors.Add(absl::StrCat("upload: ", up.ToString()));
        alive[j] = false;
        break;
      }
    }
  }
  prefilled.DecrementCount();
  go.WaitForNotification();

  // Rows of every session of this stream: k per kv head, K then V, in the receive
  // buffer where the stream has one (UCX), else here (gRPC).
  const size_t half = size_t{s.kv_heads} * s.k * s.row_bytes();
  const size_t need = 2 * half * mine.size();
  StreamOptions stream_options;
  stream_options.receive_buffer_bytes = std::max<size_t>(need, size_t{1} << 20);
  auto opened = client.OpenRetrievalStream(stream_options);
  std::vector<char> local;
  if (!opened.ok()) {
    errors.Add(absl::StrCat("open stream: ", opened.status().ToString()));
    steps = 0;
  }
  std::unique_ptr<RetrievalStream> stream = opened.ok() ? *std::move(opened) : nullptr;
  char* rows = stream && stream->receive_buffer() != nullptr
                   ? static_cast<char*>(stream->receive_buffer())
                   : (local.resize(need), local.data());

  std::mt19937 rng(1000 + stream_index);
  std::normal_distribution<float> normal;
  std::vector<std::vector<float>> queries(mine.size(),
                                          std::vector<float>(size_t{s.query_heads} * s.head_dim));
  std::vector<uint16_t> new_k(size_t{s.layers} * s.kv_heads * s.head_dim), new_v(new_k.size());
  uint64_t calls = 0;
  for (uint32_t step = 0; step < steps; ++step) {
    for (uint32_t layer = 0; layer < s.layers; ++layer) {
      std::vector<RetrieveQuery> batch;
      std::vector<size_t> batch_index;  // into mine
      for (size_t j = 0; j < mine.size(); ++j) {
        if (!alive[j]) continue;
        for (float& x : queries[j]) x = normal(rng);
        char* at = rows + 2 * half * batch.size();
        RetrieveQuery q{ids[j], queries[j], s.k, at, at + half, half};
        q.with_scores = false;
        batch.push_back(std::move(q));
        batch_index.push_back(j);
      }
      if (batch.empty()) break;
      const auto start = std::chrono::steady_clock::now();
      auto results = stream->Retrieve(layer, batch);
      t.retrieve_us.push_back(Since(start));
      if (!results.ok()) {
        errors.Add(absl::StrCat("retrieve (stream): ", results.status().ToString()));
        steps = step;  // the stream broke: stop decoding here
        break;
      }
      const bool check = sample_every > 0 && calls % sample_every == 0;
      ++calls;
      for (size_t b = 0; b < results->size(); ++b) {
        const RetrieveResult& result = (*results)[b];
        ++t.items;
        if (!result.status.ok()) {
          errors.Add(absl::StrCat("retrieve: ", result.status.ToString()));
          continue;
        }
        if (t.data_path.empty()) t.data_path = result.data_path;
        if (!check) continue;
        const char* at = rows + 2 * half * b;
        for (const HeadSelection& head : result.heads) t.rows_checked += head.positions.size();
        t.rows_mismatched += Mismatches(s, mine[batch_index[b]], layer, result, at, at + half);
      }
    }
    for (size_t j = 0; j < mine.size(); ++j) {
      if (!alive[j]) continue;
      const uint64_t position = s.tokens + step;
      size_t i = 0;
      for (uint32_t layer = 0; layer < s.layers; ++layer) {
        for (uint32_t h = 0; h < s.kv_heads; ++h) {
          for (uint32_t d = 0; d < s.head_dim; ++d, ++i) {
            new_k[i] = KvHalf(mine[j], layer, h, position, d, false);
            new_v[i] = KvHalf(mine[j], layer, h, position, d, true);
          }
        }
      }
      const auto start = std::chrono::steady_clock::now();
      const absl::Status appended =
          client.AppendToken(ids[j], position, new_k.data(), new_v.data());
      t.append_us.push_back(Since(start));
      if (!appended.ok()) {
        errors.Add(absl::StrCat("append: ", appended.ToString()));
        alive[j] = false;
      }
    }
  }
  if (stream) {
    const absl::Status closed = stream->Close();
    if (!closed.ok()) errors.Add(absl::StrCat("stream close: ", closed.ToString()));
    stream.reset();
  }
  decoded.DecrementCount();
  close.WaitForNotification();
  for (size_t j = 0; j < mine.size(); ++j) {
    if (ids[j].empty()) continue;
    const absl::Status closed = client.CloseSession(ids[j]);
    if (!closed.ok()) errors.Add(absl::StrCat("close: ", closed.ToString()));
  }
}

std::string Mib(long kib) { return kib < 0 ? "n/a" : absl::StrFormat("%.1f", kib / 1024.0); }
std::string JsonMib(long kib) { return kib < 0 ? "null" : absl::StrFormat("%.1f", kib / 1024.0); }

int Run() {
  const bool json = absl::GetFlag(FLAGS_json);
  const Shape s{absl::GetFlag(FLAGS_layers),      absl::GetFlag(FLAGS_kv_heads),
                absl::GetFlag(FLAGS_query_heads), absl::GetFlag(FLAGS_head_dim),
                absl::GetFlag(FLAGS_tokens),      absl::GetFlag(FLAGS_k)};
  const uint32_t num_sessions = absl::GetFlag(FLAGS_sessions);
  const uint32_t steps = absl::GetFlag(FLAGS_steps);
  const uint32_t streams = std::max(1u, std::min(absl::GetFlag(FLAGS_streams), num_sessions));
  const uint32_t sample_every = absl::GetFlag(FLAGS_sample_every);
  FILE* info = json ? stderr : stdout;
  std::fprintf(info, "Setup: commit %s; CPU %s, %u cores\n", bench::Commit().c_str(),
               bench::CpuModel().c_str(), std::thread::hardware_concurrency());
  std::fprintf(info,
               "Load: %u sessions x %u steps on %u streams; %u layers, %u kv heads / %u query "
               "heads x %u dims fp16, %u prefill tokens, k = %u; rows of every %u-th Retrieve "
               "call checked\n",
               num_sessions, steps, streams, s.layers, s.kv_heads, s.query_heads, s.head_dim,
               s.tokens, s.k, sample_every);

  std::unique_ptr<testing::ServerProcess> server;
  std::string target = absl::GetFlag(FLAGS_server);
  pid_t pid = absl::GetFlag(FLAGS_server_pid);
  if (target.empty()) {
    std::vector<std::string> flags = {"--log_level=warn"};
    for (const std::string& flag : absl::GetFlag(FLAGS_server_flags)) flags.push_back(flag);
    auto started = testing::ServerProcess::Start(kServer, flags);
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start %s: %s\n", kServer, started.status().ToString().c_str());
      return 1;
    }
    server = *std::move(started);
    target = server->address();
    pid = server->pid();
  }
  auto connected = Client::Connect(target);
  if (!connected.ok()) {
    std::fprintf(stderr, "connect %s: %s\n", target.c_str(), connected.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Client> client = *std::move(connected);

  // One round: every session prefilled, decoded and closed. Rounds after the first run the
  // same load on the same server again: the RSS at each round's end shows whether sessions
  // leave memory behind (a leak grows round over round) apart from what the server's first
  // use of its code, threads and transports costs once.
  struct Round {
    std::vector<Timings> timings;
    double prefill_s = 0, index_wait_s = 0, decode_s = 0;
    ProcMemory at_start, after_prefill, before_close, at_end;
  };
  Errors errors;
  const auto run_round = [&]() {
    Round r;
    r.timings.resize(streams);
    r.at_start = ReadMemory(pid);
    absl::BlockingCounter prefilled(streams), decoded(streams);
    absl::Notification go, close;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (uint32_t i = 0; i < streams; ++i) {
      threads.emplace_back([&, i] {
        RunStream(*client, s, i, streams, num_sessions, steps, sample_every, prefilled, go, decoded,
                  close, errors, r.timings[i]);
      });
    }
    prefilled.Wait();
    r.prefill_s = Since(t0) / 1e6;
    // Decoding starts once every layer's index is built, so that Retrieve times are the
    // steady state's (a Retrieve would otherwise wait for its layer's build).
    const auto t_index = std::chrono::steady_clock::now();
    for (;;) {
      auto stats = client->GetServerStats();
      if (!stats.ok() || stats->index_builds_pending == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    r.index_wait_s = Since(t_index) / 1e6;
    r.after_prefill = ReadMemory(pid);
    const auto t1 = std::chrono::steady_clock::now();
    go.Notify();
    decoded.Wait();
    r.decode_s = Since(t1) / 1e6;
    r.before_close = ReadMemory(pid);
    close.Notify();
    for (std::thread& thread : threads) thread.join();
    r.at_end = ReadMemory(pid);
    return r;
  };
  const uint32_t rounds = std::max(1u, absl::GetFlag(FLAGS_rounds));
  std::vector<ProcMemory> round_starts, round_ends;
  Round last;
  uint64_t earlier_checked = 0, earlier_mismatched = 0;  // rows of the rounds before the last
  for (uint32_t round = 0; round < rounds; ++round) {
    if (round > 0) {
      for (const Timings& t : last.timings) {
        earlier_checked += t.rows_checked;
        earlier_mismatched += t.rows_mismatched;
      }
    }
    last = run_round();
    round_starts.push_back(last.at_start);
    round_ends.push_back(last.at_end);
  }
  std::vector<Timings>& timings = last.timings;
  const double prefill_s = last.prefill_s, index_wait_s = last.index_wait_s,
               decode_s = last.decode_s;
  // The first round's start (the server before any call) and the last round's end.
  const ProcMemory at_start = round_starts.front(), after_prefill = last.after_prefill,
                   before_close = last.before_close, at_end = last.at_end;
  // VmHWM is kept from counters the kernel syncs lazily: never below an RSS read here.
  const long peak_kib = std::max({at_end.hwm_kib, at_start.rss_kib, after_prefill.rss_kib,
                                  before_close.rss_kib, at_end.rss_kib});
  // The last round's end against its own start (after the rounds before it).
  const double end_vs_round_start =
      rounds > 1 && last.at_start.rss_kib > 0 && at_end.rss_kib >= 0
          ? static_cast<double>(at_end.rss_kib - last.at_start.rss_kib) / last.at_start.rss_kib
          : 0.0;
  std::vector<std::string> round_end_mib;
  for (const ProcMemory& m : round_ends) round_end_mib.push_back(JsonMib(m.rss_kib));
  uint64_t sessions_left = 0;
  if (auto stats = client->GetServerStats(); stats.ok()) sessions_left = stats->num_sessions;

  Timings all;
  all.rows_checked = earlier_checked;
  all.rows_mismatched = earlier_mismatched;
  for (Timings& t : timings) {
    for (auto [to, from] :
         {std::pair{&all.upload_us, &t.upload_us}, std::pair{&all.retrieve_us, &t.retrieve_us},
          std::pair{&all.append_us, &t.append_us}}) {
      to->insert(to->end(), from->begin(), from->end());
    }
    all.rows_checked += t.rows_checked;
    all.rows_mismatched += t.rows_mismatched;
    all.items += t.items;
    if (all.data_path.empty()) all.data_path = t.data_path;
  }
  const auto p = [](const std::vector<double>& v, double q) {
    return v.empty() ? 0.0 : bench::Percentile(v, q);
  };
  const uint64_t error_count = errors.count();
  const std::vector<std::string> messages = errors.messages();
  const double end_vs_start =
      at_start.rss_kib > 0 && at_end.rss_kib >= 0
          ? static_cast<double>(at_end.rss_kib - at_start.rss_kib) / at_start.rss_kib
          : 0.0;
  if (json) {
    std::vector<std::string> quoted;
    for (std::string m : messages) {
      for (char& c : m) {
        if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) c = '\'';
      }
      quoted.push_back(absl::StrCat("\"", m, "\""));
    }
    std::printf(
        "{\"sessions\": %u, \"steps\": %u, \"streams\": %u, \"layers\": %u, \"kv_heads\": %u, "
        "\"query_heads\": %u, \"head_dim\": %u, \"tokens\": %u, \"k\": %u, \"data_path\": \"%s\", "
        "\"prefill_s\": %.2f, \"index_wait_s\": %.2f, \"decode_s\": %.2f, \"retrieve_items\": %lu, "
        "\"upload_p50_us\": %.1f, \"upload_p99_us\": %.1f, \"retrieve_p50_us\": %.1f, "
        "\"retrieve_p99_us\": %.1f, \"append_p50_us\": %.1f, \"append_p99_us\": %.1f, "
        "\"rss_start_mib\": %s, \"rss_after_prefill_mib\": %s, \"rss_before_close_mib\": %s, "
        "\"rss_peak_mib\": %s, \"rss_end_mib\": %s, \"rss_end_vs_start\": %.3f, "
        "\"rounds\": %u, \"rss_end_by_round_mib\": [%s], \"rss_end_vs_last_round_start\": %.3f, "
        "\"sessions_left\": %lu, \"rows_checked\": %lu, \"rows_mismatched\": %lu, "
        "\"errors\": %lu, \"error_messages\": [%s]}\n",
        num_sessions, steps, streams, s.layers, s.kv_heads, s.query_heads, s.head_dim, s.tokens,
        s.k, all.data_path.c_str(), prefill_s, index_wait_s, decode_s,
        static_cast<unsigned long>(all.items), p(all.upload_us, 0.5), p(all.upload_us, 0.99),
        p(all.retrieve_us, 0.5), p(all.retrieve_us, 0.99), p(all.append_us, 0.5),
        p(all.append_us, 0.99), JsonMib(at_start.rss_kib).c_str(),
        JsonMib(after_prefill.rss_kib).c_str(), JsonMib(before_close.rss_kib).c_str(),
        JsonMib(peak_kib).c_str(), JsonMib(at_end.rss_kib).c_str(), end_vs_start, rounds,
        absl::StrJoin(round_end_mib, ", ").c_str(), end_vs_round_start,
        static_cast<unsigned long>(sessions_left), static_cast<unsigned long>(all.rows_checked),
        static_cast<unsigned long>(all.rows_mismatched), static_cast<unsigned long>(error_count),
        absl::StrJoin(quoted, ", ").c_str());
  } else {
    std::printf(
        "\nprefill %.1f s, index builds %.1f s more, decode %.1f s (%lu Retrieve items, rows by "
        "%s)\n",
        prefill_s, index_wait_s, decode_s, static_cast<unsigned long>(all.items),
        all.data_path.empty() ? "-" : all.data_path.c_str());
    std::printf("%-10s %8s %12s %12s\n", "call", "count", "p50_us", "p99_us");
    for (auto [name, v] :
         {std::pair{"upload", &all.upload_us}, std::pair{"retrieve", &all.retrieve_us},
          std::pair{"append", &all.append_us}}) {
      std::printf("%-10s %8zu %12.1f %12.1f\n", name, v->size(), p(*v, 0.5), p(*v, 0.99));
    }
    std::printf(
        "server RSS MiB: start %s, after prefill %s, before close %s, peak %s, end %s "
        "(end vs start %+.1f%%); sessions left %lu\n",
        Mib(at_start.rss_kib).c_str(), Mib(after_prefill.rss_kib).c_str(),
        Mib(before_close.rss_kib).c_str(), Mib(peak_kib).c_str(), Mib(at_end.rss_kib).c_str(),
        100 * end_vs_start, static_cast<unsigned long>(sessions_left));
    if (rounds > 1) {
      std::printf(
          "server RSS MiB at the end of each of %u rounds: %s (the last round's end vs "
          "its start %s: %+.1f%%)\n",
          rounds, absl::StrJoin(round_end_mib, ", ").c_str(), Mib(last.at_start.rss_kib).c_str(),
          100 * end_vs_round_start);
    }
    std::printf("rows checked %lu, differing %lu\nerrors %lu\n",
                static_cast<unsigned long>(all.rows_checked),
                static_cast<unsigned long>(all.rows_mismatched),
                static_cast<unsigned long>(error_count));
    for (const std::string& m : messages) std::printf("  %s\n", m.c_str());
  }
  client.reset();
  if (server) server->Stop();
  return error_count == 0 && all.rows_mismatched == 0 ? 0 : 1;
}

}  // namespace
}  // namespace pqkv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return pqkv::Run();
}

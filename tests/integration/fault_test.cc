// Faults under load, against the real server: while other sessions upload, retrieve rows
// (UCX, gRPC, gRPC with a row cache) and append, checking every row bit for bit against
// what they uploaded, a client process is killed (SIGKILL) in the middle of an upload,
// two in the middle of Retrieve calls (rows by UCX and by gRPC), a Retrieve stream is left
// open and idle to the end, and one session id is closed and created again over and over.
// The server must keep serving, the other sessions' rows must stay exact, and memory must
// come back: bytes_held (GetServerStats) to its value before, and the resident size to
// within a bound of the start, once the killed clients' sessions are closed.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "tests/testing/patterned_kv.h"
#include "tests/testing/proc_status.h"
#include "tests/testing/server_process.h"

extern char** environ;

namespace pqkv {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kResidentSizeMeansSomething = false;  // ASan's quarantine keeps freed memory
#else
constexpr bool kResidentSizeMeansSomething = true;
#endif

// The load sessions' shape: one layer, so that one Retrieve call is one decode step.
const ModelShape kShape{1, 2, 8, 128, DType::kFp16};
constexpr uint32_t kPrefill = 2048;
constexpr uint32_t kMaxAppends = 512;
constexpr uint32_t kK = 64;
// Iterations every load thread does after the faults, and the churn thread's least.
constexpr int kIterationsAfterFaults = 20;

// Errors and mismatches seen by the load threads.
class Findings {
 public:
  void Add(const std::string& what) {
    absl::MutexLock lock(&mu_);
    if (errors_.size() < 20) errors_.push_back(what);
    ++count_;
  }
  std::vector<std::string> errors() {
    absl::MutexLock lock(&mu_);
    return errors_;
  }
  size_t count() {
    absl::MutexLock lock(&mu_);
    return count_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> errors_ ABSL_GUARDED_BY(mu_);
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

std::vector<float> Query(uint64_t seed) {
  std::vector<float> query(kShape.num_query_heads * kShape.head_dim);
  uint32_t state = static_cast<uint32_t>(seed) * 2654435761u + 7;
  for (float& x : query) {
    state = state * 1664525u + 1013904223u;
    x = static_cast<float>(state >> 8) / float(1 << 24) - 0.5f;
  }
  return query;
}

// Rows [begin, begin + count) of every kv head of `layer` (which holds `tokens` per head),
// [kv_head][token][head_dim]: what UploadPrefill (count tokens) or AppendToken (one) takes.
std::vector<uint8_t> Slice(const std::vector<uint8_t>& layer, size_t tokens, size_t begin,
                           size_t count) {
  const size_t row = kShape.row_bytes();
  std::vector<uint8_t> out(kShape.num_kv_heads * count * row);
  for (size_t h = 0; h < kShape.num_kv_heads; ++h) {
    std::memcpy(out.data() + h * count * row, layer.data() + (h * tokens + begin) * row,
                count * row);
  }
  return out;
}

// One load session: uploads a patterned prefill, then per iteration one Retrieve of k
// rows with their K and V (every row compared with the pattern) and one AppendToken of
// the pattern's next token, until `stop` and kIterationsAfterFaults more.
void LoadThread(const std::string& address, int index, DataPath path, uint32_t cache_slots,
                const std::atomic<bool>& stop, Findings& findings, std::atomic<uint64_t>& rows) {
  auto connected = Client::Connect(address);
  if (!connected.ok()) return findings.Add(connected.status().ToString());
  std::unique_ptr<Client> client = *std::move(connected);
  const std::string id = absl::StrCat("load-", index);
  SessionOptions options;
  options.session_id = id;
  options.shape = kShape;
  if (absl::StatusOr<std::string> created = client->CreateSession(options); !created.ok()) {
    return findings.Add(absl::StrCat(id, " create: ", created.status().ToString()));
  }
  constexpr size_t kTokens = kPrefill + kMaxAppends;
  const testing::PatternedLayer layer = testing::MakePatternedLayer(kShape, kTokens, 100 + index);
  {
    const std::vector<uint8_t> keys = Slice(layer.keys, kTokens, 0, kPrefill);
    const std::vector<uint8_t> values = Slice(layer.values, kTokens, 0, kPrefill);
    const absl::Status uploaded =
        client->UploadPrefill(id, 0, 0, kPrefill, keys.data(), values.data(), true);
    if (!uploaded.ok()) return findings.Add(absl::StrCat(id, " upload: ", uploaded.ToString()));
  }
  auto opened = client->OpenRetrievalStream({.data_path = path});
  if (!opened.ok()) return findings.Add(absl::StrCat(id, " open: ", opened.status().ToString()));
  std::unique_ptr<RetrievalStream> stream = *std::move(opened);
  const size_t bytes = kShape.num_kv_heads * kK * kShape.row_bytes();
  std::vector<uint8_t> own(2 * bytes);
  uint8_t* keys =
      path == DataPath::kUcx ? static_cast<uint8_t*>(stream->receive_buffer()) : own.data();
  uint8_t* values = keys + bytes;
  uint32_t appended = 0;
  int after_stop = 0;
  for (uint64_t step = 0; after_stop < kIterationsAfterFaults; ++step) {
    if (stop.load()) ++after_stop;
    const std::vector<float> query = Query(step * 31 + index);
    RetrieveQuery q{id, query, kK, keys, values, bytes};
    q.cache_slots = cache_slots;
    absl::StatusOr<std::vector<RetrieveResult>> results = stream->Retrieve(0, {&q, 1});
    if (!results.ok())
      return findings.Add(absl::StrCat(id, " stream: ", results.status().ToString()));
    const RetrieveResult& result = (*results)[0];
    if (!result.status.ok()) {
      return findings.Add(absl::StrCat(id, " retrieve: ", result.status.ToString()));
    }
    const size_t bad = testing::CountMismatchedRows(kShape, kTokens, layer, result, keys, values);
    if (bad != 0) findings.Add(absl::StrCat(id, " step ", step, ": ", bad, " rows differ"));
    for (const HeadSelection& head : result.heads) {
      rows += cache_slots == 0 ? head.positions.size() : head.sent.size();
    }
    if (appended < kMaxAppends) {
      const uint64_t position = kPrefill + appended;
      const std::vector<uint8_t> new_k = Slice(layer.keys, kTokens, position, 1);
      const std::vector<uint8_t> new_v = Slice(layer.values, kTokens, position, 1);
      const absl::Status status = client->AppendToken(id, position, new_k.data(), new_v.data());
      if (!status.ok()) return findings.Add(absl::StrCat(id, " append: ", status.ToString()));
      ++appended;
    }
  }
  stream.reset();
  if (const absl::Status closed = client->CloseSession(id); !closed.ok()) {
    findings.Add(absl::StrCat(id, " close: ", closed.ToString()));
  }
}

// The same id ("churn") created, uploaded with values of its own, retrieved with a row
// cache on one stream kept across the cycles, and closed, until `stop` and at least
// kIterationsAfterFaults cycles. Every cycle's first Retrieve must start cold (every
// selected row sent) with this cycle's values.
void ChurnThread(const std::string& address, const std::atomic<bool>& stop, Findings& findings,
                 std::atomic<int>& cycles) {
  auto connected = Client::Connect(address);
  if (!connected.ok()) return findings.Add(connected.status().ToString());
  std::unique_ptr<Client> client = *std::move(connected);
  auto opened = client->OpenRetrievalStream({.data_path = DataPath::kGrpc});
  if (!opened.ok()) return findings.Add(absl::StrCat("churn open: ", opened.status().ToString()));
  std::unique_ptr<RetrievalStream> stream = *std::move(opened);
  constexpr uint32_t kTokens = 1024;
  const size_t bytes = kShape.num_kv_heads * kK * kShape.row_bytes();
  std::vector<uint8_t> keys(bytes), values(bytes);
  for (int cycle = 0; !stop.load() || cycle < kIterationsAfterFaults; ++cycle) {
    SessionOptions options;
    options.session_id = "churn";
    options.shape = kShape;
    if (absl::StatusOr<std::string> created = client->CreateSession(options); !created.ok()) {
      return findings.Add(absl::StrCat("churn create ", cycle, ": ", created.status().ToString()));
    }
    const testing::PatternedLayer layer =
        testing::MakePatternedLayer(kShape, kTokens, 1000 + cycle);
    const absl::Status uploaded =
        client->UploadPrefill("churn", 0, 0, kTokens, layer.keys.data(), layer.values.data(), true);
    if (!uploaded.ok()) {
      return findings.Add(absl::StrCat("churn upload ", cycle, ": ", uploaded.ToString()));
    }
    const std::vector<float> query = Query(cycle);
    RetrieveQuery q{"churn", query, kK, keys.data(), values.data(), bytes};
    q.cache_slots = 2 * kK;
    absl::StatusOr<std::vector<RetrieveResult>> results = stream->Retrieve(0, {&q, 1});
    if (!results.ok()) {
      return findings.Add(absl::StrCat("churn stream: ", results.status().ToString()));
    }
    const RetrieveResult& result = (*results)[0];
    if (!result.status.ok()) {
      return findings.Add(absl::StrCat("churn retrieve ", cycle, ": ", result.status.ToString()));
    }
    for (const HeadSelection& head : result.heads) {
      if (head.sent.size() != head.positions.size()) {
        findings.Add(absl::StrCat("churn cycle ", cycle, ": ", head.sent.size(), " of ",
                                  head.positions.size(), " rows sent to a cold cache"));
      }
    }
    const size_t bad =
        testing::CountMismatchedRows(kShape, kTokens, layer, result, keys.data(), values.data());
    if (bad != 0) findings.Add(absl::StrCat("churn cycle ", cycle, ": ", bad, " rows differ"));
    if (const absl::Status closed = client->CloseSession("churn"); !closed.ok()) {
      return findings.Add(absl::StrCat("churn close ", cycle, ": ", closed.ToString()));
    }
    ++cycles;
  }
}

// A fault_client process with its stdout on a pipe.
struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;
};

// posix_spawn: nothing runs between fork and exec that could take a lock another thread
// of this (multi-threaded) process holds.
Child Spawn(const std::vector<std::string>& args) {
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  Child child;
  const int spawned = posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  REQUIRE(spawned == 0);
  child.out = fdopen(fds[0], "r");
  REQUIRE(child.out != nullptr);
  return child;
}

// Starts fault_client with `args`, waits for its first line ("<word> <session id> ..."),
// kills it (SIGKILL) and returns the session id.
std::string KillAfterFirstLine(const std::vector<std::string>& args, const std::string& word) {
  std::vector<std::string> argv = {"tests/integration/fault_client"};
  argv.insert(argv.end(), args.begin(), args.end());
  Child child = Spawn(argv);
  char line[512] = {0};
  const bool got = fgets(line, sizeof line, child.out) != nullptr;
  kill(child.pid, SIGKILL);
  int status = 0;
  waitpid(child.pid, &status, 0);
  fclose(child.out);
  INFO("fault_client " << args.back() << " said: " << line);
  REQUIRE(got);
  const std::vector<std::string> words = absl::StrSplit(absl::StripAsciiWhitespace(line), ' ');
  REQUIRE(words.size() >= 2);
  REQUIRE(words[0] == word);
  CHECK(WIFSIGNALED(status));
  return words[1];
}

TEST_CASE("Killed clients, an idle stream and a recycled id under load: the server holds",
          "[integration]") {
  auto started = testing::ServerProcess::Start("server/pqkv-server",
                                               {"--memory_budget=1GiB", "--log_level=warn"});
  REQUIRE(started.ok());
  std::unique_ptr<testing::ServerProcess> server = *std::move(started);
  const std::string address = server->address();
  auto client = Client::Connect(address).value();
  const uint64_t bytes_before = client->GetServerStats()->bytes_held;
  const size_t rss_start = testing::ProcStatusBytes(server->pid(), "VmRSS");

  // (c) A stream opened, used once with a row cache, and then left idle to the end.
  SessionOptions idle_options;
  idle_options.session_id = "idle";
  idle_options.shape = kShape;
  REQUIRE(client->CreateSession(idle_options).ok());
  const testing::PatternedLayer idle_layer = testing::MakePatternedLayer(kShape, kPrefill, 3);
  REQUIRE(client
              ->UploadPrefill("idle", 0, 0, kPrefill, idle_layer.keys.data(),
                              idle_layer.values.data(), true)
              .ok());
  std::unique_ptr<RetrievalStream> idle_stream =
      client->OpenRetrievalStream({.data_path = DataPath::kGrpc}).value();
  {
    const size_t bytes = kShape.num_kv_heads * kK * kShape.row_bytes();
    std::vector<uint8_t> keys(bytes), values(bytes);
    const std::vector<float> query = Query(1);
    RetrieveQuery q{"idle", query, kK, keys.data(), values.data(), bytes};
    q.cache_slots = 4 * kK;
    auto results = idle_stream->Retrieve(0, {&q, 1});
    REQUIRE(results.ok());
    REQUIRE((*results)[0].status.ok());
    CHECK(testing::CountMismatchedRows(kShape, kPrefill, idle_layer, (*results)[0], keys.data(),
                                       values.data()) == 0);
  }

  // The load: three sessions (rows by UCX, by gRPC, by gRPC into a row cache) and the churn.
  std::atomic<bool> stop{false};
  Findings findings;
  std::atomic<uint64_t> rows_checked{0};
  std::atomic<int> churn_cycles{0};
  std::vector<std::thread> threads;
  threads.emplace_back(
      [&] { LoadThread(address, 0, DataPath::kUcx, 0, stop, findings, rows_checked); });
  threads.emplace_back(
      [&] { LoadThread(address, 1, DataPath::kGrpc, 0, stop, findings, rows_checked); });
  threads.emplace_back(
      [&] { LoadThread(address, 2, DataPath::kGrpc, 2 * kK, stop, findings, rows_checked); });
  threads.emplace_back([&] { ChurnThread(address, stop, findings, churn_cycles); });

  // (a) and (b): clients killed in the middle of their calls.
  std::vector<std::string> killed_sessions;
  killed_sessions.push_back(
      KillAfterFirstLine({"--server", address, "--mode", "upload"}, "uploading"));
  killed_sessions.push_back(KillAfterFirstLine(
      {"--server", address, "--mode", "retrieve", "--data_path", "ucx"}, "retrieving"));
  killed_sessions.push_back(KillAfterFirstLine(
      {"--server", address, "--mode", "retrieve", "--data_path", "grpc"}, "retrieving"));
  // The server still answers, and the load goes on past the faults.
  CHECK(client->GetServerStats().ok());
  stop = true;
  for (std::thread& thread : threads) thread.join();

  INFO("rows checked " << rows_checked.load() << ", churn cycles " << churn_cycles.load());
  for (const std::string& error : findings.errors()) UNSCOPED_INFO(error);
  CHECK(findings.count() == 0);
  CHECK(rows_checked.load() > 0);
  CHECK(churn_cycles.load() >= kIterationsAfterFaults);

  // The killed clients' sessions are closed by another client; their calls' memory goes
  // with them once the server has seen the connections drop.
  for (const std::string& id : killed_sessions) {
    INFO(id);
    CHECK(client->CloseSession(id).ok());
  }
  REQUIRE(client->CloseSession("idle").ok());
  uint64_t bytes_after = 0, sessions_after = 0;
  for (const absl::Time until = absl::Now() + absl::Seconds(30); absl::Now() < until;) {
    absl::StatusOr<ServerStats> stats = client->GetServerStats();
    REQUIRE(stats.ok());
    bytes_after = stats->bytes_held;
    sessions_after = stats->num_sessions;
    if (bytes_after == bytes_before && sessions_after == 0) break;
    std::this_thread::yield();
  }
  CHECK(sessions_after == 0);
  CHECK(bytes_after == bytes_before);
  const size_t rss_end = testing::ProcStatusBytes(server->pid(), "VmRSS");
  INFO("server RSS at start " << rss_start / double(kMiB) << " MiB, at the end "
                              << rss_end / double(kMiB) << " MiB");
  if (kResidentSizeMeansSomething) CHECK(rss_end < rss_start + 16 * kMiB);

  // Still serving: a new session, its rows exact; the idle stream is still open.
  {
    SessionOptions options;
    options.shape = kShape;
    const std::string id = client->CreateSession(options).value();
    const testing::PatternedLayer layer = testing::MakePatternedLayer(kShape, kPrefill, 9);
    REQUIRE(client->UploadPrefill(id, 0, 0, kPrefill, layer.keys.data(), layer.values.data(), true)
                .ok());
    auto stream = client->OpenRetrievalStream({.data_path = DataPath::kGrpc}).value();
    const size_t bytes = kShape.num_kv_heads * kK * kShape.row_bytes();
    std::vector<uint8_t> keys(bytes), values(bytes);
    const std::vector<float> query = Query(2);
    RetrieveQuery q{id, query, kK, keys.data(), values.data(), bytes};
    auto results = stream->Retrieve(0, {&q, 1});
    REQUIRE(results.ok());
    REQUIRE((*results)[0].status.ok());
    CHECK(testing::CountMismatchedRows(kShape, kPrefill, layer, (*results)[0], keys.data(),
                                       values.data()) == 0);
    CHECK(client->CloseSession(id).ok());
  }
  // SIGTERM with the idle stream still open: it ends at once (UNAVAILABLE), a clean exit.
  CHECK(server->Stop() == 0);
  idle_stream.reset();
}

}  // namespace
}  // namespace pqkv

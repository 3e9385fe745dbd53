// FuzzServer: the real pqkv service (PqkvService over a SessionStore, CPU backend, no UCX,
// no authentication) behind a gRPC server on a loopback port, for the fuzz targets. Inputs
// reach it as raw bytes over TCP, exactly as a network client's would: gRPC framing, the
// service's own parse of each message, then validation, the store and retrieval.
//
// At start it holds two sessions the seed corpus names:
// - "f32": fp32, 2 layers x 2 kv heads (4 query heads) x 16 dims, 96 tokens per layer;
//   layer 0's prefill is sealed and its PQ index built (2 sub-spaces x 4 bits, 4 sink
//   tokens, recent window 8), layer 1 is open (scored exactly).
// - "f16": fp16, 1 layer x 1 kv head x 8 dims, 16 tokens, sealed (too few to train: exact).
// Fuzz inputs may add sessions; CloseSession is theirs to call. The server logs warnings
// and errors only.
//
// One per process (a fuzz target's setup makes it and never destroys it). Thread-safe: every
// call opens its own stream with a 10-second deadline, so an input that makes the server
// hang fails as DEADLINE_EXCEEDED rather than hanging the fuzzer.
#ifndef PQKV_TESTS_FUZZ_FUZZ_SERVER_H_
#define PQKV_TESTS_FUZZ_FUZZ_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "pqkv/v1/pqkv.grpc.pb.h"
#include "server/metrics/metrics.h"
#include "server/rpc/pqkv_service.h"
#include "server/runtime/thread_pool.h"
#include "server/store/session_store.h"

namespace pqkv::fuzz {

// The head dim and kv heads of session "f32" (seeds build queries and rows from them).
inline constexpr uint32_t kF32HeadDim = 16;
inline constexpr uint32_t kF32KvHeads = 2;
inline constexpr uint32_t kF32QueryHeads = 4;
inline constexpr uint32_t kF32Tokens = 96;

class FuzzServer {
 public:
  // The process's server, started (and its sessions made) on first use. Aborts with a
  // message if setup fails: the fuzz target could test nothing.
  static FuzzServer& Get();

  // A unary call of `method` ("/pqkv.v1.Pqkv/FetchKv") with `request` as its bytes; the
  // response's bytes in *response when OK.
  grpc::Status Unary(const std::string& method, const std::string& request,
                     std::string* response = nullptr);
  // An AppendKv stream that sends each of `messages` as raw bytes (stopping when the
  // server has ended the stream), then ends its writes.
  grpc::Status AppendKv(const std::vector<std::string>& messages);
  // A Retrieve stream: each of `messages` is sent as raw bytes and its response read
  // before the next is sent (as the SDK does); stops at the first the server does not
  // answer. The responses' bytes go in *responses.
  grpc::Status Retrieve(const std::vector<std::string>& messages,
                        std::vector<std::string>* responses = nullptr);

  server::SessionStore& store() { return *store_; }

 private:
  FuzzServer();
  // Creates a session and appends `tokens` deterministic tokens to each layer; seals
  // the layers in `sealed` and waits for their index builds.
  void AddSession(const v1::CreateSessionRequest& create, uint32_t tokens,
                  const std::vector<uint32_t>& sealed);

  server::Metrics metrics_;
  std::unique_ptr<server::SessionStore> store_;
  std::unique_ptr<server::ThreadPool> compute_pool_;
  std::unique_ptr<server::PqkvService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  absl::Mutex builds_mu_;
  int index_builds_ ABSL_GUARDED_BY(builds_mu_) = 0;
};

}  // namespace pqkv::fuzz

#endif  // PQKV_TESTS_FUZZ_FUZZ_SERVER_H_

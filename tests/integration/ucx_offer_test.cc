// Offers of the UCX data plane against the real server binary and a real registered
// buffer: mutated offers (address and rkey bytes, lengths, truncation) never take the
// server down and each is answered with a clear error or rows that are correct; worker
// addresses outside --ucx_allowed_networks are refused with PERMISSION_DENIED; with
// authentication on, an offer needs a valid token like every other call.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "client/ucx_receiver.h"
#include "pqkv/v1/pqkv.grpc.pb.h"
#include "tests/testing/patterned_kv.h"
#include "tests/testing/retrieve_test_stream.h"
#include "tests/testing/server_process.h"

namespace pqkv {
namespace {

// The server binary under test (PQKV_TEST_SERVER overrides it, e.g. with a debugging wrapper).
std::string ServerBinary() {
  const char* binary = std::getenv("PQKV_TEST_SERVER");
  return binary != nullptr ? binary : "server/pqkv-server";
}

// Sets an environment variable for the life of the object (UCX reads UCX_* when a
// context is created, in this process and in a server started meanwhile).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

std::unique_ptr<testing::ServerProcess> StartServer(std::vector<std::string> extra_args = {}) {
  std::vector<std::string> args = {"--memory_budget=256MiB", "--log_level=error"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto server = testing::ServerProcess::Start(ServerBinary(), args);
  REQUIRE(server.ok());
  return *std::move(server);
}

struct Uploaded {
  std::string id;
  ModelShape shape;
  size_t tokens;
  testing::PatternedLayer layer;
};

Uploaded Upload(Client& client, const ModelShape& shape, size_t tokens) {
  SessionOptions options;
  options.shape = shape;
  Uploaded up{client.CreateSession(options).value(), shape, tokens,
              testing::MakePatternedLayer(shape, tokens, 1)};
  REQUIRE(client
              .UploadPrefill(up.id, 0, 0, static_cast<uint32_t>(tokens), up.layer.keys.data(),
                             up.layer.values.data(), true)
              .ok());
  return up;
}

v1::RetrieveRequest LandingRequest(const Uploaded& up, uint32_t k, uint64_t keys_offset,
                                   uint64_t values_offset) {
  v1::RetrieveRequest request;
  request.set_request_id(2);
  v1::RetrieveItem* item = request.add_items();
  item->set_session_id(up.id);
  for (uint32_t i = 0; i < up.shape.num_query_heads * up.shape.head_dim; ++i) {
    item->add_query(static_cast<float>((i * 7919) % 101) / 101.0f - 0.5f);
  }
  item->set_k(k);
  item->set_with_kv(true);
  item->mutable_landing()->set_keys_offset(keys_offset);
  item->mutable_landing()->set_values_offset(values_offset);
  return request;
}

// Rows of `result` (kv head by kv head) at `keys`/`values` that differ from the upload.
size_t Mismatched(const Uploaded& up, const v1::RetrieveResult& result, const char* keys,
                  const char* values) {
  const size_t row = up.shape.row_bytes();
  size_t at = 0, wrong = 0;
  for (int h = 0; h < result.heads_size(); ++h) {
    for (uint32_t position : result.heads(h).positions()) {
      const size_t src = (h * up.tokens + position) * row;
      wrong += std::memcmp(keys + at, up.layer.keys.data() + src, row) != 0 ||
               std::memcmp(values + at, up.layer.values.data() + src, row) != 0;
      at += row;
    }
  }
  return wrong;
}

// One mutation of a byte string: flipped bits, random bytes, truncation, extension,
// or replacement by random bytes of the same length.
std::string Mutate(const std::string& bytes, std::mt19937& random) {
  std::string out = bytes;
  std::uniform_int_distribution<int> byte(0, 255);
  switch (random() % 6) {
    case 0:
    case 1: {  // 1-3 bytes flipped or replaced (most realistic: a corrupt byte)
      const int n = 1 + random() % 3;
      for (int i = 0; i < n && !out.empty(); ++i) {
        const size_t at = random() % out.size();
        out[at] = random() % 2 ? static_cast<char>(out[at] ^ (1 << (random() % 8)))
                               : static_cast<char>(byte(random));
      }
      break;
    }
    case 2:  // truncated
      out.resize(random() % std::max<size_t>(out.size(), 1));
      break;
    case 3:  // extended
      for (int i = 1 + random() % 16; i > 0; --i) out += static_cast<char>(byte(random));
      break;
    case 4:  // a run of bytes replaced
      if (!out.empty()) {
        const size_t at = random() % out.size();
        const size_t n = std::min<size_t>(out.size() - at, 1 + random() % 8);
        for (size_t i = 0; i < n; ++i) out[at + i] = static_cast<char>(byte(random));
      }
      break;
    default:  // all random, same length
      for (char& c : out) c = static_cast<char>(byte(random));
  }
  return out;
}

void MutatedOffersKeepTheServerUp(int rounds, uint32_t seed) {
  auto server = StartServer();
  auto client = Client::Connect(server->address()).value();
  const ModelShape shape{1, 2, 8, 64, DType::kFp16};
  const Uploaded up = Upload(*client, shape, 1024);
  const uint32_t k = 16;
  const uint64_t bytes = shape.num_kv_heads * k * shape.row_bytes();
  auto receiver = UcxReceiver::Create(size_t{1} << 20).value();
  const v1::DataPlaneOffer good = receiver->Offer();
  std::mt19937 random(seed);
  int refused = 0, accepted = 0, landed = 0;
  for (int round = 0; round < rounds; ++round) {
    v1::DataPlaneOffer offer = good;
    const int what = random() % 5;
    if (what == 0 || what == 3) offer.set_worker_address(Mutate(good.worker_address(), random));
    if (what == 1 || what == 3) offer.set_rkey(Mutate(good.rkey(), random));
    if (what == 2) offer.set_buffer_bytes(random() % (2 * good.buffer_bytes() + 1));
    if (what == 4) offer.set_buffer_check(Mutate(good.buffer_check(), random));
    INFO("round " << round << " mutation " << what);
    // A stream per offer, so that each ends (and its endpoint is torn down) before the next.
    testing::RetrieveTestStream stream(*server);
    v1::RetrieveRequest request;
    *request.mutable_open_data_plane() = offer;
    const v1::RetrieveResponse opened = stream.Call(request);
    const v1::DataPlaneStatus& status = opened.data_plane();
    if (status.status_code() != 0) {
      ++refused;
      INFO(status.error_message());
      CHECK(!status.error_message().empty());
      continue;
    }
    ++accepted;
    CHECK((status.method() == "ucx-shm" || status.method() == "ucx-put"));
    // Rows land where the offer says, or the item fails with a message.
    std::memset(receiver->data() + UcxReceiver::kCheckBytes, 0, 2 * bytes);
    const uint64_t keys_at = UcxReceiver::kCheckBytes, values_at = keys_at + bytes;
    const v1::RetrieveResponse response = stream.Call(LandingRequest(up, k, keys_at, values_at));
    REQUIRE(response.results_size() == 1);
    const v1::RetrieveResult& result = response.results(0);
    if (result.status_code() != 0) {
      INFO(result.error_message());
      CHECK(!result.error_message().empty());
      continue;
    }
    ++landed;
    CHECK(result.landed_bytes() == bytes);
    CHECK(Mismatched(up, result, receiver->data() + keys_at, receiver->data() + values_at) == 0);
  }
  INFO(refused << " refused, " << accepted << " accepted, " << landed << " landed");
  CHECK(refused > 0);
  // The server is still up and serves a good offer.
  testing::RetrieveTestStream stream(*server);
  v1::RetrieveRequest request;
  *request.mutable_open_data_plane() = good;
  REQUIRE(stream.Call(request).data_plane().status_code() == 0);
  const v1::RetrieveResponse response = stream.Call(
      LandingRequest(up, k, UcxReceiver::kCheckBytes, UcxReceiver::kCheckBytes + bytes));
  REQUIRE(response.results(0).status_code() == 0);
  CHECK(Mismatched(up, response.results(0), receiver->data() + UcxReceiver::kCheckBytes,
                   receiver->data() + UcxReceiver::kCheckBytes + bytes) == 0);
  client.reset();
  receiver.reset();            // while the server is up: see UcxReceiver's destructor
  CHECK(server->Stop() == 0);  // not killed by a signal (an abort in UCX)
}

TEST_CASE("Mutated UCX offers never take the server down", "[ucx_offer]") {
  MutatedOffersKeepTheServerUp(/*rounds=*/300, /*seed=*/15);
}

TEST_CASE("Mutated UCX offers never take the server down, TCP only", "[ucx_offer]") {
  ScopedEnv tls("UCX_TLS", "tcp");
  MutatedOffersKeepTheServerUp(/*rounds=*/300, /*seed=*/5);
}

// A v1 worker address (UCX 1.13's default format) of one TCP interface at ip:port.
std::string TcpWorkerAddress(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port) {
  std::string out(1, '\x20');  // version v1, flags: worker uuid
  out += std::string("\x11\x22\x33\x44\x55\x66\x77\x88", 8);
  out += '\x01';  // md 1
  out += '\x86';  // last device, 6 bytes of device address
  out += std::string{'\0',
                     static_cast<char>(AF_INET),
                     static_cast<char>(a),
                     static_cast<char>(b),
                     static_cast<char>(c),
                     static_cast<char>(d)};
  out += std::string("\xcf\x19", 2);  // "tcp"
  out += std::string(16, '\x01');     // interface attributes
  out += '\x82';                      // last interface, 2 bytes of address
  out += static_cast<char>(port >> 8);
  out += static_cast<char>(port & 0xff);
  return out;
}

TEST_CASE("A worker address outside --ucx_allowed_networks is refused", "[ucx_offer]") {
  SECTION("by default: loopback and this host's subnets") {
    auto server = StartServer();
    // Destroyed before the server (see UcxReceiver's destructor).
    auto receiver = UcxReceiver::Create(size_t{1} << 20).value();
    testing::RetrieveTestStream stream(*server);
    v1::RetrieveRequest request;
    *request.mutable_open_data_plane() = receiver->Offer();
    request.mutable_open_data_plane()->set_worker_address(
        TcpWorkerAddress(203, 0, 113, 9, 4000));  // TEST-NET-3: no host's own subnet
    const v1::DataPlaneStatus status = stream.Call(request).data_plane();
    CHECK(status.status_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK(status.error_message().find("203.0.113.9:4000") != std::string::npos);
    CHECK(status.error_message().find("--ucx_allowed_networks=127.0.0.0/8,::1/128") !=
          std::string::npos);
    // The client's own offer (loopback and this host's interfaces) still connects.
    *request.mutable_open_data_plane() = receiver->Offer();
    CHECK(stream.Call(request).data_plane().status_code() == 0);
  }
  SECTION("a list without loopback refuses a same-host worker's TCP interfaces") {
    auto server = StartServer({"--ucx_allowed_networks=198.51.100.0/24"});
    auto receiver = UcxReceiver::Create(size_t{1} << 20).value();
    testing::RetrieveTestStream stream(*server);
    v1::RetrieveRequest request;
    *request.mutable_open_data_plane() = receiver->Offer();
    const v1::DataPlaneStatus status = stream.Call(request).data_plane();
    CHECK(status.status_code() == grpc::StatusCode::PERMISSION_DENIED);
    INFO(status.error_message());
    CHECK(status.error_message().find("--ucx_allowed_networks=198.51.100.0/24") !=
          std::string::npos);
    // Inside the list: past the check (nobody listens there, so UCX cannot connect).
    request.mutable_open_data_plane()->set_worker_address(TcpWorkerAddress(198, 51, 100, 7, 4000));
    CHECK(stream.Call(request).data_plane().status_code() != grpc::StatusCode::PERMISSION_DENIED);
  }
  SECTION("a list that does not parse stops the server at start") {
    auto server =
        testing::ServerProcess::Start(ServerBinary(), {"--ucx_allowed_networks=10.0.0.0/40"});
    CHECK(!server.ok());
  }
}

TEST_CASE("With authentication on, an offer needs a valid token", "[ucx_offer]") {
  char pattern[] = "/tmp/pqkv_ucx_offer_test.XXXXXX";
  const std::string dir = mkdtemp(pattern);
  std::ofstream(dir + "/tokens") << "alice:alice-secret\n";
  auto server = StartServer({"--auth_tokens_file=" + dir + "/tokens"});
  auto receiver = UcxReceiver::Create(size_t{1} << 20).value();
  v1::RetrieveRequest request;
  *request.mutable_open_data_plane() = receiver->Offer();
  // An offer whose worker address the server must never dial for an unknown caller.
  v1::RetrieveRequest probe = request;
  probe.mutable_open_data_plane()->set_worker_address(TcpWorkerAddress(127, 0, 0, 1, 9));
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Pqkv::NewStub(channel);
  for (const char* token : {"", "wrong-secret"}) {
    INFO("token \"" << token << "\"");
    grpc::ClientContext context;
    if (*token != '\0') context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    auto stream = stub->Retrieve(&context);
    stream->Write(probe);  // may fail: the server ends the stream at once
    stream->WritesDone();
    v1::RetrieveResponse response;
    CHECK_FALSE(stream->Read(&response));  // no response: the offer was never looked at
    CHECK(stream->Finish().error_code() == grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer alice-secret");
  auto stream = stub->Retrieve(&context);
  REQUIRE(stream->Write(request));
  v1::RetrieveResponse response;
  REQUIRE(stream->Read(&response));
  CHECK(response.data_plane().status_code() == 0);
  stream->WritesDone();
  CHECK(stream->Finish().ok());
  receiver.reset();
  CHECK(server->Stop() == 0);
  std::remove((dir + "/tokens").c_str());
  rmdir(dir.c_str());
}

}  // namespace
}  // namespace pqkv

// TLS and mutual TLS on the real server, with a CA and certificates the test makes with
// the openssl command line (Debian's openssl): a client that trusts the CA works; a
// plaintext client, a client trusting another CA, and (mutual TLS) a client without a
// certificate or with one from another CA are refused; bearer tokens ride on TLS.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"
#include "client/pqkv_client.h"
#include "tests/testing/server_process.h"

namespace pqkv {
namespace {

constexpr char kServer[] = "server/pqkv-server";

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void Run(const std::string& command) {
  INFO(command);
  REQUIRE(std::system((command + " > /dev/null 2>&1").c_str()) == 0);
}

// A CA, a server certificate for localhost / 127.0.0.1, a client certificate from the
// CA and one from a second, unrelated CA; made once per test binary.
struct Pki {
  std::string dir;
  Pki() {
    char pattern[] = "/tmp/pqkv_tls_test.XXXXXX";
    dir = mkdtemp(pattern);
    for (const char* ca : {"ca", "rogue"}) {
      Run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=" + std::string(ca) +
          " -keyout " + dir + "/" + ca + ".key -out " + dir + "/" + ca + ".pem");
    }
    std::ofstream(dir + "/server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
    Issue("server", "ca", "/server.ext");
    Issue("client", "ca", "");
    Issue("rogue-client", "rogue", "");
  }
  void Issue(const std::string& name, const std::string& ca, const std::string& ext) {
    const std::string base = dir + "/" + name;
    Run("openssl req -newkey rsa:2048 -nodes -subj /CN=" + name + " -keyout " + base +
        ".key -out " + base + ".csr");
    Run("openssl x509 -req -days 2 -in " + base + ".csr -CA " + dir + "/" + ca + ".pem -CAkey " +
        dir + "/" + ca + ".key -CAcreateserial -out " + base + ".pem" +
        (ext.empty() ? "" : " -extfile " + dir + ext));
  }
  std::string File(const std::string& name) const { return dir + "/" + name; }
  std::string Pem(const std::string& name) const { return Read(File(name)); }
};

const Pki& Certificates() {
  static const Pki* pki = new Pki();
  return *pki;
}

std::unique_ptr<testing::ServerProcess> StartServer(bool mutual,
                                                    std::vector<std::string> extra = {}) {
  const Pki& pki = Certificates();
  extra.insert(extra.end(), {"--log_level=warn", "--memory_budget=1GiB", "--noucx",
                             "--tls_cert_file=" + pki.File("server.pem"),
                             "--tls_key_file=" + pki.File("server.key")});
  if (mutual) extra.push_back("--tls_client_ca_file=" + pki.File("ca.pem"));
  auto server = testing::ServerProcess::Start(kServer, extra);
  REQUIRE(server.ok());
  return *std::move(server);
}

ClientOptions Trusting(const std::string& ca) {
  ClientOptions options;
  options.tls = true;
  options.tls_root_certs = Certificates().Pem(ca + ".pem");
  options.connect_timeout = absl::Seconds(3);
  return options;
}

// What a client with `options` gets from the server: the status of Connect, or when it
// connects, of a first call. (With TLS 1.3 a client can finish its handshake before the
// server has checked the client's certificate, so a refused client may connect first.)
absl::StatusCode Reach(const std::string& target, const ClientOptions& options) {
  auto client = Client::Connect(target, options);
  if (!client.ok()) return client.status().code();
  return (*client)->GetServerStats().status().code();
}

// A session, a layer and one Retrieve with its rows in the response: the whole API path.
void CheckWorks(Client& client) {
  SessionOptions session;
  session.shape = {1, 1, 2, 8, DType::kFp32};
  absl::StatusOr<std::string> id = client.CreateSession(session);
  REQUIRE(id.ok());
  std::vector<float> kv(200 * 8);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<float>(i % 13) - 6;
  REQUIRE(client.UploadPrefill(*id, 0, 0, 200, kv.data(), kv.data(), true).ok());
  StreamOptions grpc_rows;
  grpc_rows.data_path = DataPath::kGrpc;
  auto stream = client.OpenRetrievalStream(grpc_rows);
  REQUIRE(stream.ok());
  std::vector<float> query(2 * 8, 0.5f), keys(4 * 8), values(4 * 8);
  RetrieveQuery q{*id, query, 4, keys.data(), values.data(), keys.size() * sizeof(float)};
  auto results = (*stream)->Retrieve(0, {&q, 1});
  REQUIRE(results.ok());
  REQUIRE((*results)[0].status.ok());
  CHECK((*results)[0].kv_bytes == 4 * 8 * sizeof(float));
  CHECK(client.CloseSession(*id).ok());
}

TEST_CASE("A TLS server serves clients that trust its CA, and only them", "[integration]") {
  auto server = StartServer(/*mutual=*/false);
  const std::string target = absl::StrCat("localhost:", server->port());
  SECTION("a client trusting the CA") {
    auto client = Client::Connect(target, Trusting("ca"));
    REQUIRE(client.ok());
    CheckWorks(**client);
  }
  SECTION("by IP address, the certificate names 127.0.0.1 too") {
    auto client = Client::Connect(server->address(), Trusting("ca"));
    REQUIRE(client.ok());
    CHECK((*client)->GetServerStats().ok());
  }
  SECTION("a plaintext client") {
    ClientOptions plaintext;
    plaintext.connect_timeout = absl::Seconds(2);
    CHECK(Reach(target, plaintext) == absl::StatusCode::kUnavailable);
  }
  SECTION("a client trusting another CA") {
    CHECK(Reach(target, Trusting("rogue")) == absl::StatusCode::kUnavailable);
  }
}

TEST_CASE("A mutual-TLS server wants a client certificate from its CA", "[integration]") {
  auto server = StartServer(/*mutual=*/true);
  const std::string target = absl::StrCat("localhost:", server->port());
  const Pki& pki = Certificates();
  SECTION("with the CA's client certificate") {
    ClientOptions options = Trusting("ca");
    options.tls_client_cert = pki.Pem("client.pem");
    options.tls_client_key = pki.Pem("client.key");
    auto client = Client::Connect(target, options);
    REQUIRE(client.ok());
    CheckWorks(**client);
  }
  SECTION("without a certificate") {
    CHECK(Reach(target, Trusting("ca")) == absl::StatusCode::kUnavailable);
  }
  SECTION("with another CA's certificate") {
    ClientOptions options = Trusting("ca");
    options.tls_client_cert = pki.Pem("rogue-client.pem");
    options.tls_client_key = pki.Pem("rogue-client.key");
    CHECK(Reach(target, options) == absl::StatusCode::kUnavailable);
  }
  SECTION("a certificate without its key is refused by the SDK") {
    ClientOptions options = Trusting("ca");
    options.tls_client_cert = pki.Pem("client.pem");
    CHECK(Client::Connect(target, options).status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("Bearer tokens ride on TLS as call credentials", "[integration]") {
  const std::string tokens = Certificates().File("tokens");
  std::ofstream(tokens) << "worker:s3cret\nother:t2\n";
  auto server = StartServer(/*mutual=*/false, {"--auth_tokens_file=" + tokens});
  const std::string target = absl::StrCat("localhost:", server->port());
  ClientOptions options = Trusting("ca");
  options.auth_token = "s3cret";
  auto client = Client::Connect(target, options);
  REQUIRE(client.ok());
  CheckWorks(**client);
  // A session belongs to its token (the principal the metadata processor recorded).
  SessionOptions session;
  session.shape = {1, 1, 1, 8, DType::kFp32};
  session.session_id = "owned";
  REQUIRE((*client)->CreateSession(session).ok());
  options.auth_token = "t2";
  auto other = Client::Connect(target, options);
  REQUIRE(other.ok());
  CHECK((*other)->GetSession("owned").status().code() == absl::StatusCode::kNotFound);
  CHECK((*client)->GetSession("owned").ok());
  options.auth_token = "wrong";
  auto stranger = Client::Connect(target, options);
  REQUIRE(stranger.ok());
  const absl::Status refused = stranger.value()->GetServerStats().status();
  CHECK(refused.code() == absl::StatusCode::kUnauthenticated);
  CHECK(std::string(refused.message()).find("unknown token") != std::string::npos);
  options.auth_token.clear();
  auto anonymous = Client::Connect(target, options);
  REQUIRE(anonymous.ok());
  CHECK(anonymous.value()->GetServerStats().status().code() == absl::StatusCode::kUnauthenticated);
}

TEST_CASE("The server refuses half a TLS configuration", "[integration]") {
  const Pki& pki = Certificates();
  CHECK(
      !testing::ServerProcess::Start(kServer, {"--tls_cert_file=" + pki.File("server.pem")}).ok());
  CHECK(
      !testing::ServerProcess::Start(kServer, {"--tls_client_ca_file=" + pki.File("ca.pem")}).ok());
}

}  // namespace
}  // namespace pqkv

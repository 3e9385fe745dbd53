#include "server/security/token_authenticator.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST_CASE("TokenAuthenticator reads name:token lines", "[server]") {
  auto auth = TokenAuthenticator::FromFile(
      WriteFile("good", "# comment\n\nalice:token-a\n  bob:token:with:colons  \n"));
  REQUIRE(auth.ok());
  CHECK((*auth)->size() == 2);
}

TEST_CASE("TokenAuthenticator refuses files it cannot trust", "[server]") {
  CHECK(TokenAuthenticator::FromFile("/nonexistent/tokens").status().code() ==
        absl::StatusCode::kNotFound);
  SECTION("no token") {
    CHECK(TokenAuthenticator::FromFile(WriteFile("empty", "# nothing\n")).status().code() ==
          absl::StatusCode::kInvalidArgument);
  }
  SECTION("a line without a name") {
    const absl::Status s = TokenAuthenticator::FromFile(WriteFile("bad", ":token\n")).status();
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()).find(":1:") != std::string::npos);
  }
  SECTION("a duplicate token") {
    CHECK(TokenAuthenticator::FromFile(WriteFile("dup", "a:t\nb:t\n")).status().code() ==
          absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace pqkv::server

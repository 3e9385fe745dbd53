// TokenAuthenticator: bearer-token authentication of calls. Each call must carry
// `authorization: Bearer <token>` metadata with a token from the server's tokens file;
// the token's name is the caller's principal, and a session belongs to the principal
// that created it: each principal has its own session-id space, so others get NOT_FOUND
// for it and can create their own session under the same id.
//
// Over TLS the check runs in gRPC's security layer: TokenMetadataProcessor, installed on
// the server credentials, validates the token before the call reaches a handler and
// records the principal in the call's auth context; over plaintext (no call credentials
// there) the handlers read the metadata themselves. PrincipalOf answers either way.
//
// Tokens file: one `name:token` per line; blank lines and lines starting with # are
// ignored. Immutable after loading; thread-safe.
#ifndef PQKV_SERVER_SECURITY_TOKEN_AUTHENTICATOR_H_
#define PQKV_SERVER_SECURITY_TOKEN_AUTHENTICATOR_H_

#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/server_context.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pqkv::server {

class TokenAuthenticator {
 public:
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);

  // The principal of the call, or UNAUTHENTICATED saying what is missing or wrong.
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContextBase& context) const;
  // The principal of an `authorization` metadata value ("Bearer <token>").
  absl::StatusOr<std::string> PrincipalOfHeader(absl::string_view value) const;

  size_t size() const { return principals_.size(); }

 private:
  explicit TokenAuthenticator(std::map<std::string, std::string> principals)
      : principals_(std::move(principals)) {}
  std::map<std::string, std::string> principals_;  // token -> name
};

// The auth-context property TokenMetadataProcessor records the principal under.
inline constexpr char kPrincipalProperty[] = "pqkv.principal";

// Validates bearer tokens in gRPC's security layer (TLS credentials only; gRPC sends no
// call credentials over plaintext). Non-blocking: a map lookup.
class TokenMetadataProcessor : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenMetadataProcessor(const TokenAuthenticator* auth) : auth_(auth) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const TokenAuthenticator* const auth_;
};

// The caller's principal: from `auth`, or "" (everyone shares sessions) without one.
absl::StatusOr<std::string> PrincipalOf(const TokenAuthenticator* auth,
                                        const grpc::ServerContextBase& context);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_SECURITY_TOKEN_AUTHENTICATOR_H_

#include "server/security/token_authenticator.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace pqkv::server {

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read tokens file ", path));
  std::map<std::string, std::string> principals;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    const size_t colon = text.find(':');
    if (colon == 0 || colon == absl::string_view::npos || colon + 1 == text.size()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": expected name:token"));
    }
    const std::string token(text.substr(colon + 1));
    if (!principals.emplace(token, std::string(text.substr(0, colon))).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": duplicate token"));
    }
  }
  if (principals.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokens file ", path, " holds no token"));
  }
  return std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator(std::move(principals)));
}

absl::StatusOr<std::string> TokenAuthenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing authorization metadata (Bearer token)");
  }
  return PrincipalOfHeader(absl::string_view(it->second.data(), it->second.size()));
}

absl::StatusOr<std::string> TokenAuthenticator::PrincipalOfHeader(absl::string_view value) const {
  constexpr absl::string_view kBearer = "Bearer ";
  if (value.substr(0, kBearer.size()) != kBearer) {
    return absl::UnauthenticatedError("authorization metadata is not a Bearer token");
  }
  const auto principal = principals_.find(std::string(value.substr(kBearer.size())));
  if (principal == principals_.end()) return absl::UnauthenticatedError("unknown token");
  return principal->second;
}

grpc::Status TokenMetadataProcessor::Process(const InputMetadata& auth_metadata,
                                             grpc::AuthContext* context,
                                             OutputMetadata* consumed_auth_metadata,
                                             OutputMetadata* /*response_metadata*/) {
  const auto it = auth_metadata.find("authorization");
  if (it == auth_metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing authorization metadata (Bearer token)");
  }
  const absl::StatusOr<std::string> principal =
      auth_->PrincipalOfHeader(absl::string_view(it->second.data(), it->second.size()));
  if (!principal.ok()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        std::string(principal.status().message()));
  }
  context->AddProperty(kPrincipalProperty, *principal);
  consumed_auth_metadata->emplace(std::string(it->first.data(), it->first.size()),
                                  std::string(it->second.data(), it->second.size()));
  return grpc::Status::OK;
}

absl::StatusOr<std::string> PrincipalOf(const TokenAuthenticator* auth,
                                        const grpc::ServerContextBase& context) {
  if (auth == nullptr) return std::string();
  // Over TLS the metadata processor has checked the token already.
  if (const std::shared_ptr<const grpc::AuthContext> auth_context = context.auth_context()) {
    const std::vector<grpc::string_ref> values =
        auth_context->FindPropertyValues(kPrincipalProperty);
    if (!values.empty()) return std::string(values.front().data(), values.front().size());
  }
  return auth->Authenticate(context);
}

}  // namespace pqkv::server

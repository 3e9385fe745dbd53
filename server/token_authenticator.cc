#include "server/token_authenticator.h"

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
  const absl::string_view value(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (value.substr(0, kBearer.size()) != kBearer) {
    return absl::UnauthenticatedError("authorization metadata is not a Bearer token");
  }
  const auto principal = principals_.find(std::string(value.substr(kBearer.size())));
  if (principal == principals_.end()) return absl::UnauthenticatedError("unknown token");
  return principal->second;
}

absl::StatusOr<std::string> PrincipalOf(const TokenAuthenticator* auth,
                                        const grpc::ServerContextBase& context) {
  if (auth == nullptr) return std::string();
  return auth->Authenticate(context);
}

}  // namespace pqkv::server

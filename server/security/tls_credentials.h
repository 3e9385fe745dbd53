// The server's transport credentials: plaintext, TLS, or mutual TLS, from PEM files.
//
// Pure function over the file system.
#ifndef PQKV_SERVER_SECURITY_TLS_CREDENTIALS_H_
#define PQKV_SERVER_SECURITY_TLS_CREDENTIALS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace pqkv::server {

struct TlsFiles {
  std::string cert_file;       // server certificate chain (PEM); empty: plaintext
  std::string key_file;        // its private key (PEM)
  std::string client_ca_file;  // set: clients must present a certificate this CA signed
};

// Insecure credentials when no file is named; TLS with `cert_file` and `key_file`;
// mutual TLS when `client_ca_file` is set too. INVALID_ARGUMENT when only one of cert and
// key is named (or a client CA without them), NOT_FOUND when a file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_SECURITY_TLS_CREDENTIALS_H_

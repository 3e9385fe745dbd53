// The pqkv release this tree builds.
#ifndef PQKV_SERVER_VERSION_H_
#define PQKV_SERVER_VERSION_H_

namespace pqkv::server {
inline constexpr char kVersion[] = "0.1.0";
}  // namespace pqkv::server

#endif  // PQKV_SERVER_VERSION_H_

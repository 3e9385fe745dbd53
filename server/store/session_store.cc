#include "server/store/session_store.h"

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "server/runtime/server_logger.h"

namespace pqkv::server {
namespace {

// The map key: principals have separate id spaces (ids cannot contain '\n').
std::string Key(const std::string& principal, const std::string& id) {
  return absl::StrCat(principal, "\n", id);
}

absl::Status ValidateSessionId(const std::string& id) {
  if (id.empty() || id.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("session id must have 1 to 128 characters, got ", id.size()));
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("session id \"", id, "\" may only use [A-Za-z0-9._:-]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Create(
    const SessionStoreOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<PageArena> arena,
                   PageArena::Create(options.memory_budget_bytes, options.page_bytes,
                                                     options.huge_pages));
  return std::unique_ptr<SessionStore>(new SessionStore(std::move(arena), options));
}

SessionStore::SessionStore(std::unique_ptr<PageArena> arena, const SessionStoreOptions& options)
    : arena_(std::move(arena)),
      gpu_(options.gpu),
      max_sessions_(options.max_sessions),
      session_ttl_(options.session_ttl),
      on_index_built_(options.on_index_built),
      refresh_(options.refresh),
      index_pool_("pqkv-index", options.index_threads, absl::ZeroDuration(), options.index_nice) {
  if (session_ttl_ > absl::ZeroDuration()) sweeper_ = std::thread([this] { SweepLoop(); });
}

SessionStore::~SessionStore() {
  {
    absl::MutexLock lock(&sweep_mu_);
    stopping_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

void SessionStore::SweepLoop() {
  // Sweep a few times per TTL, at least every 10 s, so expiry is at most ~TTL/4 late.
  const absl::Duration period =
      std::max(absl::Milliseconds(10), std::min(session_ttl_ / 4, absl::Seconds(10)));
  absl::MutexLock lock(&sweep_mu_);
  while (!sweep_mu_.AwaitWithTimeout(absl::Condition(&stopping_), period)) {
    sweep_mu_.Unlock();
    ExpireIdleSessions(absl::Now(), session_ttl_);
    sweep_mu_.Lock();
  }
}

size_t SessionStore::ExpireIdleSessions(absl::Time now, absl::Duration ttl) {
  std::vector<std::shared_ptr<Session>> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (now - it->second->last_used() > ttl) {
        expired.push_back(std::move(it->second));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const std::shared_ptr<Session>& session : expired) {
    session->MarkClosed();
    ServerLogger().info("session {} expired after {} idle, releasing {} bytes", session->id(),
                        absl::FormatDuration(now - session->last_used()), session->bytes_held());
  }
  return expired.size();
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::CreateSession(
    const std::string& requested_id, const SessionConfig& config, const std::string& owner) {
  RETURN_IF_ERROR(ValidateSessionConfig(config, arena_->page_bytes()));
  if (!requested_id.empty()) RETURN_IF_ERROR(ValidateSessionId(requested_id));
  absl::MutexLock lock(&mu_);
  std::string id = requested_id;
  if (id.empty()) {
    absl::BitGen gen;
    do {
      id = absl::StrFormat("s-%016x", absl::Uniform<uint64_t>(gen));
    } while (sessions_.count(Key(owner, id)) > 0);
  } else if (sessions_.count(Key(owner, id)) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("session \"", id, "\" already exists"));
  }
  if (sessions_.size() >= max_sessions_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        sessions_.size(), " sessions are live, the most this server takes (--max_sessions=",
        max_sessions_, "); close one first"));
  }
  // Charged before the session is built, so that a refused one never costs memory.
  const size_t metadata_bytes = Session::MetadataBytes(config);
  absl::StatusOr<std::vector<uint32_t>> metadata_pages =
      arena_->Allocate((metadata_bytes + arena_->page_bytes() - 1) / arena_->page_bytes());
  if (!metadata_pages.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a session of ", config.shape.num_layers, " layers x ", config.shape.num_kv_heads,
        " kv heads needs ", metadata_bytes,
        " bytes of metadata, charged to the memory budget: ", metadata_pages.status().message()));
  }
  SessionConfig with_policy = config;
  with_policy.refresh = refresh_;
  auto session =
      std::make_shared<Session>(id, with_policy, arena_, gpu_, owner, *std::move(metadata_pages));
  sessions_.emplace(Key(owner, id), session);
  ServerLogger().info(
      "session {} created: {} layers x {} kv heads x {} query heads x {} dims, "
      "M={} b={} S={} W={}",
      id, config.shape.num_layers, config.shape.num_kv_heads, config.shape.num_query_heads,
      config.shape.head_dim, config.index.subspaces, config.index.bits, config.index.sink_tokens,
      config.index.recent_window);
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Get(const std::string& id,
                                                           const std::string& principal) const {
  absl::MutexLock lock(&mu_);
  // Each principal has its own id space: another's session is not even found.
  auto it = sessions_.find(Key(principal, id));
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("no session \"", id, "\""));
  }
  it->second->Touch();
  return it->second;
}

absl::StatusOr<size_t> SessionStore::Close(const std::string& id, const std::string& principal) {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(Key(principal, id));
    if (it == sessions_.end()) {
      return absl::NotFoundError(absl::StrCat("no session \"", id, "\""));
    }
    session = std::move(it->second);
    sessions_.erase(it);
  }
  session->MarkClosed();
  const size_t bytes = session->bytes_held();
  ServerLogger().info("session {} closed, releasing {} bytes", id, bytes);
  return bytes;
}

std::vector<std::shared_ptr<Session>> SessionStore::List(const std::string& principal) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Session>> sessions;
  for (const auto& [id, session] : sessions_) {
    if (session->owner() == principal) sessions.push_back(session);
  }
  return sessions;
}

void SessionStore::SealPrefill(const std::shared_ptr<Session>& session, uint32_t layer) {
  absl::StatusOr<LayerStore*> store = session->layer(layer);
  if (!store.ok() || !(*store)->SealPrefill()) return;
  ServerLogger().info("session {} layer {}: prefill complete with {} tokens, index build queued",
                      session->id(), layer, (*store)->Status().num_tokens);
  index_pool_.Schedule([this, session, layer, store = *store] {
    if (session->closed()) {
      // Training a closed session's layer would only delay the frees of its pages.
      store->AbandonBuild();
    } else {
      store->BuildIndex(&index_pool_);
      const LayerStatus status = store->Status();
      ServerLogger().info("session {} layer {}: index {} for {} tokens in {:.1f} ms", session->id(),
                          layer, IndexStateName(status.index_state), status.num_encoded,
                          status.index_build_ms);
      if (on_index_built_) on_index_built_(absl::Milliseconds(status.index_build_ms));
    }
    index_builds_done_.fetch_add(1, std::memory_order_relaxed);
  });
}

void SessionStore::MaybeRefresh(const std::shared_ptr<Session>& session, uint32_t layer) {
  absl::StatusOr<LayerStore*> store = session->layer(layer);
  if (!store.ok() || !(*store)->ClaimRefresh()) return;
  index_pool_.Schedule([this, session, layer, store = *store] {
    if (session->closed()) return;
    store->RefreshIndex(&index_pool_);
    const LayerStatus status = store->Status();
    ServerLogger().info(
        "session {} layer {}: codebooks retrained on {} tokens in {:.1f} ms (refresh {}; "
        "quantization error of the appended tokens was {:.4f})",
        session->id(), layer, status.num_encoded, status.index_build_ms, status.index_refreshes,
        status.appended_quantization_error);
    index_refreshes_done_.fetch_add(1, std::memory_order_relaxed);
  });
}

SessionStoreStats SessionStore::Stats() const {
  SessionStoreStats stats;
  {
    absl::MutexLock lock(&mu_);
    stats.num_sessions = sessions_.size();
  }
  stats.bytes_held = arena_->bytes_in_use();
  stats.bytes_capacity = arena_->capacity_bytes();
  stats.page_bytes = arena_->page_bytes();
  stats.index_builds_pending = index_pool_.pending();
  stats.index_builds_done = index_builds_done_.load(std::memory_order_relaxed);
  stats.index_refreshes_done = index_refreshes_done_.load(std::memory_order_relaxed);
  return stats;
}

SessionStoreStats SessionStore::StatsOf(const std::string& principal) const {
  SessionStoreStats stats = Stats();
  const std::vector<std::shared_ptr<Session>> sessions = List(principal);
  stats.num_sessions = sessions.size();
  stats.bytes_held = 0;
  for (const std::shared_ptr<Session>& session : sessions) {
    stats.bytes_held += session->bytes_held();
  }
  return stats;
}

}  // namespace pqkv::server

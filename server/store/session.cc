#include "server/store/session.h"

#include <malloc.h>

#include "absl/strings/str_cat.h"

namespace pqkv::server {
namespace {

std::atomic<uint64_t> next_serial{1};

}  // namespace

Session::Session(std::string id, const SessionConfig& config, std::shared_ptr<PageArena> arena,
                 GpuScorer* gpu, std::string owner, std::vector<uint32_t> metadata_pages)
    : id_(std::move(id)),
      serial_(next_serial.fetch_add(1, std::memory_order_relaxed)),
      owner_(std::move(owner)),
      config_(config),
      created_(absl::Now()),
      arena_(std::move(arena)),
      metadata_pages_(std::move(metadata_pages)),
      last_used_ns_(absl::ToUnixNanos(created_)) {
  layers_.reserve(config_.shape.num_layers);
  for (uint32_t l = 0; l < config_.shape.num_layers; ++l) {
    layers_.push_back(std::make_unique<LayerStore>(l, config_, arena_.get(), gpu));
  }
}

Session::~Session() {
  const size_t held = bytes_held();
  layers_.clear();
  if (!metadata_pages_.empty()) arena_->Free(metadata_pages_);
  // glibc keeps freed heap: a wide session's structures are many small blocks (a 1024 x 64
  // one, 262,144), and a used session's calls left their buffers (messages, gathered rows,
  // index training) in the heaps of the threads that served them. Create/close cycles of
  // empty wide sessions grew the resident size by several MB each, and 64 sessions of
  // bench/load_bench closed left 106 MiB more than at start. Trimming hands free pages
  // back; it walks the heaps (about a millisecond), so only after a session that held a
  // megabyte or more.
  if (held >= kTrimAfterBytes) malloc_trim(0);
}

size_t Session::MetadataBytes(const SessionConfig& config) {
  constexpr size_t kBlockOverhead = 16;  // glibc malloc, about
  return sizeof(Session) + kBlockOverhead +
         config.shape.num_layers *
             (sizeof(std::unique_ptr<LayerStore>) + LayerStore::MetadataBytes(config)) +
         kBlockOverhead;
}

absl::StatusOr<LayerStore*> Session::layer(uint32_t layer) const {
  if (layer >= layers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range: session ", id_,
                                                   " has ", layers_.size(), " layers"));
  }
  return layers_[layer].get();
}

size_t Session::bytes_held() const {
  size_t bytes = 0;
  for (const auto& layer : layers_) bytes += layer->Status().bytes_held;
  return bytes + metadata_bytes_held();
}

}  // namespace pqkv::server

#include "server/metrics/quality_sampler.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "catch2/catch.hpp"
#include "server/store/session_store.h"

namespace pqkv::server {
namespace {

// 1 layer x 1 kv head x 2 query heads x 8 dims, fp32.
SessionConfig TinyConfig() {
  SessionConfig config;
  config.shape = {1, 1, 2, 8, kernels::ElementType::kFp32};
  config.index.bits = 4;
  return config;
}

std::string Rows(uint32_t tokens, float base) {
  std::vector<float> values(size_t{tokens} * 8);
  for (size_t i = 0; i < values.size(); ++i) values[i] = base + 0.01f * static_cast<float>(i % 13);
  std::string bytes(values.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// Waits (bounded) until the sampler has dealt with `samples` samples one way or the other.
void WaitForSamples(const QualitySampler& sampler, uint64_t samples) {
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (sampler.measured() + sampler.skipped_closed() < samples && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
}

struct Fixture {
  std::unique_ptr<SessionStore> store;
  std::shared_ptr<Session> session;
  LayerSelection selection;
  std::vector<float> query = std::vector<float>(2 * 8, 0.1f);

  Fixture() {
    SessionStoreOptions options;
    options.memory_budget_bytes = 16 << 20;
    options.page_bytes = 4096;
    store = SessionStore::Create(options).value();
    session = store->CreateSession("s", TinyConfig()).value();
    LayerStore* layer = session->layer(0).value();
    // 256 tokens: candidates past the 32 sinks and before the 64 recent ones.
    REQUIRE(layer->Append(0, 256, Rows(256, 0.5f), Rows(256, -0.5f)).ok());
    selection.num_tokens = 256;
    selection.heads.resize(1);
    selection.heads[0].positions = {40, 77, 150};
  }
};

TEST_CASE("A sampled item of an open session is measured", "[server]") {
  Fixture f;
  QualitySampler sampler(1.0);
  sampler.MaybeSample(f.session, 0, f.query, f.selection, 1);
  WaitForSamples(sampler, 1);
  CHECK(sampler.measured() == 1);
  CHECK(sampler.skipped_closed() == 0);
  CHECK(f.session->layer(0).value()->Status().quality_samples == 1);
}

TEST_CASE("A queued sample does not hold a closed session or measure it", "[server]") {
  Fixture f;
  QualitySampler sampler(1.0);
  REQUIRE(f.store->Close("s").ok());
  sampler.MaybeSample(f.session, 0, f.query, f.selection, 1);
  const std::weak_ptr<Session> weak = f.session;
  f.session.reset();
  // The only references left were ours and the store's: the queued sample holds none.
  CHECK(weak.expired());
  CHECK(f.store->Stats().bytes_held == 0);
  WaitForSamples(sampler, 1);
  CHECK(sampler.skipped_closed() == 1);
  CHECK(sampler.measured() == 0);
  std::string metrics;
  sampler.Render(&metrics);
  CHECK(metrics.find("pqkv_quality_samples_skipped_total 1\n") != std::string::npos);
}

}  // namespace
}  // namespace pqkv::server

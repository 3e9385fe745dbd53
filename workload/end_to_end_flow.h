// The whole worker flow against a live server through the SDK, on planted data:
// create a session, upload every layer's prefill, retrieve on every layer, fetch the
// selection (FetchKv, and with the Retrieve into the stream's UCX receive buffer) and
// compare it bit for bit with what was uploaded, measure quality against
// exact attention, then append decode tokens (some planted) and retrieve again.
//
// It measures and reports; callers decide what is good enough (the demo prints, the
// integration test asserts). Runs on the calling thread.
#ifndef PQKV_WORKLOAD_END_TO_END_FLOW_H_
#define PQKV_WORKLOAD_END_TO_END_FLOW_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/pqkv_client.h"
#include "workload/planted_kv.h"

namespace pqkv::workload {

struct FlowSpec {
  PlantedKvSpec data;  // sinks/recent here are also the session's S and W
  uint32_t num_layers = 4;
  uint32_t k = 512;
  uint32_t retrieve_repeats = 5;  // timed Retrieve calls per layer
  uint32_t decode_tokens = 64;
  uint32_t decode_planted_every = 8;  // every n-th decode token is planted
  std::string session_id;             // empty: server-chosen
  bool close_session = true;
};

struct LayerReport {
  uint32_t layer = 0;
  double upload_ms = 0;
  double index_build_ms = 0;
  std::string index_state;
  double retrieve_median_us = 0;
  double fetch_median_us = 0;
  uint64_t num_encoded = 0;
  double planted_recall = 0;  // planted tokens found, mean over kv heads
  double topk_recall = 0;     // |selected ∩ exact top-k| / k, mean over kv heads
  double mass_ratio = 0;      // attention mass of selected / of exact top-k, mean over heads
  // Indices and rows in one Retrieve round trip, and how the rows came ("ucx-shm",
  // "ucx-put" or "grpc").
  double retrieve_with_rows_median_us = 0;
  std::string data_path;
  uint64_t rows_fetched = 0;     // by FetchKv
  uint64_t rows_landed = 0;      // with the Retrieve
  uint64_t rows_mismatched = 0;  // rows (fetched or landed) whose bytes differ from the upload
  std::vector<uint32_t> head0_first_positions;  // first selections of kv head 0, for display
};

struct FlowReport {
  std::string session_id;
  std::vector<LayerReport> layers;
  // After the decode tokens: what the last retrieval saw, and how many planted decode
  // tokens outside the recent window it selected (per kv head, summed over layers).
  uint64_t tokens_after_decode = 0;
  uint64_t encoded_after_decode = 0;
  uint64_t decode_planted_expected = 0;
  uint64_t decode_planted_found = 0;
  double decode_append_median_us = 0;
};

absl::StatusOr<FlowReport> RunEndToEndFlow(Client& client, const FlowSpec& spec);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_END_TO_END_FLOW_H_

#include "workload/end_to_end_flow.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/top_k.h"

namespace pqkv::workload {
namespace {

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double MicrosSince(absl::Time start) { return absl::ToDoubleMicroseconds(absl::Now() - start); }

// Waits, polling GetSession, until no layer's index is building.
absl::StatusOr<SessionInfo> WaitForIndexes(Client& client, const std::string& id) {
  const absl::Time give_up = absl::Now() + absl::Minutes(5);
  while (true) {
    absl::StatusOr<SessionInfo> info = client.GetSession(id);
    if (!info.ok()) return info.status();
    const bool building =
        std::any_of(info->layers.begin(), info->layers.end(), [](const LayerInfo& l) {
          return l.index_state == IndexState::kBuilding || l.index_state == IndexState::kOpen;
        });
    if (!building) return info;
    if (absl::Now() > give_up)
      return absl::DeadlineExceededError("indexes still building after 5 min");
    absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace

absl::StatusOr<FlowReport> RunEndToEndFlow(Client& client, const FlowSpec& spec) {
  const PlantedKvSpec& d = spec.data;
  const uint32_t n = d.num_tokens;
  const uint32_t dim = d.head_dim;
  const uint32_t group = d.num_query_heads / d.num_kv_heads;
  const size_t row_bytes = dim * sizeof(uint16_t);

  SessionOptions options;
  options.session_id = spec.session_id;
  options.shape = {spec.num_layers, d.num_kv_heads, d.num_query_heads, dim, DType::kFp16};
  options.index.sink_tokens = d.sinks;
  options.index.recent_window = d.recent;
  absl::StatusOr<std::string> id = client.CreateSession(options);
  if (!id.ok()) return id.status();
  FlowReport report;
  report.session_id = *id;

  // Prefill: layer by layer, as a worker's prefill produces them.
  std::vector<LayerData> layers;
  std::vector<std::vector<uint16_t>> uploaded_keys, uploaded_values;
  for (uint32_t l = 0; l < spec.num_layers; ++l) {
    layers.push_back(GeneratePlantedLayer(d, l));
    uploaded_keys.push_back(ToHalf(layers.back().keys));
    uploaded_values.push_back(ToHalf(layers.back().values));
    const absl::Time start = absl::Now();
    absl::Status status =
        client.UploadPrefill(*id, l, 0, n, uploaded_keys.back().data(),
                             uploaded_values.back().data(), /*end_of_prefill=*/true);
    if (!status.ok()) return status;
    LayerReport layer_report;
    layer_report.layer = l;
    layer_report.upload_ms = MicrosSince(start) / 1000;
    report.layers.push_back(layer_report);
  }
  absl::StatusOr<SessionInfo> info = WaitForIndexes(client, *id);
  if (!info.ok()) return info.status();

  const size_t buffer_bytes = static_cast<size_t>(d.num_kv_heads) * spec.k * row_bytes;
  // Rows in the same round trip land in the stream's receive buffer (UCX), or come in
  // the response where UCX is not available.
  absl::StatusOr<std::unique_ptr<RetrievalStream>> stream =
      client.OpenRetrievalStream({.receive_buffer_bytes = 2 * buffer_bytes});
  if (!stream.ok()) return stream.status();
  std::vector<char> fetched_keys(buffer_bytes), fetched_values(buffer_bytes);
  std::vector<char> own_landing;
  char* landed_keys = static_cast<char*>((*stream)->receive_buffer());
  if (landed_keys == nullptr) {
    own_landing.resize(2 * buffer_bytes);
    landed_keys = own_landing.data();
  }
  char* landed_values = landed_keys + buffer_bytes;

  for (uint32_t l = 0; l < spec.num_layers; ++l) {
    LayerReport& lr = report.layers[l];
    const LayerData& data = layers[l];
    lr.index_build_ms = info->layers[l].index_build_ms;
    lr.index_state = IndexStateName(info->layers[l].index_state);
    const RetrieveQuery query{*id, data.query, spec.k};
    std::vector<double> retrieve_us, fetch_us;
    RetrieveResult result;
    for (uint32_t r = 0; r < std::max(1u, spec.retrieve_repeats); ++r) {
      const absl::Time start = absl::Now();
      absl::StatusOr<std::vector<RetrieveResult>> results = (*stream)->Retrieve(l, {&query, 1});
      retrieve_us.push_back(MicrosSince(start));
      if (!results.ok()) return results.status();
      result = std::move((*results)[0]);
      if (!result.status.ok()) return result.status;
      const absl::Time fetch_start = absl::Now();
      absl::StatusOr<size_t> bytes = client.FetchSelected(*id, l, result, fetched_keys.data(),
                                                          fetched_values.data(), buffer_bytes);
      fetch_us.push_back(MicrosSince(fetch_start));
      if (!bytes.ok()) return bytes.status();
    }
    // Indices and rows in one round trip.
    const RetrieveQuery with_rows{*id,         data.query,    spec.k,
                                  landed_keys, landed_values, buffer_bytes};
    std::vector<double> with_rows_us;
    RetrieveResult rows_result;
    for (uint32_t r = 0; r < std::max(1u, spec.retrieve_repeats); ++r) {
      const absl::Time start = absl::Now();
      absl::StatusOr<std::vector<RetrieveResult>> results = (*stream)->Retrieve(l, {&with_rows, 1});
      with_rows_us.push_back(MicrosSince(start));
      if (!results.ok()) return results.status();
      rows_result = std::move((*results)[0]);
      if (!rows_result.status.ok()) return rows_result.status;
    }
    lr.retrieve_median_us = Median(retrieve_us);
    lr.fetch_median_us = Median(fetch_us);
    lr.retrieve_with_rows_median_us = Median(with_rows_us);
    lr.data_path = rows_result.data_path;
    lr.num_encoded = result.num_encoded;

    const uint32_t candidate_end = n - d.recent;
    for (uint32_t h = 0; h < d.num_kv_heads; ++h) {
      const std::vector<uint32_t>& selected = result.heads[h].positions;
      // Bit-identical check of what FetchSelected wrote for this head.
      for (size_t i = 0; i < selected.size(); ++i) {
        const size_t src = (static_cast<size_t>(h) * n + selected[i]) * dim;
        const size_t dst = (static_cast<size_t>(h) * spec.k + i) * row_bytes;
        const bool same =
            std::memcmp(fetched_keys.data() + dst, &uploaded_keys[l][src], row_bytes) == 0 &&
            std::memcmp(fetched_values.data() + dst, &uploaded_values[l][src], row_bytes) == 0;
        ++lr.rows_fetched;
        if (!same) ++lr.rows_mismatched;
      }
      // And of what landed with the indices (the same query, so the same selection).
      const std::vector<uint32_t>& landed = rows_result.heads[h].positions;
      for (size_t i = 0; i < landed.size(); ++i) {
        const size_t src = (static_cast<size_t>(h) * n + landed[i]) * dim;
        const size_t dst = (static_cast<size_t>(h) * spec.k + i) * row_bytes;
        const bool same =
            std::memcmp(landed_keys + dst, &uploaded_keys[l][src], row_bytes) == 0 &&
            std::memcmp(landed_values + dst, &uploaded_values[l][src], row_bytes) == 0;
        ++lr.rows_landed;
        if (!same) ++lr.rows_mismatched;
      }
      const std::vector<float> exact =
          ExactGqaScores(data.keys.data() + static_cast<size_t>(h) * n * dim, n,
                         data.query.data() + static_cast<size_t>(h) * group * dim, group, dim);
      std::vector<uint32_t> exact_top(spec.k);
      kernels::TopK(exact.data(), d.sinks, candidate_end, spec.k, exact_top.data());
      lr.planted_recall += Recall(selected, data.planted[h]) / d.num_kv_heads;
      lr.topk_recall += Recall(selected, exact_top) / d.num_kv_heads;
      lr.mass_ratio += MassOf(exact, selected) / MassOf(exact, exact_top) / d.num_kv_heads;
    }
    const std::vector<uint32_t>& head0 = result.heads[0].positions;
    lr.head0_first_positions.assign(head0.begin(),
                                    head0.begin() + std::min<size_t>(8, head0.size()));
  }

  // Decode: append tokens to every layer; every decode_planted_every-th one is planted
  // along each kv head's direction, so the next retrieval should pick it up.
  const size_t token_bytes = static_cast<size_t>(spec.num_layers) * d.num_kv_heads * dim;
  std::vector<double> append_us;
  std::vector<uint32_t> planted_decode;
  for (uint32_t i = 0; i < spec.decode_tokens; ++i) {
    const uint32_t position = n + i;
    const bool planted = spec.decode_planted_every > 0 && i % spec.decode_planted_every == 0;
    std::vector<float> keys(token_bytes), values(token_bytes);
    for (uint32_t l = 0; l < spec.num_layers; ++l) {
      for (uint32_t h = 0; h < d.num_kv_heads; ++h) {
        float* key = keys.data() + (static_cast<size_t>(l) * d.num_kv_heads + h) * dim;
        float* value = values.data() + (static_cast<size_t>(l) * d.num_kv_heads + h) * dim;
        const std::vector<float> k =
            planted ? PlantedKey(layers[l].directions[h], d.planted_key_norm, position * 31 + h)
                    : std::vector<float>(dim, 0.0f);
        std::copy(k.begin(), k.end(), key);
        for (uint32_t j = 0; j < dim; ++j) value[j] = static_cast<float>((position + j) % 7);
      }
    }
    if (planted) planted_decode.push_back(position);
    const std::vector<uint16_t> key_bits = ToHalf(keys), value_bits = ToHalf(values);
    const absl::Time start = absl::Now();
    absl::Status status = client.AppendToken(*id, position, key_bits.data(), value_bits.data());
    append_us.push_back(MicrosSince(start));
    if (!status.ok()) return status;
  }
  report.decode_append_median_us = Median(append_us);
  const uint64_t total = static_cast<uint64_t>(n) + spec.decode_tokens;
  for (uint32_t l = 0; l < spec.num_layers && spec.decode_tokens > 0; ++l) {
    const RetrieveQuery query{*id, layers[l].query, spec.k};
    absl::StatusOr<std::vector<RetrieveResult>> results = (*stream)->Retrieve(l, {&query, 1});
    if (!results.ok()) return results.status();
    const RetrieveResult& result = (*results)[0];
    if (!result.status.ok()) return result.status;
    report.tokens_after_decode = result.num_tokens;
    report.encoded_after_decode = result.num_encoded;
    for (const HeadSelection& head : result.heads) {
      for (uint32_t p : planted_decode) {
        if (p + d.recent >= total) continue;  // in the recent window: the worker keeps it
        ++report.decode_planted_expected;
        report.decode_planted_found += std::count(head.positions.begin(), head.positions.end(), p);
      }
    }
  }
  absl::Status closed = (*stream)->Close();
  if (!closed.ok()) return closed;
  if (spec.close_session) {
    absl::Status status = client.CloseSession(*id);
    if (!status.ok()) return status;
  }
  return report;
}

}  // namespace pqkv::workload

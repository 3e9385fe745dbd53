#include "quality/quality_harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "kernels/dtype_convert.h"
#include "quality/exact_attention.h"
#include "quality/selection_methods.h"
#include "workload/kv_statistics.h"

namespace pqkv::quality {
namespace {

using workload::KvDataSet;
using workload::KvLayer;

// One pqkv run's picks: [layer][query][kv head] -> positions and the server's scores.
struct HeadPick {
  std::vector<uint32_t> positions;
  std::vector<float> scores;
};
using RunPicks = std::vector<std::vector<std::vector<HeadPick>>>;

absl::Status CheckFits(const KvDataSet& data, const HarnessOptions& options) {
  if (data.layers.empty() || data.query_positions.empty()) {
    return absl::InvalidArgumentError("the data set has no layers or no queries");
  }
  if (!(options.budget > 0 && options.budget < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget must be in (0, 1), got ", options.budget));
  }
  const uint32_t p = data.query_positions.front();
  const uint32_t fixed = options.sinks + options.recent;
  if (p <= fixed || BudgetTokens(options.budget, p) > p - fixed) {
    return absl::InvalidArgumentError(
        absl::StrCat("the first query at position ", p, " leaves ", p > fixed ? p - fixed : 0,
                     " candidates after ", options.sinks, " sinks and ", options.recent,
                     " recent tokens; k = ", BudgetTokens(options.budget, p), " does not fit"));
  }
  return absl::OkStatus();
}

// Runs the decode trace through the server with one PQ setting; fills picks[layer][query].
absl::Status RunPqkv(const KvDataSet& data, Client& client, const HarnessOptions& options,
                     const PqConfig& pq, RunPicks* picks, std::vector<double>* retrieve_us) {
  const SessionOptions session =
      SessionFor(data, pq, options.sinks, options.recent, options.kmeans_iterations);
  ASSIGN_OR_RETURN(const std::string id, client.CreateSession(session));
  struct Closer {
    Client& client;
    std::string id;
    bool close;
    ~Closer() {
      if (close) client.CloseSession(id).IgnoreError();
    }
  } closer{client, id, options.close_sessions};

  const uint32_t prefill = data.query_positions.front();
  for (size_t l = 0; l < data.layers.size(); ++l) {
    const std::vector<uint16_t> keys = workload::RowsOf(data, data.layers[l].keys, 0, prefill);
    const std::vector<uint16_t> values = workload::RowsOf(data, data.layers[l].values, 0, prefill);
    RETURN_IF_ERROR(client.UploadPrefill(id, static_cast<uint32_t>(l), 0, prefill, keys.data(),
                                         values.data(), /*end_of_prefill=*/true));
    if (options.progress) {
      options.progress(absl::StrCat("pqkv ", pq.Name(), ": uploaded layer ", l + 1, "/",
                                    data.layers.size(), " (", prefill, " tokens)"));
    }
  }
  // The index builds run in the background, and a Retrieve item for a layer still building
  // is scored exactly (the server answers at once rather than wait): measured then, a
  // setting's quality would depend on how fast this machine builds. Wait for every layer.
  const auto waited_since = std::chrono::steady_clock::now();
  for (;;) {
    ASSIGN_OR_RETURN(const SessionInfo info, client.GetSession(id));
    const bool building = std::any_of(
        info.layers.begin(), info.layers.end(),
        [](const LayerInfo& layer) { return layer.index_state == IndexState::kBuilding; });
    if (!building) break;
    if (std::chrono::steady_clock::now() - waited_since > std::chrono::minutes(10)) {
      return absl::DeadlineExceededError(
          absl::StrCat("pqkv ", pq.Name(), ": index builds still running after 10 minutes"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  StreamOptions stream_options;
  stream_options.data_path = DataPath::kGrpc;  // indices only: no receive buffer needed
  ASSIGN_OR_RETURN(std::unique_ptr<RetrievalStream> stream,
                   client.OpenRetrievalStream(stream_options));
  const size_t d = data.head_dim;
  const size_t query_floats = static_cast<size_t>(data.num_query_heads) * d;
  picks->assign(data.layers.size(),
                std::vector<std::vector<HeadPick>>(data.query_positions.size()));
  uint32_t held = prefill;
  for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
    const uint32_t p = data.query_positions[qi];
    // Tokens between queries (none for consecutive decode steps) join first.
    std::vector<uint16_t> k, v;
    for (; held < p; ++held) {
      workload::TokenKv(data, held, &k, &v);
      RETURN_IF_ERROR(client.AppendToken(id, held, k.data(), v.data()));
    }
    for (size_t l = 0; l < data.layers.size(); ++l) {
      RetrieveQuery query;
      query.session_id = id;
      query.query =
          absl::MakeConstSpan(data.layers[l].queries.data() + qi * query_floats, query_floats);
      query.k = BudgetTokens(options.budget, p);
      query.rerank = pq.rerank;
      const auto start = std::chrono::steady_clock::now();
      ASSIGN_OR_RETURN(std::vector<RetrieveResult> results,
                       stream->Retrieve(static_cast<uint32_t>(l), absl::MakeConstSpan(&query, 1)));
      retrieve_us->push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count());
      RETURN_IF_ERROR(results[0].status);
      for (const pqkv::HeadSelection& head : results[0].heads) {
        (*picks)[l][qi].push_back({head.positions, head.scores});
      }
    }
    if (options.progress) {
      options.progress(absl::StrCat("pqkv ", pq.Name(), ": query ", qi + 1, "/",
                                    data.query_positions.size(), " at position ", p));
    }
  }
  return stream->Close();
}

struct Accumulator {
  SelectionQuality sum;
  uint32_t count = 0;
  void Add(const SelectionQuality& q) {
    sum.recall_at_k += q.recall_at_k;
    sum.mass_recall += q.mass_recall;
    sum.output_rel_error += q.output_rel_error;
    ++count;
  }
  SelectionQuality Mean() const {
    SelectionQuality m = sum;
    if (count > 0) {
      m.recall_at_k /= count;
      m.mass_recall /= count;
      m.output_rel_error /= count;
    }
    return m;
  }
};

// |server score / exact score - 1| over returned positions: the sum, count and largest.
struct ScoreError {
  double sum = 0, max = 0;
  size_t count = 0;
  void Add(const ScoreError& e) {
    sum += e.sum;
    count += e.count;
    max = std::max(max, e.max);
  }
};

}  // namespace

uint32_t BudgetTokens(double budget, uint32_t position) {
  return std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(budget * position)));
}

SessionOptions SessionFor(const workload::KvDataSet& data, const PqConfig& pq, uint32_t sinks,
                          uint32_t recent, uint32_t kmeans_iterations) {
  SessionOptions session;
  session.shape = {static_cast<uint32_t>(data.layers.size()), data.num_kv_heads,
                   data.num_query_heads, data.head_dim, DType::kFp16};
  session.index.sink_tokens = sinks;
  session.index.recent_window = recent;
  if (pq.server_default) return session;  // the rest as the server chooses
  session.index.subspaces = pq.subspaces;
  session.index.bits = pq.bits;
  session.index.kmeans_iterations = kmeans_iterations;
  session.index.rope_pairs = pq.rope_pairs;
  return session;
}

std::string PqConfig::Name() const {
  if (server_default) return "default";
  return absl::StrCat(subspaces, "x", bits, rope_pairs ? "+pairs" : "",
                      rerank > 1 ? absl::StrCat("+rerank", rerank) : "");
}

absl::StatusOr<PqConfig> ParsePqConfig(absl::string_view text) {
  PqConfig config;
  if (text == "default") {
    config.server_default = true;
    config.rerank = 0;
    return config;
  }
  std::vector<absl::string_view> parts = absl::StrSplit(text, '+');
  std::vector<absl::string_view> shape = absl::StrSplit(parts[0], 'x');
  if (shape.size() != 2 || !absl::SimpleAtoi(shape[0], &config.subspaces) ||
      !absl::SimpleAtoi(shape[1], &config.bits)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PQ setting '", text, "' is not MxB[+pairs][+rerankR] or default, e.g. 4x8+pairs"));
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    absl::string_view rerank = parts[i];
    if (parts[i] == "pairs") {
      config.rope_pairs = true;
    } else if (absl::ConsumePrefix(&rerank, "rerank") && absl::SimpleAtoi(rerank, &config.rerank)) {
      continue;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("PQ setting '", text, "': unknown option '", parts[i], "'"));
    }
  }
  return config;
}

absl::StatusOr<HarnessReport> RunQualityHarness(const KvDataSet& data, Client* client,
                                                const HarnessOptions& options) {
  RETURN_IF_ERROR(CheckFits(data, options));
  auto wants = [&](const std::string& method) {
    return std::find(options.methods.begin(), options.methods.end(), method) !=
           options.methods.end();
  };
  for (const std::string& m : options.methods) {
    if (m != "pqkv" && m != "oracle" && m != "streaming" && m != "quest" && m != "random") {
      return absl::InvalidArgumentError(absl::StrCat("unknown method '", m, "'"));
    }
  }
  HarnessReport report;
  report.k_first = BudgetTokens(options.budget, data.query_positions.front());
  report.k_last = BudgetTokens(options.budget, data.query_positions.back());

  // Method slots: each pqkv setting, then the baselines asked for.
  struct Slot {
    std::string method, pq;
    double retrieve_median_us = 0;
  };
  std::vector<Slot> slots;
  std::vector<RunPicks> picks;
  if (wants("pqkv")) {
    if (client == nullptr) return absl::InvalidArgumentError("pqkv needs a server");
    for (const PqConfig& pq : options.pq) {
      picks.emplace_back();
      std::vector<double> retrieve_us;
      RETURN_IF_ERROR(RunPqkv(data, *client, options, pq, &picks.back(), &retrieve_us));
      std::nth_element(retrieve_us.begin(), retrieve_us.begin() + retrieve_us.size() / 2,
                       retrieve_us.end());
      slots.push_back({"pqkv", pq.Name(), retrieve_us[retrieve_us.size() / 2]});
    }
  }
  for (const char* m : {"oracle", "streaming", "quest", "random"}) {
    if (wants(m)) slots.push_back({m, ""});
  }

  const uint32_t H = data.num_kv_heads, d = data.head_dim;
  const uint32_t group = data.num_query_heads / H;
  // [slot][layer * H + kv head]
  std::vector<std::vector<Accumulator>> per_head(slots.size(),
                                                 std::vector<Accumulator>(data.layers.size() * H));
  std::vector<std::vector<ScoreError>> score_error(slots.size(),
                                                   std::vector<ScoreError>(data.layers.size() * H));
  std::vector<workload::HeadType> types(data.layers.size() * H);
  for (size_t l = 0; l < data.layers.size(); ++l) {
    const KvLayer& layer = data.layers[l];
    report.head_types_measured = layer.head_types.empty();
    // One thread per kv head, at most one per core.
    auto evaluate_head = [&](uint32_t h) {
      types[l * H + h] = layer.head_types.empty()
                             ? workload::ClassifyHead(workload::MeasureHeadAttention(data, l, h))
                             : layer.head_types[h];
      const size_t rows = static_cast<size_t>(data.num_tokens) * d;
      std::vector<float> keys(rows), values(rows);
      kernels::ToFloat(kernels::ElementType::kFp16, layer.keys.data() + h * rows, rows,
                       keys.data());
      kernels::ToFloat(kernels::ElementType::kFp16, layer.values.data() + h * rows, rows,
                       values.data());
      for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
        const uint32_t p = data.query_positions[qi];
        const float* queries =
            layer.queries.data() + (qi * data.num_query_heads + static_cast<size_t>(h) * group) * d;
        const uint32_t attended = options.include_query_token ? p + 1 : p;
        const HeadAttention attention =
            ComputeHeadAttention(keys.data(), values.data(), attended, queries, group, d);
        const uint32_t begin = options.sinks, end = p - options.recent,
                       k = BudgetTokens(options.budget, p);
        const std::vector<uint32_t> oracle = OracleSelection(attention.gqa_score, begin, end, k);
        size_t pqkv_run = 0;
        for (size_t s = 0; s < slots.size(); ++s) {
          std::vector<uint32_t> selected;
          const std::string& m = slots[s].method;
          if (m == "pqkv") {
            const HeadPick& pick = picks[pqkv_run++][l][qi][h];
            selected = pick.positions;
            // The server held [0, p) when it scored (the query's own token joins after),
            // so its scores compare with exact softmax over [0, p): with the query's token
            // in the attention, each query head's probabilities over [0, p] divided by
            // 1 - p_g[p]; without it, the probabilities as they are.
            ScoreError& error = score_error[s][l * H + h];
            for (size_t i = 0; i < pick.scores.size(); ++i) {
              double exact = 0;
              for (uint32_t g = 0; g < group; ++g) {
                const double own = options.include_query_token ? attention.probs[g][p] : 0.0;
                exact += attention.probs[g][pick.positions[i]] / (1.0 - own);
              }
              const double e = std::abs(pick.scores[i] / exact - 1);
              error.sum += e;
              error.max = std::max(error.max, e);
              ++error.count;
            }
          } else if (m == "oracle") {
            selected = oracle;
          } else if (m == "streaming") {
            selected = StreamingSelection(begin, end, k);
          } else if (m == "quest") {
            selected = QuestSelection(keys.data(), queries, group, d, begin, end, k);
          } else {
            selected =
                RandomSelection(begin, end, k, options.seed * 1000003 + l * 7919 + h * 31 + qi);
          }
          per_head[s][l * H + h].Add(
              MeasureSelection(attention, values.data(), d, options.sinks, end, selected, oracle));
        }
      }
    };
    const uint32_t threads = std::max(1u, std::min(H, std::thread::hardware_concurrency()));
    for (uint32_t first = 0; first < H; first += threads) {
      std::vector<std::thread> workers;
      for (uint32_t h = first; h < std::min(H, first + threads); ++h) {
        workers.emplace_back(evaluate_head, h);
      }
      for (std::thread& t : workers) t.join();
    }
    if (options.progress) {
      options.progress(absl::StrCat("evaluated layer ", l + 1, "/", data.layers.size()));
    }
  }

  for (size_t s = 0; s < slots.size(); ++s) {
    std::map<std::string, Accumulator> by_type;
    std::map<std::string, ScoreError> error_by_type;
    Accumulator all;
    ScoreError all_error;
    for (size_t i = 0; i < types.size(); ++i) {
      const SelectionQuality head_mean = per_head[s][i].Mean();
      by_type[workload::HeadTypeName(types[i])].Add(head_mean);
      error_by_type[workload::HeadTypeName(types[i])].Add(score_error[s][i]);
      all.Add(head_mean);
      all_error.Add(score_error[s][i]);
    }
    const bool scored = slots[s].method == "pqkv";
    auto row = [&](const char* type, const Accumulator& a, const ScoreError& e, double us) {
      QualityRow r{slots[s].method, slots[s].pq, type, a.count, a.Mean(), us};
      if (scored && e.count > 0) {
        r.score_error_mean = e.sum / e.count;
        r.score_error_max = e.max;
      }
      return r;
    };
    report.rows.push_back(row("all", all, all_error, slots[s].retrieve_median_us));
    for (const char* type : {"streaming", "retrieval", "diffuse"}) {
      auto it = by_type.find(type);
      if (it == by_type.end()) continue;
      report.rows.push_back(row(type, it->second, error_by_type[type], 0));
    }
  }
  return report;
}

}  // namespace pqkv::quality

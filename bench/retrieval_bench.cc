// retrieval_bench: one layer's retrieval (all kv heads) on generated keys, timed for
// every method on the same data in the same run.
//
//   bazel run -c opt //bench:retrieval_bench -- --tokens=131072 --kv-heads=8 \
//       --query-heads=32 --head-dim=128 --subspaces=2 --bits=6 --k=4096 --repeats=20
//
// Methods:
//   pqkv           the server's retrieval (LayerStore::Retrieve, fast kernels), kv heads
//                  split over all cores
//   pqkv-1core     the same on the calling thread only
//   pqkv-rerank    pqkv with exact re-ranking (RetrieveQuery.rerank = --rerank): the scan
//                  picks rerank x k candidates, RerankExact keeps the best k
//   plain          the foundation's plain kernels (scalar ADC, double exp, nth_element)
//   faiss-indexpq  FAISS IndexPQ with the same codebooks, METRIC_INNER_PRODUCT, search
//                  with the same k for every query head; a kv head's selection merges
//                  its query heads' lists by rank
//   exact          fp32 keys, BLAS (sgemm) logits, softmax-sum, radix top-k; kv heads
//                  split over all cores
// Prints median and p99 microseconds, the ratio to pqkv, recall@k against the exact
// top-k (GQA softmax-sum of exact logits), the index build rate, and the floor: the
// code bytes the pqkv scan reads divided by a memory bandwidth measured here. For the
// pqkv methods also the scores' error against that exact score (softmax over all tokens
// of the fp32 keys): the mean and the largest |returned / exact - 1| over every returned
// position.
// --json prints one JSON object per method instead of the table; the LayerStore methods
// (pqkv, pqkv-1core, pqkv-rerank) add stage_us {scan, select, rerank}: each stage's time
// summed over kv heads (CPU microseconds, heads run in parallel), median over the runs.
//
// Build mode (--build): times one layer's index build (every kv head's codebook trained and
// every key encoded) instead of retrievals, for each method on the same keys in the same run:
//   pqkv           PqCodebook::Train + Encode per kv head (what LayerStore::BuildIndex runs:
//                  fp16 keys to fp32, our k-means, our encoder), kv heads over all cores;
//                  --kmeans-keys-per-centroid, --kmeans-training-keys, --kmeans-stop,
//                  --kmeans-iterations and --build-threads are its levers
//   pqkv-layer     LayerStore::BuildIndex itself (server defaults, heads over the pool)
//   faiss-cpu      PyPI's faiss-cpu (AVX2/AVX-512 kernels), ProductQuantizer train +
//                  compute_codes per kv head, one thread, in a venv that
//                  bench/python/faiss_peer_setup.sh sets up (--faiss-python)
//   faiss-cpu-mt   the same with OpenMP over all cores (not by default: on a loaded
//                  machine its spinning threads took 55 s instead of 3.7 s)
//   faiss-cpu-same faiss-cpu doing pqkv's work: pqkv's training sample per centroid and
//                  as many iterations as pqkv's early stop ran (FAISS has no early stop)
//   faiss-debian   Debian's FAISS 1.7.3 (no AVX2), the same calls, one thread: pqkv's build
//                  before its own k-means
// FAISS runs with pqkv's old settings: --kmeans-iterations iterations, seed 1234, its default
// sample of 256 points per centroid. Prints build_ms (median wall time of --build-repeats
// builds), cpu_ms (median CPU time of the process over a build, all threads: the figure
// to compare on a loaded machine), ratio_vs_pqkv (of build_ms) and mass_recall: the attention mass
// (GQA softmax-sum of exact logits, the group's mean) that the worker's sinks and recent window
// plus the top --k by the index's ADC score capture, the mean over kv heads.
//
//   bench/python/faiss_peer_setup.sh
//   bazel run -c opt //bench:retrieval_bench -- --build --tokens 32768 --kv-heads 8 \
//       --head-dim 128 --subspaces 2 --bits 6 --json
#include <faiss/IndexPQ.h>
#include <faiss/impl/ProductQuantizer.h>
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "bench/bench_setup.h"
#include "bench/fma_peak.h"
#include "kernels/code_select.h"
#include "kernels/cpu_features.h"
#include "kernels/dtype_convert.h"
#include "kernels/fast_scan.h"
#include "kernels/gqa_scoring.h"
#include "kernels/pq_code_store.h"
#include "kernels/pq_scan.h"
#include "kernels/radix_select.h"
#include "kernels/vector_exp.h"
#include "server/runtime/parallel_for.h"
#include "server/runtime/thread_pool.h"
#include "server/store/layer_store.h"
#include "workload/planted_kv.h"

extern "C" {
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
void openblas_set_num_threads(int threads);
char* openblas_get_config(void);
}

ABSL_FLAG(uint32_t, tokens, 131072, "Tokens in the layer.");
ABSL_FLAG(uint32_t, kv_heads, 8, "KV heads.");
ABSL_FLAG(uint32_t, query_heads, 32, "Query heads (GQA).");
ABSL_FLAG(uint32_t, head_dim, 128, "Head dimension.");
ABSL_FLAG(uint32_t, subspaces, 2, "PQ sub-spaces M.");
ABSL_FLAG(uint32_t, bits, 6, "Bits per sub-space code.");
ABSL_FLAG(uint32_t, k, 4096, "Tokens selected per kv head.");
ABSL_FLAG(uint32_t, repeats, 20, "Timed runs per method.");
ABSL_FLAG(uint32_t, kmeans_iterations, 10, "k-means iterations for the index.");
ABSL_FLAG(bool, json, false, "One JSON object per method instead of the table.");
ABSL_FLAG(uint32_t, rerank, 4, "pqkv-rerank: candidates scanned per selected token.");
ABSL_FLAG(bool, cold, false,
          "pqkv methods: evict the caches before each timed retrieval (untimed), so rows and "
          "codes come from memory as in a decode step over many layers.");
ABSL_FLAG(bool, build, false, "Time index builds instead of retrievals (see the comment).");
ABSL_FLAG(uint32_t, build_repeats, 3, "Build mode: timed builds per method.");
ABSL_FLAG(std::string, build_methods, "pqkv,pqkv-layer,faiss-cpu,faiss-cpu-same,faiss-debian",
          "Build mode: methods to run (pqkv always runs).");
ABSL_FLAG(std::string, faiss_python, "",
          "Build mode: the faiss-cpu venv's python (bench/python/faiss_peer_setup.sh prints "
          "it); empty: $HOME/.cache/pqkv/faiss-peer-venv/bin/python. Missing: no faiss-cpu rows.");
ABSL_FLAG(uint64_t, kmeans_keys_per_centroid, pqkv::server::PqTrainOptions::kDefaultKeysPerCentroid,
          "Build mode, pqkv: k-means training keys per centroid of a sub-space; 0: no bound.");
ABSL_FLAG(uint64_t, kmeans_training_keys, pqkv::server::PqTrainOptions::kDefaultMaxTrainingKeys,
          "Build mode, pqkv: keys k-means trains each sub-space on, at most; 0: no cap.");
ABSL_FLAG(double, kmeans_stop, pqkv::server::PqTrainOptions::kDefaultStopFraction,
          "Build mode, pqkv: stop once an iteration changes at most this fraction of assignments.");
ABSL_FLAG(int32_t, build_threads, 0, "Build mode, pqkv: threads over kv heads; 0: all cores.");
ABSL_FLAG(std::string, methods, "pqkv,pqkv-1core,pqkv-rerank,plain,faiss-indexpq,exact",
          "Comma-separated methods to run (pqkv always runs: it is the baseline).");

namespace pqkv::server {
namespace {

using bench::Commit;
using bench::CpuModel;
using bench::EvictCaches;
using bench::Percentile;
using bench::Time;

constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;

struct Timing {
  std::string method;
  double median_us = 0, p99_us = 0, recall = 0;
  // |returned score / exact score - 1| over every returned position: mean and largest;
  // -1 where the method returns no scores.
  double score_error_mean = -1, score_error_max = -1;
  // LayerStore methods: medians over the runs of each stage's time summed over kv heads
  // (CPU microseconds: the heads run in parallel): PQ scan, top-k select, exact re-rank.
  bool has_stages = false;
  double scan_us = 0, select_us = 0, rerank_us = 0;
};

// Read bandwidth of this machine, all cores: sums a 1 GiB buffer, best of 3, bytes/s.
double MeasureReadBandwidth(int threads) {
  const size_t words = (size_t{1} << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buffer(words);
  for (size_t i = 0; i < words; ++i) buffer[i] = i;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<uint64_t> sums(threads);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t begin = words * t / threads, end = words * (t + 1) / threads;
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = begin; i + 4 <= end; i += 4) {
          a += buffer[i];
          b += buffer[i + 1];
          c += buffer[i + 2];
          d += buffer[i + 3];
        }
        sums[t] = a + b + c + d;
      });
    }
    for (auto& th : pool) th.join();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (std::accumulate(sums.begin(), sums.end(), uint64_t{0}) == 42) std::puts("");  // keep sums
    best = std::max(best, words * sizeof(uint64_t) / s);
  }
  return best;
}

double Recall(const std::vector<std::vector<uint32_t>>& got,
              const std::vector<std::vector<uint32_t>>& exact) {
  double sum = 0;
  for (size_t h = 0; h < exact.size(); ++h) sum += workload::Recall(got[h], exact[h]);
  return sum / exact.size();
}

std::vector<std::vector<uint32_t>> Positions(const LayerSelection& selection) {
  std::vector<std::vector<uint32_t>> out;
  for (const HeadSelection& h : selection.heads) out.push_back(h.positions);
  return out;
}

// Mass recall of one layer's index: per kv head, the exact GQA mass (divided by the group
// size) of the sinks, the recent window and the top k by the index's ADC score.
double MassRecall(const workload::LayerData& data, uint32_t n, uint32_t H, uint32_t G, uint32_t d,
                  uint32_t M, uint32_t bits, uint32_t k, uint32_t sinks, uint32_t recent,
                  const std::vector<std::vector<float>>& exact_scores,
                  const std::vector<const float*>& centroids,
                  const std::vector<const uint8_t*>& codes) {
  double sum = 0;
  std::vector<float> scores(n);
  for (uint32_t h = 0; h < H; ++h) {
    kernels::PqCodeStore store(M, bits, M == d);
    store.Append(codes[h], n);
    kernels::GqaScoringInput input;
    input.head_dim = d;
    input.centroids = centroids[h];
    input.codes = &store;
    input.group_queries = data.query.data() + size_t{h} * G * d;
    input.group_size = G;
    kernels::ScoreGqa(input, scores.data());
    std::vector<uint32_t> positions(k);
    kernels::SelectTopK(scores.data(), sinks, n - recent, k, positions.data());
    for (uint32_t t = 0; t < sinks; ++t) positions.push_back(t);
    for (uint32_t t = n - recent; t < n; ++t) positions.push_back(t);
    sum += workload::MassOf(exact_scores[h], positions) / G;
  }
  return sum / H;
}

struct BuildRow {
  std::string method;
  double build_ms = 0, cpu_ms = 0, mass_recall = 0;
  std::string note;
};

double ProcessCpuMs() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e3 +
         (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e3;
}

// Median wall and CPU milliseconds of `repeats` runs of fn.
std::pair<double, double> TimeBuild(uint32_t repeats, const std::function<void()>& fn) {
  std::vector<double> wall, cpu;
  for (uint32_t r = 0; r < repeats; ++r) {
    const double cpu_start = ProcessCpuMs();
    const auto start = std::chrono::steady_clock::now();
    fn();
    wall.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
    cpu.push_back(ProcessCpuMs() - cpu_start);
  }
  return {Percentile(wall, 0.5), Percentile(cpu, 0.5)};
}

int RunBuild() {
  const uint32_t n = absl::GetFlag(FLAGS_tokens), H = absl::GetFlag(FLAGS_kv_heads),
                 Q = absl::GetFlag(FLAGS_query_heads), d = absl::GetFlag(FLAGS_head_dim),
                 M = absl::GetFlag(FLAGS_subspaces), bits = absl::GetFlag(FLAGS_bits),
                 k = absl::GetFlag(FLAGS_k), repeats = absl::GetFlag(FLAGS_build_repeats),
                 iterations = absl::GetFlag(FLAGS_kmeans_iterations);
  const bool json = absl::GetFlag(FLAGS_json);
  const std::string methods = "," + absl::GetFlag(FLAGS_build_methods) + ",";
  const auto wanted = [&](const char* m) {
    return methods.find(absl::StrCat(",", m, ",")) != std::string::npos;
  };
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads =
      absl::GetFlag(FLAGS_build_threads) > 0 ? absl::GetFlag(FLAGS_build_threads) : cores;
  const uint32_t G = Q / H;
  const std::string pq = absl::StrCat(M, "x", bits);
  FILE* info = json ? stderr : stdout;
  std::fprintf(info, "Setup: commit %s; CPU %s, %d cores, SIMD %s; FAISS %d.%d.%d; %s\n",
               Commit().c_str(), CpuModel().c_str(), cores, kernels::SimdLevelName(),
               FAISS_VERSION_MAJOR, FAISS_VERSION_MINOR, FAISS_VERSION_PATCH,
               openblas_get_config());
  PqTrainOptions options;
  options.keys_per_centroid = absl::GetFlag(FLAGS_kmeans_keys_per_centroid);
  options.max_training_keys = absl::GetFlag(FLAGS_kmeans_training_keys);
  options.stop_fraction = absl::GetFlag(FLAGS_kmeans_stop);
  std::fprintf(info,
               "Build: %u tokens, %u kv heads, head dim %u, M=%u x %u bits, %u iterations at "
               "most; pqkv: %zu training keys per sub-space, stop at %g changed, %d threads; mass "
               "recall at k=%u; %u repeats\n",
               n, H, d, M, bits, iterations, options.TrainingKeys(size_t{1} << bits),
               options.stop_fraction, threads, k, repeats);

  workload::PlantedKvSpec spec{H, Q, d, n};
  spec.seed = 7;
  const workload::LayerData data = workload::GeneratePlantedLayer(spec, 0);
  const std::vector<uint16_t> key_bits = workload::ToHalf(data.keys),
                              value_bits = workload::ToHalf(data.values);
  // The keys every method trains on: the stored fp16 keys as fp32 (what BuildIndex reads).
  std::vector<float> keys(key_bits.size());
  kernels::ToFloat(kernels::ElementType::kFp16, key_bits.data(), keys.size(), keys.data());
  std::vector<std::vector<float>> exact_scores(H);
  for (uint32_t h = 0; h < H; ++h) {
    exact_scores[h] = workload::ExactGqaScores(data.keys.data() + size_t{h} * n * d, n,
                                               data.query.data() + size_t{h} * G * d, G, d);
  }
  const auto mass_recall = [&](const std::vector<const float*>& centroids,
                               const std::vector<const uint8_t*>& codes) {
    return MassRecall(data, n, H, G, d, M, bits, k, spec.sinks, spec.recent, exact_scores,
                      centroids, codes);
  };
  std::vector<BuildRow> rows;
  int iterations_run = 0;  // pqkv's, the most over kv heads (faiss-cpu-same runs as many)

  {  // pqkv
    ThreadPool pool("build", threads - 1);
    std::vector<std::unique_ptr<PqCodebook>> codebooks(H);
    std::vector<std::vector<uint8_t>> codes(H, std::vector<uint8_t>(size_t{n} * M));
    const auto [wall_ms, cpu_ms] = TimeBuild(repeats, [&] {
      ParallelFor(threads > 1 ? &pool : nullptr, H, [&](int h) {
        std::vector<float> head(size_t{n} * d);
        kernels::ToFloat(kernels::ElementType::kFp16, key_bits.data() + size_t(h) * n * d,
                         head.size(), head.data());
        codebooks[h] = std::make_unique<PqCodebook>(
            PqCodebook::Train(head.data(), n, d, M, bits, iterations, false, options).value());
        codebooks[h]->Encode(head.data(), n, codes[h].data());
        kernels::PqCodeStore store(M, bits, M == d);
        store.Append(codes[h].data(), n);
      });
    });
    std::vector<const float*> c;
    std::vector<const uint8_t*> p;
    for (uint32_t h = 0; h < H; ++h) {
      c.push_back(codebooks[h]->centroids().data());
      p.push_back(codes[h].data());
      iterations_run = std::max(iterations_run, codebooks[h]->iterations_run());
    }
    rows.push_back(
        {"pqkv", wall_ms, cpu_ms, mass_recall(c, p),
         absl::StrCat("our k-means, ", threads, " thread(s), iterations run ", iterations_run)});
  }

  if (wanted("pqkv-layer")) {  // the server's path, fresh layer each time
    SessionConfig config;
    config.shape = {1, H, Q, d, kernels::ElementType::kFp16};
    config.index.subspaces = M;
    config.index.bits = bits;
    config.index.kmeans_iterations = iterations;
    auto arena =
        PageArena::Create(size_t{2} * H * n * d * 2 + (size_t{64} << 20), 64 << 10).value();
    ThreadPool pool("build", cores - 1);
    const absl::string_view kb(reinterpret_cast<const char*>(key_bits.data()), key_bits.size() * 2);
    const absl::string_view vb(reinterpret_cast<const char*>(value_bits.data()),
                               value_bits.size() * 2);
    std::vector<double> wall, cpu;
    for (uint32_t r = 0; r < repeats; ++r) {
      LayerStore layer(0, config, arena.get());
      if (absl::Status s = layer.Append(0, n, kb, vb); !s.ok()) {
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        return 2;
      }
      layer.SealPrefill();
      const auto [wall_ms, cpu_ms] = TimeBuild(1, [&] { layer.BuildIndex(&pool); });
      wall.push_back(wall_ms);
      cpu.push_back(cpu_ms);
    }
    rows.push_back({"pqkv-layer", Percentile(wall, 0.5), Percentile(cpu, 0.5), 0,
                    absl::StrCat("LayerStore::BuildIndex, server defaults, ", cores,
                                 " thread(s); no mass recall")});
  }

  std::string python = absl::GetFlag(FLAGS_faiss_python);
  if (python.empty() && std::getenv("HOME") != nullptr) {
    python = absl::StrCat(std::getenv("HOME"), "/.cache/pqkv/faiss-peer-venv/bin/python");
  }
  const bool have_python = std::ifstream(python).good();
  if (!have_python && (wanted("faiss-cpu") || wanted("faiss-cpu-mt") || wanted("faiss-cpu-same"))) {
    std::fprintf(info, "no faiss-cpu rows: %s missing (run bench/python/faiss_peer_setup.sh)\n",
                 python.c_str());
  }
  for (const char* method : {"faiss-cpu", "faiss-cpu-mt", "faiss-cpu-same"}) {
    if (!have_python || !wanted(method)) continue;
    const std::string dir = absl::StrCat(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp",
                                         "/retrieval_bench_build_", getpid());
    std::system(absl::StrCat("mkdir -p ", dir).c_str());
    {
      std::ofstream out(dir + "/keys.f32", std::ios::binary);
      out.write(reinterpret_cast<const char*>(keys.data()), keys.size() * sizeof(float));
    }
    const int faiss_threads = std::string(method) == "faiss-cpu-mt" ? cores : 1;
    // faiss-cpu-same: pqkv's sample per centroid and the iterations pqkv's early stop ran.
    const bool same = std::string(method) == "faiss-cpu-same";
    const size_t ksub_keys = options.TrainingKeys(size_t{1} << bits);
    const size_t points_per_centroid =
        same && ksub_keys > 0 ? (ksub_keys + (size_t{1} << bits) - 1) >> bits : 256;
    const std::string command = absl::StrCat(
        python, " bench/python/faiss_peer_build.py --keys ", dir, "/keys.f32 --kv-heads ", H,
        " --tokens ", n, " --head-dim ", d, " --subspaces ", M, " --bits ", bits, " --iterations ",
        same ? iterations_run : static_cast<int>(iterations), " --max-points-per-centroid ",
        points_per_centroid, " --repeats ", repeats, " --threads ", faiss_threads, " --centroids ",
        dir, "/centroids.f32 --codes ", dir, "/codes.u8");
    FILE* pipe = popen(command.c_str(), "r");
    std::string output;
    char buffer[4096];
    while (pipe != nullptr && std::fgets(buffer, sizeof buffer, pipe) != nullptr) output += buffer;
    if (pipe == nullptr || pclose(pipe) != 0) {
      std::fprintf(stderr, "%s failed: %s\n", command.c_str(), output.c_str());
      return 2;
    }
    const auto field = [&](const char* name) {
      const std::string key = absl::StrCat("\"", name, "\": ");
      const size_t at = output.find(key);
      return at == std::string::npos ? 0.0 : std::atof(output.c_str() + at + key.size());
    };
    const size_t v = output.find("\"version\": \"");
    const std::string version =
        v == std::string::npos ? "?" : output.substr(v + 12, output.find('"', v + 12) - v - 12);
    const size_t ksub = size_t{1} << bits;
    std::vector<float> centroids(size_t{H} * M * ksub * (d / M));
    std::vector<uint8_t> codes(size_t{H} * n * M);
    std::ifstream(dir + "/centroids.f32", std::ios::binary)
        .read(reinterpret_cast<char*>(centroids.data()), centroids.size() * sizeof(float));
    std::ifstream(dir + "/codes.u8", std::ios::binary)
        .read(reinterpret_cast<char*>(codes.data()), codes.size());
    std::system(absl::StrCat("rm -rf ", dir).c_str());
    std::vector<const float*> c;
    std::vector<const uint8_t*> p;
    for (uint32_t h = 0; h < H; ++h) {
      c.push_back(centroids.data() + size_t{h} * M * ksub * (d / M));
      p.push_back(codes.data() + size_t{h} * n * M);
    }
    rows.push_back({method, field("build_ms"), field("cpu_ms"), mass_recall(c, p),
                    absl::StrCat("faiss-cpu ", version, ", ", faiss_threads, " thread(s), ",
                                 same ? iterations_run : static_cast<int>(iterations),
                                 " iterations, ", points_per_centroid, " points per centroid")});
  }

  if (wanted("faiss-debian")) {  // pqkv's build before its own k-means
    openblas_set_num_threads(1);
    omp_set_num_threads(1);
    std::vector<std::unique_ptr<faiss::ProductQuantizer>> pqs(H);
    std::vector<std::vector<uint8_t>> codes(H, std::vector<uint8_t>(size_t{n} * M));
    const auto [wall_ms, cpu_ms] = TimeBuild(repeats, [&] {
      for (uint32_t h = 0; h < H; ++h) {
        const float* head = keys.data() + size_t{h} * n * d;
        pqs[h] = std::make_unique<faiss::ProductQuantizer>(d, M, bits);
        pqs[h]->cp.niter = iterations;
        pqs[h]->cp.seed = 1234;
        pqs[h]->cp.min_points_per_centroid = 1;
        pqs[h]->verbose = false;
        pqs[h]->train(n, head);
        std::vector<uint8_t> packed(size_t{n} * pqs[h]->code_size);
        pqs[h]->compute_codes(head, packed.data(), n);
        for (uint32_t t = 0; t < n; ++t) {
          faiss::PQDecoderGeneric decoder(packed.data() + size_t{t} * pqs[h]->code_size, bits);
          for (uint32_t m = 0; m < M; ++m) codes[h][size_t{t} * M + m] = decoder.decode();
        }
      }
    });
    std::vector<const float*> c;
    std::vector<const uint8_t*> p;
    for (uint32_t h = 0; h < H; ++h) {
      c.push_back(pqs[h]->centroids.data());
      p.push_back(codes[h].data());
    }
    rows.push_back({"faiss-debian", wall_ms, cpu_ms, mass_recall(c, p),
                    absl::StrCat("Debian FAISS ", FAISS_VERSION_MAJOR, ".", FAISS_VERSION_MINOR,
                                 ".", FAISS_VERSION_PATCH, ", 1 thread")});
  }

  const double pqkv_ms = rows[0].build_ms;
  for (const BuildRow& row : rows) {
    if (json) {
      std::printf(
          "{\"method\": \"%s\", \"tokens\": %u, \"kv_heads\": %u, \"head_dim\": %u, \"pq\": "
          "\"%s\", \"build_ms\": %.1f, \"cpu_ms\": %.1f, \"ratio_vs_pqkv\": %.2f, "
          "\"mass_recall\": %.4f, \"note\": \"%s\"}\n",
          row.method.c_str(), n, H, d, pq.c_str(), row.build_ms, row.cpu_ms, row.build_ms / pqkv_ms,
          row.mass_recall, row.note.c_str());
    } else {
      std::printf("%-13s %s %9.1f ms wall %9.1f ms cpu %6.2fx  mass recall %.4f  (%s)\n",
                  row.method.c_str(), pq.c_str(), row.build_ms, row.cpu_ms, row.build_ms / pqkv_ms,
                  row.mass_recall, row.note.c_str());
    }
  }
  return 0;
}

int Run() {
  const uint32_t n = absl::GetFlag(FLAGS_tokens), H = absl::GetFlag(FLAGS_kv_heads),
                 Q = absl::GetFlag(FLAGS_query_heads), d = absl::GetFlag(FLAGS_head_dim),
                 M = absl::GetFlag(FLAGS_subspaces), bits = absl::GetFlag(FLAGS_bits),
                 k = absl::GetFlag(FLAGS_k), repeats = absl::GetFlag(FLAGS_repeats);
  const bool json = absl::GetFlag(FLAGS_json);
  const std::string methods = "," + absl::GetFlag(FLAGS_methods) + ",";
  const auto wanted = [&](const char* m) {
    return methods.find(absl::StrCat(",", m, ",")) != std::string::npos;
  };
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const uint32_t G = Q / H;
  FILE* info = json ? stderr : stdout;  // the table and the setup; JSON alone on stdout

  std::fprintf(info, "Setup: commit %s; CPU %s, %d cores, SIMD %s; FAISS %d.%d.%d; %s\n",
               Commit().c_str(), CpuModel().c_str(), cores, kernels::SimdLevelName(),
               FAISS_VERSION_MAJOR, FAISS_VERSION_MINOR, FAISS_VERSION_PATCH,
               openblas_get_config());
  std::fprintf(info,
               "Shape: %u tokens, %u kv heads, %u query heads, head dim %u, M=%u x %u bits, k=%u, "
               "%u repeats\n",
               n, H, Q, d, M, bits, k, repeats);

  // The layer, stored as the server stores it: fp16 pages, sinks 32, recent 64.
  SessionConfig config;
  config.shape = {1, H, Q, d, kernels::ElementType::kFp16};
  config.index.subspaces = M;
  config.index.bits = bits;
  config.index.kmeans_iterations = absl::GetFlag(FLAGS_kmeans_iterations);
  if (absl::Status s = ValidateSessionConfig(config, 64 << 10); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 2;
  }
  workload::PlantedKvSpec spec{H, Q, d, n};
  spec.seed = 7;
  const workload::LayerData data = workload::GeneratePlantedLayer(spec, 0);
  const std::vector<uint16_t> key_bits = workload::ToHalf(data.keys),
                              value_bits = workload::ToHalf(data.values);
  auto arena = PageArena::Create(size_t{3} * H * n * d * 2 + (size_t{64} << 20), 64 << 10).value();
  LayerStore layer(0, config, arena.get());
  const absl::string_view kb(reinterpret_cast<const char*>(key_bits.data()), key_bits.size() * 2);
  const absl::string_view vb(reinterpret_cast<const char*>(value_bits.data()),
                             value_bits.size() * 2);
  if (absl::Status s = layer.Append(0, n, kb, vb); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 2;
  }
  layer.SealPrefill();
  const absl::Time build_start = absl::Now();
  layer.BuildIndex();
  const double build_s = absl::ToDoubleSeconds(absl::Now() - build_start);
  const LayerStatus status = layer.Status();
  std::fprintf(
      info, "Index build: %.2f s for %u tokens x %u kv heads (%.0f tokens/s per layer), state %s\n",
      build_s, n, H, n / build_s, IndexStateName(status.index_state));

  const uint32_t cand_begin = spec.sinks, cand_end = n - spec.recent;
  const absl::Time far = absl::InfiniteFuture();
  ThreadPool pool("bench", cores - 1);

  // Exact top-k per kv head: the reference every recall is measured against.
  std::vector<std::vector<uint32_t>> exact_top(H);
  std::vector<std::vector<float>> exact_scores(H);
  for (uint32_t h = 0; h < H; ++h) {
    exact_scores[h] = workload::ExactGqaScores(data.keys.data() + size_t{h} * n * d, n,
                                               data.query.data() + size_t{h} * G * d, G, d);
    exact_top[h].resize(k);
    kernels::SelectTopK(exact_scores[h].data(), cand_begin, cand_end, k, exact_top[h].data());
  }

  std::vector<Timing> results;
  LayerSelection selection;
  const auto run_store = [&](const char* name, ThreadPool* p, bool plain, uint32_t rerank) {
    Timing t{name};
    std::vector<double> scan, select, reranks;
    const bool cold = absl::GetFlag(FLAGS_cold);
    const std::vector<double> us = Time(
        repeats,
        [&] {
          selection = layer.Retrieve(data.query, k, far, p, plain, rerank).value();
          double a = 0, b = 0, c = 0;
          for (const HeadSelection& head : selection.heads) {
            a += head.scan_us;
            b += head.select_us;
            c += head.rerank_us;
          }
          scan.push_back(a);
          select.push_back(b);
          reranks.push_back(c);
        },
        [&] {
          if (cold) EvictCaches();
        });
    t.has_stages = !plain;  // the plain kernels time no stages
    t.scan_us = Percentile(scan, 0.5);
    t.select_us = Percentile(select, 0.5);
    t.rerank_us = Percentile(reranks, 0.5);
    t.median_us = Percentile(us, 0.5);
    t.p99_us = Percentile(us, 0.99);
    t.recall = Recall(Positions(selection), exact_top);
    double sum = 0, max = 0;
    size_t count = 0;
    for (uint32_t h = 0; h < H; ++h) {
      const HeadSelection& head = selection.heads[h];
      for (size_t i = 0; i < head.positions.size(); ++i) {
        const double error =
            std::abs(static_cast<double>(head.scores[i]) / exact_scores[h][head.positions[i]] - 1);
        sum += error;
        max = std::max(max, error);
        ++count;
      }
    }
    t.score_error_mean = count > 0 ? sum / count : 0;
    t.score_error_max = max;
    results.push_back(t);
  };
  run_store("pqkv", &pool, false, 0);
  if (wanted("pqkv-1core")) run_store("pqkv-1core", nullptr, false, 0);
  if (wanted("pqkv-rerank")) run_store("pqkv-rerank", &pool, false, absl::GetFlag(FLAGS_rerank));
  // The re-rank's read floor on this machine: every cache line of as many key rows per kv
  // head as it reads (rerank x k candidates, the sinks and the window), at scattered
  // positions in position order (the exact top rerank x k stand in for the scan's
  // candidates), read and nothing else, on the same threads and with the same prefetch,
  // caches evicted as --cold does. What pqkv-rerank adds over pqkv compares with it. The
  // rows lie in memory taken as the server's arena takes it (huge pages where allowed).
  // Issue 17's floor adds the dot products' arithmetic (its "68 MFLOP" at 32K x 8 kv
  // heads): as many multiply-adds at this CPU's peak (bench/fma_peak.h), same threads.
  double rerank_floor_us = 0, rerank_flop_floor_us = 0;
  if (wanted("pqkv-rerank")) {
    const uint32_t candidates = std::min(cand_end - cand_begin, k * absl::GetFlag(FLAGS_rerank));
    const size_t row_bytes = size_t{d} * 2;
    const size_t key_bytes = key_bits.size() * sizeof(key_bits[0]);
    const std::unique_ptr<PageArena> floor_arena =
        PageArena::Create(key_bytes, (key_bytes + 4095) / 4096 * 4096).value();
    char* const floor_keys = floor_arena->PageData(floor_arena->Allocate(1).value()[0]);
    std::memcpy(floor_keys, key_bits.data(), key_bytes);
    std::vector<std::vector<const void*>> rows(H);
    for (uint32_t h = 0; h < H; ++h) {
      std::vector<uint32_t> top(candidates);
      kernels::SelectTopK(exact_scores[h].data(), cand_begin, cand_end, candidates, top.data(),
                          kernels::TopKOrder::kPosition);
      for (uint32_t t = 0; t < cand_begin; ++t) top.push_back(t);
      for (uint32_t t = cand_end; t < n; ++t) top.push_back(t);
      for (uint32_t t : top) {
        rows[h].push_back(floor_keys + (size_t{h} * n + t) * row_bytes);
      }
    }
    std::vector<uint64_t> sums(H);
    const bool cold = absl::GetFlag(FLAGS_cold);
    rerank_floor_us = Percentile(Time(
                                     repeats,
                                     [&] {
                                       ParallelFor(&pool, static_cast<int>(H), [&](int h) {
                                         sums[h] = bench::ReadRowLines(rows[h].data(),
                                                                       rows[h].size(), row_bytes);
                                       });
                                     },
                                     [&] {
                                       if (cold) EvictCaches();
                                     }),
                                 0.5);
    if (std::accumulate(sums.begin(), sums.end(), uint64_t{0}) == 42) std::puts("");  // keep sums
    std::vector<float> fma_results(H);
    rerank_flop_floor_us = Percentile(Time(repeats,
                                           [&] {
                                             ParallelFor(&pool, static_cast<int>(H), [&](int h) {
                                               fma_results[h] = bench::FmaPeakLoop(
                                                   rows[h].size() * (Q / H) * d);
                                             });
                                           }),
                                      0.5);
    if (std::accumulate(fma_results.begin(), fma_results.end(), 0.0f) == 42) std::puts("");
  }
  if (wanted("plain")) run_store("plain", nullptr, true, 0);

  if (wanted("faiss-indexpq")) {
    // IndexPQ per kv head with the server's own codebook: train once through LayerStore,
    // then copy the centroids (FAISS encodes by nearest centroid too, so codes match).
    std::vector<std::unique_ptr<faiss::IndexPQ>> indexes;
    for (uint32_t h = 0; h < H; ++h) {
      auto codebook = PqCodebook::Train(data.keys.data() + size_t{h} * n * d, n, d, M, bits,
                                        config.index.kmeans_iterations)
                          .value();
      auto index = std::make_unique<faiss::IndexPQ>(d, M, bits, faiss::METRIC_INNER_PRODUCT);
      index->pq.centroids = codebook.centroids();
      index->is_trained = true;
      index->add(n, data.keys.data() + size_t{h} * n * d);
      indexes.push_back(std::move(index));
    }
    std::vector<float> distances(size_t{G} * k);
    std::vector<faiss::Index::idx_t> labels(size_t{G} * k);
    std::vector<std::vector<uint32_t>> faiss_selection(H);
    Timing t{"faiss-indexpq"};
    const std::vector<double> us = Time(repeats, [&] {
      for (uint32_t h = 0; h < H; ++h) {
        indexes[h]->search(G, data.query.data() + size_t{h} * G * d, k, distances.data(),
                           labels.data());
        // Merge the group's lists by rank, skipping duplicates, to k positions.
        std::vector<uint32_t>& out = faiss_selection[h];
        out.clear();
        std::vector<bool> seen(n, false);
        for (uint32_t rank = 0; rank < k && out.size() < k; ++rank) {
          for (uint32_t g = 0; g < G && out.size() < k; ++g) {
            const auto label = labels[size_t{g} * k + rank];
            if (label >= 0 && !seen[label]) {
              seen[label] = true;
              out.push_back(static_cast<uint32_t>(label));
            }
          }
        }
      }
    });
    t.median_us = Percentile(us, 0.5);
    t.p99_us = Percentile(us, 0.99);
    t.recall = Recall(faiss_selection, exact_top);
    results.push_back(t);
  }

  if (wanted("exact")) {
    openblas_set_num_threads(1);  // kv heads are split over the cores instead
    std::vector<std::vector<float>> logits(H, std::vector<float>(size_t{n} * G));
    std::vector<std::vector<float>> scores(H, std::vector<float>(n));
    std::vector<std::vector<uint32_t>> top(H, std::vector<uint32_t>(k));
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    Timing t{"exact"};
    const std::vector<double> us = Time(repeats, [&] {
      ParallelFor(&pool, H, [&](int h) {
        // logits [n][G] = keys [n][d] x queries^T [d][G]
        cblas_sgemm(kCblasRowMajor, kCblasNoTrans, kCblasTrans, n, G, d, 1.0f,
                    data.keys.data() + size_t(h) * n * d, d, data.query.data() + size_t(h) * G * d,
                    d, 0.0f, logits[h].data(), G);
        std::fill(scores[h].begin(), scores[h].end(), 0.0f);
        std::vector<float> column(n);
        for (uint32_t g = 0; g < G; ++g) {
          for (uint32_t t2 = 0; t2 < n; ++t2) column[t2] = logits[h][size_t{t2} * G + g];
          const float max = kernels::MaxOf(column.data(), n);
          const double z = kernels::ExpAndSum(column.data(), n, scale, scale * max, column.data());
          const float inv = static_cast<float>(1.0 / z);
          for (uint32_t t2 = 0; t2 < n; ++t2) scores[h][t2] += column[t2] * inv;
        }
        kernels::SelectTopK(scores[h].data(), cand_begin, cand_end, k, top[h].data());
      });
    });
    t.median_us = Percentile(us, 0.5);
    t.p99_us = Percentile(us, 0.99);
    t.recall = Recall(top, exact_top);
    results.push_back(t);
  }

  // Stages of the pqkv path on one core, all kv heads, on the same codebooks (trained
  // again here, with the same seed): where the time goes.
  std::string stages;
  {
    std::vector<PqCodebook> codebooks;
    std::vector<kernels::PqCodeStore> stores;
    for (uint32_t h = 0; h < H; ++h) {
      const float* keys = data.keys.data() + size_t{h} * n * d;
      codebooks.push_back(
          PqCodebook::Train(keys, n, d, M, bits, config.index.kmeans_iterations).value());
      std::vector<uint8_t> codes(size_t{n} * M);
      codebooks.back().Encode(keys, n, codes.data());
      stores.emplace_back(M, bits, M == d);
      stores.back().Append(codes.data(), n);
    }
    std::vector<std::vector<float>> scores(H, std::vector<float>(n));
    std::vector<uint32_t> top(k);
    const std::vector<double> score_us = Time(repeats, [&] {
      for (uint32_t h = 0; h < H; ++h) {
        kernels::GqaScoringInput input;
        input.head_dim = d;
        input.centroids = codebooks[h].centroids().data();
        input.codes = &stores[h];
        input.group_queries = data.query.data() + size_t{h} * G * d;
        input.group_size = G;
        kernels::ScoreGqa(input, scores[h].data());
      }
    });
    const std::vector<double> select_us = Time(repeats, [&] {
      for (uint32_t h = 0; h < H; ++h)
        kernels::SelectTopK(scores[h].data(), cand_begin, cand_end, k, top.data());
    });
    stages = absl::StrFormat("score %.0f us, top-k %.0f us", Percentile(score_us, 0.5),
                             Percentile(select_us, 0.5));
    if (stores[0].has_joined()) {
      // What the server runs for joined codes: one score per distinct code, and the top-k
      // taken whole codes at a time (no pass over the tokens; kernels/code_select.h).
      std::vector<std::vector<float>> code_scores(H, std::vector<float>(stores[0].joined_size()));
      std::vector<uint32_t> best(k);
      const std::vector<double> by_code_score_us = Time(repeats, [&] {
        for (uint32_t h = 0; h < H; ++h) {
          kernels::GqaScoringInput input;
          input.head_dim = d;
          input.centroids = codebooks[h].centroids().data();
          input.codes = &stores[h];
          input.group_queries = data.query.data() + size_t{h} * G * d;
          input.group_size = G;
          kernels::ScoreGqaJoined(input, code_scores[h].data(), nullptr);
        }
      });
      const std::vector<double> by_code_select_us = Time(repeats, [&] {
        for (uint32_t h = 0; h < H; ++h) {
          kernels::CodeScores in;
          in.codes = &stores[h];
          in.code_scores = code_scores[h].data();
          in.num_tokens = n;
          kernels::SelectTopKByCode(in, cand_begin, cand_end, k, best.data());
        }
      });
      stages +=
          absl::StrFormat("; by code: score %.0f us, top-k %.0f us",
                          Percentile(by_code_score_us, 0.5), Percentile(by_code_select_us, 0.5));
    }
    if (stores[0].has_fast_scan()) {
      // The vpshufb scan alone, with quantised tables, for every query head.
      std::vector<uint8_t> tables(size_t{G} * M * 16);
      std::vector<float> table(size_t{M} * 16);
      std::vector<uint16_t> sums(size_t{G} * stores[0].num_blocks() * 32);
      const std::vector<double> scan_us = Time(repeats, [&] {
        for (uint32_t h = 0; h < H; ++h) {
          for (uint32_t g = 0; g < G; ++g) {
            kernels::ComputeInnerProductTable(codebooks[h].shape(),
                                              data.query.data() + (size_t{h} * G + g) * d,
                                              codebooks[h].centroids().data(), table.data());
            kernels::QuantizeTable(table.data(), M, tables.data() + size_t{g} * M * 16);
          }
          kernels::FastScanAccumulate(stores[h].fast_scan_blocks(), stores[h].num_blocks(), M,
                                      tables.data(), G, sums.data(), stores[h].num_blocks() * 32);
        }
      });
      stages += absl::StrFormat(", of which the 4-bit scan %.0f us", Percentile(scan_us, 0.5));
    }
  }

  // Floor: bytes of codes the pqkv scan reads for the layer / measured bandwidth.
  kernels::PqCodeStore probe(M, bits, M == d);
  const std::vector<uint8_t> one_code(M, 0);
  probe.Append(one_code.data(), 1);
  const kernels::ScanPath path = kernels::ChooseScanPath(&probe);
  double code_bytes_per_token = M;  // generic: one byte per sub-space
  if (probe.has_joined())
    code_bytes_per_token = 2;
  else if (probe.has_fast_scan() || probe.has_dim4())
    code_bytes_per_token = M / 2.0;
  const double code_bytes = code_bytes_per_token * n * H;
  const double bandwidth = MeasureReadBandwidth(cores);
  const double floor_us = code_bytes / bandwidth * 1e6;
  const double pqkv_us = results[0].median_us;

  if (json) {
    for (const Timing& t : results) {
      std::string extra;
      if (t.has_stages) {
        extra =
            absl::StrFormat(", \"stage_us\": {\"scan\": %.1f, \"select\": %.1f, \"rerank\": %.1f}",
                            t.scan_us, t.select_us, t.rerank_us);
      }
      if (t.method == "pqkv-rerank") {
        extra += absl::StrFormat(", \"rerank_floor_us\": %.1f, \"rerank_flop_floor_us\": %.1f",
                                 rerank_floor_us, rerank_flop_floor_us);
      }
      std::printf(
          "{\"method\": \"%s\", \"tokens\": %u, \"kv_heads\": %u, \"query_heads\": %u, "
          "\"head_dim\": %u, \"subspaces\": %u, \"bits\": %u, \"k\": %u, \"median_us\": %.1f, "
          "\"p99_us\": %.1f, \"ratio_vs_pqkv\": %.2f, \"recall_at_k\": %.4f, "
          "\"score_error_mean\": %.3g, \"score_error_max\": %.3g, \"scan_path\": \"%s\", "
          "\"floor_us\": %.1f, \"index_build_tokens_per_s\": %.0f%s}\n",
          t.method.c_str(), n, H, Q, d, M, bits, k, t.median_us, t.p99_us, t.median_us / pqkv_us,
          t.recall, t.score_error_mean, t.score_error_max, kernels::ScanPathName(path), floor_us,
          n / build_s, extra.c_str());
    }
    return 0;
  }
  std::printf("\n%-14s %12s %12s %14s %10s %12s %12s\n", "method", "median_us", "p99_us",
              "ratio_vs_pqkv", "recall@k", "score_err", "score_err_max");
  for (const Timing& t : results) {
    std::printf("%-14s %12.1f %12.1f %14.2f %10.4f", t.method.c_str(), t.median_us, t.p99_us,
                t.median_us / pqkv_us, t.recall);
    if (t.score_error_mean >= 0) {
      std::printf(" %12.3g %12.3g\n", t.score_error_mean, t.score_error_max);
    } else {
      std::printf(" %12s %12s\n", "-", "-");
    }
  }
  std::printf(
      "\nscan path %s; floor %.1f us (%.1f MiB of codes at %.1f GB/s measured read bandwidth); "
      "pqkv is %.2fx the floor\n",
      kernels::ScanPathName(path), floor_us, code_bytes / (1 << 20), bandwidth / 1e9,
      pqkv_us / floor_us);
  if (rerank_floor_us > 0) {
    std::printf(
        "re-rank read floor (its rows' cache lines read, nothing else): %.1f us; its dot "
        "products' multiply-adds at this CPU's peak (%d lanes): %.1f us\n",
        rerank_floor_us, bench::FmaPeakLanes(), rerank_flop_floor_us);
  }
  std::printf("stages on one core, all kv heads (medians): %s\n", stages.c_str());
  std::printf("stages in the server's path, CPU us summed over kv heads (medians):\n");
  for (const Timing& t : results) {
    if (!t.has_stages) continue;
    std::printf("  %-14s scan %.0f, select %.0f, rerank %.0f\n", t.method.c_str(), t.scan_us,
                t.select_us, t.rerank_us);
  }
  return 0;
}

}  // namespace
}  // namespace pqkv::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("retrieval_bench: time one layer's retrieval for every method");
  // The flags are documented with dashes (--kv-heads); absl spells them with underscores.
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> argv2;
  for (std::string& arg : args) {
    if (arg.rfind("--", 0) == 0) {
      const size_t eq = arg.find('=');
      std::string name = arg.substr(0, eq);
      arg = absl::StrReplaceAll(name, {{"-", "_"}}).replace(0, 2, "--") +
            (eq == std::string::npos ? "" : arg.substr(eq));
    }
    argv2.push_back(arg.data());
  }
  absl::ParseCommandLine(static_cast<int>(argv2.size()), argv2.data());
  return absl::GetFlag(FLAGS_build) ? pqkv::server::RunBuild() : pqkv::server::Run();
}

// pqkv-server: holds the K/V cache of long-context sessions and answers, per layer,
// which tokens a decode step should attend to. Runs with no flags: port 50051, CPU
// backend, in-memory store with half of the machine's memory as its budget.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "kernels/cpu_features.h"
#include "server/dataplane/ucx_data_plane.h"
#include "server/index/gpu_scorer.h"
#include "server/memory/byte_size.h"
#include "server/metrics/metrics.h"
#include "server/metrics/metrics_http_server.h"
#include "server/metrics/quality_sampler.h"
#include "server/rpc/pqkv_service.h"
#include "server/runtime/server_logger.h"
#include "server/runtime/thread_pool.h"
#include "server/security/network_allowlist.h"
#include "server/security/tls_credentials.h"
#include "server/security/token_authenticator.h"
#include "server/store/session_store.h"
#include "server/version.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50051, "Port to listen on; 0 picks a free one (see --port_file).");
ABSL_FLAG(std::string, port_file, "", "If set, the bound port is written to this file.");
ABSL_FLAG(int, threads, 0, "Compute threads for scoring and copies; 0: one per core.");
ABSL_FLAG(int, compute_spin_us, 200,
          "Microseconds an idle compute thread polls for work before it sleeps (waking a "
          "sleeping thread can take longer than a layer's row gather); 0: sleep at once.");
ABSL_FLAG(int, index_threads, 0,
          "Threads that train layer indexes in the background (a layer's kv heads in parallel, "
          "layers side by side); 0: one per core.");
ABSL_FLAG(int, index_nice, 10,
          "Niceness (0-19) of the index threads: a Retrieve that arrives while builds run gets "
          "the cores first; 0: the same priority as the request threads.");
ABSL_FLAG(double, quality_sample_rate, 0.01,
          "Share of Retrieve items whose selection is measured against exact attention on a "
          "background thread (pqkv_quality_* metrics, GetSession); 0 turns it off.");
ABSL_FLAG(bool, refresh_codebooks, true,
          "Retrain a layer's codebooks during decoding when its appended keys drift or it grows "
          "(--refresh_drift_ratio, --refresh_growth), in the background with an atomic swap.");
ABSL_FLAG(
    double, refresh_drift_ratio, 1.5,
    "Retrain once the appended tokens' mean squared quantization error reaches this many times "
    "the training keys'.");
ABSL_FLAG(double, refresh_growth, 1.0,
          "Retrain once a layer has grown by this many times the tokens its codebooks were "
          "trained on (1: at each doubling).");
ABSL_FLAG(uint32_t, refresh_min_tokens, 256,
          "Tokens appended since the last training before either trigger counts.");
ABSL_FLAG(uint32_t, refresh_exact_tail, 512,
          "With re-ranking, the latest this many appended candidates always join the exact "
          "re-rank (their codes may predate a refresh); 0: only the scan's picks.");
ABSL_FLAG(std::string, memory_budget, "",
          "Bytes of K/V the server may hold (e.g. 16GiB), sessions' metadata included; default "
          "half of physical memory.");
ABSL_FLAG(int, max_sessions, 4096,
          "Live sessions at most; CreateSession past it fails with RESOURCE_EXHAUSTED (close one "
          "first).");
ABSL_FLAG(std::string, page_size, "64KiB", "K/V arena page size (a multiple of 4KiB).");
ABSL_FLAG(bool, huge_pages, true,
          "Back the K/V arena with transparent huge pages where the kernel allows them "
          "(THP mode madvise or always): fewer TLB misses when a re-rank or a row fetch "
          "reads scattered rows. --nohuge_pages keeps 4KiB pages.");
ABSL_FLAG(std::string, max_inflight_gather_bytes, "1GiB",
          "Most K/V row bytes Retrieve holds gathered outside the arena at once, server-wide "
          "(rows in responses not yet written, staging of UCX puts); items past it fail with "
          "RESOURCE_EXHAUSTED before gathering.");
ABSL_FLAG(std::string, max_row_cache_bytes, "256MiB",
          "Most bytes Retrieve's row cache directories (cache_slots, delta transfer) take, "
          "server-wide; items past it fail with RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn or error.");
ABSL_FLAG(double, max_index_wait_seconds, 0,
          "Longest a Retrieve item waits for its layer's index to finish building; 0: never "
          "(items for a building layer are scored exactly at once).");
ABSL_FLAG(std::string, backend, "auto",
          "Compute backend: auto (CUDA when a device is present, else CPU), cpu or cuda.");
ABSL_FLAG(double, session_ttl_seconds, 3600,
          "Sessions unused for this long are closed and their memory freed; 0: never.");
ABSL_FLAG(int, metrics_port, 9464,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 turns it off.");
ABSL_FLAG(std::string, metrics_port_file, "", "If set, the bound metrics port is written here.");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "Bearer tokens, one name:token per line; when set, every call must carry one and "
          "a session belongs to the token that created it.");
ABSL_FLAG(bool, ucx, true,
          "Offer the UCX data plane (rows written into clients' registered buffers); when "
          "off or when UCX cannot start, rows travel in gRPC responses. UCX_* environment "
          "variables (UCX_TLS, UCX_NET_DEVICES, ...) pass through to UCX.");
ABSL_FLAG(int, ucx_workers, 1,
          "UCX workers of the data plane; streams are spread over them, and puts on different "
          "workers run in parallel (the same-host path needs none: it copies directly).");
ABSL_FLAG(std::string, ucx_allowed_networks, "",
          "Networks (comma-separated CIDRs, e.g. 10.0.0.0/16,fd00::/8) whose addresses a "
          "client's UCX worker address may name for TCP: the server dials no other host for a "
          "data plane (PERMISSION_DENIED). Empty: loopback and the subnets of this host's own "
          "interfaces.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "Server certificate chain (PEM); with --tls_key_file the gRPC port speaks TLS only.");
ABSL_FLAG(std::string, tls_key_file, "", "The certificate's private key (PEM).");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "CA certificates (PEM); set: mutual TLS, every client must present a certificate "
          "this CA signed.");
ABSL_FLAG(int, shutdown_grace_seconds, 10, "On SIGTERM/SIGINT, time in-flight calls get.");

namespace {

size_t DefaultMemoryBudget() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  return static_cast<size_t>(pages) * static_cast<size_t>(page_size) / 2;
}

// Writes `port` to `path` (if set) atomically: readers never see a partial file.
void WritePortFile(const std::string& path, int port) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << port << "\n";
  std::rename(tmp.c_str(), path.c_str());
}

int Fail(const absl::Status& status) {
  pqkv::server::ServerLogger().critical("{}", status.ToString());
  // No spdlog::shutdown(): objects still alive may log while they are destroyed; the
  // registry flushes the asynchronous sink at exit.
  pqkv::server::ServerLogger().flush();
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Blocks of 128 KiB or more (upload messages, gathered rows, index training sets) are
  // mapped for themselves and unmapped when freed. glibc's default raises this threshold
  // to the size of the largest such block freed (up to 32 MiB), after which they come from
  // the heaps of whatever threads served them, and stay resident there after the sessions
  // that needed them close (bench/load_bench, docs/benchmarks.md "Load").
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
  absl::SetProgramUsageMessage("pqkv-server: PQ-indexed KV cache retrieval service");
  absl::ParseCommandLine(argc, argv);
  // Signals are taken by sigwait below, not by whatever thread they land on: block them
  // before any thread (the logger's first) starts, as threads inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (absl::Status status = pqkv::server::InstallServerLogger(absl::GetFlag(FLAGS_log_level));
      !status.ok()) {
    std::fprintf(stderr, "pqkv-server: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  spdlog::logger& log = pqkv::server::ServerLogger();

  // The backend is chosen once, at start.
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "auto" && backend != "cpu" && backend != "cuda") {
    return Fail(absl::InvalidArgumentError("--backend must be auto, cpu or cuda, got " + backend));
  }
  std::unique_ptr<pqkv::server::GpuScorer> gpu;
  if (backend == "cuda" || (backend == "auto" && pqkv::server::GpuScorer::DeviceAvailable())) {
    absl::StatusOr<std::unique_ptr<pqkv::server::GpuScorer>> created =
        pqkv::server::GpuScorer::Create();
    if (!created.ok()) return Fail(created.status());
    gpu = *std::move(created);
  }

  pqkv::server::Metrics metrics;
  metrics.SetGpuScorer(gpu.get());
  pqkv::server::SessionStoreOptions store_options;
  store_options.on_index_built = [&metrics](absl::Duration d) { metrics.RecordIndexBuild(d); };
  store_options.gpu = gpu.get();
  store_options.session_ttl = absl::Seconds(absl::GetFlag(FLAGS_session_ttl_seconds));
  store_options.index_threads =
      absl::GetFlag(FLAGS_index_threads) > 0
          ? absl::GetFlag(FLAGS_index_threads)
          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  store_options.refresh.enabled = absl::GetFlag(FLAGS_refresh_codebooks);
  store_options.refresh.drift_ratio = absl::GetFlag(FLAGS_refresh_drift_ratio);
  store_options.refresh.growth = absl::GetFlag(FLAGS_refresh_growth);
  store_options.refresh.min_tokens = absl::GetFlag(FLAGS_refresh_min_tokens);
  store_options.refresh.exact_tail = absl::GetFlag(FLAGS_refresh_exact_tail);
  if (!(store_options.refresh.drift_ratio > 0) || !(store_options.refresh.growth > 0)) {
    return Fail(absl::InvalidArgumentError(
        "--refresh_drift_ratio and --refresh_growth must be positive (turn refreshes off with "
        "--norefresh_codebooks)"));
  }
  store_options.index_nice = absl::GetFlag(FLAGS_index_nice);
  if (store_options.index_nice < 0 || store_options.index_nice > 19) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--index_nice is ", store_options.index_nice, "; expected 0 to 19")));
  }
  if (absl::GetFlag(FLAGS_max_sessions) < 1) {
    return Fail(absl::InvalidArgumentError("--max_sessions must be at least 1"));
  }
  store_options.max_sessions = static_cast<size_t>(absl::GetFlag(FLAGS_max_sessions));
  if (absl::GetFlag(FLAGS_memory_budget).empty()) {
    store_options.memory_budget_bytes = DefaultMemoryBudget();
  } else {
    absl::StatusOr<size_t> budget = pqkv::server::ParseByteSize(absl::GetFlag(FLAGS_memory_budget));
    if (!budget.ok()) return Fail(budget.status());
    store_options.memory_budget_bytes = *budget;
  }
  absl::StatusOr<size_t> page_bytes = pqkv::server::ParseByteSize(absl::GetFlag(FLAGS_page_size));
  if (!page_bytes.ok()) return Fail(page_bytes.status());
  store_options.page_bytes = *page_bytes;
  store_options.huge_pages = absl::GetFlag(FLAGS_huge_pages);
  // The data plane outlives the compute pool, where streams' endpoints are closed.
  std::unique_ptr<pqkv::server::UcxDataPlane> data_plane;
  std::string data_plane_error = "turned off with --noucx";
  if (absl::GetFlag(FLAGS_ucx)) {
    pqkv::server::NetworkAllowlist allowed_networks =
        pqkv::server::NetworkAllowlist::LoopbackAndLocalSubnets();
    if (!absl::GetFlag(FLAGS_ucx_allowed_networks).empty()) {
      absl::StatusOr<pqkv::server::NetworkAllowlist> parsed =
          pqkv::server::NetworkAllowlist::Parse(absl::GetFlag(FLAGS_ucx_allowed_networks));
      if (!parsed.ok()) return Fail(parsed.status());
      allowed_networks = *std::move(parsed);
    }
    log.info("UCX data plane: clients' worker addresses may name TCP endpoints in {}",
             allowed_networks.ToString());
    absl::StatusOr<std::unique_ptr<pqkv::server::UcxDataPlane>> created =
        pqkv::server::UcxDataPlane::Create(absl::GetFlag(FLAGS_ucx_workers),
                                           std::move(allowed_networks));
    if (created.ok()) {
      data_plane = *std::move(created);
    } else {
      data_plane_error = std::string(created.status().message());
      log.warn("UCX data plane unavailable ({}); rows travel in gRPC responses", data_plane_error);
    }
  }
  // The compute pool outlives the store: index builds finishing during shutdown hand
  // parked retrievals to it.
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  pqkv::server::ThreadPool compute_pool(
      "pqkv-compute", threads,
      absl::Microseconds(std::max(0, absl::GetFlag(FLAGS_compute_spin_us))));
  absl::StatusOr<std::unique_ptr<pqkv::server::SessionStore>> store =
      pqkv::server::SessionStore::Create(store_options);
  if (!store.ok()) return Fail(store.status());
  pqkv::server::ServiceOptions service_options;
  service_options.max_index_wait = absl::Seconds(absl::GetFlag(FLAGS_max_index_wait_seconds));
  service_options.backend = gpu ? "cuda" : "cpu";
  service_options.data_plane = data_plane.get();
  service_options.data_plane_error = data_plane_error;
  absl::StatusOr<size_t> gather_bytes =
      pqkv::server::ParseByteSize(absl::GetFlag(FLAGS_max_inflight_gather_bytes));
  if (!gather_bytes.ok()) return Fail(gather_bytes.status());
  if (*gather_bytes == 0) {
    return Fail(absl::InvalidArgumentError("--max_inflight_gather_bytes must be above 0"));
  }
  service_options.max_inflight_gather_bytes = *gather_bytes;
  absl::StatusOr<size_t> row_cache_bytes =
      pqkv::server::ParseByteSize(absl::GetFlag(FLAGS_max_row_cache_bytes));
  if (!row_cache_bytes.ok()) return Fail(row_cache_bytes.status());
  service_options.max_row_cache_bytes = *row_cache_bytes;
  std::unique_ptr<pqkv::server::TokenAuthenticator> auth;
  if (!absl::GetFlag(FLAGS_auth_tokens_file).empty()) {
    absl::StatusOr<std::unique_ptr<pqkv::server::TokenAuthenticator>> loaded =
        pqkv::server::TokenAuthenticator::FromFile(absl::GetFlag(FLAGS_auth_tokens_file));
    if (!loaded.ok()) return Fail(loaded.status());
    auth = *std::move(loaded);
    service_options.auth = auth.get();
    log.info("bearer-token authentication on, {} tokens", auth->size());
  }
  const double quality_sample_rate = absl::GetFlag(FLAGS_quality_sample_rate);
  if (!(quality_sample_rate >= 0 && quality_sample_rate <= 1)) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--quality_sample_rate is ", quality_sample_rate, "; expected 0 to 1")));
  }
  // Declared before the service, so that it outlives every stream that samples into it.
  pqkv::server::QualitySampler quality_sampler(quality_sample_rate);
  if (quality_sample_rate > 0) {
    service_options.quality_sampler = &quality_sampler;
    metrics.AddSection([&quality_sampler](std::string* out) { quality_sampler.Render(out); });
  }
  pqkv::server::PqkvService service(store->get(), &compute_pool, &metrics, service_options);

  const std::string address =
      absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  int bound_port = 0;
  // grpc.health.v1 (for Kubernetes probes and load balancers) and server reflection
  // (grpcurl and friends).
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      pqkv::server::MakeServerCredentials({absl::GetFlag(FLAGS_tls_cert_file),
                                           absl::GetFlag(FLAGS_tls_key_file),
                                           absl::GetFlag(FLAGS_tls_client_ca_file)});
  if (!credentials.ok()) return Fail(credentials.status());
  if (auth != nullptr && !absl::GetFlag(FLAGS_tls_cert_file).empty()) {
    (*credentials)
        ->SetAuthMetadataProcessor(
            std::make_shared<pqkv::server::TokenMetadataProcessor>(auth.get()));
  }
  const char* transport = absl::GetFlag(FLAGS_tls_cert_file).empty()        ? "plaintext"
                          : absl::GetFlag(FLAGS_tls_client_ca_file).empty() ? "TLS"
                                                                            : "mutual TLS";
  builder.AddListeningPort(address, *credentials, &bound_port);
  builder.SetMaxReceiveMessageSize(pqkv::server::kMaxReceiveMessageBytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", address)));
  }
  std::unique_ptr<pqkv::server::MetricsHttpServer> metrics_http;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    absl::StatusOr<std::unique_ptr<pqkv::server::MetricsHttpServer>> started =
        pqkv::server::MetricsHttpServer::Start(
            absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port), &metrics, store->get());
    if (!started.ok()) return Fail(started.status());
    metrics_http = *std::move(started);
    WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), metrics_http->port());
    log.info("metrics at http://{}:{}/metrics", absl::GetFlag(FLAGS_host), metrics_http->port());
  }
  // Health says SERVING for the service before the port file appears: a probe that starts
  // on the file must not see NOT_FOUND for pqkv.v1.Pqkv (seen in CI).
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus(pqkv::v1::Pqkv::service_full_name(), true);
  // Last: a script waiting for this file may rely on everything above being up.
  WritePortFile(absl::GetFlag(FLAGS_port_file), bound_port);
  log.info(
      "pqkv-server {} listening on {}:{} ({}); backend {} (CPU kernels {}), {} compute threads, "
      "{} index threads, memory budget {} bytes in {}-byte pages, data plane {}",
      pqkv::server::kVersion, absl::GetFlag(FLAGS_host), bound_port, transport,
      service_options.backend, pqkv::kernels::SimdLevelName(), threads, store_options.index_threads,
      (*store)->Stats().bytes_capacity, store_options.page_bytes,
      data_plane ? "UCX + gRPC" : "gRPC");
  log.flush();

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  health->SetServingStatus(false);  // probes see NOT_SERVING while in-flight calls finish
  log.info("signal {}: shutting down, in-flight calls get {} s", signal_number,
           absl::GetFlag(FLAGS_shutdown_grace_seconds));
  // Idle Retrieve and AppendKv streams end now (UNAVAILABLE); the grace is for work in
  // flight.
  service.EndIdleStreams();
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  server->Wait();
  if (metrics_http) metrics_http->Stop();
  log.info("stopped");
  log.flush();  // the rest (destructors that log) is flushed by the registry at exit
  return 0;
}

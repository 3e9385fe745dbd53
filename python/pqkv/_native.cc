// pqkv._native: the C++ SDK (client/pqkv_client.h) as a Python extension. Private: the
// pure-Python package around it (python/pqkv/) validates arrays, owns the types and
// docstrings, and is the only caller.
//
// Conventions:
// - K/V buffers cross as (address, bytes) pairs. The Python layer takes them from
//   contiguous numpy arrays or CPU torch tensors of the session's dtype and keeps the
//   arrays alive for the call; this layer checks the byte counts against the session's
//   shape, so nothing is read or written past a buffer.
// - Arrays come back as bytearrays for the Python layer to view with numpy (see
//   ToByteArray).
// - Every call that waits on the network releases the GIL.
// - A failed absl::Status raises pqkv.errors.Error (the subclass of its code); per-item
//   Retrieve statuses come back as (code, message) for the Python layer to wrap.
// - The native stream keeps its client alive (a RetrievalStream must not outlive its
//   Client), and the receive buffer object keeps its stream alive, so a numpy view of
//   the buffer never points at freed memory.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/pqkv_client.h"
#include "server/version.h"

namespace py = pybind11;

namespace pqkv::python {
namespace {

// A failed status on its way to Python (see the translator in the module body).
class StatusError : public std::exception {
 public:
  explicit StatusError(absl::Status status)
      : status_(std::move(status)), what_(status_.ToString()) {}
  const absl::Status& status() const { return status_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  absl::Status status_;
  std::string what_;
};

void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw StatusError(status);
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  ThrowIfError(value.status());
  return *std::move(value);
}

DType DTypeFromName(const std::string& name) {
  if (name == "fp16") return DType::kFp16;
  if (name == "bf16") return DType::kBf16;
  if (name == "fp32") return DType::kFp32;
  throw StatusError(absl::InvalidArgumentError(
      absl::StrCat("dtype must be fp16, bf16 or fp32, not '", name, "'")));
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
      return "fp16";
    case DType::kBf16:
      return "bf16";
    case DType::kFp32:
      return "fp32";
  }
  return "unknown";
}

py::dict ShapeToDict(const ModelShape& shape) {
  py::dict out;
  out["num_layers"] = shape.num_layers;
  out["num_kv_heads"] = shape.num_kv_heads;
  out["num_query_heads"] = shape.num_query_heads;
  out["head_dim"] = shape.head_dim;
  out["dtype"] = DTypeName(shape.dtype);
  return out;
}

py::dict IndexToDict(const IndexOptions& index) {
  py::dict out;
  out["subspaces"] = index.subspaces;
  out["bits"] = index.bits;
  out["kmeans_iterations"] = index.kmeans_iterations;
  out["sink_tokens"] = index.sink_tokens;
  out["recent_window"] = index.recent_window;
  out["rope_pairs"] = index.rope_pairs;
  out["rerank"] = index.rerank;
  return out;
}

py::dict SessionInfoToDict(const SessionInfo& info) {
  py::dict out;
  out["session_id"] = info.session_id;
  out["shape"] = ShapeToDict(info.shape);
  out["index"] = IndexToDict(info.index);
  out["bytes_held"] = info.bytes_held;
  out["age_seconds"] = info.age_seconds;
  py::list layers;
  for (const LayerInfo& layer : info.layers) {
    py::dict entry;
    entry["layer"] = layer.layer;
    entry["num_tokens"] = layer.num_tokens;
    entry["index_state"] = IndexStateName(layer.index_state);
    entry["num_encoded"] = layer.num_encoded;
    entry["index_build_ms"] = layer.index_build_ms;
    entry["quality_samples"] = layer.quality_samples;
    entry["last_mass_recall"] = layer.last_mass_recall;
    entry["mean_mass_recall"] = layer.mean_mass_recall;
    entry["training_quantization_error"] = layer.training_quantization_error;
    entry["appended_quantization_error"] = layer.appended_quantization_error;
    entry["index_refreshes"] = layer.index_refreshes;
    layers.append(std::move(entry));
  }
  out["layers"] = std::move(layers);
  return out;
}

py::dict ServerStatsToDict(const ServerStats& stats) {
  py::dict out;
  out["endpoint"] = stats.endpoint;
  out["num_sessions"] = stats.num_sessions;
  out["bytes_held"] = stats.bytes_held;
  out["bytes_capacity"] = stats.bytes_capacity;
  out["page_bytes"] = stats.page_bytes;
  out["index_builds_pending"] = stats.index_builds_pending;
  out["index_builds_done"] = stats.index_builds_done;
  out["retrieve_items"] = stats.retrieve_items;
  out["backend"] = stats.backend;
  out["version"] = stats.version;
  return out;
}

// Arrays cross as bytearrays that the Python layer wraps with np.frombuffer (writable,
// no copy there): the numpy C API that pybind11 2.10 compiles against does not match
// numpy 2's, so this module never builds a numpy array itself.
template <typename T>
py::object ToByteArray(const std::vector<T>& values) {
  return py::reinterpret_steal<py::object>(
      PyByteArray_FromStringAndSize(reinterpret_cast<const char*>(values.data()),
                                    static_cast<py::ssize_t>(values.size() * sizeof(T))));
}

// The rows of every kv head, concatenated (positions or scores of a result); a ragged
// result is the two ends disagreeing.
template <typename T, typename Get>
py::object Concatenate(const std::vector<HeadSelection>& heads, Get get) {
  const size_t length = heads.empty() ? 0 : get(heads[0]).size();
  std::vector<T> out;
  out.reserve(heads.size() * length);
  for (const HeadSelection& head : heads) {
    const std::vector<T>& row = get(head);
    if (row.size() != length) {
      throw StatusError(absl::InternalError("kv heads of one result selected different counts"));
    }
    out.insert(out.end(), row.begin(), row.end());
  }
  return ToByteArray(out);
}

py::tuple ResultToTuple(const RetrieveResult& result) {
  py::object positions = py::none(), scores = py::none(), slots = py::none(), sent = py::none();
  if (result.status.ok()) {
    positions = Concatenate<uint32_t>(
        result.heads,
        [](const HeadSelection& h) -> const std::vector<uint32_t>& { return h.positions; });
    const bool with_scores = !result.heads.empty() && !result.heads[0].scores.empty();
    if (with_scores) {
      scores = Concatenate<float>(
          result.heads,
          [](const HeadSelection& h) -> const std::vector<float>& { return h.scores; });
    }
    const bool with_cache = !result.heads.empty() && !result.heads[0].slots.empty();
    if (with_cache) {
      slots = Concatenate<uint32_t>(
          result.heads,
          [](const HeadSelection& h) -> const std::vector<uint32_t>& { return h.slots; });
      py::list per_head;
      for (const HeadSelection& head : result.heads) per_head.append(ToByteArray(head.sent));
      sent = std::move(per_head);
    }
  }
  return py::make_tuple(
      static_cast<int>(result.status.code()), std::string(result.status.message()),
      result.session_id, result.heads.size(), result.num_tokens, result.num_encoded, positions,
      scores, slots, sent, result.kv_bytes, result.data_path, result.cache_saved_bytes,
      result.server_score_us, result.server_rows_us, result.server_select_us);
}

// One RetrievalStream and the client it came from (destroyed after it).
class NativeStream {
 public:
  NativeStream(std::shared_ptr<Client> client, std::unique_ptr<RetrievalStream> stream)
      : client_(std::move(client)), stream_(std::move(stream)) {}

  ~NativeStream() {
    py::gil_scoped_release release;  // closing waits for the server
    stream_.reset();
  }

  // items: (session_id, query: a contiguous float32 buffer, k, keys address, values
  // address, buffer bytes, cache_slots, rerank, with_scores). An address of 0 asks for
  // no rows.
  py::list Retrieve(uint32_t layer, const py::list& items) {
    // The query buffers stay held here while the GIL is released.
    std::vector<py::buffer_info> held;
    held.reserve(items.size());
    std::vector<RetrieveQuery> queries(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      const py::tuple item = items[i].cast<py::tuple>();
      held.push_back(item[1].cast<py::buffer>().request());
      const py::buffer_info& buffer = held.back();
      if (buffer.format != py::format_descriptor<float>::format() || buffer.ndim != 1 ||
          buffer.strides[0] != sizeof(float)) {
        throw StatusError(absl::InvalidArgumentError("a query must be contiguous float32"));
      }
      RetrieveQuery& query = queries[i];
      query.session_id = item[0].cast<std::string>();
      query.query = absl::MakeConstSpan(static_cast<const float*>(buffer.ptr),
                                        static_cast<size_t>(buffer.size));
      query.k = item[2].cast<uint32_t>();
      query.keys_out = reinterpret_cast<void*>(item[3].cast<uintptr_t>());
      query.values_out = reinterpret_cast<void*>(item[4].cast<uintptr_t>());
      query.buffer_bytes = item[5].cast<size_t>();
      query.cache_slots = item[6].cast<uint32_t>();
      query.rerank = item[7].cast<uint32_t>();
      query.with_scores = item[8].cast<bool>();
    }
    absl::StatusOr<std::vector<RetrieveResult>> results;
    {
      py::gil_scoped_release release;
      results = stream_->Retrieve(layer, queries);
    }
    py::list out;
    for (const RetrieveResult& result : ValueOrThrow(std::move(results))) {
      out.append(ResultToTuple(result));
    }
    return out;
  }

  void Close() {
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = stream_->Close();
    }
    ThrowIfError(status);
  }

  uintptr_t receive_buffer_address() const {
    return reinterpret_cast<uintptr_t>(stream_->receive_buffer());
  }
  size_t receive_buffer_bytes() const { return stream_->receive_buffer_bytes(); }
  const std::string& receive_buffer_error() const { return stream_->receive_buffer_error(); }

 private:
  std::shared_ptr<Client> client_;
  std::unique_ptr<RetrievalStream> stream_;
};

// The stream's receive buffer through the buffer protocol: numpy views of it hold this
// object, which holds the stream, so the memory outlives every view.
struct ReceiveBuffer {
  std::shared_ptr<NativeStream> stream;
};

class NativeClient {
 public:
  NativeClient(const std::string& target, const ClientOptions& options) {
    absl::StatusOr<std::unique_ptr<Client>> client;
    {
      py::gil_scoped_release release;
      client = Client::Connect(target, options);
    }
    client_ = std::shared_ptr<Client>(ValueOrThrow(std::move(client)).release(), [](Client* c) {
      py::gil_scoped_release release;  // the channel's shutdown waits on gRPC threads
      delete c;
    });
  }

  std::string CreateSession(const std::string& session_id, const py::dict& shape,
                            const py::dict& index) {
    SessionOptions options;
    options.session_id = session_id;
    options.shape.num_layers = shape["num_layers"].cast<uint32_t>();
    options.shape.num_kv_heads = shape["num_kv_heads"].cast<uint32_t>();
    options.shape.num_query_heads = shape["num_query_heads"].cast<uint32_t>();
    options.shape.head_dim = shape["head_dim"].cast<uint32_t>();
    options.shape.dtype = DTypeFromName(shape["dtype"].cast<std::string>());
    options.index.subspaces = index["subspaces"].cast<uint32_t>();
    options.index.bits = index["bits"].cast<uint32_t>();
    options.index.kmeans_iterations = index["kmeans_iterations"].cast<uint32_t>();
    options.index.sink_tokens = index["sink_tokens"].cast<std::optional<uint32_t>>();
    options.index.recent_window = index["recent_window"].cast<std::optional<uint32_t>>();
    options.index.rope_pairs = index["rope_pairs"].cast<std::optional<bool>>();
    options.index.rerank = index["rerank"].cast<std::optional<uint32_t>>();
    py::gil_scoped_release release;
    return ValueOrThrow(client_->CreateSession(options));
  }

  void CloseSession(const std::string& session_id) {
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client_->CloseSession(session_id);
    }
    ThrowIfError(status);
  }

  py::dict GetSession(const std::string& session_id) {
    absl::StatusOr<SessionInfo> info;
    {
      py::gil_scoped_release release;
      info = client_->GetSession(session_id);
    }
    return SessionInfoToDict(ValueOrThrow(std::move(info)));
  }

  py::list ListSessions() {
    absl::StatusOr<std::vector<SessionInfo>> sessions;
    {
      py::gil_scoped_release release;
      sessions = client_->ListSessions();
    }
    py::list out;
    for (const SessionInfo& info : ValueOrThrow(std::move(sessions))) {
      out.append(SessionInfoToDict(info));
    }
    return out;
  }

  py::dict ServerStatsTotal() {
    absl::StatusOr<ServerStats> stats;
    {
      py::gil_scoped_release release;
      stats = client_->GetServerStats();
    }
    return ServerStatsToDict(ValueOrThrow(std::move(stats)));
  }

  py::list EndpointStats() {
    absl::StatusOr<std::vector<ServerStats>> stats;
    {
      py::gil_scoped_release release;
      stats = client_->GetEndpointStats();
    }
    py::list out;
    for (const ServerStats& one : ValueOrThrow(std::move(stats)))
      out.append(ServerStatsToDict(one));
    return out;
  }

  std::string EndpointFor(const std::string& session_id) const {
    return client_->EndpointFor(session_id);
  }

  // keys/values: addresses of bytes_each bytes, [kv_head][token][head_dim] in the
  // session's dtype; the byte count must be that of num_tokens tokens.
  void UploadPrefill(const std::string& session_id, uint32_t layer, uint64_t token_begin,
                     uint32_t num_tokens, uintptr_t keys, uintptr_t values, size_t bytes_each,
                     size_t row_bytes_times_heads, bool end_of_prefill) {
    if (bytes_each != row_bytes_times_heads * num_tokens) {
      throw StatusError(absl::InvalidArgumentError(absl::StrCat(num_tokens, " tokens need ",
                                                                row_bytes_times_heads * num_tokens,
                                                                " bytes, got ", bytes_each)));
    }
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client_->UploadPrefill(session_id, layer, token_begin, num_tokens,
                                      reinterpret_cast<const void*>(keys),
                                      reinterpret_cast<const void*>(values), end_of_prefill);
    }
    ThrowIfError(status);
  }

  // keys/values: [layer][kv_head][head_dim] of one token, bytes_each bytes each.
  void AppendToken(const std::string& session_id, uint64_t position, uintptr_t keys,
                   uintptr_t values, size_t bytes_each, size_t expected_bytes) {
    if (bytes_each != expected_bytes) {
      throw StatusError(absl::InvalidArgumentError(absl::StrCat(
          "one token of every layer needs ", expected_bytes, " bytes, got ", bytes_each)));
    }
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client_->AppendToken(session_id, position, reinterpret_cast<const void*>(keys),
                                    reinterpret_cast<const void*>(values));
    }
    ThrowIfError(status);
  }

  // heads: (kv_head, positions) pairs; rows land head after head in the two buffers.
  size_t FetchKv(const std::string& session_id, uint32_t layer,
                 const std::vector<std::pair<uint32_t, std::vector<uint32_t>>>& heads,
                 uintptr_t keys_out, uintptr_t values_out, size_t buffer_bytes) {
    std::vector<FetchHead> fetch(heads.size());
    for (size_t h = 0; h < heads.size(); ++h) {
      fetch[h].kv_head = heads[h].first;
      fetch[h].positions = heads[h].second;
    }
    absl::StatusOr<size_t> written;
    {
      py::gil_scoped_release release;
      written = client_->FetchKv(session_id, layer, fetch, reinterpret_cast<void*>(keys_out),
                                 reinterpret_cast<void*>(values_out), buffer_bytes);
    }
    return ValueOrThrow(std::move(written));
  }

  std::shared_ptr<NativeStream> OpenStream(const std::string& data_path,
                                           size_t receive_buffer_bytes) {
    StreamOptions options;
    if (data_path == "auto") {
      options.data_path = DataPath::kAuto;
    } else if (data_path == "ucx") {
      options.data_path = DataPath::kUcx;
    } else if (data_path == "grpc") {
      options.data_path = DataPath::kGrpc;
    } else {
      throw StatusError(absl::InvalidArgumentError(
          absl::StrCat("data_path must be auto, ucx or grpc, not '", data_path, "'")));
    }
    options.receive_buffer_bytes = receive_buffer_bytes;
    absl::StatusOr<std::unique_ptr<RetrievalStream>> stream;
    {
      py::gil_scoped_release release;
      stream = client_->OpenRetrievalStream(options);
    }
    return std::make_shared<NativeStream>(client_, ValueOrThrow(std::move(stream)));
  }

 private:
  std::shared_ptr<Client> client_;
};

}  // namespace
}  // namespace pqkv::python

PYBIND11_MODULE(_native, m) {
  using namespace pqkv::python;
  m.doc() = "pqkv's C++ SDK; private, use the pqkv package.";
  m.attr("version") = pqkv::server::kVersion;

  py::register_exception_translator([](std::exception_ptr raised) {
    try {
      if (raised) std::rethrow_exception(raised);
    } catch (const StatusError& e) {
      py::object error = py::module_::import("pqkv.errors")
                             .attr("error_from_status")(static_cast<int>(e.status().code()),
                                                        std::string(e.status().message()));
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
    }
  });

  py::class_<NativeStream, std::shared_ptr<NativeStream>>(m, "Stream")
      .def("retrieve", &NativeStream::Retrieve, py::arg("layer"), py::arg("items"))
      .def("close", &NativeStream::Close)
      .def_property_readonly("receive_buffer_address", &NativeStream::receive_buffer_address)
      .def_property_readonly("receive_buffer_bytes", &NativeStream::receive_buffer_bytes)
      .def_property_readonly("receive_buffer_error", &NativeStream::receive_buffer_error);

  py::class_<ReceiveBuffer>(m, "ReceiveBuffer", py::buffer_protocol())
      .def(py::init([](std::shared_ptr<NativeStream> stream) {
        if (stream->receive_buffer_address() == 0) {
          throw StatusError(absl::FailedPreconditionError(
              absl::StrCat("the stream has no receive buffer: ", stream->receive_buffer_error())));
        }
        return ReceiveBuffer{std::move(stream)};
      }))
      .def_buffer([](ReceiveBuffer& buffer) {
        return py::buffer_info(reinterpret_cast<uint8_t*>(buffer.stream->receive_buffer_address()),
                               static_cast<py::ssize_t>(buffer.stream->receive_buffer_bytes()),
                               /*readonly=*/false);
      });

  py::class_<NativeClient>(m, "Client")
      .def(py::init([](const std::string& target, const std::string& token, bool tls,
                       const std::string& tls_root_certs, const std::string& tls_client_cert,
                       const std::string& tls_client_key, const std::string& tls_server_name,
                       bool resolve_all_addresses, double call_timeout_s, double connect_timeout_s,
                       size_t upload_chunk_bytes) {
             pqkv::ClientOptions options;
             options.auth_token = token;
             options.tls = tls;
             options.tls_root_certs = tls_root_certs;
             options.tls_client_cert = tls_client_cert;
             options.tls_client_key = tls_client_key;
             options.tls_server_name = tls_server_name;
             options.resolve_all_addresses = resolve_all_addresses;
             options.call_timeout = absl::Seconds(call_timeout_s);
             options.connect_timeout = absl::Seconds(connect_timeout_s);
             if (upload_chunk_bytes > 0) options.upload_chunk_bytes = upload_chunk_bytes;
             return std::make_unique<NativeClient>(target, options);
           }),
           py::arg("target"), py::arg("token"), py::arg("tls"), py::arg("tls_root_certs"),
           py::arg("tls_client_cert"), py::arg("tls_client_key"), py::arg("tls_server_name"),
           py::arg("resolve_all_addresses"), py::arg("call_timeout_s"),
           py::arg("connect_timeout_s"), py::arg("upload_chunk_bytes"))
      .def("create_session", &NativeClient::CreateSession)
      .def("close_session", &NativeClient::CloseSession)
      .def("get_session", &NativeClient::GetSession)
      .def("list_sessions", &NativeClient::ListSessions)
      .def("server_stats", &NativeClient::ServerStatsTotal)
      .def("endpoint_stats", &NativeClient::EndpointStats)
      .def("endpoint_for", &NativeClient::EndpointFor)
      .def("upload_prefill", &NativeClient::UploadPrefill)
      .def("append_token", &NativeClient::AppendToken)
      .def("fetch_kv", &NativeClient::FetchKv)
      .def("open_stream", &NativeClient::OpenStream);
}

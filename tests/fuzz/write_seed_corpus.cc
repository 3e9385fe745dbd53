// Writes the seed corpus of every fuzz target (valid and near-valid messages) under the
// directory given, one folder per target:
//
//   bazel run //tests/fuzz:write_seed_corpus -- $PWD/tests/fuzz/corpus
//
// Seeds are named "seed-*" and replaced on each run, as are the reproducers of findings
// written here ("repro-*"); other files there are left alone. The messages name the sessions
// FuzzServer makes ("f32", "f16") and the one append_kv_fuzzer makes per input ("a").
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "pqkv/v1/pqkv.pb.h"
#include "tests/fuzz/fuzz_server.h"
#include "tests/fuzz/message_framing.h"

namespace v1 = pqkv::v1;
namespace fuzz = pqkv::fuzz;

namespace {

std::filesystem::path root;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::filesystem::path dir = root / target;
  std::filesystem::create_directories(dir);
  std::ofstream(dir / ("seed-" + name), std::ios::binary) << bytes;
}

std::string Floats(size_t n, float scale, float bad = 0) {
  std::string out(n * 4, '\0');
  for (size_t i = 0; i < n; ++i) {
    const float f = (i == 0 && bad != 0) ? bad : scale * static_cast<float>(i % 7) - 1.0f;
    std::memcpy(&out[i * 4], &f, 4);
  }
  return out;
}

v1::RetrieveItem Item(const std::string& session, uint32_t query_floats, uint32_t k) {
  v1::RetrieveItem item;
  item.set_session_id(session);
  for (uint32_t i = 0; i < query_floats; ++i) item.add_query(0.25f * static_cast<float>(i % 5));
  item.set_k(k);
  return item;
}

constexpr uint32_t kF32Query = fuzz::kF32QueryHeads * fuzz::kF32HeadDim;

void RetrieveSeeds() {
  const std::string t = "retrieve_request_fuzzer";
  v1::RetrieveRequest scores;
  scores.set_request_id(1);
  *scores.add_items() = Item("f32", kF32Query, 5);
  Write(t, "scores", fuzz::JoinMessages({scores.SerializeAsString()}));

  v1::RetrieveRequest rows = scores;
  rows.mutable_items(0)->set_with_kv(true);
  rows.mutable_items(0)->set_rerank(12);
  Write(t, "with-kv-rerank", fuzz::JoinMessages({rows.SerializeAsString()}));

  v1::RetrieveRequest cached = rows;
  cached.mutable_items(0)->set_cache_slots(8);
  cached.mutable_items(0)->set_omit_scores(true);
  v1::RetrieveRequest cached2 = cached;
  cached2.set_request_id(2);
  cached2.mutable_items(0)->set_k(7);
  Write(t, "row-cache-twice",
        fuzz::JoinMessages({cached.SerializeAsString(), cached2.SerializeAsString()}));

  v1::RetrieveRequest exact = scores;
  exact.set_layer(1);
  exact.mutable_items(0)->set_with_kv(true);
  Write(t, "open-layer", fuzz::JoinMessages({exact.SerializeAsString()}));

  v1::RetrieveRequest many;
  many.set_request_id(3);
  *many.add_items() = Item("f32", kF32Query, 3);
  *many.add_items() = Item("f16", 8, 4);
  many.mutable_items(1)->set_with_kv(true);
  *many.add_items() = Item("zz", 8, 1);
  *many.add_items() = Item("f32", 3, 1);  // a query of the wrong size
  *many.add_items() = Item("f32", kF32Query, 0);
  Write(t, "many-items", fuzz::JoinMessages({many.SerializeAsString()}));

  v1::RetrieveRequest landing = scores;
  landing.mutable_items(0)->set_with_kv(true);
  landing.mutable_items(0)->mutable_landing()->set_keys_offset(64);
  landing.mutable_items(0)->mutable_landing()->set_values_offset(4096);
  Write(t, "landing-without-plane", fuzz::JoinMessages({landing.SerializeAsString()}));

  v1::RetrieveRequest offer = scores;
  offer.mutable_open_data_plane()->set_worker_address(std::string("\x20\x01\x02\x03", 4));
  offer.mutable_open_data_plane()->set_buffer_address(0x10000);
  offer.mutable_open_data_plane()->set_buffer_bytes(1 << 20);
  offer.mutable_open_data_plane()->set_rkey(std::string(9, '\0'));
  offer.mutable_open_data_plane()->set_buffer_check(std::string(16, 'c'));
  Write(t, "data-plane-offer", fuzz::JoinMessages({offer.SerializeAsString()}));

  Write(t, "bad-message-then-valid",
        fuzz::JoinMessages({std::string("\xff\xff\xff\xff", 4), scores.SerializeAsString()}));
}

v1::AppendKvRequest Chunk(uint32_t layer, uint64_t begin, uint32_t tokens, bool seal) {
  v1::AppendKvRequest chunk;
  chunk.set_session_id("a");
  chunk.set_layer(layer);
  chunk.set_token_begin(begin);
  chunk.set_num_tokens(tokens);
  chunk.set_dtype(v1::DTYPE_FP32);
  chunk.set_keys(Floats(size_t{2} * tokens * 16, 0.5f));
  chunk.set_values(Floats(size_t{2} * tokens * 16, 0.25f));
  chunk.set_end_of_prefill(seal);
  return chunk;
}

void AppendSeeds() {
  const std::string t = "append_kv_fuzzer";
  Write(t, "one-chunk", fuzz::JoinMessages({Chunk(0, 0, 8, false).SerializeAsString()}));
  // A prefill that trains an index, then decode tokens encoded with it.
  Write(t, "prefill-then-decode",
        fuzz::JoinMessages({Chunk(0, 0, 64, true).SerializeAsString(),
                            Chunk(0, 64, 1, false).SerializeAsString(),
                            Chunk(0, 65, 2, false).SerializeAsString()}));
  Write(t, "two-layers",
        fuzz::JoinMessages(
            {Chunk(0, 0, 4, true).SerializeAsString(), Chunk(1, 0, 4, false).SerializeAsString()}));
  Write(t, "gap",
        fuzz::JoinMessages({Chunk(0, 0, 4, false).SerializeAsString(),
                            Chunk(0, 6, 4, false).SerializeAsString()}));
  v1::AppendKvRequest fp16 = Chunk(0, 0, 4, false);
  fp16.set_dtype(v1::DTYPE_FP16);
  Write(t, "wrong-dtype", fuzz::JoinMessages({fp16.SerializeAsString()}));
  v1::AppendKvRequest nan = Chunk(0, 0, 4, false);
  nan.set_values(Floats(2 * 4 * 16, 0.25f, std::nanf("")));
  Write(t, "nan-value", fuzz::JoinMessages({nan.SerializeAsString()}));
  v1::AppendKvRequest short_keys = Chunk(0, 0, 4, false);
  short_keys.mutable_keys()->resize(100);
  Write(t, "short-keys", fuzz::JoinMessages({short_keys.SerializeAsString()}));
  // Issue 15, defect 4: a message that does not parse between valid chunks.
  Write(t, "bad-message-between",
        fuzz::JoinMessages({Chunk(0, 0, 4, false).SerializeAsString(),
                            std::string("\xff\xff\xff\xff", 4),
                            Chunk(0, 4, 4, false).SerializeAsString()}));
  // The input that found the k-means overflow (PqCodebook::Train): a sealed prefill of
  // finite keys of 1e30 aborted the server in FAISS while its index was built.
  v1::AppendKvRequest huge = Chunk(0, 0, 64, true);
  huge.set_keys(std::string(size_t{2} * 64 * 16 * 4, '\0'));
  for (size_t i = 0; i < huge.keys().size(); i += 4) {
    const float f = 1e30f;
    std::memcpy(&(*huge.mutable_keys())[i], &f, 4);
  }
  std::ofstream(root / t / "repro-kmeans-overflow", std::ios::binary)
      << fuzz::JoinMessages({huge.SerializeAsString()});
  const std::string whole = Chunk(1, 0, 4, false).SerializeAsString();
  Write(t, "truncated", fuzz::JoinMessages({whole.substr(0, whole.size() / 2)}));
}

void FetchSeeds() {
  const std::string t = "fetch_kv_fuzzer";
  v1::FetchKvRequest f32;
  f32.set_session_id("f32");
  v1::HeadPositions* head = f32.add_heads();
  head->set_kv_head(0);
  for (uint32_t p : {0u, 1u, 2u, 95u}) head->add_positions(p);
  f32.add_heads()->set_kv_head(1);
  f32.mutable_heads(1)->add_positions(40);
  Write(t, "f32", f32.SerializeAsString());
  v1::FetchKvRequest f16;
  f16.set_session_id("f16");
  f16.add_heads()->add_positions(15);
  Write(t, "f16", f16.SerializeAsString());
  v1::FetchKvRequest past = f32;
  past.mutable_heads(0)->add_positions(fuzz::kF32Tokens);
  Write(t, "past-end", past.SerializeAsString());
  v1::FetchKvRequest bad_head = f32;
  bad_head.mutable_heads(1)->set_kv_head(5);
  Write(t, "bad-head", bad_head.SerializeAsString());
  v1::FetchKvRequest bad_layer = f32;
  bad_layer.set_layer(2);
  Write(t, "bad-layer", bad_layer.SerializeAsString());
}

void ProtoConvertSeeds() {
  const std::string t = "proto_convert_fuzzer";
  v1::CreateSessionRequest plain;
  plain.set_session_id("p");
  plain.mutable_shape()->set_num_layers(2);
  plain.mutable_shape()->set_num_kv_heads(2);
  plain.mutable_shape()->set_num_query_heads(8);
  plain.mutable_shape()->set_head_dim(128);
  plain.mutable_shape()->set_dtype(v1::DTYPE_FP16);
  Write(t, "defaults", plain.SerializeAsString());
  v1::CreateSessionRequest options = plain;
  options.mutable_shape()->set_dtype(v1::DTYPE_BF16);
  options.mutable_index()->set_subspaces(4);
  options.mutable_index()->set_bits(8);
  options.mutable_index()->set_kmeans_iterations(5);
  options.mutable_index()->set_sink_tokens(0);
  options.mutable_index()->set_recent_window(16);
  options.mutable_index()->set_rope_pairs(true);
  Write(t, "all-options", options.SerializeAsString());
  v1::CreateSessionRequest wide = plain;
  wide.mutable_shape()->set_num_layers(64);
  wide.mutable_shape()->set_num_kv_heads(64);
  wide.mutable_shape()->set_dtype(v1::DTYPE_FP32);
  Write(t, "wide", wide.SerializeAsString());
  v1::CreateSessionRequest no_dtype = plain;
  no_dtype.mutable_shape()->clear_dtype();
  Write(t, "no-dtype", no_dtype.SerializeAsString());
  v1::CreateSessionRequest odd = plain;
  odd.mutable_shape()->set_num_query_heads(3);
  odd.mutable_index()->set_subspaces(3);
  Write(t, "invalid-groups", odd.SerializeAsString());
}

std::string Rkey(const std::vector<std::string>& sections, size_t trailer) {
  uint64_t map = 0;
  std::string body;
  for (size_t i = 0; i < sections.size(); ++i) {
    map |= uint64_t{1} << (2 * i);
    body += static_cast<char>(sections[i].size());
    body += sections[i];
  }
  std::string key(reinterpret_cast<const char*>(&map), 8);
  key += '\0';  // host memory
  key += body;
  key += std::string(trailer, '\x01');
  return key;
}

void OfferSeeds() {
  const std::string t = "ucx_offer_fuzzer";
  std::string sysv(12, '\0');
  const uint32_t shmid = 123456;
  const uint64_t owner = 0x7f0000001000;
  std::memcpy(&sysv[0], &shmid, 4);
  std::memcpy(&sysv[4], &owner, 8);
  v1::DataPlaneOffer offer;
  offer.set_worker_address(std::string("\x20\x01\x02\x03\x04\x05", 6));
  offer.set_buffer_address(owner);
  offer.set_buffer_bytes(1 << 20);
  offer.set_buffer_check(std::string(16, 'c'));
  offer.set_rkey(Rkey({"tcp-key-bytes", sysv}, 4));
  Write(t, "tcp-and-sysv", offer.SerializeAsString());
  offer.set_rkey(Rkey({std::string(8, 'k')}, 0));
  Write(t, "one-section", offer.SerializeAsString());
  offer.set_rkey(Rkey({}, 7));
  Write(t, "trailer-only", offer.SerializeAsString());
  std::string corrupt = Rkey({"abc", "defg"}, 0);
  corrupt.resize(corrupt.size() - 2);
  offer.set_rkey(corrupt);
  offer.set_worker_address("\x11");
  Write(t, "truncated", offer.SerializeAsString());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  root = argv[1];
  for (const char* target : {"retrieve_request_fuzzer", "append_kv_fuzzer", "fetch_kv_fuzzer",
                             "proto_convert_fuzzer", "ucx_offer_fuzzer"}) {
    const std::filesystem::path dir = root / target;
    if (!std::filesystem::is_directory(dir)) continue;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.path().filename().string().rfind("seed-", 0) == 0) {
        std::filesystem::remove(entry.path());
      }
    }
  }
  RetrieveSeeds();
  AppendSeeds();
  FetchSeeds();
  ProtoConvertSeeds();
  OfferSeeds();
  std::printf("seed corpus written under %s\n", root.c_str());
  return 0;
}

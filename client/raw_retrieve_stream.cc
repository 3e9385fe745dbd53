#include "client/raw_retrieve_stream.h"

#include <grpcpp/impl/codegen/proto_utils.h>

namespace pqkv {
namespace {

constexpr char kRetrieveMethod[] = "/pqkv.v1.Pqkv/Retrieve";

void* Tag() { return reinterpret_cast<void*>(1); }

}  // namespace

RawRetrieveStream::RawRetrieveStream(const std::shared_ptr<grpc::Channel>& channel,
                                     grpc::ClientContext* context)
    : context_(context), stub_(channel), call_(stub_.PrepareCall(context, kRetrieveMethod, &cq_)) {
  call_->StartCall(Tag());
  started_ = Wait();
}

RawRetrieveStream::~RawRetrieveStream() {
  if (!finished_) {
    context_->TryCancel();  // unread responses must not hold Finish up
    Finish();
  }
  cq_.Shutdown();
  void* tag;
  bool ok;
  while (cq_.Next(&tag, &ok)) {
  }
}

bool RawRetrieveStream::Wait() {
  void* tag = nullptr;
  bool ok = false;
  return cq_.Next(&tag, &ok) && ok;
}

bool RawRetrieveStream::Write(const v1::RetrieveRequest& request) {
  if (!started_) return false;
  grpc::ByteBuffer bytes;
  bool own = false;
  if (!grpc::SerializationTraits<v1::RetrieveRequest>::Serialize(request, &bytes, &own).ok()) {
    return false;
  }
  call_->Write(bytes, Tag());
  return Wait();
}

bool RawRetrieveStream::Read(grpc::ByteBuffer* response) {
  if (!started_) return false;
  call_->Read(response, Tag());
  return Wait();
}

void RawRetrieveStream::WritesDone() {
  if (!started_) return;
  call_->WritesDone(Tag());
  Wait();
}

grpc::Status RawRetrieveStream::Finish() {
  if (finished_) return status_;
  finished_ = true;
  call_->Finish(&status_, Tag());
  Wait();
  return status_;
}

}  // namespace pqkv

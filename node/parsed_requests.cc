#include "node/parsed_requests.h"

#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "node/grpc_status.h"

namespace mergedb::node {

namespace {

using grpc::experimental::InterceptionHookPoints;

// One call's: notices that gRPC's parse failed (the call gets no request), then replaces the
// status the call ends with (gRPC's INTERNAL without a message).
class UnparsableRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit UnparsableRequestInterceptor(const google::protobuf::Descriptor* request_type)
      : request_type_(request_type) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsable_ = true;
    }
    // Only gRPC's own answer to a failed parse, INTERNAL: a call refused for want of a server
    // thread also gets no request, and keeps its RESOURCE_EXHAUSTED.
    if (unparsable_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::INTERNAL) {
      methods->ModifySendStatus(ToGrpcStatus(RequestDoesNotParse(request_type_)));
    }
    methods->Proceed();
  }

 private:
  const google::protobuf::Descriptor* const request_type_;
  bool unparsable_ = false;  // an interceptor serves one call, on one thread at a time
};

class UnparsableRequestInterceptors final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit UnparsableRequestInterceptors(
      std::vector<const google::protobuf::MethodDescriptor*> methods) {
    for (const google::protobuf::MethodDescriptor* method : methods) {
      // gRPC names a method "/package.Service/Method".
      request_types_[absl::StrCat("/", method->service()->full_name(), "/", method->name())] =
          method->input_type();
    }
  }

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (info->method() == nullptr) return nullptr;
    auto found = request_types_.find(info->method());
    if (found == request_types_.end()) return nullptr;
    return new UnparsableRequestInterceptor(found->second);
  }

 private:
  absl::flat_hash_map<std::string, const google::protobuf::Descriptor*> request_types_;
};

}  // namespace

absl::Status RequestDoesNotParse(const google::protobuf::Descriptor* type) {
  return absl::InvalidArgumentError(absl::StrCat(
      "the request does not parse as ", type->full_name(),
      " (every string in it, such as collection, id, request_id and field names, must be valid "
      "UTF-8); nothing was done"));
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewUnparsableRequestInterceptors(std::vector<const google::protobuf::MethodDescriptor*> methods) {
  return std::make_unique<UnparsableRequestInterceptors>(std::move(methods));
}

}  // namespace mergedb::node

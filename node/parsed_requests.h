// A request that does not parse is the client's error, and the node says so: INVALID_ARGUMENT,
// naming the message type it expected.
//
// gRPC's own parse of a request answers a message that does not parse with INTERNAL and an
// empty message ("the server failed", and no word of why), and on a streaming call takes it for
// the end of the stream. The usual cause is the client's: a proto3 string that is not valid
// UTF-8, which a C++ client sends with only a logged error. The asynchronous write methods take
// raw messages and parse them themselves (node/async_writes.cc; Update with ParseRequest). The
// synchronous methods keep gRPC's parse, which is the cheapest path for them, and an interceptor
// mends the answer: when gRPC hands a call no request (its parse failed), the interceptor replaces
// the status the call ends with.
#ifndef MERGEDB_NODE_PARSED_REQUESTS_H_
#define MERGEDB_NODE_PARSED_REQUESTS_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/server_interceptor.h"

namespace mergedb::node {

// Why a request that does not parse as `type` was refused (INVALID_ARGUMENT).
absl::Status RequestDoesNotParse(const google::protobuf::Descriptor* type);

// Parses `raw` (spent either way) into `request`, or says why it does not parse.
template <typename Request>
absl::Status ParseRequest(grpc::ByteBuffer* raw, Request* request) {
  if (grpc::SerializationTraits<Request>::Deserialize(raw, request).ok()) {
    return absl::OkStatus();
  }
  return RequestDoesNotParse(Request::descriptor());
}

// The interceptors for `methods`: synchronous unary or server-streaming methods, whose request
// gRPC parses. A call of any other method gets no interceptor (it costs that call one lookup).
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewUnparsableRequestInterceptors(std::vector<const google::protobuf::MethodDescriptor*> methods);

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_PARSED_REQUESTS_H_

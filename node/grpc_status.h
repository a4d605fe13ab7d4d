// The one conversion from absl::Status to grpc::Status (gRPC 1.51 has none).
#ifndef MERGEDB_NODE_GRPC_STATUS_H_
#define MERGEDB_NODE_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace mergedb::node {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode values are the canonical gRPC codes.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_GRPC_STATUS_H_

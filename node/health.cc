#include "node/health.h"

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"

namespace mergedb::node {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

HealthService::HealthService(const std::vector<std::string>& services, int max_watches)
    : services_(services.begin(), services.end()), max_watches_(max_watches) {}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_ || serving_ == serving) return;
  serving_ = serving;
  ++version_;
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  serving_ = false;
  ++version_;
}

HealthService::ServingStatus HealthService::StatusOf(const std::string& service) const {
  if (!service.empty() && !services_.contains(service)) return HealthCheckResponse::SERVICE_UNKNOWN;
  return serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

grpc::Status HealthService::Check(grpc::ServerContext*, const HealthCheckRequest* request,
                                  HealthCheckResponse* response) {
  absl::ReaderMutexLock lock(&mu_);
  const ServingStatus status = StatusOf(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("this node serves no service named '", request->service(), "'"));
  }
  response->set_status(status);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* context, const HealthCheckRequest* request,
                                  grpc::ServerWriter<HealthCheckResponse>* writer) {
  if (watches_.fetch_add(1) >= max_watches_) {
    watches_.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("this node serves at most ", max_watches_,
                                     " health Watch streams at once (--max_watch_streams)"));
  }
  absl::Cleanup release = [this] { watches_.fetch_sub(1); };
  uint64_t sent_version = 0;
  bool sent_any = false;
  ServingStatus sent_status = HealthCheckResponse::UNKNOWN;
  while (!context->IsCancelled()) {
    HealthCheckResponse response;
    bool shut_down;
    {
      absl::MutexLock lock(&mu_);
      // Wait for a change, a bounded while: a synchronous handler learns of a cancelled call
      // only by asking.
      auto changed = [&] {
        return !sent_any || version_ != sent_version;
      };
      mu_.AwaitWithTimeout(absl::Condition(&changed), kCancelPoll);
      if (!changed()) continue;
      sent_version = version_;
      shut_down = shut_down_;
      response.set_status(StatusOf(request->service()));
    }
    // Versions can change back and forth between two looks; the client wants transitions.
    if (!sent_any || response.status() != sent_status) {
      if (!writer->Write(response)) return grpc::Status::OK;  // the client went away
      sent_any = true;
      sent_status = response.status();
    }
    if (shut_down) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the node is shutting down");
  }
  return grpc::Status::OK;
}

}  // namespace mergedb::node

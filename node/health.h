// grpc.health.v1.Health for a node (the standard health protocol: `Check` and `Watch`), served
// by the synchronous server beside ClusterService.
//
// Why not gRPC's built-in service (grpc::EnableDefaultHealthCheckService): in gRPC 1.51 it is
// written on the callback API, and a server with any callback method gets a callback completion
// queue drained by two threads of its own ("nexting_thread"). Every thread that waits on a
// completion queue takes turns as the process's epoll poller, so those two idle threads picked
// up the completions of the write streams and of the replication streams and handed each to the
// thread waiting for it: a futex wake and a context switch apiece. Without them, a W1 stream run
// makes about a fifth fewer context switches per write and the nodes spend 4-8 % less CPU per
// write (docs/PERFORMANCE.md, fix 14).
//
// Every service the node serves shares one status: SERVING from start until shutdown begins,
// or until the store fails a commit (the node then refuses every write until a restart).
// Thread-safe.
#ifndef MERGEDB_NODE_HEALTH_H_
#define MERGEDB_NODE_HEALTH_H_

#include <atomic>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace mergedb::node {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  // `services`: the full names of the services the node serves ("mergedb.v1.DocumentService"),
  // which `Check` and `Watch` answer for besides "" (the server as a whole).
  // `max_watches`: Watch streams served at once; more are RESOURCE_EXHAUSTED (each holds a
  // server thread).
  explicit HealthService(const std::vector<std::string>& services, int max_watches = 1000);

  // Starts as NOT_SERVING. Watch streams see every change.
  void SetServing(bool serving);
  // NOT_SERVING for good, and every Watch stream ends (UNAVAILABLE) once it has said so. Call it
  // just before the server stops taking calls: gRPC's client-side health checker re-opens an
  // ended Watch at once, without backoff.
  void Shutdown();

  grpc::Status Check(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override;
  // Sends the current status at once, then each change, until the client cancels or the node
  // shuts down. An unknown service is SERVICE_UNKNOWN (the protocol's rule for Watch: the
  // service may be registered later), not an error.
  grpc::Status Watch(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

  // How often a Watch stream with nothing to send checks whether its client went away.
  static constexpr absl::Duration kCancelPoll = absl::Milliseconds(250);

 private:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;
  ServingStatus StatusOf(const std::string& service) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const absl::flat_hash_set<std::string> services_;
  const int max_watches_;
  std::atomic<int> watches_{0};
  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Bumped at each change, so a Watch stream wakes only when there is something to send.
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_HEALTH_H_

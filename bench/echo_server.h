// The echo baseline of the benchmarks: a bare gRPC unary server that answers an UpdateRequest
// with its request id, built the way mergedb-node builds its server (same builder settings and,
// in mergedb-bench, the same allocator; the unary call served on the asynchronous API by one
// completion-queue thread per core, answered on the thread that read it, as mergedb-node serves
// Update; the node's other services, idle in a write benchmark, are left out). What mergedb does
// beyond this is the cost of being a database.
#ifndef MERGEDB_BENCH_ECHO_SERVER_H_
#define MERGEDB_BENCH_ECHO_SERVER_H_

#include <memory>

#include "grpcpp/server.h"
#include "mergedb/bench/echo.grpc.pb.h"
#include "node/async_server.h"

namespace mergedb::bench {

class EchoServer {
 public:
  // Listens on 127.0.0.1 on a free port; nullptr if it cannot.
  static std::unique_ptr<EchoServer> Start();
  ~EchoServer();
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;

  int port() const { return port_; }

 private:
  EchoServer() = default;

  Echo::AsyncService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<node::AsyncServer> async_;
};

}  // namespace mergedb::bench

#endif  // MERGEDB_BENCH_ECHO_SERVER_H_

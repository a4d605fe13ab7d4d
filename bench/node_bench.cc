// node_bench: single-node acknowledged Update throughput and latency at 1, 16 and 64 concurrent
// requests, beside a bare gRPC unary echo server built on the same server API and thread model
// (bench/echo_server.h) with the same request messages, measured in the same run.
//
//   build/bench/node_bench [--requests=N] [--fsync]
//
// Workload (W1's write mix): 10,000 documents; half the updates set one field to a 64-byte string,
// half increment a counter. The client is asynchronous (one completion queue, C calls in flight),
// so it is not the bottleneck of a one-call-per-write server. Not part of the test suite.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "bench/echo_server.h"
#include "mergedb/bench/echo.grpc.pb.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/log.h"
#include "node/node.h"
#include "bench/bench_util.h"

int main(int argc, char** argv) {
  int requests = 40000;
  bool fsync = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--requests=", 11) == 0 && absl::SimpleAtoi(argv[i] + 11, &requests)) continue;
    if (std::strcmp(argv[i], "--fsync") == 0) {
      fsync = true;
      continue;
    }
    std::fprintf(stderr, "usage: %s [--requests=N] [--fsync]\n", argv[0]);
    return 2;
  }
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  mergedb::node::SetMinLogLevel(mergedb::node::LogLevel::kWarning);
  const std::string dir = "/tmp/mergedb-node-bench-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  mergedb::node::NodeOptions options;
  options.node_name = "bench";
  options.cluster_id = "bench";
  options.data_dir = dir;
  options.durability = fsync ? mergedb::storage::Durability::kSyncEachCommit
                             : mergedb::storage::Durability::kNoSync;
  auto node = mergedb::node::Node::Start(options);
  if (!node.ok()) {
    std::fprintf(stderr, "%s\n", std::string(node.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<mergedb::bench::EchoServer> echo_server = mergedb::bench::EchoServer::Start();
  if (echo_server == nullptr) {
    std::fprintf(stderr, "the echo server cannot listen\n");
    return 1;
  }
  const int echo_port = echo_server->port();

  auto node_stub = mergedb::v1::DocumentService::NewStub(
      grpc::CreateChannel((*node)->address(), grpc::InsecureChannelCredentials()));
  auto echo_stub = mergedb::bench::Echo::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(echo_port), grpc::InsecureChannelCredentials()));

  std::printf("node_bench: %u cores, %d requests per run, fsync %s, client and servers in one "
              "process\n", std::thread::hardware_concurrency(), requests, fsync ? "on" : "off");
  std::printf("%-12s %12s %10s %10s %12s %10s %10s %8s\n", "concurrency", "update/s", "p50 us",
              "p99 us", "echo/s", "p50 us", "p99 us", "ratio");
  for (int concurrency : {1, 16, 64}) {
    const int n = concurrency == 1 ? std::max(1000, requests / 4) : requests;
    using mergedb::bench::Drive;
    const std::vector<mergedb::bench::Echo::Stub*> echo_stubs = {echo_stub.get()};
    const std::vector<mergedb::v1::DocumentService::Stub*> node_stubs = {node_stub.get()};
    auto w1 = [](std::mt19937_64& rng, uint64_t i) { return mergedb::bench::W1Request(rng, i); };
    auto ignore = [](uint64_t, size_t) {};
    Drive(echo_stubs, &mergedb::bench::Echo::Stub::PrepareAsyncCall, concurrency,
          std::min(n, 2000), 0, w1, ignore);  // warm-up
    const auto e = Drive(echo_stubs, &mergedb::bench::Echo::Stub::PrepareAsyncCall, concurrency,
                         n, 0, w1, ignore);
    const auto u = Drive(node_stubs, &mergedb::v1::DocumentService::Stub::PrepareAsyncUpdate,
                         concurrency, n, 0, w1, ignore);
    std::printf("%-12d %12.0f %10.0f %10.0f %12.0f %10.0f %10.0f %7.2fx\n", concurrency,
                u.per_second, u.Percentile(0.5), u.Percentile(0.99), e.per_second,
                e.Percentile(0.5), e.Percentile(0.99), u.per_second / e.per_second);
  }
  echo_server.reset();
  (*node)->Shutdown(absl::Seconds(1));
  std::filesystem::remove_all(dir);
  return 0;
}

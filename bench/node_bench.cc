// node_bench: single-node acknowledged Update throughput and latency at 1, 16 and 64 concurrent
// requests, beside a bare gRPC unary echo server built on the same server API and thread model
// (synchronous gRPC server) with the same request messages, measured in the same run.
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
#include "mergedb/bench/echo.grpc.pb.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/log.h"
#include "node/node.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kDocuments = 10000;

class EchoService final : public mergedb::bench::Echo::Service {
  grpc::Status Call(grpc::ServerContext*, const mergedb::v1::UpdateRequest* request,
                    mergedb::v1::UpdateResponse* response) override {
    response->set_request_id(request->request_id());
    return grpc::Status::OK;
  }
};

mergedb::v1::UpdateRequest MakeRequest(std::mt19937_64& rng, uint64_t i) {
  mergedb::v1::UpdateRequest request;
  request.set_collection("bench");
  request.set_id("doc" + std::to_string(rng() % kDocuments));
  auto* op = request.add_ops();
  if (i % 2 == 0) {
    op->add_path("name");
    op->mutable_set()->mutable_value()->mutable_scalar()->set_string_value(std::string(64, 'v'));
  } else {
    op->add_path("count");
    op->mutable_increment()->set_by(1);
  }
  return request;
}

struct Result {
  double per_second;
  double p50_us, p99_us;
};

// Runs `total` calls with `concurrency` in flight. `start` begins one asynchronous call.
template <typename Stub>
Result Drive(Stub* stub, int concurrency, int total,
             std::unique_ptr<grpc::ClientAsyncResponseReader<mergedb::v1::UpdateResponse>> (
                 Stub::*prepare)(grpc::ClientContext*, const mergedb::v1::UpdateRequest&,
                                 grpc::CompletionQueue*)) {
  struct Call {
    grpc::ClientContext context;
    mergedb::v1::UpdateResponse response;
    grpc::Status status;
    Clock::time_point started;
    std::unique_ptr<grpc::ClientAsyncResponseReader<mergedb::v1::UpdateResponse>> reader;
  };
  grpc::CompletionQueue cq;
  std::mt19937_64 rng(42);
  std::vector<double> latencies;
  latencies.reserve(static_cast<size_t>(total));
  int issued = 0, done = 0;
  auto issue = [&] {
    auto* call = new Call;
    call->started = Clock::now();
    call->reader = (stub->*prepare)(&call->context, MakeRequest(rng, static_cast<uint64_t>(issued)), &cq);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
    ++issued;
  };
  const auto start = Clock::now();
  for (int i = 0; i < concurrency && issued < total; ++i) issue();
  void* tag;
  bool ok;
  while (done < total && cq.Next(&tag, &ok)) {
    auto* call = static_cast<Call*>(tag);
    if (!call->status.ok()) {
      std::fprintf(stderr, "call failed: %s\n", call->status.error_message().c_str());
      std::exit(1);
    }
    latencies.push_back(std::chrono::duration<double, std::micro>(Clock::now() - call->started).count());
    delete call;
    ++done;
    if (issued < total) issue();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::sort(latencies.begin(), latencies.end());
  return {total / seconds, latencies[latencies.size() / 2], latencies[latencies.size() * 99 / 100]};
}

}  // namespace

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
  EchoService echo;
  grpc::ServerBuilder builder;
  int echo_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &echo_port);
  builder.RegisterService(&echo);
  auto echo_server = builder.BuildAndStart();

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
    Drive(echo_stub.get(), concurrency, std::min(n, 2000), &mergedb::bench::Echo::Stub::PrepareAsyncCall);  // warm-up
    const Result e = Drive(echo_stub.get(), concurrency, n, &mergedb::bench::Echo::Stub::PrepareAsyncCall);
    const Result u = Drive(node_stub.get(), concurrency, n, &mergedb::v1::DocumentService::Stub::PrepareAsyncUpdate);
    std::printf("%-12d %12.0f %10.0f %10.0f %12.0f %10.0f %10.0f %7.2fx\n", concurrency, u.per_second,
                u.p50_us, u.p99_us, e.per_second, e.p50_us, e.p99_us, u.per_second / e.per_second);
  }
  echo_server->Shutdown();
  (*node)->Shutdown(absl::Seconds(1));
  std::filesystem::remove_all(dir);
  return 0;
}

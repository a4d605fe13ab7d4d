// Shared by the benchmarks: the W1 write mix and an asynchronous unary client that keeps a
// fixed number of calls in flight (so the client is never the bottleneck of a one-write-per-RPC
// server), optionally paced to a rate.
#ifndef MERGEDB_BENCH_BENCH_UTIL_H_
#define MERGEDB_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "mergedb/v1/api.pb.h"

namespace mergedb::bench {

using Clock = std::chrono::steady_clock;
inline constexpr int kW1Documents = 10000;

// A printable string of random letters and digits: values no compressor can shrink much (about
// 6 bits of entropy per byte), so that bytes-on-the-wire figures are not flattered.
inline std::string RandomValue(std::mt19937_64& rng, size_t size) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string value(size, ' ');
  for (char& c : value) c = kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
  return value;
}

// W1: over 10,000 documents, even writes set one field to a random 64-byte string, odd writes
// increment a counter field.
inline mergedb::v1::UpdateRequest W1Request(std::mt19937_64& rng, uint64_t i,
                                            const std::string& collection = "w1") {
  mergedb::v1::UpdateRequest request;
  request.set_collection(collection);
  request.set_id("doc" + std::to_string(rng() % kW1Documents));
  auto* op = request.add_ops();
  if (i % 2 == 0) {
    op->add_path("name");
    op->mutable_set()->mutable_value()->mutable_scalar()->set_string_value(RandomValue(rng, 64));
  } else {
    op->add_path("count");
    op->mutable_increment()->set_by(1);
  }
  return request;
}

struct DriveResult {
  double per_second = 0;
  std::vector<double> latencies_us;  // sorted
  double Percentile(double p) const {
    if (latencies_us.empty()) return 0;
    return latencies_us[std::min(latencies_us.size() - 1,
                                 static_cast<size_t>(p * static_cast<double>(latencies_us.size())))];
  }
};

template <typename Stub>
using PrepareUpdate = std::unique_ptr<grpc::ClientAsyncResponseReader<mergedb::v1::UpdateResponse>> (
    Stub::*)(grpc::ClientContext*, const mergedb::v1::UpdateRequest&, grpc::CompletionQueue*);

// Sends `total` calls, `concurrency` in flight, round-robin over `stubs`, paced to `rate` per
// second when rate > 0. make(rng, i) builds call i; on_ack(i, stub index) runs as it completes.
// Exits the process on a failed call: a benchmark with errors measures nothing.
template <typename Stub, typename Make, typename OnAck>
DriveResult Drive(const std::vector<Stub*>& stubs, PrepareUpdate<Stub> prepare, int concurrency,
                  int total, double rate, Make make, OnAck on_ack) {
  struct Call {
    grpc::ClientContext context;
    mergedb::v1::UpdateResponse response;
    grpc::Status status;
    uint64_t i = 0;
    size_t stub = 0;
    Clock::time_point started;
    std::unique_ptr<grpc::ClientAsyncResponseReader<mergedb::v1::UpdateResponse>> reader;
  };
  grpc::CompletionQueue cq;
  std::mt19937_64 rng(42);
  DriveResult result;
  result.latencies_us.reserve(static_cast<size_t>(total));
  int issued = 0, done = 0;
  const auto start = Clock::now();
  auto issue = [&] {
    if (rate > 0) std::this_thread::sleep_until(start + std::chrono::duration<double>(issued / rate));
    auto* call = new Call;
    call->i = static_cast<uint64_t>(issued);
    call->stub = static_cast<size_t>(issued) % stubs.size();
    call->started = Clock::now();
    call->reader = (stubs[call->stub]->*prepare)(&call->context, make(rng, call->i), &cq);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
    ++issued;
  };
  for (int k = 0; k < concurrency && issued < total; ++k) issue();
  void* tag;
  bool ok;
  while (done < total && cq.Next(&tag, &ok)) {
    auto* call = static_cast<Call*>(tag);
    if (!call->status.ok()) {
      std::fprintf(stderr, "call failed: %s\n", call->status.error_message().c_str());
      std::exit(1);
    }
    result.latencies_us.push_back(
        std::chrono::duration<double, std::micro>(Clock::now() - call->started).count());
    on_ack(call->i, call->stub);
    delete call;
    ++done;
    if (issued < total) issue();
  }
  result.per_second = total / std::chrono::duration<double>(Clock::now() - start).count();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::sort(result.latencies_us.begin(), result.latencies_us.end());
  return result;
}

}  // namespace mergedb::bench

#endif  // MERGEDB_BENCH_BENCH_UTIL_H_

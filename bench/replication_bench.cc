// replication_bench: three nodes in one process (real disk, full mesh), measured in one run:
//   1. peak acknowledged writes/s (unary Update, 64 in flight, spread over the three nodes);
//   2. at half of that rate: replication lag p50/p99 (acknowledgement on node 1 -> visible on
//      nodes 2 and 3, seen by Watch streams on a sample of writes), and bytes between nodes per
//      write (all payload bytes every node sends to its peers, frames and acknowledgements);
//   3. catch-up: node 3 down while 100,000 writes are accepted, then restarted: catch-up rate
//      versus the rate the writes were accepted.
//
//   build/bench/replication_bench [--writes=N] [--catchup=N] [--lag_rate=W/S] [--lag_rounds=N]
//       [--compress=0|1] [--max_hold_ms=MS] [--truncate_ms=MS]
// --lag_rate fixes the rate of phase 2 (default: half of the measured peak). Phase 2 runs
// --lag_rounds times (default 3) and reports each round and all of them pooled: one round's p99
// rests on about 12 samples above it, and moves by a millisecond from run to run. --max_hold_ms
// sets ReplicationOptions::max_hold and --truncate_ms the nodes' log truncation interval, to see
// what each does to the lag.
// Not part of the test suite.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/log.h"
#include "node/node.h"
#include "bench/bench_util.h"
#include "tests/node/cluster_test_util.h"

namespace {

using mergedb::bench::Clock;
using Stubs = std::vector<mergedb::v1::DocumentService::Stub*>;
constexpr auto kPrepare = &mergedb::v1::DocumentService::Stub::PrepareAsyncUpdate;
using mergedb::node::Node;
using mergedb::node::NodeOptions;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

using mergedb::bench::Traffic;

// What the nodes sent their peers (`to`: only that peer).
Traffic TrafficBetweenNodes(std::vector<std::unique_ptr<Node>>& nodes, const std::string& to = "") {
  Traffic traffic;
  for (auto& node : nodes) {
    if (node == nullptr) continue;
    for (const auto& peer : node->replication()->PeerStatuses()) {
      if (!to.empty() && peer.name() != to) continue;
      traffic.bytes += peer.bytes_sent();
      traffic.frames += peer.frames_sent();
      traffic.entries += peer.entries_sent();
    }
  }
  return traffic;
}

}  // namespace

int main(int argc, char** argv) {
  int writes = 60000;
  int catchup = 100000;
  double lag_rate = 0;  // 0: half of the measured peak
  int lag_rounds = 3;
  int compress = 1;
  double max_hold_ms = -1;
  double truncate_ms = -1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--compress=", 11) == 0 && absl::SimpleAtoi(argv[i] + 11, &compress)) continue;
    if (std::strncmp(argv[i], "--writes=", 9) == 0 && absl::SimpleAtoi(argv[i] + 9, &writes)) continue;
    if (std::strncmp(argv[i], "--catchup=", 10) == 0 && absl::SimpleAtoi(argv[i] + 10, &catchup)) continue;
    if (std::strncmp(argv[i], "--truncate_ms=", 14) == 0 && absl::SimpleAtod(argv[i] + 14, &truncate_ms)) continue;
    if (std::strncmp(argv[i], "--max_hold_ms=", 14) == 0 && absl::SimpleAtod(argv[i] + 14, &max_hold_ms)) continue;
    if (std::strncmp(argv[i], "--lag_rate=", 11) == 0 && absl::SimpleAtod(argv[i] + 11, &lag_rate)) continue;
    if (std::strncmp(argv[i], "--lag_rounds=", 13) == 0 &&
        absl::SimpleAtoi(argv[i] + 13, &lag_rounds) && lag_rounds >= 1) {
      continue;
    }
    std::fprintf(stderr,
                 "usage: %s [--writes=N] [--catchup=N] [--lag_rate=W/S] [--lag_rounds=N>=1] "
                 "[--compress=0|1] [--max_hold_ms=MS] [--truncate_ms=MS]\n",
                 argv[0]);
    return 2;
  }
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  mergedb::node::SetMinLogLevel(mergedb::node::LogLevel::kWarning);
  const std::string root = "/tmp/mergedb-replication-bench-" + std::to_string(getpid());
  std::filesystem::remove_all(root);
  std::vector<int> ports;
  for (int i = 0; i < 3; ++i) ports.push_back(mergedb::node::testing::PickPort());
  std::vector<NodeOptions> options(3);
  std::vector<std::unique_ptr<Node>> nodes(3);
  for (int i = 0; i < 3; ++i) {
    options[i].node_name = absl::StrCat("n", i + 1);
    options[i].cluster_id = "bench";
    options[i].data_dir = absl::StrCat(root, "/n", i + 1);
    options[i].listen = absl::StrCat("127.0.0.1:", ports[i]);
    options[i].replication.compress_streams = compress != 0;
    if (truncate_ms >= 0) options[i].truncate_interval = absl::Milliseconds(truncate_ms);
    if (max_hold_ms >= 0) options[i].replication.max_hold = absl::Milliseconds(max_hold_ms);
    for (int j = 0; j < 3; ++j) {
      if (j != i) options[i].peers.push_back({absl::StrCat("n", j + 1), absl::StrCat("127.0.0.1:", ports[j])});
    }
  }
  for (int i = 0; i < 3; ++i) nodes[i] = *Node::Start(options[i]);
  std::vector<std::unique_ptr<mergedb::v1::DocumentService::Stub>> stubs;
  for (int i = 0; i < 3; ++i) {
    stubs.push_back(mergedb::v1::DocumentService::NewStub(
        grpc::CreateChannel(options[i].listen, grpc::InsecureChannelCredentials())));
  }
  auto all = [&] { return std::vector<mergedb::v1::DocumentService::Stub*>{stubs[0].get(), stubs[1].get(), stubs[2].get()}; };
  auto wait_converged = [&](double limit_s) {
    const auto start = Clock::now();
    while (Since(start) < limit_s) {
      bool same = true;
      const std::string d0 = nodes[0]->store()->state_digest();
      const auto a0 = nodes[0]->store()->AppliedVector();
      for (int i = 1; i < 3; ++i) {
        if (nodes[i]->store()->state_digest() != d0 || nodes[i]->store()->AppliedVector() != a0) same = false;
      }
      if (same) return Since(start);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return -1.0;
  };

  std::printf("replication_bench: %u cores, 3 nodes in one process with the client, W1 writes\n",
              std::thread::hardware_concurrency());
  // 1. Peak.
  auto w1 = [](std::mt19937_64& rng, uint64_t i) { return mergedb::bench::W1Request(rng, i); };
  auto ignore = [](uint64_t, size_t) {};
  const double peak = mergedb::bench::Drive(all(), kPrepare, 64, writes, 0, w1, ignore).per_second;
  const double settle = wait_converged(30);
  std::printf("peak: %.0f acknowledged writes/s (unary, 64 in flight); converged %.1f ms after\n",
              peak, settle * 1000);

  // 2. Half of peak: lag and bytes per write.
  // A change can become visible on another node before the writer's client has even processed
  // the acknowledgement: then the lag is 0. Whichever of (ack, event) comes second records it.
  absl::Mutex mu;
  std::map<std::string, Clock::time_point> acked_at;
  std::map<std::string, std::vector<Clock::time_point>> seen_early;
  std::vector<double> lags_ms;
  std::atomic<bool> stop_watch{false};
  std::vector<std::thread> watchers;
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_contexts;
  for (int i = 1; i < 3; ++i) {
    watch_contexts.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* context = watch_contexts.back().get();
    watchers.emplace_back([&, i, context] {
      mergedb::v1::WatchRequest request;
      request.set_collection("lag");
      request.set_from_now(true);
      auto reader = stubs[static_cast<size_t>(i)]->Watch(context, request);
      mergedb::v1::WatchEvent event;
      while (reader->Read(&event)) {
        const auto now = Clock::now();
        absl::MutexLock lock(&mu);
        auto it = acked_at.find(event.id());
        if (it != acked_at.end()) {
          lags_ms.push_back(std::chrono::duration<double, std::milli>(now - it->second).count());
        } else {
          seen_early[event.id()].push_back(now);
        }
      }
      (void)reader->Finish();
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int half_writes = std::max(5000, writes / 2);
  // A multiple of 3: write i goes to node i % 3, so every sampled write goes to node 1 and
  // nodes 2 and 3 measure it.
  constexpr int kSampleEvery = 48;
  using mergedb::bench::PercentileOfSorted;
  std::vector<double> pooled;
  std::vector<double> round_p99s;
  for (int round = 1; round <= lag_rounds; ++round) {
    // Each round names its sampled documents afresh, so a late event of one round cannot be
    // taken for a write of the next.
    const auto sample_id = [round](uint64_t i) { return absl::StrCat("r", round, "s", i); };
    auto sampled = [&sample_id](std::mt19937_64& rng, uint64_t i) {
      if (i % kSampleEvery != 0) return mergedb::bench::W1Request(rng, i);
      mergedb::v1::UpdateRequest request;
      request.set_collection("lag");
      request.set_id(sample_id(i));
      auto* op = request.add_ops();
      op->add_path("count");
      op->mutable_increment()->set_by(1);
      return request;
    };
    const Traffic traffic_before = TrafficBetweenNodes(nodes);
    const double half_rate =
        mergedb::bench::Drive(all(), kPrepare, 16, half_writes, lag_rate > 0 ? lag_rate : peak / 2,
                              sampled,
                              [&](uint64_t i, size_t) {
                                if (i % kSampleEvery == 0) {
                                  const std::string id = sample_id(i);
                                  absl::MutexLock lock(&mu);
                                  acked_at[id] = Clock::now();
                                  auto early = seen_early.find(id);
                                  if (early != seen_early.end()) {
                                    for (size_t k = 0; k < early->second.size(); ++k)
                                      lags_ms.push_back(0.0);
                                    seen_early.erase(early);
                                  }
                                }
                              })
            .per_second;
    const double converge_half = wait_converged(30);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const Traffic traffic = TrafficBetweenNodes(nodes) - traffic_before;
    std::vector<double> lags;
    {
      absl::MutexLock lock(&mu);
      lags.swap(lags_ms);
      acked_at.clear();
      seen_early.clear();
    }
    std::sort(lags.begin(), lags.end());
    round_p99s.push_back(PercentileOfSorted(lags, 0.99));
    pooled.insert(pooled.end(), lags.begin(), lags.end());
    std::printf(
        "half load, round %d: %.0f writes/s; lag p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, "
        "max %.2f ms (%zu samples); %.0f bytes between nodes per write; converged %.1f ms "
        "after the last ack\n",
        round, half_rate, PercentileOfSorted(lags, 0.5), PercentileOfSorted(lags, 0.9),
        PercentileOfSorted(lags, 0.99), lags.empty() ? 0.0 : lags.back(), lags.size(),
        static_cast<double>(traffic.bytes) / half_writes, converge_half * 1000);
    // Each write must reach the two other nodes: 2 entries sent per write is the floor; more is
    // forwarding that raced the direct link.
    std::printf("half load, round %d: %.2f log entries sent per write, %.1f entries per frame\n",
                round, static_cast<double>(traffic.entries) / half_writes,
                traffic.frames > 0 ? static_cast<double>(traffic.entries) / traffic.frames : 0.0);
  }
  for (auto& context : watch_contexts) context->TryCancel();
  for (auto& w : watchers) w.join();
  std::sort(pooled.begin(), pooled.end());
  std::sort(round_p99s.begin(), round_p99s.end());
  std::printf(
      "half load, %d rounds pooled: lag p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f "
      "ms (%zu samples); round p99s %.2f to %.2f ms\n",
      lag_rounds, PercentileOfSorted(pooled, 0.5), PercentileOfSorted(pooled, 0.9),
      PercentileOfSorted(pooled, 0.99), pooled.empty() ? 0.0 : pooled.back(), pooled.size(),
      round_p99s.front(), round_p99s.back());

  // 3. Catch-up.
  if (catchup <= 0) {
    std::printf("catch-up: skipped (--catchup=0)\n");
    for (auto& node : nodes) node->Shutdown(absl::Seconds(1));
    std::filesystem::remove_all(root);
    return 0;
  }
  nodes[2]->Shutdown(absl::Seconds(1));
  nodes[2].reset();
  const double accept =
      mergedb::bench::Drive(Stubs{stubs[0].get(), stubs[1].get()}, kPrepare, 64, catchup, 0, w1,
                            ignore).per_second;
  // The target: everything either survivor applied (each may still lack the other's last
  // writes for a moment). The clock starts before the restart, since the node's links start
  // replicating inside Node::Start.
  mergedb::storage::VersionVector target = nodes[0]->store()->AppliedVector();
  for (const auto& [origin, seq] : nodes[1]->store()->AppliedVector()) {
    target[origin] = std::max(target[origin], seq);
  }
  auto covers = [](const mergedb::storage::VersionVector& have,
                   const mergedb::storage::VersionVector& want) {
    for (const auto& [origin, seq] : want) {
      auto it = have.find(origin);
      if (it == have.end() || it->second < seq) return false;
    }
    return true;
  };
  const Traffic sent_before = TrafficBetweenNodes(nodes, options[2].node_name);
  const auto start = Clock::now();
  auto restarted = Node::Start(options[2]);
  if (!restarted.ok()) {
    std::fprintf(stderr, "%s\n", std::string(restarted.status().message()).c_str());
    return 1;
  }
  nodes[2] = *std::move(restarted);
  while (!covers(nodes[2]->store()->AppliedVector(), target) && Since(start) < 120) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const double catchup_s = Since(start);
  if (!covers(nodes[2]->store()->AppliedVector(), target)) {
    std::fprintf(stderr, "catch-up: the restarted node did not catch up within 120 s\n");
    return 1;
  }
  // And the state is the survivors' (bounded wait: the last frames may still be in flight).
  bool same = false;
  for (int i = 0; i < 10000 && !same; ++i) {
    same = nodes[2]->store()->AppliedAndDigest() == nodes[0]->store()->AppliedAndDigest();
    if (!same) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!same) {
    std::fprintf(stderr, "catch-up: the restarted node's state differs from node 1's\n");
    return 1;
  }
  std::printf("catch-up: %d missed writes accepted at %.0f writes/s, replayed in %.2f s = %.0f "
              "writes/s (%.2fx the accept rate)\n",
              catchup, accept, catchup_s, catchup / catchup_s, (catchup / catchup_s) / accept);
  // Each missed write must reach the restarted node once: more is the same entry sent by both
  // peers (forwarded before the restarted node told them which origins it gets first-hand).
  const Traffic sent = TrafficBetweenNodes(nodes, options[2].node_name) - sent_before;
  std::printf(
      "catch-up: %.2f log entries sent to the restarted node per missed write, %.0f per "
      "frame\n",
      static_cast<double>(sent.entries) / catchup,
      sent.frames > 0 ? static_cast<double>(sent.entries) / sent.frames : 0.0);
  for (auto& node : nodes) node->Shutdown(absl::Seconds(1));
  std::filesystem::remove_all(root);
  return 0;
}

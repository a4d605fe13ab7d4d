// Convergence under an adversarial network: random documents edits on 3-5 replicas, deltas
// delivered in random order, duplicated and delayed, with occasional full-state merges. After
// everything is delivered every replica must be byte-identical and equal to the join of all
// states. Thousands of schedules; a failure prints the seed, and MERGEDB_SEED=<seed> replays it.
#include <deque>
#include <vector>

#include "absl/strings/str_cat.h"
#include "crdt/document.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "tests/crdt/random_ops.h"

namespace mergedb::crdt {
namespace {

using testing::ClockState;
using testing::Ops;
using testing::ReplicaIdOf;
using testing::Rng;
using testing::SeedsToRun;

struct InFlight {
  int to;
  Document delta;
};

void RunSchedule(uint64_t seed) {
  Rng rng(seed);
  const int n = static_cast<int>(rng.Range(3, 5));
  std::vector<Document> replicas(static_cast<size_t>(n));
  std::vector<ClockState> clocks(static_cast<size_t>(n));
  for (auto& clock : clocks) clock.skew_ms = static_cast<uint64_t>(rng.Range(0, 50));
  std::vector<InFlight> network;   // undelivered messages; delivery picks any: reordering
  std::vector<Document> history;   // every delta ever produced, for late duplicates
  const int steps = static_cast<int>(rng.Range(20, 120));
  for (int step = 0; step < steps; ++step) {
    const int action = static_cast<int>(rng.Range(0, 9));
    if (action < 4) {
      const int i = static_cast<int>(rng.Range(0, n - 1));
      Document delta = Ops<Document>::Mutate(replicas[static_cast<size_t>(i)], ReplicaIdOf(i), rng,
                                             clocks[static_cast<size_t>(i)],
                                             static_cast<uint64_t>(step));
      for (int to = 0; to < n; ++to) {
        if (to == i) continue;
        network.push_back({to, delta});
        if (rng.Chance(0.15)) network.push_back({to, delta});  // duplicate
      }
      history.push_back(std::move(delta));
    } else if (action < 8 && !network.empty()) {
      const size_t k = static_cast<size_t>(rng.Range(0, static_cast<int64_t>(network.size()) - 1));
      replicas[static_cast<size_t>(network[k].to)].Join(network[k].delta);
      network.erase(network.begin() + static_cast<std::ptrdiff_t>(k));
    } else if (action == 8 && !history.empty()) {
      // A late duplicate of some old delta.
      replicas[static_cast<size_t>(rng.Range(0, n - 1))].Join(rng.Pick(history));
    } else {
      // Full-state anti-entropy from one replica to another.
      const int from = static_cast<int>(rng.Range(0, n - 1));
      const int to = static_cast<int>(rng.Range(0, n - 1));
      const Document snapshot = replicas[static_cast<size_t>(from)];
      replicas[static_cast<size_t>(to)].Join(snapshot);
    }
  }
  // Heal: deliver everything still in flight, in a random order.
  while (!network.empty()) {
    const size_t k = static_cast<size_t>(rng.Range(0, static_cast<int64_t>(network.size()) - 1));
    replicas[static_cast<size_t>(network[k].to)].Join(network[k].delta);
    network.erase(network.begin() + static_cast<std::ptrdiff_t>(k));
  }
  Document all;
  for (const Document& r : replicas) all.Join(r);
  Document all_deltas;
  for (const Document& d : history) all_deltas.Join(d);
  // The string bytes each state keeps count of as entries come and go (what the store's cache
  // charges for) match a recount, after every kind of join and removal above.
  const auto expect_counted = [](const Document& doc, const std::string& what) {
    EXPECT_EQ(doc.kernel().heap_bytes(), DotKernel::HeapBytesOf(doc.kernel().leaves())) << what;
  };
  for (int i = 0; i < n; ++i)
    expect_counted(replicas[static_cast<size_t>(i)], absl::StrCat("replica ", i));
  for (const Document& d : history) expect_counted(d, "a delta");
  expect_counted(all, "the join of all replicas");
  ASSERT_EQ(all.Encode(), all_deltas.Encode()) << "the join of the states is the join of the deltas";
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(replicas[static_cast<size_t>(i)].Encode(), all.Encode())
        << "replica " << i << " of " << n << ":\n" << replicas[static_cast<size_t>(i)].DebugString()
        << "\nexpected:\n" << all.DebugString();
    ASSERT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
        replicas[static_cast<size_t>(i)].ToJson(), all.ToJson()));
  }
}

TEST(ConvergenceProperty, ReplicasConvergeUnderReorderingDuplicationAndDelay) {
  for (uint64_t seed : SeedsToRun(1, 10000)) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " (replay: MERGEDB_SEED=" << seed
                                      << ")");
    RunSchedule(seed);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace mergedb::crdt

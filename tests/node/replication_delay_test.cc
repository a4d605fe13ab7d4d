// Replication delays per peer (node/replication_delay.h): each of this node's writes counts
// once per peer, from its own commit's time, whatever shape the confirmations take.
#include "node/replication_delay.h"

#include <gtest/gtest.h>

#include <chrono>

namespace mergedb::node {
namespace {

using std::chrono::milliseconds;
using TimePoint = ReplicationDelays::TimePoint;

const TimePoint kStart = TimePoint() + std::chrono::hours(1);

TimePoint At(int ms) { return kStart + milliseconds(ms); }

mergedb::v1::LatencyHistogram Of(const ReplicationDelays& delays, const std::string& peer) {
  mergedb::v1::LatencyHistogram h;
  delays.FillTo(peer, &h);
  return h;
}

// Writes counted with a delay of at most `seconds` (a bucket bound).
uint64_t AtMost(const mergedb::v1::LatencyHistogram& h, double seconds) {
  for (int i = 0; i < h.upper_bounds_seconds_size(); ++i) {
    if (h.upper_bounds_seconds(i) == seconds) return h.cumulative_counts(i);
  }
  ADD_FAILURE() << "no bucket bound " << seconds;
  return 0;
}

TEST(ReplicationDelays, EachWriteCountsOncePerPeerFromItsOwnCommit) {
  ReplicationDelays delays({"n2", "n3"}, /*committed_before=*/10);
  delays.Committed(12, At(0));   // entries 11, 12
  delays.Committed(15, At(20));  // 13..15
  delays.Committed(16, At(40));  // 16

  // n2 confirms in pieces that cut through the commits.
  delays.Confirmed("n2", 11, At(1));   // 11: 1 ms
  delays.Confirmed("n2", 14, At(30));  // 12: 30 ms; 13, 14: 10 ms
  delays.Confirmed("n2", 14, At(90));  // nothing new
  delays.Confirmed("n2", 16, At(45));  // 15: 25 ms; 16: 5 ms
  const mergedb::v1::LatencyHistogram n2 = Of(delays, "n2");
  EXPECT_EQ(n2.what(), mergedb::v1::LatencyHistogram::REPLICATION_DELAY);
  EXPECT_EQ(n2.count(), 6u) << "entries 11..16, each once";
  EXPECT_EQ(AtMost(n2, 0.001), 1u);
  EXPECT_EQ(AtMost(n2, 0.005), 2u);
  EXPECT_EQ(AtMost(n2, 0.01), 4u);
  EXPECT_EQ(AtMost(n2, 0.025), 5u);
  EXPECT_EQ(AtMost(n2, 0.05), 6u);
  EXPECT_NEAR(n2.sum_seconds(), 0.001 + 0.030 + 0.010 * 2 + 0.025 + 0.005, 1e-9);

  // n3 confirms everything at once, with entries committed before this node started (not timed).
  delays.Confirmed("n3", 16, At(100));
  const mergedb::v1::LatencyHistogram n3 = Of(delays, "n3");
  EXPECT_EQ(n3.count(), 6u) << "entries through 10 are not timed";
  EXPECT_NEAR(n3.sum_seconds(), 0.100 * 2 + 0.080 * 3 + 0.060, 1e-9);

  // Unknown names and a peer reporting less (it lost data) count nothing.
  delays.Confirmed("n9", 16, At(100));
  delays.Confirmed("n3", 12, At(200));
  delays.Confirmed("n3", 16, At(300));
  EXPECT_EQ(Of(delays, "n3").count(), 6u);
  EXPECT_EQ(Of(delays, "n9").count(), 0u);
  EXPECT_EQ(Of(delays, "n9").upper_bounds_seconds_size(), 16) << "an empty histogram, still";
}

TEST(ReplicationDelays, CommitsThatAddNothingOfThisNodesAreIgnored) {
  ReplicationDelays delays({"n2"}, 0);
  delays.Committed(3, At(0));
  delays.Committed(3, At(50));  // a peer's entries committed
  delays.Committed(2, At(60));
  delays.Committed(4, At(70));
  delays.Confirmed("n2", 4, At(80));
  const mergedb::v1::LatencyHistogram h = Of(delays, "n2");
  EXPECT_EQ(h.count(), 4u);
  EXPECT_NEAR(h.sum_seconds(), 0.080 * 3 + 0.010, 1e-9) << "entries 1..3 keep their first time";
}

TEST(ReplicationDelays, APeerLongAwayCostsBoundedMemoryAndItsOldestWritesGoUntimed) {
  ReplicationDelays delays({"n2", "n3"}, 0);
  const uint64_t commits = ReplicationDelays::kMaxGroups + 100;
  for (uint64_t seq = 1; seq <= commits; ++seq) {
    delays.Committed(seq, At(0));
    delays.Confirmed("n2", seq, At(1));
  }
  EXPECT_EQ(delays.groups_held(), ReplicationDelays::kMaxGroups);
  // n3 was away for all of them: the 100 oldest were dropped.
  delays.Confirmed("n3", commits, At(2000));
  EXPECT_EQ(Of(delays, "n2").count(), commits);
  const mergedb::v1::LatencyHistogram n3 = Of(delays, "n3");
  EXPECT_EQ(n3.count(), ReplicationDelays::kMaxGroups);
  EXPECT_EQ(delays.groups_held(), 0u);
  EXPECT_EQ(AtMost(n3, 1), 0u);
  EXPECT_EQ(AtMost(n3, 2.5), ReplicationDelays::kMaxGroups);
}

TEST(ReplicationDelays, GroupsEveryPeerConfirmedAreDropped) {
  ReplicationDelays delays({"n2", "n3"}, 0);
  delays.Committed(3, At(0));
  delays.Committed(5, At(0));
  delays.Confirmed("n2", 5, At(10));
  delays.Confirmed("n3", 4, At(20));
  EXPECT_EQ(delays.groups_held(), 1u) << "n3 still lacks entry 5";
  delays.Confirmed("n3", 5, At(20));
  EXPECT_EQ(delays.groups_held(), 0u);
  // Both hold 1..5: a later, larger report of n2 still counts only what is new.
  delays.Committed(7, At(30));
  EXPECT_EQ(delays.groups_held(), 1u);
  delays.Confirmed("n2", 7, At(33));
  EXPECT_EQ(Of(delays, "n2").count(), 7u);
  EXPECT_NEAR(Of(delays, "n2").sum_seconds(), 0.010 * 5 + 0.003 * 2, 1e-9);
}

}  // namespace
}  // namespace mergedb::node

#include "crdt/hlc.h"

#include "gtest/gtest.h"

namespace mergedb::crdt {
namespace {

TEST(Hlc, TickFollowsThePhysicalClockWhenItIsAhead) {
  Hlc t = HlcTick(Hlc(), 1000);
  EXPECT_EQ(t.wall_millis(), 1000u);
  EXPECT_EQ(t.logical(), 0u);
}

TEST(Hlc, TickIsStrictlyMonotonicWhenThePhysicalClockStallsOrGoesBack) {
  Hlc t = HlcTick(Hlc(), 1000);
  Hlc u = HlcTick(t, 1000);
  Hlc v = HlcTick(u, 900);  // the wall clock stepped back
  EXPECT_LT(t, u);
  EXPECT_LT(u, v);
  EXPECT_EQ(v.wall_millis(), 1000u);
  EXPECT_EQ(v.logical(), 2u);
}

TEST(Hlc, ObserveMovesPastARemoteTimestampFromTheFuture) {
  Hlc local = HlcTick(Hlc(), 1000);
  Hlc remote = Hlc::FromParts(5000, 3);
  Hlc after = HlcObserve(local, remote, 1001);
  EXPECT_GT(after, remote);
  EXPECT_GT(after, local);
  EXPECT_EQ(after.wall_millis(), 5000u);
  EXPECT_GT(HlcTick(after, 1002), after);
}

TEST(Hlc, ABoundedObserveFollowsARemoteClockOnlyUpToItsBound) {
  const Hlc local = HlcTick(Hlc(), 1000);
  // Within the bound: the same as HlcObserve.
  const Hlc near = Hlc::FromParts(1500, 7);
  EXPECT_EQ(HlcObserveBounded(local, near, 1001, 500), HlcObserve(local, near, 1001));
  // Beyond it (a clock a year ahead, or a forged maximum): the clock stops at the bound, and is
  // still strictly past what it had.
  for (const Hlc far : {Hlc::FromParts(1001 + 365ull * 24 * 3600 * 1000, 0),
                        Hlc::FromPacked(~uint64_t{0})}) {
    const Hlc after = HlcObserveBounded(local, far, 1001, 500);
    EXPECT_GT(after, local);
    EXPECT_LE(after.wall_millis(), 1001u + 500u + 1u) << after.DebugString();
    EXPECT_GT(HlcTick(after, 1002), after);
  }
  // A bound past the end of representable time saturates instead of wrapping.
  const Hlc top = HlcObserveBounded(local, Hlc::FromPacked(~uint64_t{0}), 1001, ~uint64_t{0});
  EXPECT_EQ(top.wall_millis(), Hlc::kMaxWallMillis);
}

TEST(Hlc, LogicalOverflowBorrowsTheNextMillisecond) {
  Hlc t = Hlc::FromParts(10, Hlc::kMaxLogical);
  Hlc u = HlcTick(t, 10);
  EXPECT_GT(u, t);
  EXPECT_EQ(u.wall_millis(), 11u);
  EXPECT_EQ(u.logical(), 0u);
}

TEST(Hlc, PackedFormComparesLikeTheParts) {
  EXPECT_LT(Hlc::FromParts(1, 500), Hlc::FromParts(2, 0));
  EXPECT_EQ(Hlc::FromPacked(Hlc::FromParts(77, 5).packed()), Hlc::FromParts(77, 5));
}

}  // namespace
}  // namespace mergedb::crdt

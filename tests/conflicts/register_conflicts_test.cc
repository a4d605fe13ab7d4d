// Registers: what a field holds when two nodes set it at the same time.
#include "tests/conflicts/replicas.h"

namespace mergedb::crdt::testing {
namespace {

TEST(RegisterConflicts, ConcurrentRegisterWritesKeepSiblingsAndAgreeOnWinner) {
  // Situation: "title" is unset; node 0 and node 1 set it without seeing each other's write.
  // Node 0 writes "draft" at 10:00:01.000, node 1 writes "final" at 10:00:01.005; node 2 gets
  // both, in the opposite order from node 0. Every node keeps both values as siblings and
  // shows "final": the highest hybrid timestamp wins, the same on every node.
  Replicas r(3);
  Document d0 = Replicas::Ok(r[0].SetRegister({"title"}, Str("draft"), Replicas::Id(0), r.Clock(0, 1000)));
  Document d1 = Replicas::Ok(r[1].SetRegister({"title"}, Str("final"), Replicas::Id(1), r.Clock(1, 1005)));
  r.Deliver(d1, {0, 2});
  r.Deliver(d0, {1, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.Json(i), R"pb(struct_value { fields { key: "title" value { string_value: "final" } } })pb");
    auto conflicts = r[i].Conflicts();
    ASSERT_EQ(conflicts.size(), 1u);
    EXPECT_EQ(conflicts[0].path, (Path{"title"}));
    ASSERT_EQ(conflicts[0].siblings.size(), 2u);
    EXPECT_EQ(conflicts[0].siblings[0].value().scalar().string_value(), "final");
    EXPECT_EQ(conflicts[0].siblings[1].value().scalar().string_value(), "draft");
  }
}

TEST(RegisterConflicts, CausallyLaterWriteWinsEvenWithAnOlderClock) {
  // Situation: node 0's clock runs 4 s fast. It writes "v1"; node 1 receives that write and
  // then writes "v2" with its slower clock. Every node shows "v2" and no siblings: a write
  // supersedes everything it observed, whatever the clocks say; timestamps only rank
  // concurrent writes.
  Replicas r(3);
  Document d0 = Replicas::Ok(r[0].SetRegister({"status"}, Str("v1"), Replicas::Id(0), r.Clock(0, 5000)));
  r.Deliver(d0, {1});
  Document d1 = Replicas::Ok(r[1].SetRegister({"status"}, Str("v2"), Replicas::Id(1), r.Clock(1, 1000)));
  r.Deliver(d1, {0, 2});
  r.Deliver(d0, {2});  // node 2 hears the older write last
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.Json(i), R"pb(struct_value { fields { key: "status" value { string_value: "v2" } } })pb");
    EXPECT_TRUE(r[i].Conflicts().empty());
  }
}

TEST(RegisterConflicts, EqualTimestampsAreBrokenByReplicaId) {
  // Situation: node 0 and node 2 write "color" concurrently with identical hybrid timestamps
  // (same millisecond, same logical counter). Both values are kept as siblings, and every node
  // shows node 2's value because its replica id is higher: the tie-break is total.
  Replicas r(3);
  Document d0 = Replicas::Ok(r[0].SetRegister({"color"}, Str("red"), Replicas::Id(0), Hlc::FromParts(7, 0)));
  Document d2 = Replicas::Ok(r[2].SetRegister({"color"}, Str("blue"), Replicas::Id(2), Hlc::FromParts(7, 0)));
  r.Deliver(d0, {1, 2});
  r.Deliver(d2, {0, 1});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.Json(i), R"pb(struct_value { fields { key: "color" value { string_value: "blue" } } })pb");
  }
}

TEST(RegisterConflicts, AWriteThatSawBothSiblingsResolvesTheConflict) {
  // Situation: nodes 0 and 1 wrote "title" concurrently, so every node holds two siblings.
  // Node 2, having seen both, writes "merged". Every node then holds exactly "merged": a
  // write supersedes all siblings it observed, which is how an application settles a conflict.
  Replicas r(3);
  Document d0 = Replicas::Ok(r[0].SetRegister({"title"}, Str("a"), Replicas::Id(0), r.Clock(0, 10)));
  Document d1 = Replicas::Ok(r[1].SetRegister({"title"}, Str("b"), Replicas::Id(1), r.Clock(1, 10)));
  r.Deliver(d0, {1, 2});
  r.Deliver(d1, {0, 2});
  ASSERT_EQ(r[2].Conflicts().size(), 1u);
  Document d2 = Replicas::Ok(r[2].SetRegister({"title"}, Str("merged"), Replicas::Id(2), r.Clock(2, 5)));
  r.Deliver(d2, {0, 1});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.Json(i), R"pb(struct_value { fields { key: "title" value { string_value: "merged" } } })pb");
    EXPECT_TRUE(r[i].Conflicts().empty());
  }
}

TEST(RegisterConflicts, AWriteBasedOnAnOlderReadSupersedesOnlyWhatThatReadSaw) {
  // Situation: a client reads "title" = "a" from node 0 and keeps the version token; meanwhile
  // node 1's write "b" reaches node 0. The client then writes "c" through node 0 with the token
  // as its base. Every node ends with siblings "c" and "b": the write replaced the "a" its read
  // saw, but "b" arrived after that read, so it is concurrent with the write and is kept.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[0].SetRegister({"title"}, Str("a"), Replicas::Id(0), r.Clock(0, 1))), {1, 2});
  const CausalContext token = r[0].context();
  r.Deliver(Replicas::Ok(r[1].SetRegister({"title"}, Str("b"), Replicas::Id(1), r.Clock(1, 2))), {0, 2});
  r[0].set_observed_limit(&token);
  Document write = Replicas::Ok(r[0].SetRegister({"title"}, Str("c"), Replicas::Id(0), r.Clock(0, 3)));
  r[0].set_observed_limit(nullptr);
  r.Deliver(write, {1, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    auto conflicts = r[i].Conflicts();
    ASSERT_EQ(conflicts.size(), 1u);
    ASSERT_EQ(conflicts[0].siblings.size(), 2u);
    EXPECT_EQ(conflicts[0].siblings[0].value().scalar().string_value(), "c");
    EXPECT_EQ(conflicts[0].siblings[1].value().scalar().string_value(), "b");
  }
}

}  // namespace
}  // namespace mergedb::crdt::testing

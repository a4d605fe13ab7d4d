// Counters: concurrent increments and removal.
#include "tests/conflicts/replicas.h"

namespace mergedb::crdt::testing {
namespace {

TEST(CounterConflicts, ConcurrentIncrementsOnThreeNodesSum) {
  // Situation: "views" starts absent. Node 0 adds 1 twice, node 1 adds 5, node 2 subtracts 2,
  // all concurrently; deltas then arrive in different orders on each node. Every node shows
  // 5: each node's increments count exactly once, whatever the order or duplication.
  Replicas r(3);
  Document a = Replicas::Ok(r[0].Increment({"views"}, 1, Replicas::Id(0)));
  Document b = Replicas::Ok(r[0].Increment({"views"}, 1, Replicas::Id(0)));
  Document c = Replicas::Ok(r[1].Increment({"views"}, 5, Replicas::Id(1)));
  Document d = Replicas::Ok(r[2].Increment({"views"}, -2, Replicas::Id(2)));
  r.Deliver(b, {1});  // node 1 sees node 0's second increment before its first
  r.Deliver(a, {1});
  r.Deliver(d, {0, 1});
  r.Deliver(c, {2, 0});
  r.Deliver(a, {2});
  r.Deliver(b, {2, 2});  // duplicated
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r[i].ReadField({"views"})[0].value().counter(), 5);
  }
}

TEST(CounterConflicts, RemoveFieldLosesToConcurrentUnseenIncrement) {
  // Situation: "likes" is 10 on every node (node 0 added 7, node 1 added 3). Node 2 removes
  // the field; concurrently node 1, not having seen the removal, adds 1. The field survives on
  // every node with value 4: the removal deleted what node 2 had seen, but node 1's new
  // increment carries node 1's running total (3 + 1), so node 1's share comes back with it.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[0].Increment({"likes"}, 7, Replicas::Id(0))), {1, 2});
  r.Deliver(Replicas::Ok(r[1].Increment({"likes"}, 3, Replicas::Id(1))), {0, 2});
  Document remove = r[2].RemoveField({"likes"});
  Document inc = Replicas::Ok(r[1].Increment({"likes"}, 1, Replicas::Id(1)));
  r.Deliver(remove, {0, 1});
  r.Deliver(inc, {0, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.Json(i), R"pb(struct_value { fields { key: "likes" value { number_value: 4 } } })pb");
  }
}

TEST(CounterConflicts, RemoveFieldThatSawEveryIncrementResetsIt) {
  // Situation: "likes" is 10 and node 2 removes it after seeing every increment; later node 0
  // (having received the removal) adds 1. Every node shows 1: a removal that observed every
  // increment is a reset, and counting starts again from zero.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[0].Increment({"likes"}, 10, Replicas::Id(0))), {1, 2});
  r.Deliver(r[2].RemoveField({"likes"}), {0, 1});
  r.Deliver(Replicas::Ok(r[0].Increment({"likes"}, 1, Replicas::Id(0))), {1, 2});
  r.ExpectConverged();
  EXPECT_EQ(r[1].ReadField({"likes"})[0].value().counter(), 1);
}

}  // namespace
}  // namespace mergedb::crdt::testing

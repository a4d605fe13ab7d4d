// Sets and flags: add vs remove, enable vs disable.
#include "tests/conflicts/replicas.h"

namespace mergedb::crdt::testing {
namespace {

std::vector<std::string> Tags(Document& d) {
  std::vector<std::string> out;
  auto fields = d.ReadField({"tags"});
  if (fields.empty()) return out;
  for (const auto& e : fields[0].value().set().elements()) out.push_back(e.string_value());
  return out;
}

TEST(SetConflicts, AddWinsOverConcurrentRemoveOfTheSameElement) {
  // Situation: every node holds tags {"red"}. Node 0 removes "red"; concurrently node 1 adds
  // "red" again. Every node ends with {"red"}: a remove deletes only the adds it observed, and
  // node 1's add was new to it.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[2].AddElements({"tags"}, {S("red")}, Replicas::Id(2))), {0, 1});
  Document remove = Replicas::Ok(r[0].RemoveElements({"tags"}, {S("red")}));
  Document add = Replicas::Ok(r[1].AddElements({"tags"}, {S("red")}, Replicas::Id(1)));
  r.Deliver(add, {0, 2});
  r.Deliver(remove, {1, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Tags(r[i]), (std::vector<std::string>{"red"}));
}

TEST(SetConflicts, RemoveOfAnUnseenElementRemovesNothing) {
  // Situation: node 0 adds "blue"; node 1, which has not received it, removes "blue". Every
  // node ends with {"blue"}: node 1 had observed no add of "blue", so its remove is empty.
  Replicas r(3);
  Document add = Replicas::Ok(r[0].AddElements({"tags"}, {S("blue")}, Replicas::Id(0)));
  Document remove = Replicas::Ok(r[1].RemoveElements({"tags"}, {S("blue")}));
  r.Deliver(remove, {0, 2});
  r.Deliver(add, {1, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Tags(r[i]), (std::vector<std::string>{"blue"}));
}

TEST(SetConflicts, IntegerOneAndDoubleOneAreDifferentElements) {
  // Situation: node 0 adds the integer 1 to "ids"; node 1 concurrently adds the double 1.0 and
  // later removes the double 1.0. Every node ends with just the integer 1: values are typed, so
  // 1 and 1.0 are two elements and removing one never touches the other.
  Replicas r(3);
  Document add_int = Replicas::Ok(r[0].AddElements({"ids"}, {Scalar::OfInt(1)}, Replicas::Id(0)));
  Document add_double = Replicas::Ok(r[1].AddElements({"ids"}, {Scalar::OfDouble(1.0)}, Replicas::Id(1)));
  r.Deliver(add_int, {1, 2});
  Document remove_double = Replicas::Ok(r[1].RemoveElements({"ids"}, {Scalar::OfDouble(1.0)}));
  r.Deliver(add_double, {0, 2});
  r.Deliver(remove_double, {0, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    auto fields = r[i].ReadField({"ids"});
    ASSERT_EQ(fields.size(), 1u);
    ASSERT_EQ(fields[0].value().set().elements_size(), 1);
    EXPECT_EQ(fields[0].value().set().elements(0).kind_case(), mergedb::v1::Scalar::kIntValue);
  }
}

TEST(FlagConflicts, EnableWinsOverConcurrentDisable) {
  // Situation: "archived" is enabled everywhere. Node 0 disables it while node 1 concurrently
  // enables it again. Every node shows true: enable wins. Then node 2, having seen both,
  // disables it, and every node shows false: a disable that observed every enable sticks.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[2].SetFlag({"archived"}, true, Replicas::Id(2))), {0, 1});
  Document off = Replicas::Ok(r[0].SetFlag({"archived"}, false, Replicas::Id(0)));
  Document on = Replicas::Ok(r[1].SetFlag({"archived"}, true, Replicas::Id(1)));
  r.Deliver(off, {1, 2});
  r.Deliver(on, {0, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(r[i].ReadField({"archived"})[0].value().flag());
  r.Deliver(Replicas::Ok(r[2].SetFlag({"archived"}, false, Replicas::Id(2))), {0, 1});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(r[i].ReadField({"archived"})[0].value().flag());
}

}  // namespace
}  // namespace mergedb::crdt::testing

// Documents and nested maps: removal, deletion, type divergence, delivery order.
#include <algorithm>

#include "tests/conflicts/replicas.h"

namespace mergedb::crdt::testing {
namespace {

TEST(DocumentConflicts, ConcurrentEditsOfDifferentNestedFieldsBothSurvive) {
  // Situation: node 0 sets address.city and node 1 sets address.zip, concurrently. Every node
  // ends with both fields in one "address" map: nested maps merge field by field.
  Replicas r(3);
  Document a = Replicas::Ok(r[0].SetRegister({"address", "city"}, Str("Lyon"), Replicas::Id(0), r.Clock(0, 1)));
  Document b = Replicas::Ok(r[1].SetRegister({"address", "zip"}, Str("69001"), Replicas::Id(1), r.Clock(1, 1)));
  r.Deliver(a, {1, 2});
  r.Deliver(b, {0, 2});
  r.ExpectConverged();
  EXPECT_EQ(r.Json(2),
            R"pb(struct_value { fields { key: "address" value { struct_value { fields { key: "city" value { string_value: "Lyon" } } fields { key: "zip" value { string_value: "69001" } } } } } })pb");
}

TEST(DocumentConflicts, RemoveNestedMapLosesToConcurrentUnseenEditInside) {
  // Situation: every node holds address = {city: "Lyon"}. Node 2 removes "address"; node 0,
  // not having seen that, sets address.street. Every node ends with address = {street: ...}:
  // the removal deleted the city it saw, the unseen street survives and keeps the map alive.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[0].SetRegister({"address", "city"}, Str("Lyon"), Replicas::Id(0), r.Clock(0, 1))), {1, 2});
  Document remove = r[2].RemoveField({"address"});
  Document street = Replicas::Ok(r[0].SetRegister({"address", "street"}, Str("Rue Neuve"), Replicas::Id(0), r.Clock(0, 2)));
  r.Deliver(remove, {0, 1});
  r.Deliver(street, {1, 2});
  r.ExpectConverged();
  EXPECT_EQ(r.Json(1),
            R"pb(struct_value { fields { key: "address" value { struct_value { fields { key: "street" value { string_value: "Rue Neuve" } } } } } })pb");
}

TEST(DocumentConflicts, DeleteDocumentKeepsConcurrentUnseenUpdate) {
  // Situation: the document has name and score on every node. Node 0 deletes the document;
  // concurrently node 1 increments score by 1. Every node ends with a document holding only
  // score = node 1's contribution: a delete removes what it observed; an unseen write survives.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[2].SetRegister({"name"}, Str("x"), Replicas::Id(2), r.Clock(2, 1))), {0, 1});
  r.Deliver(Replicas::Ok(r[2].Increment({"score"}, 5, Replicas::Id(2))), {0, 1});
  Document del = r[0].Delete();
  Document inc = Replicas::Ok(r[1].Increment({"score"}, 1, Replicas::Id(1)));
  r.Deliver(del, {1, 2});
  r.Deliver(inc, {0, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(r[i].exists());
    EXPECT_EQ(r.Json(i), R"pb(struct_value { fields { key: "score" value { number_value: 1 } } })pb");
  }
}

TEST(DocumentConflicts, LateDuplicateOfAnOldDeltaCannotResurrectADeletedDocument) {
  // Situation: node 0 sets title and tags; every node receives both; node 1 deletes the
  // document and every node receives the delete. Then the old deltas arrive again (a retry, a
  // slow path) and a full-state merge from a stale snapshot is replayed. The document stays
  // deleted everywhere: the tombstone's causal context already covers those writes.
  Replicas r(3);
  Document title = Replicas::Ok(r[0].SetRegister({"title"}, Str("t"), Replicas::Id(0), r.Clock(0, 1)));
  Document tags = Replicas::Ok(r[0].AddElements({"tags"}, {S("a"), S("b")}, Replicas::Id(0)));
  r.Deliver(title, {1, 2});
  r.Deliver(tags, {1, 2});
  const Document stale_snapshot = r[2];
  r.Deliver(r[1].Delete(), {0, 2});
  r.Deliver(tags, {0, 1, 2});
  r.Deliver(title, {0, 1, 2});
  r.Deliver(stale_snapshot, {0, 1, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(r[i].exists());
    EXPECT_FALSE(r[i].context().empty()) << "the tombstone keeps the context";
  }
}

TEST(DocumentConflicts, DeleteBasedOnAnOlderReadKeepsFieldsWrittenSince) {
  // Situation: a client reads the document {name} from node 0 and keeps the version token;
  // then node 1 adds "email", which reaches node 0. The client deletes the document through
  // node 0 with the token as base. Every node ends with a document holding only "email": the
  // delete removed what the read saw, nothing that arrived after it.
  Replicas r(3);
  r.Deliver(Replicas::Ok(r[0].SetRegister({"name"}, Str("ada"), Replicas::Id(0), r.Clock(0, 1))), {1, 2});
  const CausalContext token = r[0].context();
  r.Deliver(Replicas::Ok(r[1].SetRegister({"email"}, Str("a@x"), Replicas::Id(1), r.Clock(1, 2))), {0, 2});
  r[0].set_observed_limit(&token);
  Document del = r[0].Delete();
  r[0].set_observed_limit(nullptr);
  r.Deliver(del, {1, 2});
  r.ExpectConverged();
  EXPECT_EQ(r.Json(2), R"pb(struct_value { fields { key: "email" value { string_value: "a@x" } } })pb");
}

TEST(DocumentConflicts, TypeDivergenceKeepsBothKindsAndAgreesOnPrecedence) {
  // Situation: "x" is absent. Node 0 increments counter x by 3 while node 1 concurrently sets
  // register x = "hi". Every node keeps both (fields are keyed by name and kind, so nothing is
  // lost); the JSON view shows the counter (precedence map > set > counter > register > flag),
  // the typed view lists both, and Conflicts() reports the kinds.
  Replicas r(3);
  Document counter = Replicas::Ok(r[0].Increment({"x"}, 3, Replicas::Id(0)));
  Document reg = Replicas::Ok(r[1].SetRegister({"x"}, Str("hi"), Replicas::Id(1), r.Clock(1, 1)));
  r.Deliver(counter, {1, 2});
  r.Deliver(reg, {0, 2});
  r.ExpectConverged();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.Json(i), R"pb(struct_value { fields { key: "x" value { number_value: 3 } } })pb");
    auto fields = r[i].ReadField({"x"});
    ASSERT_EQ(fields.size(), 2u);
    EXPECT_EQ(fields[0].kind(), mergedb::v1::FIELD_KIND_COUNTER);
    EXPECT_FALSE(fields[0].shadowed());
    EXPECT_EQ(fields[1].kind(), mergedb::v1::FIELD_KIND_REGISTER);
    EXPECT_TRUE(fields[1].shadowed());
    auto conflicts = r[i].Conflicts();
    ASSERT_EQ(conflicts.size(), 1u);
    EXPECT_EQ(conflicts[0].kinds, (std::vector<FieldKind>{FieldKind::kCounter, FieldKind::kRegister}));
  }
  // Removing the field clears both kinds; then a write of either kind is accepted again.
  r.Deliver(r[2].RemoveField({"x"}), {0, 1});
  EXPECT_TRUE(r[0].SetRegister({"x"}, Str("settled"), Replicas::Id(0), r.Clock(0, 2)).ok());
}

TEST(DocumentConflicts, LocalWriteOfAnotherKindIsRefused) {
  // Situation: node 0 holds counter "x" and map "m". It tries to set register x, and to add to
  // a set at m.y's parent "m" as if it were a set. Both writes are refused with
  // FailedPrecondition naming the field and its kind, and the document is unchanged.
  Replicas r(1);
  Replicas::Ok(r[0].Increment({"x"}, 1, Replicas::Id(0)));
  Replicas::Ok(r[0].SetFlag({"m", "y"}, true, Replicas::Id(0)));
  const std::string before = r[0].Encode();
  auto reg = r[0].SetRegister({"x"}, Str("no"), Replicas::Id(0), r.Clock(0, 1));
  EXPECT_EQ(reg.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(reg.status().message(), "field x is a counter, not a register");
  auto set = r[0].AddElements({"m"}, {S("a")}, Replicas::Id(0));
  EXPECT_EQ(set.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(set.status().message(), "field m is a map, not a set");
  auto through = r[0].Increment({"x", "deeper"}, 1, Replicas::Id(0));
  EXPECT_EQ(through.status().message(), "field x is a counter, not a map");
  EXPECT_EQ(r[0].Encode(), before);
}

TEST(DocumentConflicts, ThreeReplicasWithDifferentDeliveryOrdersConverge) {
  // Situation: each of three nodes makes four concurrent edits of overlapping fields (register,
  // counter, set add and remove, a field removal). Each node receives the others' deltas in a
  // different order, with duplicates. All three end byte-identical, and equal to the state
  // that merging everything at once gives: delivery order never matters.
  Replicas r(3);
  std::vector<Document> deltas;
  for (int i = 0; i < 3; ++i) {
    const ReplicaId id = Replicas::Id(i);
    deltas.push_back(Replicas::Ok(r[i].SetRegister({"title"}, Str("t" + std::to_string(i)), id, r.Clock(i, 10))));
    deltas.push_back(Replicas::Ok(r[i].Increment({"n"}, i + 1, id)));
    deltas.push_back(Replicas::Ok(r[i].AddElements({"s"}, {S("k" + std::to_string(i)), S("shared")}, id)));
    deltas.push_back(i == 1 ? r[i].RemoveField({"title"}) : Replicas::Ok(r[i].RemoveElements({"s"}, {S("shared")})));
  }
  Document everything;
  for (const Document& d : deltas) everything.Join(d);
  std::vector<size_t> order(deltas.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  for (int i = 0; i < 3; ++i) {
    std::rotate(order.begin(), order.begin() + 5, order.end());
    std::reverse(order.begin() + i, order.end());
    for (size_t k : order) r.Deliver(deltas[k], {i});
    r.Deliver(deltas[static_cast<size_t>(i)], {i});
  }
  r.ExpectConverged();
  EXPECT_EQ(r[0].Encode(), everything.Encode());
  EXPECT_EQ(r[0].ReadField({"n"})[0].value().counter(), 6);
  // Node 1 removed "title" after writing t1 only, so t0 and t2 survive as siblings; t2 wins.
  EXPECT_EQ(r[0].ReadField({"title"})[0].value().register_().winner().scalar().string_value(), "t2");
}

}  // namespace
}  // namespace mergedb::crdt::testing

#include "crdt/document.h"

#include <limits>
#include <string>

#include "absl/strings/match.h"
#include "crdt/leaf_ops.h"
#include "gtest/gtest.h"

namespace mergedb::crdt {
namespace {

constexpr ReplicaId kA = 0xaaaa000000000001ULL;
constexpr ReplicaId kB = 0xbbbb000000000002ULL;

RegisterValue Str(std::string s) { return RegisterValue::OfScalar(Scalar::OfString(std::move(s))); }

TEST(Document, EveryOperationShowsInTheJsonView) {
  Document doc;
  ASSERT_TRUE(doc.SetRegister({"name"}, Str("ada"), kA, Hlc::FromParts(1, 0)).ok());
  ASSERT_TRUE(doc.Increment({"stats", "visits"}, 41, kA).ok());
  ASSERT_TRUE(doc.Increment({"stats", "visits"}, 1, kA).ok());
  ASSERT_TRUE(doc.SetFlag({"active"}, true, kA).ok());
  ASSERT_TRUE(doc.AddElements({"tags"}, {Scalar::OfString("x"), Scalar::OfInt(2)}, kA).ok());
  ASSERT_TRUE(doc.RemoveElements({"tags"}, {Scalar::OfString("x")}).ok());
  EXPECT_EQ(doc.ToJson().ShortDebugString(),
            R"pb(struct_value { fields { key: "active" value { bool_value: true } } fields { key: "name" value { string_value: "ada" } } fields { key: "stats" value { struct_value { fields { key: "visits" value { number_value: 42 } } } } } fields { key: "tags" value { list_value { values { number_value: 2 } } } } })pb");
  EXPECT_TRUE(doc.Conflicts().empty());
}

// live_dots() counts live entries over all leaves (what the store's document cache charges
// for): a set element each, a counter's dot per replica that incremented it; removals and
// superseded dots leave the count.
TEST(Document, LiveDotsCountEveryLiveEntry) {
  Document doc;
  EXPECT_EQ(doc.kernel().live_dots(), 0u);
  ASSERT_TRUE(
      doc.AddElements({"s"}, {Scalar::OfInt(1), Scalar::OfInt(2), Scalar::OfInt(3)}, kA).ok());
  EXPECT_EQ(doc.kernel().live_dots(), 3u);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(doc.Increment({"n"}, 1, kA).ok());
  EXPECT_EQ(doc.kernel().live_dots(), 4u) << "one live dot per replica per counter";
  ASSERT_TRUE(doc.Increment({"n"}, 1, kB).ok());
  EXPECT_EQ(doc.kernel().live_dots(), 5u);
  ASSERT_TRUE(doc.RemoveElements({"s"}, {Scalar::OfInt(2)}).ok());
  EXPECT_EQ(doc.kernel().live_dots(), 4u);
  (void)doc.RemoveField({"n"});
  EXPECT_EQ(doc.kernel().live_dots(), 2u);
}

TEST(Document, RegistersHoldOpaqueJson) {
  Document doc;
  google::protobuf::Value json;
  json.mutable_list_value()->add_values()->set_string_value("deep");
  ASSERT_TRUE(doc.SetRegister({"blob"}, RegisterValue::OfJson(json), kA, Hlc::FromParts(1, 0)).ok());
  EXPECT_EQ(doc.ToJson().struct_value().fields().at("blob").list_value().values(0).string_value(),
            "deep");
}

TEST(Document, CountersAreExactInt64) {
  Document doc;
  const int64_t big = (int64_t{1} << 60) + 1;
  ASSERT_TRUE(doc.Increment({"c"}, big, kA).ok());
  EXPECT_EQ(doc.ReadField({"c"})[0].value().counter(), big);
  EXPECT_EQ(doc.Increment({"c"}, std::numeric_limits<int64_t>::max(), kA).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(doc.ReadField({"c"})[0].value().counter(), big);
}

// Concurrent adds on two replicas can take a counter past int64, which no single replica would
// accept: a read shows the limit, and adds back toward the range are taken (the counter is not
// stuck there), while one further out is still refused.
TEST(Document, ACounterConcurrentlyPastInt64TakesAddsBackTowardTheRange) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  Document a, b;
  auto from_a = a.Increment({"c"}, kMax, kA);
  auto from_b = b.Increment({"c"}, kMax, kB);
  ASSERT_TRUE(from_a.ok() && from_b.ok());
  a.Join(*from_b);
  b.Join(*from_a);
  EXPECT_EQ(a.ReadField({"c"})[0].value().counter(), kMax);
  EXPECT_EQ(a.Increment({"c"}, 1, kA).status().code(), absl::StatusCode::kOutOfRange);
  ASSERT_TRUE(a.Increment({"c"}, -1, kA).ok()) << "an add back toward the range";
  ASSERT_TRUE(b.Increment({"c"}, -kMax, kB).ok());
  EXPECT_EQ(b.ReadField({"c"})[0].value().counter(), kMax);
  a.Join(b);
  EXPECT_EQ(a.ReadField({"c"})[0].value().counter(), kMax - 1);
}

// Joined without one of its deltas (a log with a gap, replayed after a repair), a counter keeps
// the entry the missing delta replaced beside the next one, and counts it twice; the stale
// entries delta keeps only each replica's newest, which holds its running total. Other kinds
// of leaves are left alone.
TEST(Document, StaleCounterEntriesOfAGappedJoinAreRemovedAndTheTotalIsExact) {
  Document source;
  std::vector<Document> deltas;
  for (int64_t by : {1, 10, 100}) {
    auto delta = source.Increment({"c"}, by, kA);
    ASSERT_TRUE(delta.ok());
    deltas.push_back(*delta);
  }
  auto other = source.Increment({"c"}, 5, kB);
  ASSERT_TRUE(other.ok());
  auto siblings = source.SetRegister({"r"}, Str("x"), kA, Hlc::FromParts(1, 0));
  ASSERT_TRUE(siblings.ok());
  Document gapped;
  for (const Document* d : {&deltas[0], &deltas[2], &*other, &*siblings}) gapped.Join(*d);
  EXPECT_EQ(gapped.ReadField({"c"})[0].value().counter(), 1 + 111 + 5) << "counted twice";
  auto stale = Document::FromKernel(StaleCounterEntriesDelta(gapped.kernel()));
  ASSERT_TRUE(stale.ok());
  gapped.Join(*stale);
  EXPECT_EQ(gapped.ReadField({"c"})[0].value().counter(), 116);
  EXPECT_EQ(gapped.ReadField({"c"})[0].value().counter(),
            source.ReadField({"c"})[0].value().counter());
  EXPECT_EQ(gapped.ReadField({"r"}).size(), 1u);
  EXPECT_TRUE(StaleCounterEntriesDelta(source.kernel()).context().empty())
      << "nothing to remove in a state joined in order";
}

// A replica's running totals only grow. A counter that goes up and down by large steps would
// wrap them at 2^64 long before its value leaves int64; the totals are rebased instead (both
// lowered by the same amount), and a peer that applies the deltas in order (as replication
// does) holds the same state, because each new entry replaces the old one by its dot.
TEST(Document, CountersGoingUpAndDownByLargeStepsStayExact) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  Document doc;
  Document peer;
  doc.Join(*peer.Increment({"c"}, 5, kB));
  for (int round = 0; round < 4; ++round) {
    auto up = doc.Increment({"c"}, kMax - 5, kA);
    ASSERT_TRUE(up.ok()) << "round " << round << ": " << up.status();
    EXPECT_EQ(doc.ReadField({"c"})[0].value().counter(), kMax);
    peer.Join(*up);
    auto down = doc.Increment({"c"}, -(kMax - 5), kA);
    ASSERT_TRUE(down.ok()) << "round " << round << ": " << down.status();
    EXPECT_EQ(doc.ReadField({"c"})[0].value().counter(), 5);
    peer.Join(*down);
    EXPECT_EQ(peer.ReadField({"c"})[0].value().counter(), 5);
  }
  EXPECT_EQ(peer.Encode(), doc.Encode());
}

// Only when this replica's share cannot be written at all (the other replicas' shares lie as
// far the other way) is the update refused, clearly, and nothing changes.
TEST(Document, ACounterShareBeyondSixtyFourBitsIsRefused) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  Document doc;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(doc.Increment({"c"}, kMax, kA).ok());
    ASSERT_TRUE(doc.Increment({"c"}, -kMax, kB).ok());
  }
  // The value is 0; kA's share is 2^64 - 2 and kB's share as far below.
  const std::string before = doc.Encode();
  const auto refused = doc.Increment({"c"}, 3, kA);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "running total")) << refused.status();
  EXPECT_EQ(doc.Encode(), before);
  EXPECT_EQ(doc.ReadField({"c"})[0].value().counter(), 0);
  // The same step from the other side is fine: it moves kB's share back.
  ASSERT_TRUE(doc.Increment({"c"}, 3, kB).ok());
  EXPECT_EQ(doc.ReadField({"c"})[0].value().counter(), 3);
}

TEST(Document, RemoveFieldOfAnAbsentFieldIsANoOp) {
  Document doc;
  ASSERT_TRUE(doc.SetFlag({"f"}, true, kA).ok());
  const std::string before = doc.Encode();
  Document delta = doc.RemoveField({"nope"});
  EXPECT_TRUE(delta.context().empty());
  EXPECT_EQ(doc.Encode(), before);
}

TEST(Document, DeleteLeavesATombstoneThatAbsorbsOldDeltas) {
  Document doc;
  Document write = *doc.SetRegister({"a"}, Str("1"), kA, Hlc::FromParts(1, 0));
  doc.Delete();
  EXPECT_FALSE(doc.exists());
  doc.Join(write);
  EXPECT_FALSE(doc.exists());
  // A new write after the delete is a new dot, and is visible.
  ASSERT_TRUE(doc.SetRegister({"a"}, Str("2"), kA, Hlc::FromParts(2, 0)).ok());
  EXPECT_TRUE(doc.exists());
}

TEST(Document, EmptyPathIsInvalid) {
  Document doc;
  EXPECT_EQ(doc.Increment({}, 1, kA).status().code(), absl::StatusCode::kInvalidArgument);
}

// Names and string elements reach clients in protobuf strings: a state from a peer with a name
// or element that is not UTF-8 would make the document unreadable, so it does not decode
// (found by tests/fuzz/replication_fuzzer).
TEST(Document, AReplicaWithNoDotsLeftIsRefusedInsteadOfWritingAStateNoOneCanRead) {
  // A state (forged, or corrupt) in which kA's counter sits one below the largest that decodes.
  Document seed;
  ASSERT_TRUE(seed.SetFlag({"f"}, true, kA).ok());
  mergedb::v1::CausalState state;
  seed.EncodeTo(&state);
  const uint64_t last = CausalContext::kMaxCounter;
  state.mutable_context()->mutable_vector(0)->set_counter(last - 1);
  state.mutable_leaves(0)->mutable_entries(0)->mutable_dot()->set_counter(last - 1);
  auto decoded = Document::Decode(state);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  Document doc = *decoded;
  // One dot left: a set add of two elements is refused whole, one write of one dot goes in ...
  const Document before = doc;
  auto two = doc.AddElements({"s"}, {Scalar::OfInt(1), Scalar::OfInt(2)}, kA);
  EXPECT_EQ(two.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(doc, before);
  ASSERT_TRUE(doc.Increment({"n"}, 1, kA).ok());
  EXPECT_TRUE(Document::Decode(doc.Encode()).ok());
  // ... and then every write of kA is refused, and the document still decodes; kB writes on.
  for (auto refused : {doc.Increment({"n"}, 1, kA), doc.SetFlag({"f"}, false, kA),
                       doc.SetRegister({"r"}, Str("x"), kA, Hlc::FromParts(1, 0))}) {
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kOutOfRange);
    EXPECT_TRUE(absl::StrContains(refused.status().message(), "no dots left"));
  }
  EXPECT_TRUE(Document::Decode(doc.Encode()).ok());
  EXPECT_TRUE(doc.Increment({"n"}, 1, kB).ok());
}

TEST(Document, StatesWithNamesOrElementsThatAreNotUtf8DoNotDecode) {
  const std::string bad = "\xcditle";
  Document named;
  ASSERT_TRUE(named.SetRegister({"map", bad}, Str("x"), kA, Hlc::FromParts(1, 0)).ok());
  auto decoded = Document::Decode(named.Encode());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find("not UTF-8"), absl::string_view::npos);

  Document element;
  ASSERT_TRUE(element.AddElements({"tags"}, {Scalar::OfString(bad)}, kA).ok());
  EXPECT_EQ(Document::Decode(element.Encode()).status().code(),
            absl::StatusCode::kInvalidArgument);

  Document fine;
  ASSERT_TRUE(fine.SetRegister({"caf\xc3\xa9"}, Str("x"), kA, Hlc::FromParts(1, 0)).ok());
  ASSERT_TRUE(fine.AddElements({"tags"}, {Scalar::OfString("\xf0\x9f\x98\x80")}, kA).ok());
  EXPECT_TRUE(Document::Decode(fine.Encode()).ok());
}

// Delta size must follow the change, not the document.
TEST(DocumentDeltaSize, AddingOneElementToAHundredThousandElementSetIsSmall) {
  Document doc;
  std::vector<Scalar> elements;
  for (int64_t i = 0; i < 100000; ++i) elements.push_back(Scalar::OfInt(i));
  ASSERT_TRUE(doc.AddElements({"big"}, elements, kA).ok());
  Document other_replica = doc;
  auto delta = other_replica.AddElements({"big"}, {Scalar::OfString("one more")}, kB);
  ASSERT_TRUE(delta.ok());
  EXPECT_LT(delta->Encode().size(), 64u) << delta->DebugString();
  doc.Join(*delta);
  EXPECT_EQ(doc.ReadField({"big"})[0].value().set().elements_size(), 100001);
  // Removing one element ships the removed dot only.
  auto remove = doc.RemoveElements({"big"}, {Scalar::OfInt(5000)});
  ASSERT_TRUE(remove.ok());
  EXPECT_LT(remove->Encode().size(), 32u);
}

TEST(DocumentDeltaSize, IncrementingACounterInATenThousandFieldDocumentIsSmall) {
  Document doc;
  for (int i = 0; i < 10000; ++i) {
    ASSERT_TRUE(doc.Increment({"f" + std::to_string(i)}, 1, kA).ok());
  }
  auto delta = doc.Increment({"f5000"}, 1, kA);
  ASSERT_TRUE(delta.ok());
  EXPECT_LT(delta->Encode().size(), 64u) << delta->DebugString();
  auto from_b = doc.Increment({"f5000"}, 1, kB);
  ASSERT_TRUE(from_b.ok());
  EXPECT_LT(from_b->Encode().size(), 64u);
  EXPECT_EQ(doc.ReadField({"f5000"})[0].value().counter(), 3);
}

}  // namespace
}  // namespace mergedb::crdt

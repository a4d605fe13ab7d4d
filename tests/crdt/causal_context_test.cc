#include "crdt/causal_context.h"

#include "gtest/gtest.h"

namespace mergedb::crdt {
namespace {

TEST(CausalContext, ContiguousDotsFoldIntoTheVector) {
  CausalContext c;
  c.Add({7, 1});
  c.Add({7, 3});
  EXPECT_EQ(c.vector().at(7), 1u);
  EXPECT_EQ(c.cloud().size(), 1u);
  c.Add({7, 2});
  EXPECT_EQ(c.vector().at(7), 3u);
  EXPECT_TRUE(c.cloud().empty());
  EXPECT_TRUE(c.Contains({7, 2}));
  EXPECT_FALSE(c.Contains({7, 4}));
  EXPECT_FALSE(c.Contains({8, 1}));
}

TEST(CausalContext, MaxSeesCloudDots) {
  CausalContext c;
  c.Add({5, 9});
  c.Add({6, 2});
  EXPECT_EQ(c.Max(5), 9u);
  EXPECT_EQ(c.Max(6), 2u);
  EXPECT_EQ(c.Max(4), 0u);
  EXPECT_EQ(c.NextDot(5), (Dot{5, 10}));
  EXPECT_TRUE(c.Contains({5, 10}));
}

TEST(CausalContext, MaxOfTheLargestReplicaId) {
  CausalContext c;
  c.Add({UINT64_MAX, 4});
  EXPECT_EQ(c.Max(UINT64_MAX), 4u);
}

TEST(CausalContext, JoinIsTheUnionInCanonicalForm) {
  CausalContext a, b;
  a.Add({1, 1});
  a.Add({1, 3});
  b.Add({1, 2});
  b.Add({2, 5});
  CausalContext ab = a;
  ab.Join(b);
  CausalContext ba = b;
  ba.Join(a);
  EXPECT_EQ(ab, ba);
  EXPECT_EQ(ab.vector().at(1), 3u);
  EXPECT_EQ(ab.cloud().size(), 1u);  // (2,5)
  for (Dot d : {Dot{1, 1}, Dot{1, 2}, Dot{1, 3}, Dot{2, 5}}) EXPECT_TRUE(ab.Contains(d));
  EXPECT_FALSE(ab.Contains({2, 4}));
}

TEST(CausalContext, IncludesIsSubsetOfDots) {
  CausalContext big, small;
  big.Add({1, 1});
  big.Add({1, 2});
  big.Add({2, 5});
  small.Add({1, 1});
  EXPECT_TRUE(big.Includes(small));
  small.Add({2, 5});
  EXPECT_TRUE(big.Includes(small));
  small.Add({1, 3});
  EXPECT_FALSE(big.Includes(small));
  EXPECT_TRUE(big.Includes(CausalContext()));
  EXPECT_FALSE(CausalContext().Includes(big));
}

TEST(CausalContext, EncodeDecodeRoundTrips) {
  CausalContext c;
  c.Add({1, 1});
  c.Add({1, 2});
  c.Add({3, 7});
  mergedb::v1::CausalContext proto;
  c.EncodeTo(&proto);
  auto decoded = CausalContext::Decode(proto);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, c);
}

TEST(CausalContext, DecodeRejectsZeroIds) {
  mergedb::v1::CausalContext proto;
  proto.add_cloud()->set_counter(1);
  EXPECT_EQ(CausalContext::Decode(proto).status().code(), absl::StatusCode::kInvalidArgument);
}

// A counter at 2^64 - 1 for a replica made its next local write use the invalid counter 0: the
// write was silently lost, or its delta could not be decoded by any peer (tests/fuzz/
// crdt_join_fuzzer reports it from its seed crash-counter-at-uint64-max). Counters beyond
// 2^63 - 1 do not decode.
TEST(CausalContext, DecodeRejectsCountersNoReplicaCanReach) {
  mergedb::v1::CausalContext proto;
  auto* entry = proto.add_vector();
  entry->set_replica(4);
  entry->set_counter(CausalContext::kMaxCounter);
  EXPECT_TRUE(CausalContext::Decode(proto).ok());
  entry->set_counter(UINT64_MAX);
  EXPECT_EQ(CausalContext::Decode(proto).status().code(), absl::StatusCode::kInvalidArgument);
  proto.clear_vector();
  auto* dot = proto.add_cloud();
  dot->set_replica(4);
  dot->set_counter(CausalContext::kMaxCounter + 1);
  EXPECT_EQ(CausalContext::Decode(proto).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CausalContext, DecodeCanonicalizesNonCanonicalInput) {
  mergedb::v1::CausalContext proto;
  auto* d = proto.add_cloud();
  d->set_replica(4);
  d->set_counter(1);
  auto decoded = CausalContext::Decode(proto);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->vector().at(4), 1u);
  EXPECT_TRUE(decoded->cloud().empty());
}

}  // namespace
}  // namespace mergedb::crdt

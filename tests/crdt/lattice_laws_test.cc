// Property tests of the lattice laws for every CRDT type, on states that share a history (so
// joins exercise removal, supersession and concurrency, not just disjoint unions).
#include <vector>

#include "crdt/document.h"
#include "crdt/types.h"
#include "gtest/gtest.h"
#include "tests/crdt/random_ops.h"

namespace mergedb::crdt {
namespace {

using testing::ClockState;
using testing::Ops;
using testing::ReplicaIdOf;
using testing::Rng;
using testing::SeedsToRun;

// Runs a random history on three replicas with partial, unordered delta delivery and returns
// the three replicas' states. Along the way checks that each mutation's delta, joined into the
// pre-state, gives the post-state, and that every delta round-trips through its encoding.
template <typename T>
std::vector<T> RandomHistory(uint64_t seed) {
  Rng rng(seed);
  std::vector<T> replicas(3);
  std::vector<ClockState> clocks(3);
  std::vector<T> deltas;
  for (int step = 0; step < 40; ++step) {
    const int i = static_cast<int>(rng.Range(0, 2));
    if (!deltas.empty() && rng.Chance(0.4)) {
      replicas[static_cast<size_t>(i)].Join(rng.Pick(deltas));
      continue;
    }
    T& state = replicas[static_cast<size_t>(i)];
    const T before = state;
    T delta = Ops<T>::Mutate(state, ReplicaIdOf(i), rng, clocks[static_cast<size_t>(i)],
                             static_cast<uint64_t>(step));
    T rebuilt = before;
    rebuilt.Join(delta);
    EXPECT_EQ(rebuilt, state) << "delta join != mutation; seed " << seed;
    auto decoded = T::Decode(delta.Encode());
    EXPECT_TRUE(decoded.ok() && *decoded == delta) << "delta encoding; seed " << seed;
    deltas.push_back(std::move(delta));
  }
  return replicas;
}

template <typename T>
T Joined(T a, const T& b) {
  a.Join(b);
  return a;
}

template <typename T>
class LatticeLaws : public ::testing::Test {};

using CrdtTypes = ::testing::Types<PnCounter, MvRegister, EwFlag, AwSet, Document>;
TYPED_TEST_SUITE(LatticeLaws, CrdtTypes);

TYPED_TEST(LatticeLaws, JoinIsCommutativeAssociativeAndIdempotent) {
  for (uint64_t seed : SeedsToRun(1000, 400)) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " (replay: MERGEDB_SEED=" << seed
                                      << ")");
    std::vector<TypeParam> s = RandomHistory<TypeParam>(seed);
    const TypeParam &a = s[0], &b = s[1], &c = s[2];
    ASSERT_EQ(Joined(a, b), Joined(b, a));
    ASSERT_EQ(Joined(Joined(a, b), c), Joined(a, Joined(b, c)));
    ASSERT_EQ(Joined(a, a), a);
    // Join is an upper bound: joining either input again changes nothing.
    ASSERT_EQ(Joined(Joined(a, b), a), Joined(a, b));
  }
}

TYPED_TEST(LatticeLaws, EncodeDecodeRoundTripsAndIsCanonical) {
  for (uint64_t seed : SeedsToRun(5000, 200)) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::vector<TypeParam> s = RandomHistory<TypeParam>(seed);
    for (const TypeParam& state : s) {
      const std::string bytes = state.Encode();
      auto decoded = TypeParam::Decode(bytes);
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      ASSERT_EQ(*decoded, state);
      ASSERT_EQ(decoded->Encode(), bytes);
    }
    // Equal states reached in different orders encode to equal bytes.
    ASSERT_EQ(Joined(s[0], s[1]).Encode(), Joined(s[1], s[0]).Encode());
  }
}

TEST(TypeValidation, DecodeRejectsAStateOfAnotherType) {
  PnCounter counter;
  ASSERT_TRUE(counter.Add(ReplicaIdOf(0), 1).ok());
  auto as_flag = EwFlag::Decode(counter.Encode());
  EXPECT_EQ(as_flag.status().code(), absl::StatusCode::kInvalidArgument);
  auto as_set = AwSet::Decode(counter.Encode());
  EXPECT_EQ(as_set.status().code(), absl::StatusCode::kInvalidArgument);
  auto as_document = Document::Decode(counter.Encode());
  EXPECT_EQ(as_document.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TypeValidation, DecodeRejectsGarbageAndLiveDotsOutsideTheContext) {
  EXPECT_FALSE(Document::Decode(absl::string_view("\xff\xff\xff", 3)).ok());
  mergedb::v1::CausalState state;
  auto* leaf = state.add_leaves();
  leaf->set_key("");
  auto* entry = leaf->add_entries();
  entry->mutable_dot()->set_replica(1);
  entry->mutable_dot()->set_counter(1);
  entry->mutable_counter()->set_increments(1);
  EXPECT_EQ(PnCounter::Decode(state).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mergedb::crdt

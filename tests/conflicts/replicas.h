// Three (or more) in-memory document replicas and an explicit, hand-driven network: the stage
// for the conflict stories. Each write returns the delta it produced; a story decides which
// replica receives which delta, and when.
#ifndef MERGEDB_TESTS_CONFLICTS_REPLICAS_H_
#define MERGEDB_TESTS_CONFLICTS_REPLICAS_H_

#include <initializer_list>
#include <string>
#include <vector>

#include "crdt/document.h"
#include "gtest/gtest.h"

namespace mergedb::crdt::testing {

class Replicas {
 public:
  explicit Replicas(int n) : docs_(static_cast<size_t>(n)), clocks_(static_cast<size_t>(n)) {}

  Document& operator[](int i) { return docs_[static_cast<size_t>(i)]; }
  // Node i's replica id; node 2 has the highest, node 0 the lowest (ties on the HLC go to the
  // higher id).
  static ReplicaId Id(int i) { return 0x1000 + static_cast<ReplicaId>(i); }
  // A register-write timestamp on node i at wall-clock `millis`.
  Hlc Clock(int i, uint64_t millis) {
    Hlc& last = clocks_[static_cast<size_t>(i)];
    return last = HlcTick(last, millis);
  }

  // Unwraps a mutator's result; a story's writes are all expected to be accepted.
  static Document Ok(absl::StatusOr<Document> delta) {
    EXPECT_TRUE(delta.ok()) << delta.status();
    return delta.ok() ? *std::move(delta) : Document();
  }

  void Deliver(const Document& delta, std::initializer_list<int> to) {
    for (int i : to) docs_[static_cast<size_t>(i)].Join(delta);
  }
  // Full-state anti-entropy between every pair: afterwards every replica holds the join of all.
  void SyncAll() {
    Document all;
    for (const Document& d : docs_) all.Join(d);
    for (Document& d : docs_) d.Join(all);
  }

  // Every replica holds byte-identical state.
  void ExpectConverged() {
    for (size_t i = 1; i < docs_.size(); ++i) {
      EXPECT_EQ(docs_[i].Encode(), docs_[0].Encode()) << "replica " << i << " differs";
    }
  }

  std::string Json(int i) { return docs_[static_cast<size_t>(i)].ToJson().ShortDebugString(); }

 private:
  std::vector<Document> docs_;
  std::vector<Hlc> clocks_;
};

inline RegisterValue Str(std::string s) { return RegisterValue::OfScalar(Scalar::OfString(s)); }
inline Scalar S(std::string s) { return Scalar::OfString(std::move(s)); }

}  // namespace mergedb::crdt::testing

#endif  // MERGEDB_TESTS_CONFLICTS_REPLICAS_H_

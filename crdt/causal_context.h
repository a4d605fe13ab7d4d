// CausalContext: the set of dots a CRDT state has seen, kept compact as a version vector plus a
// "dot cloud" of dots not yet contiguous with it.
//
// Invariant (canonical form, kept by every mutator, so equal sets are equal objects):
//   - vector_ holds no zero counters;
//   - every cloud dot (r, n) has n > vector_[r] + 1: contiguous dots are folded into the vector.
//
// Thread safety: a value type; not thread-safe.
#ifndef MERGEDB_CRDT_CAUSAL_CONTEXT_H_
#define MERGEDB_CRDT_CAUSAL_CONTEXT_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "crdt/dot.h"
#include "mergedb/v1/crdt.pb.h"

namespace mergedb::crdt {

class CausalContext {
 public:
  CausalContext() = default;

  bool Contains(const Dot& dot) const;

  // The highest counter of `replica` this context has seen (0 if none).
  uint64_t Max(ReplicaId replica) const;

  // Adds (replica, Max(replica) + 1) and returns it.
  Dot NextDot(ReplicaId replica);

  void Add(const Dot& dot);
  // True when every dot of `other` is in this context.
  bool Includes(const CausalContext& other) const;
  void Join(const CausalContext& other);

  bool empty() const { return vector_.empty() && cloud_.empty(); }
  const std::map<ReplicaId, uint64_t>& vector() const { return vector_; }
  const std::set<Dot>& cloud() const { return cloud_; }

  // Calls fn(replica, first, last) for maximal-by-representation runs of covered dots: one per
  // vector entry (1..n), one per cloud dot (n..n).
  template <typename Fn>
  void ForEachRange(Fn fn) const {
    for (const auto& [replica, counter] : vector_) fn(replica, uint64_t{1}, counter);
    for (const Dot& dot : cloud_) fn(dot.replica, dot.counter, dot.counter);
  }

  // The largest counter Decode accepts. No replica makes 2^63 writes to one document; a larger
  // counter can only come from a forged or corrupt state, and one at 2^64 - 1 for this node's
  // replica would make NextDot wrap to the invalid counter 0 on every later local write.
  static constexpr uint64_t kMaxCounter = (uint64_t{1} << 63) - 1;

  void EncodeTo(mergedb::v1::CausalContext* out) const;
  // Rejects zero replica ids, zero counters and counters above kMaxCounter; accepts any order
  // (the result is canonical).
  static absl::StatusOr<CausalContext> Decode(const mergedb::v1::CausalContext& in);

  std::string DebugString() const;

  friend bool operator==(const CausalContext&, const CausalContext&) = default;

 private:
  // Folds cloud dots of `replica` that became contiguous with the vector.
  void CompactReplica(ReplicaId replica);

  std::map<ReplicaId, uint64_t> vector_;
  std::set<Dot> cloud_;
};

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_CAUSAL_CONTEXT_H_

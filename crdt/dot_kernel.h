// DotKernel: the one causal dot store every mergedb CRDT is built on.
//
// State = (leaves, context): `leaves` maps a leaf key (leaf_key.h) to a DotStore, the live dots of
// that leaf and their immutable payloads; `context` is every dot this state has seen. A dot that is
// in the context but not live was removed (overwritten, decremented away, deleted). A delta has
// the same shape, so applying a delta and merging a full state are the same operation, Join:
//
//   (s, c) ⊔ (s', c') = ((s ∩ s') ∪ (s \ c') ∪ (s' \ c),  c ∪ c')        (pointwise per leaf)
//
// Join is commutative, associative and idempotent (tests/crdt guard those laws). It costs
// O(size of the argument + log n), not O(size of this state): the dots a delta's context removes
// are found through a dot -> leaf index instead of a scan.
//
// Invariants: every live dot is in the context; a dot is live in at most one leaf; all entries of a
// leaf carry the same payload kind; no leaf is empty; the index maps exactly the live dots.
//
// Thread safety: a value type; not thread-safe.
#ifndef MERGEDB_CRDT_DOT_KERNEL_H_
#define MERGEDB_CRDT_DOT_KERNEL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crdt/causal_context.h"
#include "crdt/hlc.h"
#include "crdt/leaf_key.h"
#include "crdt/scalar.h"
#include "mergedb/v1/crdt.pb.h"

namespace mergedb::crdt {

// A set element's dot carries no payload: the dot alone says "added here".
struct ElementPayload {
  friend bool operator==(const ElementPayload&, const ElementPayload&) = default;
};

// A counter dot carries its replica's running totals; a replica keeps one live dot per counter.
struct CounterPayload {
  uint64_t increments = 0;
  uint64_t decrements = 0;
  friend bool operator==(const CounterPayload&, const CounterPayload&) = default;
};

struct RegisterPayload {
  RegisterValue value;
  Hlc hlc;
  friend bool operator==(const RegisterPayload&, const RegisterPayload&) = default;
};

// An enable-wins flag dot: an enable (true) or a disable (false).
struct FlagPayload {
  bool enabled = false;
  friend bool operator==(const FlagPayload&, const FlagPayload&) = default;
};

using Payload = std::variant<ElementPayload, CounterPayload, RegisterPayload, FlagPayload>;
using DotStore = std::map<Dot, Payload>;
using LeafMap = std::map<std::string, DotStore, std::less<>>;

// What a Join changed: for each leaf whose live dots changed, its content before the first change
// (nullopt if it did not exist). Storage rewrites exactly these leaves and uses the pre-images to
// update its state digest incrementally.
struct LeafChanges {
  std::map<std::string, std::optional<DotStore>> before;
  bool empty() const { return before.empty(); }
};

// The field kind a payload belongs to (ElementPayload -> kSet).
FieldKind PayloadKind(const Payload& payload);

class DotKernel {
 public:
  DotKernel() = default;
  // Copies never carry the change journal: it belongs to one object and one scope.
  DotKernel(const DotKernel& other)
      : context_(other.context_),
        leaves_(other.leaves_),
        index_(other.index_),
        heap_bytes_(other.heap_bytes_) {}
  DotKernel& operator=(const DotKernel& other) {
    context_ = other.context_;
    leaves_ = other.leaves_;
    index_ = other.index_;
    heap_bytes_ = other.heap_bytes_;
    return *this;
  }
  DotKernel(DotKernel&& other) noexcept
      : context_(std::move(other.context_)),
        leaves_(std::move(other.leaves_)),
        index_(std::move(other.index_)),
        heap_bytes_(std::exchange(other.heap_bytes_, 0)) {}
  DotKernel& operator=(DotKernel&& other) noexcept {
    context_ = std::move(other.context_);
    leaves_ = std::move(other.leaves_);
    index_ = std::move(other.index_);
    heap_bytes_ = std::exchange(other.heap_bytes_, 0);
    return *this;
  }

  // While `journal` is set, every Join into this state (including those a mutator performs)
  // also records what it changed into `*journal`. Pass nullptr to stop. `*journal` must
  // outlive the recording.
  void set_change_journal(LeafChanges* journal) { journal_ = journal; }

  // While `observed` is set, delta mutators on this state supersede and remove only dots in
  // `*observed` (the causal context of the read an update was based on), not everything this
  // state holds. Not copied, like the journal. `*observed` must outlive the setting.
  // REQUIRES: `*observed` is contained in this state's context (the node waits until it is), so
  // that a client's token can never remove writes this replica has not yet received.
  void set_observed_limit(const CausalContext* observed) { observed_ = observed; }
  // True when a mutator may supersede or remove `dot`.
  bool MaySupersede(const Dot& dot) const {
    return observed_ == nullptr || observed_->Contains(dot);
  }
  const CausalContext* observed_limit() const { return observed_; }

  const CausalContext& context() const { return context_; }
  const LeafMap& leaves() const { return leaves_; }
  bool empty() const { return leaves_.empty(); }
  // The leaf at `key`, or nullptr.
  const DotStore* FindLeaf(absl::string_view key) const;
  bool IsLive(const Dot& dot) const { return index_.count(dot) > 0; }
  // Live entries over all leaves (a set element, a counter's dot per replica, a register's
  // concurrent values): O(1), for estimating what the state takes in memory.
  size_t live_dots() const { return index_.size(); }
  // What the live state holds in strings, beyond fixed sizes per entry: each leaf's key (once
  // in the leaf map, once per live dot in the index) and the strings of register values. Kept
  // up to date as entries come and go, so O(1); with live_dots() and leaves().size(), what an
  // estimate of the state's memory needs. HeapBytesOf recomputes it from scratch (tests).
  size_t heap_bytes() const { return heap_bytes_; }
  static size_t HeapBytesOf(const LeafMap& leaves);
  // The leaves whose key starts with `prefix`, in key order.
  std::pair<LeafMap::const_iterator, LeafMap::const_iterator> LeavesWithPrefix(
      absl::string_view prefix) const;

  // Joins `other` into this state. When `changes` is not null (or a journal is set), records
  // every leaf whose live dots changed, with its content before the change. Dots in `*keep`
  // are never removed: a document split for transfer sends its whole context with its last
  // part, which must not remove the live dots its earlier parts delivered.
  void Join(const DotKernel& other, LeafChanges* changes = nullptr,
            const std::set<Dot>* keep = nullptr);

  // ---- Building deltas. A mutator builds a delta with these, joins it into its state and
  // returns it. ----

  // Adds a live entry (and its dot to the context). REQUIRES: `dot` is not live in another leaf.
  void AddEntry(absl::string_view key, const Dot& dot, Payload payload);
  // Adds `dot` to the context only: joining this delta removes that dot wherever it is live.
  void AddSeen(const Dot& dot) { context_.Add(dot); }
  void AddSeen(const CausalContext& context) { context_.Join(context); }
  // Adds every live dot of `leaf` that `state` may supersede to the context.
  void AddSeenLeaf(const DotStore& leaf, const DotKernel& state);

  // ---- Encoding. The encoding is canonical: equal states encode to equal bytes. ----
  void EncodeTo(mergedb::v1::CausalState* out) const;
  std::string Encode() const;
  static absl::StatusOr<DotKernel> Decode(const mergedb::v1::CausalState& in);
  static absl::StatusOr<DotKernel> Decode(absl::string_view bytes);
  // Assembles a state from separately stored parts, checking every invariant.
  static absl::StatusOr<DotKernel> FromParts(CausalContext context, LeafMap leaves);

  static void EncodeLeaf(absl::string_view key, const DotStore& leaf, mergedb::v1::Leaf* out);
  static absl::StatusOr<DotStore> DecodeLeafEntries(const mergedb::v1::Leaf& in);

  std::string DebugString() const;

  friend bool operator==(const DotKernel& a, const DotKernel& b) {
    return a.context_ == b.context_ && a.leaves_ == b.leaves_;
  }

 private:
  CausalContext context_;
  LeafMap leaves_;
  // Derived from leaves_: where each live dot lives.
  std::map<Dot, std::string> index_;
  // Derived from leaves_: see heap_bytes().
  size_t heap_bytes_ = 0;
  LeafChanges* journal_ = nullptr;
  const CausalContext* observed_ = nullptr;
};

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_DOT_KERNEL_H_

// CausalCrdt<T>: what every mergedb CRDT type shares — a DotKernel state, Join, equality and
// the canonical protobuf encoding (mergedb.v1.CausalState). A derived type adds its mutators and
// readers, and `static absl::Status Validate(const DotKernel&)` that checks a decoded state has
// that type's shape.
//
// Mutators return the delta they applied, as a value of the same type: `a.Join(b.Increment(...))`
// is how a delta travels. Thread safety: value types; not thread-safe.
#ifndef MERGEDB_CRDT_CAUSAL_CRDT_H_
#define MERGEDB_CRDT_CAUSAL_CRDT_H_

#include <set>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crdt/dot_kernel.h"
#include "crdt/status_macros.h"

namespace mergedb::crdt {

template <typename Derived>
class CausalCrdt {
 public:
  const DotKernel& kernel() const { return kernel_; }
  const CausalContext& context() const { return kernel_.context(); }

  // Least upper bound; applies a delta or merges a full state alike. When `changes` is not
  // null, records the leaves whose live dots changed (DotKernel::Join).
  void Join(const Derived& other, LeafChanges* changes = nullptr,
            const std::set<Dot>* keep = nullptr) {
    kernel_.Join(other.kernel_, changes, keep);
  }

  // See DotKernel::set_change_journal.
  void set_change_journal(LeafChanges* journal) { kernel_.set_change_journal(journal); }
  // See DotKernel::set_observed_limit.
  void set_observed_limit(const CausalContext* observed) { kernel_.set_observed_limit(observed); }

  void EncodeTo(mergedb::v1::CausalState* out) const { kernel_.EncodeTo(out); }
  std::string Encode() const { return kernel_.Encode(); }

  static absl::StatusOr<Derived> FromKernel(DotKernel kernel) {
    MERGEDB_RETURN_IF_ERROR(Derived::Validate(kernel));
    return Derived(std::move(kernel));
  }
  static absl::StatusOr<Derived> Decode(const mergedb::v1::CausalState& in) {
    MERGEDB_ASSIGN_OR_RETURN(DotKernel kernel, DotKernel::Decode(in));
    return FromKernel(std::move(kernel));
  }
  static absl::StatusOr<Derived> Decode(absl::string_view bytes) {
    MERGEDB_ASSIGN_OR_RETURN(DotKernel kernel, DotKernel::Decode(bytes));
    return FromKernel(std::move(kernel));
  }

  std::string DebugString() const { return kernel_.DebugString(); }

  friend bool operator==(const Derived& a, const Derived& b) { return a.kernel_ == b.kernel_; }

 protected:
  CausalCrdt() = default;
  explicit CausalCrdt(DotKernel kernel) : kernel_(std::move(kernel)) {}

  // Joins `delta` into this state and returns it as the derived type.
  Derived Apply(DotKernel delta) {
    kernel_.Join(delta);
    return Derived(std::move(delta));
  }

  DotKernel kernel_;
};

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_CAUSAL_CRDT_H_

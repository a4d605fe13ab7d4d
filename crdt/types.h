// The standalone delta-state CRDTs: PN-counter, multi-value register, enable-wins flag and
// add-wins OR-set. Each is a CausalCrdt over one DotKernel; documents (document.h) nest the same
// leaves under field paths. Thread safety: value types; not thread-safe.
#ifndef MERGEDB_CRDT_TYPES_H_
#define MERGEDB_CRDT_TYPES_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crdt/causal_crdt.h"
#include "crdt/leaf_ops.h"

namespace mergedb::crdt {

// PN-counter. Each replica keeps one live dot holding its running increment and decrement
// totals; the value is the sum over live dots. Merge: concurrent increments all count.
class PnCounter : public CausalCrdt<PnCounter> {
 public:
  PnCounter() = default;
  // Adds `by` (negative to decrement). OutOfRange if the value would leave int64.
  absl::StatusOr<PnCounter> Add(ReplicaId replica, int64_t by);
  int64_t Value() const;
  static absl::Status Validate(const DotKernel& kernel);

 private:
  friend class CausalCrdt<PnCounter>;
  using CausalCrdt::CausalCrdt;
};

// Multi-value register. A write supersedes every value it observed; concurrent writes are kept
// as siblings, and the deterministic winner is the highest (HLC timestamp, replica id).
class MvRegister : public CausalCrdt<MvRegister> {
 public:
  MvRegister() = default;
  MvRegister Write(ReplicaId replica, RegisterValue value, Hlc hlc);
  bool has_value() const { return !kernel_.empty(); }
  // REQUIRES: has_value().
  const RegisterValue& Winner() const;
  // Every live value, winner first.
  std::vector<RegisterValue> Siblings() const;
  static absl::Status Validate(const DotKernel& kernel);

 private:
  friend class CausalCrdt<MvRegister>;
  using CausalCrdt::CausalCrdt;
};

// Enable-wins flag: true if any live write is an enable, so an enable concurrent with a disable
// wins. A disable that observed every enable makes it false.
class EwFlag : public CausalCrdt<EwFlag> {
 public:
  EwFlag() = default;
  EwFlag Enable(ReplicaId replica);
  EwFlag Disable(ReplicaId replica);
  bool Value() const;
  static absl::Status Validate(const DotKernel& kernel);

 private:
  friend class CausalCrdt<EwFlag>;
  using CausalCrdt::CausalCrdt;
};

// Add-wins observed-remove set of scalars: one leaf per element (keyed by the element's
// order-preserving encoding). A remove deletes the adds it observed; a concurrent add survives.
class AwSet : public CausalCrdt<AwSet> {
 public:
  AwSet() = default;
  AwSet Add(ReplicaId replica, const Scalar& element);
  // A no-op delta when the element is absent.
  AwSet Remove(const Scalar& element);
  bool Contains(const Scalar& element) const;
  size_t size() const { return kernel_.leaves().size(); }
  // In canonical (encoded) order.
  std::vector<Scalar> Elements() const;
  static absl::Status Validate(const DotKernel& kernel);

 private:
  friend class CausalCrdt<AwSet>;
  using CausalCrdt::CausalCrdt;
};

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_TYPES_H_

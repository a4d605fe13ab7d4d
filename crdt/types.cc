#include "crdt/types.h"

#include "absl/strings/str_cat.h"

namespace mergedb::crdt {

namespace {

// The shape shared by counter, register and flag: at most the single leaf "" of `kind`.
absl::Status ValidateSingleLeaf(const DotKernel& kernel, FieldKind kind) {
  for (const auto& [key, store] : kernel.leaves()) {
    if (!key.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(FieldKindName(kind), " state: unexpected leaf key"));
    }
    if (PayloadKind(store.begin()->second) != kind) {
      return absl::InvalidArgumentError(
          absl::StrCat(FieldKindName(kind), " state: entries of another kind"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PnCounter> PnCounter::Add(ReplicaId replica, int64_t by) {
  MERGEDB_ASSIGN_OR_RETURN(DotKernel delta, CounterAddDelta(kernel_, "", replica, by));
  return Apply(std::move(delta));
}

int64_t PnCounter::Value() const {
  const DotStore* leaf = kernel_.FindLeaf("");
  return leaf == nullptr ? 0 : CounterValue(*leaf);
}

absl::Status PnCounter::Validate(const DotKernel& kernel) {
  return ValidateSingleLeaf(kernel, FieldKind::kCounter);
}

MvRegister MvRegister::Write(ReplicaId replica, RegisterValue value, Hlc hlc) {
  return Apply(RegisterWriteDelta(kernel_, "", replica, std::move(value), hlc));
}

const RegisterValue& MvRegister::Winner() const {
  return RegisterWinner(*kernel_.FindLeaf("")).value;
}

std::vector<RegisterValue> MvRegister::Siblings() const {
  std::vector<RegisterValue> out;
  const DotStore* leaf = kernel_.FindLeaf("");
  if (leaf == nullptr) return out;
  const mergedb::v1::RegisterView view = RegisterViewOf(*leaf);
  for (const auto& sibling : view.siblings()) {
    out.push_back(*RegisterValue::Decode(sibling.value()));
  }
  if (out.empty()) out.push_back(Winner());
  return out;
}

absl::Status MvRegister::Validate(const DotKernel& kernel) {
  return ValidateSingleLeaf(kernel, FieldKind::kRegister);
}

EwFlag EwFlag::Enable(ReplicaId replica) { return Apply(FlagWriteDelta(kernel_, "", replica, true)); }

EwFlag EwFlag::Disable(ReplicaId replica) {
  return Apply(FlagWriteDelta(kernel_, "", replica, false));
}

bool EwFlag::Value() const {
  const DotStore* leaf = kernel_.FindLeaf("");
  return leaf != nullptr && FlagValue(*leaf);
}

absl::Status EwFlag::Validate(const DotKernel& kernel) {
  return ValidateSingleLeaf(kernel, FieldKind::kFlag);
}

AwSet AwSet::Add(ReplicaId replica, const Scalar& element) {
  return Apply(ElementAddDelta(kernel_, element.EncodeKey(), replica));
}

AwSet AwSet::Remove(const Scalar& element) {
  DotKernel delta;
  if (const DotStore* leaf = kernel_.FindLeaf(element.EncodeKey())) delta.AddSeenLeaf(*leaf, kernel_);
  return Apply(std::move(delta));
}

bool AwSet::Contains(const Scalar& element) const {
  return kernel_.FindLeaf(element.EncodeKey()) != nullptr;
}

std::vector<Scalar> AwSet::Elements() const {
  std::vector<Scalar> out;
  for (const auto& leaf : kernel_.leaves()) out.push_back(*Scalar::DecodeKey(leaf.first));
  return out;
}

absl::Status AwSet::Validate(const DotKernel& kernel) {
  for (const auto& [key, store] : kernel.leaves()) {
    MERGEDB_RETURN_IF_ERROR(Scalar::DecodeKey(key).status());
    if (PayloadKind(store.begin()->second) != FieldKind::kSet) {
      return absl::InvalidArgumentError("set state: entries of another kind");
    }
  }
  return absl::OkStatus();
}

}  // namespace mergedb::crdt

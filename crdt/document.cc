#include "crdt/document.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "crdt/utf8.h"

namespace mergedb::crdt {

namespace {

constexpr FieldKind kAllKinds[] = {FieldKind::kCounter, FieldKind::kRegister, FieldKind::kFlag,
                                   FieldKind::kSet, FieldKind::kMap};

struct DecodedLeaf {
  DecodedLeafKey key;
  const DotStore* store;
};

// Decodes the leaves in [begin, end). Validate() guarantees every stored key decodes.
std::vector<DecodedLeaf> DecodeLeaves(LeafMap::const_iterator begin, LeafMap::const_iterator end) {
  std::vector<DecodedLeaf> out;
  for (auto it = begin; it != end; ++it) out.push_back({*DecodeLeafKey(it->first), &it->second});
  return out;
}

FieldKind KindAtDepth(const DecodedLeaf& leaf, size_t depth) {
  return leaf.key.names.size() > depth + 1 ? FieldKind::kMap : leaf.key.kind;
}

mergedb::v1::TypedValue BuildValue(absl::Span<const DecodedLeaf> group, size_t depth,
                                   FieldKind kind);

// Builds the map at `depth` from leaves that all lie under it, in key order. Leaves of one
// (name, kind) are contiguous in key order, so one pass groups them.
mergedb::v1::MapView BuildMap(absl::Span<const DecodedLeaf> leaves, size_t depth) {
  mergedb::v1::MapView map;
  size_t i = 0;
  while (i < leaves.size()) {
    const std::string& name = leaves[i].key.names[depth];
    const FieldKind kind = KindAtDepth(leaves[i], depth);
    size_t j = i + 1;
    while (j < leaves.size() && leaves[j].key.names[depth] == name &&
           KindAtDepth(leaves[j], depth) == kind) {
      ++j;
    }
    auto* field = map.add_fields();
    field->set_name(name);
    field->set_kind(static_cast<mergedb::v1::FieldKind>(kind));
    *field->mutable_value() = BuildValue(leaves.subspan(i, j - i), depth, kind);
    i = j;
  }
  // Mark every kind under a name but the one of highest precedence as shadowed.
  for (int a = 0; a < map.fields_size(); ++a) {
    for (int b = 0; b < map.fields_size(); ++b) {
      const auto& fa = map.fields(a);
      const auto& fb = map.fields(b);
      if (a != b && fa.name() == fb.name() &&
          Document::KindPrecedence(static_cast<FieldKind>(fa.kind())) <
              Document::KindPrecedence(static_cast<FieldKind>(fb.kind()))) {
        map.mutable_fields(a)->set_shadowed(true);
      }
    }
  }
  return map;
}

mergedb::v1::TypedValue BuildValue(absl::Span<const DecodedLeaf> group, size_t depth,
                                   FieldKind kind) {
  mergedb::v1::TypedValue value;
  switch (kind) {
    case FieldKind::kMap:
      *value.mutable_map() = BuildMap(group, depth + 1);
      break;
    case FieldKind::kSet:
      for (const DecodedLeaf& leaf : group) {
        Scalar::DecodeKey(leaf.key.element_key)->EncodeTo(value.mutable_set()->add_elements());
      }
      break;
    case FieldKind::kCounter:
      value.set_counter(CounterValue(*group.front().store));
      break;
    case FieldKind::kRegister:
      *value.mutable_register_() = RegisterViewOf(*group.front().store);
      break;
    case FieldKind::kFlag:
      value.set_flag(FlagValue(*group.front().store));
      break;
  }
  return value;
}

void CollectConflicts(const mergedb::v1::MapView& map, Path* path,
                      std::vector<FieldConflict>* out) {
  for (int i = 0; i < map.fields_size(); ++i) {
    const auto& field = map.fields(i);
    path->push_back(field.name());
    if (i == 0 || map.fields(i - 1).name() != field.name()) {
      FieldConflict kinds{*path, {}, {}};
      for (int j = i; j < map.fields_size() && map.fields(j).name() == field.name(); ++j) {
        kinds.kinds.push_back(static_cast<FieldKind>(map.fields(j).kind()));
      }
      if (kinds.kinds.size() > 1) out->push_back(std::move(kinds));
    }
    if (field.value().has_register_() && field.value().register_().siblings_size() > 1) {
      const auto& siblings = field.value().register_().siblings();
      out->push_back(FieldConflict{*path, {}, {siblings.begin(), siblings.end()}});
    }
    if (field.value().has_map()) CollectConflicts(field.value().map(), path, out);
    path->pop_back();
  }
}

google::protobuf::Value CounterToJson(int64_t v) {
  return Scalar::OfInt(v).ToJson();
}

}  // namespace

int Document::KindPrecedence(FieldKind kind) {
  switch (kind) {
    case FieldKind::kMap:
      return 5;
    case FieldKind::kSet:
      return 4;
    case FieldKind::kCounter:
      return 3;
    case FieldKind::kRegister:
      return 2;
    case FieldKind::kFlag:
      return 1;
  }
  return 0;
}

absl::Status Document::CheckWritable(const Path& path, FieldKind kind) const {
  if (path.empty()) return absl::InvalidArgumentError("empty field path");
  std::string prefix;
  for (size_t i = 0; i < path.size(); ++i) {
    const FieldKind expected = i + 1 < path.size() ? FieldKind::kMap : kind;
    std::string name_prefix = prefix;
    AppendName(&name_prefix, path[i]);
    for (FieldKind other : kAllKinds) {
      if (other == expected) continue;
      auto [begin, end] = kernel_.LeavesWithPrefix(name_prefix + static_cast<char>(other));
      if (begin != end) {
        return absl::FailedPreconditionError(absl::StrCat(
            "field ", absl::StrJoin(path.begin(), path.begin() + i + 1, "."), " is a ",
            FieldKindName(other), ", not a ", FieldKindName(expected)));
      }
    }
    prefix = name_prefix + static_cast<char>(FieldKind::kMap);
  }
  return absl::OkStatus();
}

absl::Status Document::CheckDotsLeft(ReplicaId replica, uint64_t needed) const {
  const uint64_t used = kernel_.context().Max(replica);
  if (used <= CausalContext::kMaxCounter && CausalContext::kMaxCounter - used >= needed) {
    return absl::OkStatus();
  }
  return absl::OutOfRangeError(absl::StrCat(
      "replica ", absl::Hex(replica), " has no dots left in this document (its counter is ", used,
      ", the largest is ", CausalContext::kMaxCounter,
      "): the document's state came from a forged or corrupt peer"));
}

absl::StatusOr<Document> Document::SetRegister(const Path& path, RegisterValue value,
                                               ReplicaId replica, Hlc hlc) {
  MERGEDB_RETURN_IF_ERROR(CheckWritable(path, FieldKind::kRegister));
  MERGEDB_RETURN_IF_ERROR(CheckDotsLeft(replica, 1));
  return Apply(RegisterWriteDelta(kernel_, FieldKey(path, FieldKind::kRegister), replica,
                                  std::move(value), hlc));
}

absl::StatusOr<Document> Document::Increment(const Path& path, int64_t by, ReplicaId replica) {
  MERGEDB_RETURN_IF_ERROR(CheckWritable(path, FieldKind::kCounter));
  MERGEDB_RETURN_IF_ERROR(CheckDotsLeft(replica, 1));
  MERGEDB_ASSIGN_OR_RETURN(
      DotKernel delta, CounterAddDelta(kernel_, FieldKey(path, FieldKind::kCounter), replica, by));
  return Apply(std::move(delta));
}

absl::StatusOr<Document> Document::SetFlag(const Path& path, bool enabled, ReplicaId replica) {
  MERGEDB_RETURN_IF_ERROR(CheckWritable(path, FieldKind::kFlag));
  MERGEDB_RETURN_IF_ERROR(CheckDotsLeft(replica, 1));
  return Apply(FlagWriteDelta(kernel_, FieldKey(path, FieldKind::kFlag), replica, enabled));
}

absl::StatusOr<Document> Document::AddElements(const Path& path,
                                               absl::Span<const Scalar> elements,
                                               ReplicaId replica) {
  MERGEDB_RETURN_IF_ERROR(CheckWritable(path, FieldKind::kSet));
  MERGEDB_RETURN_IF_ERROR(CheckDotsLeft(replica, elements.size()));
  const std::string field_key = FieldKey(path, FieldKind::kSet);
  DotKernel total;
  for (const Scalar& element : elements) {
    DotKernel delta = ElementAddDelta(kernel_, field_key + element.EncodeKey(), replica);
    kernel_.Join(delta);
    total.Join(delta);
  }
  return Document(std::move(total));
}

absl::StatusOr<Document> Document::RemoveElements(const Path& path,
                                                  absl::Span<const Scalar> elements) {
  MERGEDB_RETURN_IF_ERROR(CheckWritable(path, FieldKind::kSet));
  const std::string field_key = FieldKey(path, FieldKind::kSet);
  DotKernel delta;
  for (const Scalar& element : elements) {
    if (const DotStore* leaf = kernel_.FindLeaf(field_key + element.EncodeKey())) {
      delta.AddSeenLeaf(*leaf, kernel_);
    }
  }
  return Apply(std::move(delta));
}

Document Document::RemoveField(const Path& path) {
  if (path.empty()) return Document();
  std::string prefix = MapPrefix(absl::MakeConstSpan(path).subspan(0, path.size() - 1));
  AppendName(&prefix, path.back());
  return Apply(RemovePrefixDelta(kernel_, prefix));
}

Document Document::Delete() {
  DotKernel delta;
  const CausalContext* observed = kernel_.observed_limit();
  delta.AddSeen(observed != nullptr ? *observed : kernel_.context());
  return Apply(std::move(delta));
}

mergedb::v1::MapView Document::ToTyped() const {
  std::vector<DecodedLeaf> leaves = DecodeLeaves(kernel_.leaves().begin(), kernel_.leaves().end());
  return BuildMap(leaves, 0);
}

google::protobuf::Value Document::ToJson() const { return MapToJson(ToTyped()); }

std::vector<mergedb::v1::TypedField> Document::ReadField(const Path& path) const {
  std::vector<mergedb::v1::TypedField> out;
  if (path.empty()) return out;
  std::string prefix = MapPrefix(absl::MakeConstSpan(path).subspan(0, path.size() - 1));
  AppendName(&prefix, path.back());
  auto [begin, end] = kernel_.LeavesWithPrefix(prefix);
  std::vector<DecodedLeaf> leaves = DecodeLeaves(begin, end);
  mergedb::v1::MapView map = BuildMap(leaves, path.size() - 1);
  for (auto& field : *map.mutable_fields()) out.push_back(std::move(field));
  return out;
}

std::vector<FieldConflict> Document::Conflicts() const { return ConflictsIn(ToTyped(), Path()); }

std::vector<FieldConflict> Document::ConflictsIn(const mergedb::v1::MapView& view, Path prefix) {
  std::vector<FieldConflict> out;
  CollectConflicts(view, &prefix, &out);
  return out;
}

google::protobuf::Value Document::TypedToJson(const mergedb::v1::TypedValue& value) {
  switch (value.kind_case()) {
    case mergedb::v1::TypedValue::kCounter:
      return CounterToJson(value.counter());
    case mergedb::v1::TypedValue::kRegister:
      return RegisterValue::Decode(value.register_().winner())->ToJson();
    case mergedb::v1::TypedValue::kFlag: {
      google::protobuf::Value out;
      out.set_bool_value(value.flag());
      return out;
    }
    case mergedb::v1::TypedValue::kSet: {
      google::protobuf::Value out;
      auto* list = out.mutable_list_value();
      for (const auto& element : value.set().elements()) {
        *list->add_values() = Scalar::Decode(element)->ToJson();
      }
      return out;
    }
    case mergedb::v1::TypedValue::kMap:
      return MapToJson(value.map());
    case mergedb::v1::TypedValue::KIND_NOT_SET:
      break;
  }
  google::protobuf::Value null;
  null.set_null_value(google::protobuf::NULL_VALUE);
  return null;
}

google::protobuf::Value Document::MapToJson(const mergedb::v1::MapView& map) {
  google::protobuf::Value out;
  auto* fields = out.mutable_struct_value()->mutable_fields();
  for (const auto& field : map.fields()) {
    if (!field.shadowed()) (*fields)[field.name()] = TypedToJson(field.value());
  }
  return out;
}

absl::Status Document::Validate(const DotKernel& kernel) {
  for (const auto& [key, store] : kernel.leaves()) {
    MERGEDB_ASSIGN_OR_RETURN(DecodedLeafKey decoded, DecodeLeafKey(key));
    // Names and string elements reach clients as protobuf strings, which must be UTF-8: one
    // bad name from a peer would make every read of the document unparseable.
    for (const std::string& name : decoded.names) {
      if (InvalidUtf8At(name) != absl::string_view::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("document state: field name '", absl::CHexEscape(name), "' is not UTF-8"));
      }
    }
    if (decoded.kind == FieldKind::kSet) {
      const auto element = Scalar::DecodeKey(decoded.element_key);  // DecodeLeafKey checked it
      const auto* text = std::get_if<std::string>(&element->rep());
      if (text != nullptr && InvalidUtf8At(*text) != absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat("document state: set element '",
                                                       absl::CHexEscape(*text), "' is not UTF-8"));
      }
    }
    if (PayloadKind(store.begin()->second) != decoded.kind) {
      return absl::InvalidArgumentError(absl::StrCat(
          "document state: a ", FieldKindName(decoded.kind), " leaf holds entries of kind ",
          FieldKindName(PayloadKind(store.begin()->second))));
    }
  }
  return absl::OkStatus();
}

}  // namespace mergedb::crdt

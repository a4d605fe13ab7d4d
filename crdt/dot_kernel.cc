#include "crdt/dot_kernel.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "crdt/status_macros.h"

namespace mergedb::crdt {

FieldKind PayloadKind(const Payload& payload) {
  struct Visitor {
    FieldKind operator()(const ElementPayload&) const { return FieldKind::kSet; }
    FieldKind operator()(const CounterPayload&) const { return FieldKind::kCounter; }
    FieldKind operator()(const RegisterPayload&) const { return FieldKind::kRegister; }
    FieldKind operator()(const FlagPayload&) const { return FieldKind::kFlag; }
  };
  return std::visit(Visitor{}, payload);
}

const DotStore* DotKernel::FindLeaf(absl::string_view key) const {
  auto it = leaves_.find(key);
  return it == leaves_.end() ? nullptr : &it->second;
}

std::pair<LeafMap::const_iterator, LeafMap::const_iterator> DotKernel::LeavesWithPrefix(
    absl::string_view prefix) const {
  auto begin = leaves_.lower_bound(prefix);
  std::string successor = PrefixSuccessor(prefix);
  auto end = successor.empty() ? leaves_.end() : leaves_.lower_bound(successor);
  return {begin, end};
}

namespace {

// What one live entry adds to heap_bytes(): its leaf's key, as the index holds a copy per live
// dot, and its payload's strings (register values; the other payloads hold none). The leaf
// map's own copy of the key is counted once per leaf, apart.
size_t EntryHeapBytes(absl::string_view key, const Payload& payload) {
  size_t bytes = key.size();
  if (const auto* reg = std::get_if<RegisterPayload>(&payload)) {
    if (reg->value.is_json()) {
      bytes += reg->value.serialized_json().size();
    } else if (const auto* text = std::get_if<std::string>(&reg->value.scalar().rep())) {
      bytes += text->size();
    }
  }
  return bytes;
}

}  // namespace

size_t DotKernel::HeapBytesOf(const LeafMap& leaves) {
  size_t bytes = 0;
  for (const auto& [key, store] : leaves) {
    bytes += key.size();
    for (const auto& [dot, payload] : store) bytes += EntryHeapBytes(key, payload);
  }
  return bytes;
}

void DotKernel::Join(const DotKernel& other, LeafChanges* changes, const std::set<Dot>* keep) {
  if (&other == this) return;  // x ⊔ x = x
  if (changes == nullptr) changes = journal_;
  // Records a leaf's pre-image before its first change.
  auto touch = [&](const std::string& key) {
    if (changes == nullptr || changes->before.count(key) > 0) return;
    auto leaf = leaves_.find(key);
    changes->before.emplace(key, leaf == leaves_.end() ? std::nullopt
                                                       : std::optional<DotStore>(leaf->second));
  };
  // (s \ c'): drop our live dots that `other` has seen but no longer holds. Only dots inside
  // other's context can go, so walk the index over its ranges instead of over all our leaves.
  other.context_.ForEachRange([&](ReplicaId replica, uint64_t first, uint64_t last) {
    auto it = index_.lower_bound(Dot{replica, first});
    while (it != index_.end() && it->first.replica == replica && it->first.counter <= last) {
      if (other.IsLive(it->first) || (keep != nullptr && keep->count(it->first) > 0)) {
        ++it;
        continue;
      }
      touch(it->second);
      auto leaf = leaves_.find(it->second);
      auto entry = leaf->second.find(it->first);
      heap_bytes_ -= EntryHeapBytes(leaf->first, entry->second);
      leaf->second.erase(entry);
      if (leaf->second.empty()) {
        heap_bytes_ -= leaf->first.size();
        leaves_.erase(leaf);
      }
      it = index_.erase(it);
    }
  });
  // (s' \ c): adopt other's live dots that we have never seen. A dot we have seen is either live
  // here already (payloads are immutable, so ours is the same) or was removed here.
  for (const auto& [key, store] : other.leaves_) {
    DotStore* mine = nullptr;
    for (const auto& [dot, payload] : store) {
      if (context_.Contains(dot)) continue;
      if (mine == nullptr) {
        touch(key);
        const auto [leaf, created] = leaves_.try_emplace(key);
        if (created) heap_bytes_ += key.size();
        mine = &leaf->second;
      }
      // A dot outside our context is live nowhere here, so this adds an entry.
      mine->emplace(dot, payload);
      index_.emplace(dot, key);
      heap_bytes_ += EntryHeapBytes(key, payload);
    }
  }
  context_.Join(other.context_);
}

void DotKernel::AddEntry(absl::string_view key, const Dot& dot, Payload payload) {
  const auto [leaf, created] = leaves_.try_emplace(std::string(key));
  if (created) heap_bytes_ += leaf->first.size();
  if (auto old = leaf->second.find(dot); old != leaf->second.end()) {
    heap_bytes_ -= EntryHeapBytes(leaf->first, old->second);  // replaced below
  }
  heap_bytes_ += EntryHeapBytes(leaf->first, payload);
  leaf->second.insert_or_assign(dot, std::move(payload));
  index_.insert_or_assign(dot, leaf->first);
  context_.Add(dot);
}

void DotKernel::AddSeenLeaf(const DotStore& leaf, const DotKernel& state) {
  for (const auto& entry : leaf) {
    if (state.MaySupersede(entry.first)) context_.Add(entry.first);
  }
}

void DotKernel::EncodeLeaf(absl::string_view key, const DotStore& leaf, mergedb::v1::Leaf* out) {
  out->set_key(std::string(key));
  for (const auto& [dot, payload] : leaf) {
    auto* entry = out->add_entries();
    entry->mutable_dot()->set_replica(dot.replica);
    entry->mutable_dot()->set_counter(dot.counter);
    struct Visitor {
      mergedb::v1::DotEntry* entry;
      void operator()(const ElementPayload&) const {}
      void operator()(const CounterPayload& p) const {
        auto* c = entry->mutable_counter();
        c->set_increments(p.increments);
        c->set_decrements(p.decrements);
      }
      void operator()(const RegisterPayload& p) const {
        auto* r = entry->mutable_register_();
        p.value.EncodeTo(r->mutable_value());
        r->set_hlc(p.hlc.packed());
      }
      void operator()(const FlagPayload& p) const { entry->set_flag(p.enabled); }
    };
    std::visit(Visitor{entry}, payload);
  }
}

absl::StatusOr<DotStore> DotKernel::DecodeLeafEntries(const mergedb::v1::Leaf& in) {
  DotStore store;
  for (const auto& entry : in.entries()) {
    const Dot dot{entry.dot().replica(), entry.dot().counter()};
    if (dot.replica == 0 || dot.counter == 0) {
      return absl::InvalidArgumentError("leaf entry: zero replica id or counter");
    }
    Payload payload;
    switch (entry.payload_case()) {
      case mergedb::v1::DotEntry::PAYLOAD_NOT_SET:
        payload = ElementPayload{};
        break;
      case mergedb::v1::DotEntry::kCounter:
        payload = CounterPayload{entry.counter().increments(), entry.counter().decrements()};
        break;
      case mergedb::v1::DotEntry::kRegister: {
        MERGEDB_ASSIGN_OR_RETURN(RegisterValue value,
                                 RegisterValue::Decode(entry.register_().value()));
        payload = RegisterPayload{std::move(value), Hlc::FromPacked(entry.register_().hlc())};
        break;
      }
      case mergedb::v1::DotEntry::kFlag:
        payload = FlagPayload{entry.flag()};
        break;
    }
    if (!store.empty() && PayloadKind(store.begin()->second) != PayloadKind(payload)) {
      return absl::InvalidArgumentError("leaf: entries of different kinds");
    }
    if (!store.emplace(dot, std::move(payload)).second) {
      return absl::InvalidArgumentError(absl::StrCat("leaf: dot ", DotToString(dot), " twice"));
    }
  }
  if (store.empty()) return absl::InvalidArgumentError("leaf: no entries");
  return store;
}

void DotKernel::EncodeTo(mergedb::v1::CausalState* out) const {
  out->Clear();
  context_.EncodeTo(out->mutable_context());
  for (const auto& [key, store] : leaves_) EncodeLeaf(key, store, out->add_leaves());
}

std::string DotKernel::Encode() const {
  mergedb::v1::CausalState state;
  EncodeTo(&state);
  return SerializeDeterministic(state);
}

absl::StatusOr<DotKernel> DotKernel::FromParts(CausalContext context, LeafMap leaves) {
  DotKernel kernel;
  kernel.context_ = std::move(context);
  kernel.leaves_ = std::move(leaves);
  kernel.heap_bytes_ = HeapBytesOf(kernel.leaves_);
  for (const auto& [key, store] : kernel.leaves_) {
    if (store.empty()) return absl::InvalidArgumentError("state: empty leaf");
    for (const auto& entry : store) {
      if (!kernel.context_.Contains(entry.first)) {
        return absl::InvalidArgumentError(
            absl::StrCat("state: live dot ", DotToString(entry.first), " outside the context"));
      }
      if (!kernel.index_.emplace(entry.first, key).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("state: dot ", DotToString(entry.first), " live in two leaves"));
      }
    }
  }
  return kernel;
}

absl::StatusOr<DotKernel> DotKernel::Decode(const mergedb::v1::CausalState& in) {
  MERGEDB_ASSIGN_OR_RETURN(CausalContext context, CausalContext::Decode(in.context()));
  LeafMap leaves;
  for (const auto& leaf : in.leaves()) {
    MERGEDB_ASSIGN_OR_RETURN(DotStore store, DecodeLeafEntries(leaf));
    if (!leaves.emplace(leaf.key(), std::move(store)).second) {
      return absl::InvalidArgumentError("state: the same leaf key twice");
    }
  }
  return FromParts(std::move(context), std::move(leaves));
}

absl::StatusOr<DotKernel> DotKernel::Decode(absl::string_view bytes) {
  mergedb::v1::CausalState state;
  if (!state.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("state: not a mergedb.v1.CausalState message");
  }
  return Decode(state);
}

std::string DotKernel::DebugString() const {
  std::string out = absl::StrCat("context=", context_.DebugString(), " leaves={");
  for (const auto& [key, store] : leaves_) {
    absl::StrAppend(&out, absl::CHexEscape(key), ":[");
    for (const auto& [dot, payload] : store) {
      absl::StrAppend(&out, DotToString(dot), " ");
      if (const auto* r = std::get_if<RegisterPayload>(&payload)) {
        absl::StrAppend(&out, "=", r->value.DebugString(), "@", r->hlc.DebugString(), " ");
      } else if (const auto* c = std::get_if<CounterPayload>(&payload)) {
        absl::StrAppend(&out, "+", c->increments, "-", c->decrements, " ");
      } else if (const auto* f = std::get_if<FlagPayload>(&payload)) {
        absl::StrAppend(&out, f->enabled ? "on " : "off ");
      }
    }
    out += "] ";
  }
  out += "}";
  return out;
}

}  // namespace mergedb::crdt

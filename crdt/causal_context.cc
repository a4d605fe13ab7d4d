#include "crdt/causal_context.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mergedb::crdt {

std::string DotToString(const Dot& dot) {
  return absl::StrCat(absl::Hex(dot.replica), ":", dot.counter);
}

bool CausalContext::Contains(const Dot& dot) const {
  auto it = vector_.find(dot.replica);
  if (it != vector_.end() && dot.counter <= it->second) return true;
  return cloud_.count(dot) > 0;
}

bool CausalContext::Includes(const CausalContext& other) const {
  for (const auto& [replica, counter] : other.vector_) {
    // In canonical form the dot right after a vector entry is never in the cloud, so a range
    // 1..counter is covered only by a vector entry at least as high.
    auto it = vector_.find(replica);
    if (it == vector_.end() || it->second < counter) return false;
  }
  for (const Dot& dot : other.cloud_) {
    if (!Contains(dot)) return false;
  }
  return true;
}

uint64_t CausalContext::Max(ReplicaId replica) const {
  uint64_t max = 0;
  if (auto it = vector_.find(replica); it != vector_.end()) max = it->second;
  // The last cloud dot of `replica` is the one just before the first dot of the next replica.
  auto next = cloud_.lower_bound(Dot{replica + 1, 0});
  if (replica == UINT64_MAX) next = cloud_.end();
  if (next != cloud_.begin()) {
    auto last = std::prev(next);
    if (last->replica == replica) max = std::max(max, last->counter);
  }
  return max;
}

Dot CausalContext::NextDot(ReplicaId replica) {
  Dot dot{replica, Max(replica) + 1};
  Add(dot);
  return dot;
}

void CausalContext::Add(const Dot& dot) {
  if (dot.counter == 0 || Contains(dot)) return;
  uint64_t& base = vector_[dot.replica];
  if (dot.counter == base + 1) {
    base = dot.counter;
    CompactReplica(dot.replica);
  } else {
    if (base == 0) vector_.erase(dot.replica);
    cloud_.insert(dot);
  }
}

void CausalContext::CompactReplica(ReplicaId replica) {
  auto vit = vector_.find(replica);
  uint64_t base = vit == vector_.end() ? 0 : vit->second;
  auto it = cloud_.lower_bound(Dot{replica, 0});
  while (it != cloud_.end() && it->replica == replica && it->counter <= base + 1) {
    base = std::max(base, it->counter);
    it = cloud_.erase(it);
  }
  if (base > 0) vector_[replica] = base;
}

void CausalContext::Join(const CausalContext& other) {
  // Touch only the replicas `other` mentions, so joining a small delta into a large context
  // costs O(size of the delta · log n).
  std::set<ReplicaId> touched;
  for (const auto& [replica, counter] : other.vector_) {
    uint64_t& mine = vector_[replica];
    if (counter > mine) {
      mine = counter;
      touched.insert(replica);
    }
  }
  for (const Dot& dot : other.cloud_) {
    auto it = vector_.find(dot.replica);
    if (it == vector_.end() || dot.counter > it->second) {
      cloud_.insert(dot);
      touched.insert(dot.replica);
    }
  }
  for (ReplicaId replica : touched) {
    // Drop this replica's cloud dots now covered by the vector, then fold the contiguous ones.
    auto vit = vector_.find(replica);
    const uint64_t base = vit == vector_.end() ? 0 : vit->second;
    auto it = cloud_.lower_bound(Dot{replica, 0});
    while (it != cloud_.end() && it->replica == replica && it->counter <= base) {
      it = cloud_.erase(it);
    }
    CompactReplica(replica);
  }
}

void CausalContext::EncodeTo(mergedb::v1::CausalContext* out) const {
  out->Clear();
  for (const auto& [replica, counter] : vector_) {
    auto* entry = out->add_vector();
    entry->set_replica(replica);
    entry->set_counter(counter);
  }
  for (const Dot& dot : cloud_) {
    auto* d = out->add_cloud();
    d->set_replica(dot.replica);
    d->set_counter(dot.counter);
  }
}

absl::StatusOr<CausalContext> CausalContext::Decode(const mergedb::v1::CausalContext& in) {
  CausalContext context;
  for (const auto& entry : in.vector()) {
    if (entry.replica() == 0 || entry.counter() == 0) {
      return absl::InvalidArgumentError("causal context: zero replica id or counter in vector");
    }
    if (entry.counter() > kMaxCounter) {
      return absl::InvalidArgumentError(
          absl::StrCat("causal context: counter ", entry.counter(), " beyond 2^63 - 1"));
    }
    uint64_t& mine = context.vector_[entry.replica()];
    mine = std::max(mine, entry.counter());
  }
  CausalContext cloud;
  for (const auto& dot : in.cloud()) {
    if (dot.replica() == 0 || dot.counter() == 0) {
      return absl::InvalidArgumentError("causal context: zero replica id or counter in cloud");
    }
    if (dot.counter() > kMaxCounter) {
      return absl::InvalidArgumentError(
          absl::StrCat("causal context: counter ", dot.counter(), " beyond 2^63 - 1"));
    }
    cloud.cloud_.insert(Dot{dot.replica(), dot.counter()});
  }
  context.Join(cloud);
  return context;
}

std::string CausalContext::DebugString() const {
  std::string out = "{";
  for (const auto& [replica, counter] : vector_) {
    absl::StrAppend(&out, absl::Hex(replica), ":1..", counter, " ");
  }
  for (const Dot& dot : cloud_) absl::StrAppend(&out, DotToString(dot), " ");
  out += "}";
  return out;
}

}  // namespace mergedb::crdt

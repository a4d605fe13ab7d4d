#include "crdt/leaf_ops.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace mergedb::crdt {

namespace {

Dot NextDot(const DotKernel& state, ReplicaId replica) {
  return Dot{replica, state.context().Max(replica) + 1};
}

// A delta holding one new entry at `key` that supersedes the entries of `key` selected by `keep`
// returning false.
template <typename Supersedes>
DotKernel ReplaceDelta(const DotKernel& state, absl::string_view key, ReplicaId replica,
                       Payload payload, Supersedes supersedes) {
  DotKernel delta;
  if (const DotStore* leaf = state.FindLeaf(key)) {
    for (const auto& entry : *leaf) {
      if (supersedes(entry.first) && state.MaySupersede(entry.first)) delta.AddSeen(entry.first);
    }
  }
  delta.AddEntry(key, NextDot(state, replica), std::move(payload));
  return delta;
}

bool SupersedesAll(const Dot&) { return true; }

__int128 CounterTotal(const DotStore& leaf) {
  __int128 total = 0;
  for (const auto& entry : leaf) {
    const auto& p = std::get<CounterPayload>(entry.second);
    total += static_cast<__int128>(p.increments) - static_cast<__int128>(p.decrements);
  }
  return total;
}

}  // namespace

DotKernel RegisterWriteDelta(const DotKernel& state, absl::string_view key, ReplicaId replica,
                             RegisterValue value, Hlc hlc) {
  return ReplaceDelta(state, key, replica, RegisterPayload{std::move(value), hlc}, SupersedesAll);
}

absl::StatusOr<DotKernel> CounterAddDelta(const DotKernel& state, absl::string_view key,
                                          ReplicaId replica, int64_t by) {
  CounterPayload totals;
  __int128 value = 0;
  if (const DotStore* leaf = state.FindLeaf(key)) {
    value = CounterTotal(*leaf);
    // A replica has at most one live entry per counter; take the newest defensively.
    for (auto it = leaf->rbegin(); it != leaf->rend(); ++it) {
      if (it->first.replica == replica) {
        totals = std::get<CounterPayload>(it->second);
        break;
      }
    }
  }
  const __int128 next = value + by;
  // Refused only when the add moves the value out of int64, or further out: concurrent adds on
  // several replicas can take a counter past int64 (a read then shows the limit), and an add
  // back toward the range must still be taken, or the counter would be stuck there.
  if ((next > std::numeric_limits<int64_t>::max() && by > 0) ||
      (next < std::numeric_limits<int64_t>::min() && by < 0)) {
    return absl::OutOfRangeError(absl::StrCat("counter would overflow int64 (adding ", by, ")"));
  }
  // The running totals only grow, and a counter that goes up and down by large steps reaches
  // 2^64 in them long before its value leaves int64. Only the difference counts, and the new
  // entry replaces this replica's old one by its dot (never by comparing totals), so both
  // totals may drop by the same amount: the value stays exact. Only when even the difference
  // does not fit (other replicas' entries far the other way) is the update refused.
  const uint64_t step =
      by >= 0 ? static_cast<uint64_t>(by) : static_cast<uint64_t>(-(static_cast<__int128>(by)));
  uint64_t& grows = by >= 0 ? totals.increments : totals.decrements;
  if (grows > std::numeric_limits<uint64_t>::max() - step) {
    const uint64_t common = std::min(totals.increments, totals.decrements);
    totals.increments -= common;
    totals.decrements -= common;
    if (grows > std::numeric_limits<uint64_t>::max() - step) {
      return absl::OutOfRangeError(
          absl::StrCat("counter would overflow this node's 64-bit running total (adding ", by,
                       "): the other nodes' shares of it lie too far the other way"));
    }
  }
  grows += step;
  // A replica's own entry holds its running total and is always replaced, whatever the base
  // read observed; otherwise the old total would stay beside the new one and count twice.
  DotKernel delta;
  if (const DotStore* leaf = state.FindLeaf(key)) {
    for (const auto& entry : *leaf) {
      if (entry.first.replica == replica) delta.AddSeen(entry.first);
    }
  }
  delta.AddEntry(key, NextDot(state, replica), totals);
  return delta;
}

DotKernel FlagWriteDelta(const DotKernel& state, absl::string_view key, ReplicaId replica,
                         bool enabled) {
  return ReplaceDelta(state, key, replica, FlagPayload{enabled}, SupersedesAll);
}

DotKernel ElementAddDelta(const DotKernel& state, absl::string_view key, ReplicaId replica) {
  return ReplaceDelta(state, key, replica, ElementPayload{}, SupersedesAll);
}

DotKernel RemovePrefixDelta(const DotKernel& state, absl::string_view prefix) {
  DotKernel delta;
  auto [begin, end] = state.LeavesWithPrefix(prefix);
  for (auto it = begin; it != end; ++it) delta.AddSeenLeaf(it->second, state);
  return delta;
}

DotKernel StaleCounterEntriesDelta(const DotKernel& state) {
  DotKernel delta;
  for (const auto& [key, leaf] : state.leaves()) {
    if (leaf.empty() || PayloadKind(leaf.begin()->second) != FieldKind::kCounter) continue;
    // Dots order by replica, then counter: each replica's newest is the last of its run.
    for (auto it = leaf.begin(); it != leaf.end(); ++it) {
      auto next = std::next(it);
      if (next != leaf.end() && next->first.replica == it->first.replica) delta.AddSeen(it->first);
    }
  }
  return delta;
}

int64_t CounterValue(const DotStore& leaf) {
  const __int128 total = CounterTotal(leaf);
  if (total > std::numeric_limits<int64_t>::max()) return std::numeric_limits<int64_t>::max();
  if (total < std::numeric_limits<int64_t>::min()) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(total);
}

bool FlagValue(const DotStore& leaf) {
  return std::any_of(leaf.begin(), leaf.end(), [](const auto& entry) {
    return std::get<FlagPayload>(entry.second).enabled;
  });
}

const RegisterPayload& RegisterWinner(const DotStore& leaf, Dot* winner_dot) {
  auto best = leaf.begin();
  for (auto it = std::next(leaf.begin()); it != leaf.end(); ++it) {
    const auto& a = std::get<RegisterPayload>(it->second);
    const auto& b = std::get<RegisterPayload>(best->second);
    // Highest hybrid timestamp wins; ties go to the higher replica id, then the higher dot, so
    // every replica picks the same entry whatever order it learned them in.
    if (std::tie(a.hlc, it->first.replica, it->first.counter) >
        std::tie(b.hlc, best->first.replica, best->first.counter)) {
      best = it;
    }
  }
  if (winner_dot != nullptr) *winner_dot = best->first;
  return std::get<RegisterPayload>(best->second);
}

mergedb::v1::RegisterView RegisterViewOf(const DotStore& leaf) {
  mergedb::v1::RegisterView view;
  RegisterWinner(leaf).value.EncodeTo(view.mutable_winner());
  if (leaf.size() > 1) {
    std::vector<std::pair<Dot, const RegisterPayload*>> entries;
    for (const auto& [dot, payload] : leaf) {
      entries.emplace_back(dot, &std::get<RegisterPayload>(payload));
    }
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
      return std::tie(a.second->hlc, a.first.replica, a.first.counter) >
             std::tie(b.second->hlc, b.first.replica, b.first.counter);
    });
    for (const auto& [dot, payload] : entries) {
      auto* sibling = view.add_siblings();
      payload->value.EncodeTo(sibling->mutable_value());
      sibling->set_hlc(payload->hlc.packed());
      sibling->set_replica(dot.replica);
    }
  }
  return view;
}

}  // namespace mergedb::crdt

#include "node/replication_delay.h"

#include <algorithm>
#include <limits>

#include "absl/time/time.h"

namespace mergedb::node {

ReplicationDelays::ReplicationDelays(const std::vector<std::string>& peers,
                                     uint64_t committed_before)
    : newest_committed_(committed_before), before_(committed_before) {
  // Peer holds atomics (not movable): constructed in place.
  for (const std::string& peer : peers) peers_.try_emplace(peer);
}

void ReplicationDelays::Committed(uint64_t through, TimePoint when) {
  // A peer's entries committed, or nothing new of this node's.
  if (through <= newest_committed_.load(std::memory_order_relaxed)) return;
  newest_committed_.store(through, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  groups_.push_back(Group{through, when});
  TrimLocked();
}

void ReplicationDelays::Confirmed(const std::string& peer, uint64_t through, TimePoint now) {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(peer);
  if (it == peers_.end() || through <= it->second.confirmed) return;
  // Entries through `from` were counted before, or are not timed.
  const uint64_t from = std::max(it->second.confirmed, before_);
  it->second.confirmed = through;
  if (through <= from) return;
  // The group holding entry from + 1: the first whose `last` is past `from`. Groups are
  // contiguous, so each one after it starts where the previous ended.
  auto group = std::upper_bound(groups_.begin(), groups_.end(), from,
                                [](uint64_t seq, const Group& g) { return seq < g.last; });
  uint64_t next = from + 1;
  for (; group != groups_.end() && next <= through; ++group) {
    const uint64_t upto = std::min(group->last, through);
    it->second.delays.Observe(absl::FromChrono(now - group->committed), upto - next + 1);
    next = upto + 1;
  }
  TrimLocked();
}

void ReplicationDelays::FillTo(const std::string& peer, mergedb::v1::LatencyHistogram* out) const {
  out->set_what(mergedb::v1::LatencyHistogram::REPLICATION_DELAY);
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(peer);
  if (it != peers_.end()) {
    it->second.delays.FillTo(out);
  } else {
    LatencyHistogram().FillTo(out);
  }
}

void ReplicationDelays::TrimLocked() {
  uint64_t everyone = std::numeric_limits<uint64_t>::max();
  for (const auto& [name, peer] : peers_) everyone = std::min(everyone, peer.confirmed);
  while (!groups_.empty() && (groups_.front().last <= everyone || groups_.size() > kMaxGroups)) {
    before_ = groups_.front().last;
    groups_.pop_front();
  }
}

}  // namespace mergedb::node

// Replication delay per peer: how long after this node committed one of its own writes it
// learned that the peer had applied it (from the peer's acknowledgement, or a third node's
// relay of the peer's applied vector). What an operator watches for the lag of asynchronous
// replication on a running cluster; the benchmarks measure the lag end to end instead.
//
// Measured entirely on this node's monotonic clock, so clocks that differ between machines do
// not enter it. It is an upper bound of when the peer applied the write: the acknowledgement's
// trip back is included (and, when a link is down and the vector comes through a third node,
// that node's relay).
//
// Each write counts once per peer, when the peer is first known to hold it; a peer that later
// reports less (it lost data, a new incarnation) is not counted again for what it gets back.
// Writes committed before this node started are not counted, nor those still unconfirmed when
// more than kMaxGroups commits of this node await some peer (a peer long away): their times
// are dropped, oldest first, to keep memory bounded.
#ifndef MERGEDB_NODE_REPLICATION_DELAY_H_
#define MERGEDB_NODE_REPLICATION_DELAY_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "mergedb/v1/api.pb.h"
#include "node/latency_histogram.h"

namespace mergedb::node {

class ReplicationDelays {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  // Commit groups kept for peers that have not confirmed them: at 16 bytes each, 1 MiB.
  static constexpr size_t kMaxGroups = 1 << 16;

  // `peers`: the names delays are kept for. `committed_before`: this node's own entries already
  // committed (not timed).
  ReplicationDelays(const std::vector<std::string>& peers, uint64_t committed_before);

  // A commit made this node's own entries through `through` applied at `when`. Called in commit
  // order (the store calls its applied listeners under its commit lock); a call that does not
  // advance is ignored.
  void Committed(uint64_t through, TimePoint when);
  // `peer` is known, at `now`, to have applied this node's entries through `through`.
  void Confirmed(const std::string& peer, uint64_t through, TimePoint now);
  // `peer`'s histogram (empty for a name not given at construction).
  void FillTo(const std::string& peer, mergedb::v1::LatencyHistogram* out) const;
  // Commits kept because some peer has not confirmed them.
  size_t groups_held() const {
    absl::MutexLock lock(&mu_);
    return groups_.size();
  }

 private:
  // One commit of this node's own entries: those after the previous group's `last` (or
  // `before_`) through `last`.
  struct Group {
    uint64_t last;
    TimePoint committed;
  };
  struct Peer {
    uint64_t confirmed = 0;
    LatencyHistogram delays;
  };
  // Drops the groups every peer confirmed, and the oldest past kMaxGroups.
  void TrimLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Written only by Committed (calls are serialized): lets commits of peers' entries, two of
  // every three in a full mesh, skip the lock.
  std::atomic<uint64_t> newest_committed_;
  mutable absl::Mutex mu_;
  std::deque<Group> groups_ ABSL_GUARDED_BY(mu_);  // ascending `last`
  uint64_t before_ ABSL_GUARDED_BY(mu_);           // own entries not (or no longer) timed
  std::map<std::string, Peer> peers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_REPLICATION_DELAY_H_

// Time sources for the node. Replication and the hybrid logical clock read time only through
// Clock, so tests and the simulator can supply their own, and the fault harness can skew a
// node's clock with a flag (libfaketime hangs gRPC processes).
#ifndef MERGEDB_NODE_CLOCK_H_
#define MERGEDB_NODE_CLOCK_H_

#include <cstdint>

#include "absl/synchronization/mutex.h"
#include "crdt/hlc.h"

namespace mergedb::node {

// Thread safety: implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock milliseconds since the Unix epoch.
  virtual int64_t NowMillis() = 0;
};

// The system clock, shifted by a fixed offset (0 in production; the fault harness sets it).
class SystemClock : public Clock {
 public:
  explicit SystemClock(int64_t offset_millis = 0) : offset_millis_(offset_millis) {}
  int64_t NowMillis() override;

 private:
  const int64_t offset_millis_;
};

// The node's hybrid logical clock: timestamps for register writes that are strictly increasing
// on this node and never behind any timestamp it has observed up to `max_ahead` past the
// physical clock (crdt::HlcObserveBounded). Thread-safe.
class HybridClock {
 public:
  static constexpr int64_t kDefaultMaxAheadMillis = 60000;

  // `clock` is borrowed and must outlive this object.
  explicit HybridClock(Clock* clock, int64_t max_ahead_millis = kDefaultMaxAheadMillis)
      : clock_(clock), max_ahead_millis_(static_cast<uint64_t>(max_ahead_millis)) {}
  crdt::Hlc Tick();
  // False when `remote` was more than max_ahead past the physical clock (the clock followed it
  // only that far).
  bool Observe(crdt::Hlc remote);
  int64_t max_ahead_millis() const { return static_cast<int64_t>(max_ahead_millis_); }

 private:
  Clock* const clock_;
  const uint64_t max_ahead_millis_;
  absl::Mutex mu_;
  crdt::Hlc last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_CLOCK_H_

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
// on this node and never behind any timestamp it has observed. Thread-safe.
class HybridClock {
 public:
  // `clock` is borrowed and must outlive this object.
  explicit HybridClock(Clock* clock) : clock_(clock) {}
  crdt::Hlc Tick();
  void Observe(crdt::Hlc remote);

 private:
  Clock* const clock_;
  absl::Mutex mu_;
  crdt::Hlc last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_CLOCK_H_

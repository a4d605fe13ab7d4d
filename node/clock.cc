#include "node/clock.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace mergedb::node {

int64_t SystemClock::NowMillis() { return absl::ToUnixMillis(absl::Now()) + offset_millis_; }

crdt::Hlc HybridClock::Tick() {
  const uint64_t now = static_cast<uint64_t>(std::max<int64_t>(0, clock_->NowMillis()));
  absl::MutexLock lock(&mu_);
  last_ = crdt::HlcTick(last_, now);
  return last_;
}

bool HybridClock::Observe(crdt::Hlc remote) {
  const uint64_t now = static_cast<uint64_t>(std::max<int64_t>(0, clock_->NowMillis()));
  absl::MutexLock lock(&mu_);
  last_ = crdt::HlcObserveBounded(last_, remote, now, max_ahead_millis_);
  return remote.wall_millis() <= now || remote.wall_millis() - now <= max_ahead_millis_;
}

}  // namespace mergedb::node

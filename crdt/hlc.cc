#include "crdt/hlc.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mergedb::crdt {

namespace {

// The smallest timestamp strictly after `t` that is at least `floor_wall` milliseconds.
Hlc Successor(Hlc t, uint64_t floor_wall) {
  floor_wall = std::min(floor_wall, Hlc::kMaxWallMillis);
  if (floor_wall > t.wall_millis()) return Hlc::FromParts(floor_wall, 0);
  if (t.logical() < Hlc::kMaxLogical) return Hlc::FromParts(t.wall_millis(), t.logical() + 1);
  // Logical overflow: borrow the next millisecond. Saturates at the end of representable time.
  if (t.wall_millis() < Hlc::kMaxWallMillis) return Hlc::FromParts(t.wall_millis() + 1, 0);
  return t;
}

}  // namespace

std::string Hlc::DebugString() const { return absl::StrCat(wall_millis(), ".", logical()); }

Hlc HlcTick(Hlc last, uint64_t now_millis) { return Successor(last, now_millis); }

Hlc HlcObserve(Hlc last, Hlc remote, uint64_t now_millis) {
  return Successor(std::max(last, remote), now_millis);
}

Hlc HlcObserveBounded(Hlc last, Hlc remote, uint64_t now_millis, uint64_t max_ahead_millis) {
  const uint64_t limit_wall =
      now_millis > Hlc::kMaxWallMillis || max_ahead_millis > Hlc::kMaxWallMillis - now_millis
          ? Hlc::kMaxWallMillis
          : now_millis + max_ahead_millis;
  return HlcObserve(last, std::min(remote, Hlc::FromParts(limit_wall, Hlc::kMaxLogical)),
                    now_millis);
}

}  // namespace mergedb::crdt

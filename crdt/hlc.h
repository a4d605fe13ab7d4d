// Hybrid logical clock timestamps (Kulkarni et al.), used to pick the deterministic winner among
// concurrent register writes. crdt/ holds only the value type and pure functions; the physical
// time source is a parameter, supplied by the node (the system clock), by tests and by the
// simulator (their own clocks).
//
// Packing: wall-clock milliseconds in the high 48 bits, a logical counter in the low 16 bits, so
// timestamps compare as plain integers and encode as one fixed64. When the logical counter would
// overflow within one millisecond, the wall part advances by one instead.
#ifndef MERGEDB_CRDT_HLC_H_
#define MERGEDB_CRDT_HLC_H_

#include <compare>
#include <cstdint>
#include <string>

namespace mergedb::crdt {

class Hlc {
 public:
  static constexpr int kLogicalBits = 16;
  static constexpr uint64_t kMaxLogical = (uint64_t{1} << kLogicalBits) - 1;
  static constexpr uint64_t kMaxWallMillis = (uint64_t{1} << (64 - kLogicalBits)) - 1;

  constexpr Hlc() = default;
  static constexpr Hlc FromPacked(uint64_t packed) { return Hlc(packed); }
  // REQUIRES: wall_millis <= kMaxWallMillis, logical <= kMaxLogical.
  static constexpr Hlc FromParts(uint64_t wall_millis, uint64_t logical) {
    return Hlc((wall_millis << kLogicalBits) | logical);
  }

  constexpr uint64_t packed() const { return packed_; }
  constexpr uint64_t wall_millis() const { return packed_ >> kLogicalBits; }
  constexpr uint64_t logical() const { return packed_ & kMaxLogical; }

  std::string DebugString() const;

  friend auto operator<=>(const Hlc&, const Hlc&) = default;

 private:
  constexpr explicit Hlc(uint64_t packed) : packed_(packed) {}
  uint64_t packed_ = 0;
};

// The timestamp of a local event (a write) given the last timestamp this replica issued or
// observed and the physical clock now. The result is strictly greater than `last`.
Hlc HlcTick(Hlc last, uint64_t now_millis);

// The clock after observing a remote timestamp: at least both inputs and the physical clock, and
// strictly greater than `last` and `remote`.
Hlc HlcObserve(Hlc last, Hlc remote, uint64_t now_millis);

// HlcObserve for a remote timestamp that may come from a wrong clock: one more than
// `max_ahead_millis` past the physical clock counts as the last timestamp of that bound, so a
// peer whose clock runs a year ahead (or a forged 2^64 - 1) cannot drag this clock along. Safe
// for registers: a write that has seen another supersedes it through its causal context, not its
// timestamp; timestamps only order truly concurrent writes.
Hlc HlcObserveBounded(Hlc last, Hlc remote, uint64_t now_millis, uint64_t max_ahead_millis);

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_HLC_H_

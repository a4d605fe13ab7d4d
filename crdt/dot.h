// Dots and replica ids: the identity of every event in mergedb.
#ifndef MERGEDB_CRDT_DOT_H_
#define MERGEDB_CRDT_DOT_H_

#include <compare>
#include <cstdint>
#include <string>

namespace mergedb::crdt {

// A replica id is a random 64-bit *incarnation* id: a fresh one is drawn for every new data
// directory and never derived from a node's name, so a node rebuilt after losing its data can never
// reuse old dots (Riak's kv679 data loss). 0 is never a valid replica id.
using ReplicaId = uint64_t;

// The `counter`-th event of `replica`. Counters start at 1; within one causal context the dots
// of a replica are numbered without gaps by that replica.
struct Dot {
  ReplicaId replica = 0;
  uint64_t counter = 0;

  friend auto operator<=>(const Dot&, const Dot&) = default;
  friend bool operator==(const Dot&, const Dot&) = default;
};

std::string DotToString(const Dot& dot);

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_DOT_H_

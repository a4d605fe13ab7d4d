// Delta mutators and readers for single leaves, shared by the standalone CRDT types (types.h)
// and by documents (document.h), which differ only in how they name their leaves.
//
// Every mutator is pure: it reads `state` and returns the delta to join into it. A new entry gets
// the next dot of `replica` in `state`'s context, and the delta's context lists the dots the new
// entry supersedes, so joining the delta anywhere removes exactly what the writer had observed
// (limited to the state's observed limit when one is set: DotKernel::set_observed_limit).
#ifndef MERGEDB_CRDT_LEAF_OPS_H_
#define MERGEDB_CRDT_LEAF_OPS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crdt/dot_kernel.h"
#include "mergedb/v1/crdt.pb.h"

namespace mergedb::crdt {

// Multi-value register write: one new entry superseding every entry of the leaf.
DotKernel RegisterWriteDelta(const DotKernel& state, absl::string_view key, ReplicaId replica,
                             RegisterValue value, Hlc hlc);

// PN-counter add: replaces `replica`'s own entry with its new running totals; the other
// replicas' entries stay. OutOfRange when the counter's value would leave the int64 range.
absl::StatusOr<DotKernel> CounterAddDelta(const DotKernel& state, absl::string_view key,
                                          ReplicaId replica, int64_t by);

// Enable-wins flag write: one new entry (enable or disable) superseding every entry of the leaf.
DotKernel FlagWriteDelta(const DotKernel& state, absl::string_view key, ReplicaId replica,
                         bool enabled);

// Add-wins set add: one new element entry superseding the element's previous entries.
DotKernel ElementAddDelta(const DotKernel& state, absl::string_view key, ReplicaId replica);

// Observed remove of every leaf whose key starts with `prefix` (a whole field, set element or
// map): the delta holds no entries and a context of exactly the removed dots.
DotKernel RemovePrefixDelta(const DotKernel& state, absl::string_view prefix);

// Removes, in every counter leaf of `state`, each replica's entries but its newest (the delta
// holds no entries and a context of exactly those dots). A replica's own counter entry always
// replaces its last (CounterAddDelta), so in a state reached by joining every delta in order it
// has at most one. A state joined from deltas with some missing (a log with a gap, replayed
// after a repair) can hold two, which would count twice; the newest holds the running total.
DotKernel StaleCounterEntriesDelta(const DotKernel& state);

// Readers of one leaf (REQUIRES: every entry of the leaf has the matching payload).
// The counter's value; concurrent increments that overflow int64 saturate.
int64_t CounterValue(const DotStore& leaf);
// Enable wins: true when any live entry is an enable.
bool FlagValue(const DotStore& leaf);
// The register's view: the winner (highest (hlc, replica)) and, when there are concurrent
// entries, every sibling from the winner down.
mergedb::v1::RegisterView RegisterViewOf(const DotStore& leaf);
// The winning entry of a register leaf.
const RegisterPayload& RegisterWinner(const DotStore& leaf, Dot* winner_dot = nullptr);

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_LEAF_OPS_H_

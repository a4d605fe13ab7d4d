// Leaf keys: how a document's nested fields are flattened into one sorted map.
//
// A document (an observed-remove map of nested maps) is stored as a *flattened* dot map: one leaf
// per field that holds dots directly (counter, register, flag) and one leaf per set element. A
// nested map has no leaf of its own; it exists while any leaf lies under it. Joining nested dot
// maps is pointwise, so joining the flattened form leaf by leaf is the same lattice join; in
// exchange every change touches only its own leaves, which is what keeps deltas and storage
// writes proportional to the change, not to the document.
//
// Grammar (bytes; sorts so that everything under a path is one contiguous key range):
//   leaf_key  := segment* field [scalar_key]      scalar_key only for a set element (scalar.h)
//   segment   := name kind_map                    an enclosing map
//   field     := name kind                        the leaf's own field
//   name      := escaped(utf8) 0x00 0x01          0x00 inside a name is escaped as 0x00 0xFF
//   kind      := one byte, the frozen FieldKind value (1 counter, 2 register, 3 flag, 4 set, 5 map)
// The standalone CRDT types (PnCounter, MvRegister, EwFlag, AwSet) use the same kernel with
// trivial keys: "" for the single leaf, or the bare scalar_key for set elements.
#ifndef MERGEDB_CRDT_LEAF_KEY_H_
#define MERGEDB_CRDT_LEAF_KEY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace mergedb::crdt {

// Frozen: the values are stored in leaf keys and match mergedb.v1.FieldKind.
enum class FieldKind : uint8_t {
  kCounter = 1,
  kRegister = 2,
  kFlag = 3,
  kSet = 4,
  kMap = 5,
};

absl::string_view FieldKindName(FieldKind kind);
bool IsValidFieldKind(uint8_t byte);

// Reads one escaped, terminated name from the front of `*in` into `*name` and advances `*in`.
// False (and `*in` unspecified) when the input is malformed or truncated.
bool ConsumeName(absl::string_view* in, std::string* name);
// Appends `name` escaped and terminated.
void AppendName(std::string* key, absl::string_view name);
// Appends `name` and its kind byte.
void AppendSegment(std::string* key, absl::string_view name, FieldKind kind);
// The key prefix of the map at `path` (every element a map segment). Empty path: the root.
std::string MapPrefix(absl::Span<const std::string> path);
// The key of the field at `path` (REQUIRES: non-empty) with kind `kind`, without element.
std::string FieldKey(absl::Span<const std::string> path, FieldKind kind);

// A decoded leaf key: names[0..n-2] are enclosing maps, names[n-1] is the field.
struct DecodedLeafKey {
  std::vector<std::string> names;
  FieldKind kind = FieldKind::kRegister;
  std::string element_key;  // non-empty exactly for set elements
};

absl::StatusOr<DecodedLeafKey> DecodeLeafKey(absl::string_view key);

// The smallest key greater than every key that starts with `prefix` ("" if there is none).
std::string PrefixSuccessor(absl::string_view prefix);

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_LEAF_KEY_H_

// Document: a mergedb document, the root observed-remove map (OR-map) of nested CRDT fields.
//
// Fields are addressed by paths (["address", "city"]); every name but the last is a nested map.
// Each field is a counter, register, flag, set, or map, stored as flattened leaves (leaf_key.h)
// that share the document's one causal context. Operations are delta mutators: each returns
// the delta it applied, which any replica joins to converge.
//
// Merge rules (tests/conflicts/ shows each on three replicas):
//   - counter: concurrent increments all count.
//   - register: concurrent writes are kept as siblings; the winner a plain read shows is the
//     highest (HLC timestamp, replica id).
//   - flag: enable wins over a concurrent disable.
//   - set: add wins over a concurrent remove of the same element (remove deletes observed adds).
//   - map / remove field: observed-remove. Removing a field deletes the writes the remover had
//     seen; a concurrent unseen write survives it (and so does the field). For a counter, the
//     surviving write carries its replica's running total, so that replica's earlier increments
//     reappear with it while other replicas' observed increments stay removed.
//   - delete document: removes every field the deleter had seen and keeps the context as a
//     tombstone, so a late or duplicated delta cannot bring back what was deleted, while a
//     concurrent unseen write survives (the document then exists with just that write).
//   - type divergence: fields are keyed by (name, kind), so a concurrent counter "x" and
//     register "x" both survive and nothing is lost. The JSON view shows the kind of highest
//     precedence, map > set > counter > register > flag; the typed view and Conflicts() list
//     all of them. A *local* write whose kind contradicts a field this replica holds is refused
//     (FailedPrecondition), so divergence only arises from concurrency.
//
// Thread safety: a value type; not thread-safe.
#ifndef MERGEDB_CRDT_DOCUMENT_H_
#define MERGEDB_CRDT_DOCUMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crdt/causal_crdt.h"
#include "crdt/leaf_ops.h"
#include "google/protobuf/struct.pb.h"

namespace mergedb::crdt {

using Path = std::vector<std::string>;

// A conflict a read can show: several kinds under one name, or a register's siblings.
struct FieldConflict {
  Path path;
  std::vector<FieldKind> kinds;                      // size > 1 for a type conflict
  std::vector<mergedb::v1::RegisterSibling> siblings;  // size > 1 for concurrent register writes
};

class Document : public CausalCrdt<Document> {
 public:
  Document() = default;

  // ---- Delta mutators. Every path must be non-empty. Errors leave the document unchanged:
  // FailedPrecondition when a path crosses or names a field of another kind on this replica;
  // OutOfRange for counter overflow, and when the replica has no dots left (CheckDotsLeft). ----
  absl::StatusOr<Document> SetRegister(const Path& path, RegisterValue value, ReplicaId replica,
                                       Hlc hlc);
  absl::StatusOr<Document> Increment(const Path& path, int64_t by, ReplicaId replica);
  absl::StatusOr<Document> SetFlag(const Path& path, bool enabled, ReplicaId replica);
  absl::StatusOr<Document> AddElements(const Path& path, absl::Span<const Scalar> elements,
                                       ReplicaId replica);
  absl::StatusOr<Document> RemoveElements(const Path& path, absl::Span<const Scalar> elements);
  // Observed-remove of the field at `path`, whatever kinds it has; a no-op delta when absent.
  Document RemoveField(const Path& path);
  // Observed-remove of every field. The document's context remains (a tombstone).
  Document Delete();

  // OK when a write of `kind` at `path` agrees with every field this replica holds on the way.
  absl::Status CheckWritable(const Path& path, FieldKind kind) const;
  // OK when `replica` can take `needed` more dots in this document: its counters end at
  // CausalContext::kMaxCounter (what Decode accepts), so a write past it would build a state no
  // replica can read back. Only a forged or corrupt state gets near that end.
  absl::Status CheckDotsLeft(ReplicaId replica, uint64_t needed) const;

  // True while any field is live; false for a never-written or deleted document.
  bool exists() const { return !kernel_.empty(); }

  // ---- Reads (deterministic: equal states give equal views). ----
  mergedb::v1::MapView ToTyped() const;
  // The JSON-like view: a Struct value; type conflicts resolved by precedence.
  google::protobuf::Value ToJson() const;
  // The typed fields named by `path` (one per kind present; empty if absent).
  std::vector<mergedb::v1::TypedField> ReadField(const Path& path) const;
  std::vector<FieldConflict> Conflicts() const;
  // The conflicts within a typed view whose fields lie under `prefix`.
  static std::vector<FieldConflict> ConflictsIn(const mergedb::v1::MapView& view, Path prefix);

  // JSON view of one typed value, and the precedence rank used for type conflicts.
  static google::protobuf::Value TypedToJson(const mergedb::v1::TypedValue& value);
  static google::protobuf::Value MapToJson(const mergedb::v1::MapView& map);
  static int KindPrecedence(FieldKind kind);

  static absl::Status Validate(const DotKernel& kernel);

 private:
  friend class CausalCrdt<Document>;
  using CausalCrdt::CausalCrdt;
};

// The standalone name the brief uses for the nested map type: a document is its root.
using OrMap = Document;

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_DOCUMENT_H_

// Validation of client requests and their conversion into CRDT operations.
//
// Every bad input gets a precise status naming the offending part ("ops[2].path[1]: ...") before
// anything is applied: INVALID_ARGUMENT for malformed input, RESOURCE_EXHAUSTED for anything over
// a size limit. Type conflicts with the stored document are found while applying
// (FAILED_PRECONDITION), and the store then applies nothing.
#ifndef MERGEDB_NODE_VALIDATION_H_
#define MERGEDB_NODE_VALIDATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crdt/document.h"
#include "mergedb/v1/api.pb.h"
#include "node/clock.h"

namespace mergedb::node {

struct Limits {
  size_t max_name_bytes = 512;          // collection, id, each field name
  // How deep a field may sit: the names in its path, plus the levels of a JSON value written
  // there. At most kMaxDepth (below), which is also the default.
  int max_path_depth = 24;
  size_t max_value_bytes = 1 << 20;     // one register value or set element
  size_t max_update_bytes = 4 << 20;    // one UpdateRequest
  int max_ops_per_update = 1000;        // operations in one UpdateRequest
  int max_batch_updates = 1000;         // updates in one UpdateBatch
  size_t max_response_bytes = 4 << 20;  // one Get or List answer
  size_t max_request_id_bytes = 128;

  // Protobuf refuses to parse a message nested more than 100 levels deep, and every gRPC
  // library and client applies that limit. A field's value nests inside the messages that carry
  // it: each path name and each JSON object level costs 3 levels (MapView, TypedField,
  // TypedValue in the typed view; Struct, its map entry, Value in the JSON view), a JSON list
  // level 2, and a replication snapshot starts a value 8 levels down. A field 31 levels deep
  // already made a snapshot unparsable: the write was acknowledged, then refused by every peer,
  // and its origin's replication stopped for good. At 24 the deepest message (a snapshot, or a
  // Get's typed view) stays under 85 levels.
  static constexpr int kMaxDepth = 24;
};

// UTF-8, 1..max_name_bytes, no control characters. `what` names the field in the message.
absl::Status ValidateName(absl::string_view what, absl::string_view name, const Limits& limits);
// A backup's name, which becomes a directory under the node's backup dir: 1..255 bytes of
// letters, digits, '.', '_' and '-', the first a letter or digit (so never "..", never hidden,
// never a path).
absl::Status ValidateBackupName(absl::string_view name);
absl::StatusOr<crdt::Path> ValidatePath(absl::string_view what,
                                        const google::protobuf::RepeatedPtrField<std::string>& path,
                                        const Limits& limits);

// Version tokens are the serialized causal context of a document.
std::string EncodeVersionToken(const crdt::CausalContext& context);
absl::StatusOr<crdt::CausalContext> DecodeVersionToken(absl::string_view what,
                                                       absl::string_view token);

// A validated UpdateRequest, converted to CRDT values, ready to apply.
class PreparedUpdate {
 public:
  static absl::StatusOr<PreparedUpdate> Prepare(const mergedb::v1::UpdateRequest& request,
                                                const Limits& limits);

  // Applies every operation to `doc` and returns their combined delta. On error `doc` may hold
  // some of the operations: the store discards it (Store::ApplyLocal).
  absl::StatusOr<crdt::Document> Apply(crdt::Document& doc, crdt::ReplicaId replica,
                                       HybridClock& clock) const;

  bool has_base_version() const { return has_base_version_; }
  const crdt::CausalContext& base_version() const { return base_version_; }

 private:
  struct Op {
    mergedb::v1::Operation::OpCase kind;
    crdt::Path path;
    crdt::RegisterValue value;
    int64_t by = 0;
    std::vector<crdt::Scalar> elements;
  };
  std::vector<Op> ops_;
  bool has_base_version_ = false;
  crdt::CausalContext base_version_;
};

// A Scalar as a client sent it: set, finite (no NaN or infinities), within the value limit.
absl::StatusOr<crdt::Scalar> ValidateScalar(absl::string_view what,
                                            const mergedb::v1::Scalar& scalar,
                                            const Limits& limits);

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_VALIDATION_H_

#include "node/validation.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "crdt/status_macros.h"
#include "crdt/utf8.h"

namespace mergedb::node {

namespace {

// `depth`: the names of the path the value is written at, plus the JSON levels above `value`.
absl::Status ValidateJson(absl::string_view what, const google::protobuf::Value& value, int depth,
                          const Limits& limits) {
  if (depth > limits.max_path_depth) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": nested deeper than ", limits.max_path_depth,
                     " levels (the names of the path plus the levels of the JSON value)"));
  }
  switch (value.kind_case()) {
    case google::protobuf::Value::kNumberValue:
      if (!std::isfinite(value.number_value())) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": JSON numbers must be finite (no NaN or infinity)"));
      }
      return absl::OkStatus();
    case google::protobuf::Value::kStructValue:
      for (const auto& [key, field] : value.struct_value().fields()) {
        MERGEDB_RETURN_IF_ERROR(ValidateJson(what, field, depth + 1, limits));
      }
      return absl::OkStatus();
    case google::protobuf::Value::kListValue:
      for (const auto& item : value.list_value().values()) {
        MERGEDB_RETURN_IF_ERROR(ValidateJson(what, item, depth + 1, limits));
      }
      return absl::OkStatus();
    case google::protobuf::Value::KIND_NOT_SET:
      return absl::InvalidArgumentError(absl::StrCat(what, ": JSON value with no kind set"));
    default:
      return absl::OkStatus();
  }
}

absl::StatusOr<std::vector<crdt::Scalar>> ValidateElements(
    absl::string_view what, const google::protobuf::RepeatedPtrField<mergedb::v1::Scalar>& in,
    const Limits& limits) {
  if (in.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": no elements"));
  std::vector<crdt::Scalar> out;
  out.reserve(static_cast<size_t>(in.size()));
  for (int i = 0; i < in.size(); ++i) {
    MERGEDB_ASSIGN_OR_RETURN(crdt::Scalar s,
                             ValidateScalar(absl::StrCat(what, "[", i, "]"), in[i], limits));
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

absl::Status ValidateBackupName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("backup name: empty");
  if (name.size() > 255) {
    return absl::InvalidArgumentError(absl::StrCat("backup name: ", name.size(), " bytes, over 255"));
  }
  if (!absl::ascii_isalnum(static_cast<unsigned char>(name[0]))) {
    return absl::InvalidArgumentError(
        absl::StrCat("backup name '", absl::CHexEscape(name), "': must start with a letter or digit"));
  }
  for (const char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(
          "backup name '", absl::CHexEscape(name), "': only letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateName(absl::string_view what, absl::string_view name, const Limits& limits) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty"));
  if (name.size() > limits.max_name_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", name.size(), " bytes, over the ",
                                                   limits.max_name_bytes, "-byte limit"));
  }
  if (const size_t at = crdt::InvalidUtf8At(name); at != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid UTF-8 at byte ", at));
  }
  for (const char c : name) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": contains the control character 0x", absl::Hex(u, absl::kZeroPad2)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<crdt::Path> ValidatePath(absl::string_view what,
                                        const google::protobuf::RepeatedPtrField<std::string>& path,
                                        const Limits& limits) {
  if (path.size() > limits.max_path_depth) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", path.size(),
                                                   " names deep, over the limit of ",
                                                   limits.max_path_depth));
  }
  crdt::Path out;
  for (int i = 0; i < path.size(); ++i) {
    MERGEDB_RETURN_IF_ERROR(ValidateName(absl::StrCat(what, "[", i, "]"), path[i], limits));
    out.push_back(path[i]);
  }
  return out;
}

std::string EncodeVersionToken(const crdt::CausalContext& context) {
  mergedb::v1::CausalContext proto;
  context.EncodeTo(&proto);
  return crdt::SerializeDeterministic(proto);
}

absl::StatusOr<crdt::CausalContext> DecodeVersionToken(absl::string_view what,
                                                       absl::string_view token) {
  mergedb::v1::CausalContext proto;
  if (!proto.ParseFromArray(token.data(), static_cast<int>(token.size()))) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed version token"));
  }
  auto context = crdt::CausalContext::Decode(proto);
  if (!context.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": malformed version token (", context.status().message(), ")"));
  }
  return context;
}

absl::StatusOr<crdt::Scalar> ValidateScalar(absl::string_view what,
                                            const mergedb::v1::Scalar& scalar,
                                            const Limits& limits) {
  if (scalar.kind_case() == mergedb::v1::Scalar::kDoubleValue &&
      !std::isfinite(scalar.double_value())) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": doubles must be finite (no NaN or infinity)"));
  }
  if (scalar.kind_case() == mergedb::v1::Scalar::kStringValue &&
      scalar.string_value().size() > limits.max_value_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": a ", scalar.string_value().size(), "-byte string, over the ",
                     limits.max_value_bytes, "-byte value limit"));
  }
  auto decoded = crdt::Scalar::Decode(scalar);
  if (!decoded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", decoded.status().message()));
  }
  return decoded;
}

absl::StatusOr<PreparedUpdate> PreparedUpdate::Prepare(const mergedb::v1::UpdateRequest& request,
                                                       const Limits& limits) {
  const size_t size = request.ByteSizeLong();
  if (size > limits.max_update_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("update of ", size, " bytes, over the ",
                                                     limits.max_update_bytes, "-byte limit"));
  }
  MERGEDB_RETURN_IF_ERROR(ValidateName("collection", request.collection(), limits));
  MERGEDB_RETURN_IF_ERROR(ValidateName("id", request.id(), limits));
  if (request.request_id().size() > limits.max_request_id_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("request_id: ", request.request_id().size(),
                                                   " bytes, over the ", limits.max_request_id_bytes,
                                                   "-byte limit"));
  }
  if (!mergedb::v1::WriteConcern_IsValid(request.write_concern())) {
    return absl::InvalidArgumentError(
        absl::StrCat("write_concern: unknown value ", request.write_concern()));
  }
  if (request.ops().empty()) return absl::InvalidArgumentError("ops: no operations");
  if (request.ops_size() > limits.max_ops_per_update) {
    return absl::InvalidArgumentError(absl::StrCat("ops: ", request.ops_size(),
                                                   " operations, over the limit of ",
                                                   limits.max_ops_per_update));
  }
  PreparedUpdate out;
  if (!request.base_version().empty()) {
    MERGEDB_ASSIGN_OR_RETURN(out.base_version_,
                             DecodeVersionToken("base_version", request.base_version()));
    out.has_base_version_ = true;
  }
  for (int i = 0; i < request.ops_size(); ++i) {
    const mergedb::v1::Operation& in = request.ops(i);
    const std::string what = absl::StrCat("ops[", i, "]");
    Op op;
    op.kind = in.op_case();
    MERGEDB_ASSIGN_OR_RETURN(op.path, ValidatePath(absl::StrCat(what, ".path"), in.path(), limits));
    if (op.kind == mergedb::v1::Operation::kDeleteDocument) {
      if (!op.path.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": delete_document takes no path (use remove_field)"));
      }
    } else if (op.kind != mergedb::v1::Operation::OP_NOT_SET && op.path.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".path: empty"));
    }
    switch (op.kind) {
      case mergedb::v1::Operation::kSet: {
        const auto& value = in.set().value();
        if (value.kind_case() == mergedb::v1::RegisterInput::kScalar) {
          MERGEDB_ASSIGN_OR_RETURN(crdt::Scalar s,
                                   ValidateScalar(absl::StrCat(what, ".set.value"), value.scalar(),
                                                  limits));
          op.value = crdt::RegisterValue::OfScalar(std::move(s));
        } else if (value.kind_case() == mergedb::v1::RegisterInput::kJson) {
          const size_t json_size = value.json().ByteSizeLong();
          if (json_size > limits.max_value_bytes) {
            return absl::ResourceExhaustedError(
                absl::StrCat(what, ".set.value: ", json_size, " bytes of JSON, over the ",
                             limits.max_value_bytes, "-byte value limit"));
          }
          MERGEDB_RETURN_IF_ERROR(ValidateJson(absl::StrCat(what, ".set.value"), value.json(),
                                               static_cast<int>(op.path.size()), limits));
          op.value = crdt::RegisterValue::OfJson(value.json());
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ".set.value: neither scalar nor json set"));
        }
        break;
      }
      case mergedb::v1::Operation::kIncrement:
        op.by = in.increment().by();
        break;
      case mergedb::v1::Operation::kAdd: {
        MERGEDB_ASSIGN_OR_RETURN(
            op.elements, ValidateElements(absl::StrCat(what, ".add.elements"), in.add().elements(),
                                          limits));
        break;
      }
      case mergedb::v1::Operation::kRemove: {
        MERGEDB_ASSIGN_OR_RETURN(op.elements,
                                 ValidateElements(absl::StrCat(what, ".remove.elements"),
                                                  in.remove().elements(), limits));
        break;
      }
      case mergedb::v1::Operation::kEnable:
      case mergedb::v1::Operation::kDisable:
      case mergedb::v1::Operation::kRemoveField:
      case mergedb::v1::Operation::kDeleteDocument:
        break;
      case mergedb::v1::Operation::OP_NOT_SET:
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": unknown or missing operation (one of set, increment, add, remove, enable, "
                  "disable, remove_field, delete_document)"));
    }
    out.ops_.push_back(std::move(op));
  }
  return out;
}

absl::StatusOr<crdt::Document> PreparedUpdate::Apply(crdt::Document& doc, crdt::ReplicaId replica,
                                                     HybridClock& clock) const {
  crdt::Document total;
  // With a base version, an operation supersedes what that read observed and what the earlier
  // operations of this update wrote ("applied in order"): without the second part, `enable f`
  // then `disable f` in one update would leave f enabled (enable wins over a disable that did
  // not observe it).
  crdt::CausalContext observed;
  if (has_base_version_) {
    observed = base_version_;
    doc.set_observed_limit(&observed);
  }
  absl::Status status;
  for (size_t i = 0; i < ops_.size() && status.ok(); ++i) {
    const Op& op = ops_[i];
    absl::StatusOr<crdt::Document> delta;
    switch (op.kind) {
      case mergedb::v1::Operation::kSet:
        delta = doc.SetRegister(op.path, op.value, replica, clock.Tick());
        break;
      case mergedb::v1::Operation::kIncrement:
        delta = doc.Increment(op.path, op.by, replica);
        break;
      case mergedb::v1::Operation::kAdd:
        delta = doc.AddElements(op.path, op.elements, replica);
        break;
      case mergedb::v1::Operation::kRemove:
        delta = doc.RemoveElements(op.path, op.elements);
        break;
      case mergedb::v1::Operation::kEnable:
        delta = doc.SetFlag(op.path, true, replica);
        break;
      case mergedb::v1::Operation::kDisable:
        delta = doc.SetFlag(op.path, false, replica);
        break;
      case mergedb::v1::Operation::kRemoveField:
        delta = doc.RemoveField(op.path);
        break;
      case mergedb::v1::Operation::kDeleteDocument:
        delta = doc.Delete();
        break;
      case mergedb::v1::Operation::OP_NOT_SET:
        delta = absl::InvalidArgumentError("missing operation");
        break;
    }
    if (delta.ok()) {
      if (has_base_version_) observed.Join(delta->context());
      total.Join(*delta);
    } else {
      status = absl::Status(delta.status().code(),
                            absl::StrCat("ops[", i, "]: ", delta.status().message()));
    }
  }
  doc.set_observed_limit(nullptr);
  if (!status.ok()) return status;
  return total;
}

}  // namespace mergedb::node

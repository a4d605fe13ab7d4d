#include "crdt/leaf_key.h"

#include "absl/strings/str_cat.h"
#include "crdt/scalar.h"

namespace mergedb::crdt {

absl::string_view FieldKindName(FieldKind kind) {
  switch (kind) {
    case FieldKind::kCounter:
      return "counter";
    case FieldKind::kRegister:
      return "register";
    case FieldKind::kFlag:
      return "flag";
    case FieldKind::kSet:
      return "set";
    case FieldKind::kMap:
      return "map";
  }
  return "unknown";
}

bool IsValidFieldKind(uint8_t byte) { return byte >= 1 && byte <= 5; }

void AppendName(std::string* key, absl::string_view name) {
  for (char c : name) {
    key->push_back(c);
    if (c == '\0') key->push_back('\xff');
  }
  key->push_back('\0');
  key->push_back('\x01');
}

void AppendSegment(std::string* key, absl::string_view name, FieldKind kind) {
  AppendName(key, name);
  key->push_back(static_cast<char>(kind));
}

std::string MapPrefix(absl::Span<const std::string> path) {
  std::string key;
  for (const std::string& name : path) AppendSegment(&key, name, FieldKind::kMap);
  return key;
}

std::string FieldKey(absl::Span<const std::string> path, FieldKind kind) {
  std::string key = MapPrefix(path.subspan(0, path.size() - 1));
  AppendSegment(&key, path.back(), kind);
  return key;
}

bool ConsumeName(absl::string_view* in, std::string* name) {
  name->clear();
  size_t i = 0;
  while (i < in->size()) {
    const char c = (*in)[i++];
    if (c != '\0') {
      name->push_back(c);
      continue;
    }
    if (i >= in->size()) return false;
    const char next = (*in)[i++];
    if (next == '\xff') {
      name->push_back('\0');
    } else if (next == '\x01') {
      in->remove_prefix(i);
      return true;
    } else {
      return false;
    }
  }
  return false;
}

absl::StatusOr<DecodedLeafKey> DecodeLeafKey(absl::string_view key) {
  DecodedLeafKey out;
  while (true) {
    std::string name;
    if (!ConsumeName(&key, &name) || key.empty()) {
      return absl::InvalidArgumentError("leaf key: malformed or truncated field name or kind");
    }
    const uint8_t kind_byte = static_cast<uint8_t>(key[0]);
    key.remove_prefix(1);
    if (!IsValidFieldKind(kind_byte)) {
      return absl::InvalidArgumentError(absl::StrCat("leaf key: unknown field kind ", kind_byte));
    }
    out.names.push_back(std::move(name));
    const FieldKind kind = static_cast<FieldKind>(kind_byte);
    if (kind == FieldKind::kMap) {
      if (key.empty()) return absl::InvalidArgumentError("leaf key: ends in a map segment");
      continue;
    }
    out.kind = kind;
    if (kind == FieldKind::kSet) {
      out.element_key = std::string(key);
      auto element = Scalar::DecodeKey(out.element_key);
      if (!element.ok()) return element.status();
    } else if (!key.empty()) {
      return absl::InvalidArgumentError("leaf key: bytes after a non-set field");
    }
    return out;
  }
}

std::string PrefixSuccessor(absl::string_view prefix) {
  std::string out(prefix);
  while (!out.empty()) {
    if (static_cast<unsigned char>(out.back()) != 0xff) {
      out.back() = static_cast<char>(static_cast<unsigned char>(out.back()) + 1);
      return out;
    }
    out.pop_back();
  }
  return out;
}

}  // namespace mergedb::crdt

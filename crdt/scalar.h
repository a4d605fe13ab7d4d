// Typed scalar values and register values.
//
// Scalars are typed end to end: null, bool, int64, double, string. The int64 1 and the double 1.0
// are different values, so they are different set elements; an int64 is never rounded through a
// double. Doubles compare by bit pattern, so equality is reflexive even for NaN and -0.0 != 0.0
// (validation at the API keeps NaN and infinities out).
//
// Order-preserving key encoding (used for set elements inside leaf keys and storage keys):
//   scalar_key := 0x01                                  null
//              |  0x02 (0x00 | 0x01)                    false | true
//              |  0x03 be64(value XOR 1<<63)            int64, sign bit flipped
//              |  0x04 be64(ordered_bits(value))        double, IEEE bits made sortable
//              |  0x05 utf8-bytes                       string (always last in a key)
// Within a type, keys sort like the values; across types, by the tag.
#ifndef MERGEDB_CRDT_SCALAR_H_
#define MERGEDB_CRDT_SCALAR_H_

#include <cstdint>
#include <string>
#include <variant>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/struct.pb.h"
#include "mergedb/v1/crdt.pb.h"

namespace mergedb::crdt {

struct Null {
  friend bool operator==(Null, Null) { return true; }
};

class Scalar {
 public:
  using Rep = std::variant<Null, bool, int64_t, double, std::string>;

  Scalar() = default;
  static Scalar OfNull() { return Scalar(Rep(Null{})); }
  static Scalar OfBool(bool v) { return Scalar(Rep(v)); }
  static Scalar OfInt(int64_t v) { return Scalar(Rep(v)); }
  static Scalar OfDouble(double v) { return Scalar(Rep(v)); }
  static Scalar OfString(std::string v) { return Scalar(Rep(std::move(v))); }

  const Rep& rep() const { return rep_; }
  bool is_null() const { return std::holds_alternative<Null>(rep_); }

  // Order-preserving encoding (grammar above) and its inverse.
  std::string EncodeKey() const;
  static absl::StatusOr<Scalar> DecodeKey(absl::string_view key);

  void EncodeTo(mergedb::v1::Scalar* out) const;
  static absl::StatusOr<Scalar> Decode(const mergedb::v1::Scalar& in);

  // The JSON view: numbers for doubles and for integers of magnitude <= 2^53 (exact in a double);
  // larger integers become decimal strings so that no JSON reader rounds them.
  google::protobuf::Value ToJson() const;

  // What a command line means by TEXT, in JSON's scalar syntax: null, true, false; a JSON
  // number (an int64 when it is an integer literal in range, else a double); "quoted" text
  // (the quotes removed); anything else is the text itself, as a string (so 02134 and +5 are
  // strings: JSON numbers have no leading zeros or plus signs).
  static Scalar ParseText(absl::string_view text);

  std::string DebugString() const;

  friend bool operator==(const Scalar& a, const Scalar& b);

 private:
  explicit Scalar(Rep rep) : rep_(std::move(rep)) {}
  Rep rep_;
};

// A register's value: a typed scalar, or any JSON value kept opaque (held as its deterministic
// serialization, so equal JSON values are equal bytes).
class RegisterValue {
 public:
  RegisterValue() = default;
  static RegisterValue OfScalar(Scalar s) { return RegisterValue(std::move(s), std::string()); }
  static RegisterValue OfJson(const google::protobuf::Value& json);
  // `serialized` must be a deterministic serialization of google.protobuf.Value.
  static RegisterValue OfSerializedJson(std::string serialized) {
    RegisterValue v;
    v.is_json_ = true;
    v.json_ = std::move(serialized);
    return v;
  }

  bool is_json() const { return is_json_; }
  const Scalar& scalar() const { return scalar_; }
  const std::string& serialized_json() const { return json_; }
  size_t ByteSize() const { return is_json_ ? json_.size() : scalar_.EncodeKey().size(); }

  void EncodeTo(mergedb::v1::RegisterValue* out) const;
  static absl::StatusOr<RegisterValue> Decode(const mergedb::v1::RegisterValue& in);
  google::protobuf::Value ToJson() const;
  std::string DebugString() const;

  friend bool operator==(const RegisterValue&, const RegisterValue&) = default;

 private:
  RegisterValue(Scalar s, std::string json) : scalar_(std::move(s)), json_(std::move(json)) {}
  bool is_json_ = false;
  Scalar scalar_;
  std::string json_;
};

// Serializes `message` deterministically (map entries sorted): every encoding of CRDT state goes
// through this, so equal states are equal bytes on every replica.
std::string SerializeDeterministic(const google::protobuf::MessageLite& message);

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_SCALAR_H_

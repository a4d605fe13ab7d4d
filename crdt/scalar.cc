#include "crdt/scalar.h"

#include <cstring>

#include "absl/base/internal/endian.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace mergedb::crdt {

namespace {

constexpr char kTagNull = 0x01;
constexpr char kTagBool = 0x02;
constexpr char kTagInt = 0x03;
constexpr char kTagDouble = 0x04;
constexpr char kTagString = 0x05;

constexpr int64_t kMaxExactInDouble = int64_t{1} << 53;

uint64_t DoubleBits(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

double BitsToDouble(uint64_t bits) {
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// IEEE-754 bits made to sort like the numbers: flip all bits of negatives, the sign of positives.
uint64_t OrderedBits(double v) {
  uint64_t bits = DoubleBits(v);
  return (bits >> 63) ? ~bits : bits ^ (uint64_t{1} << 63);
}

double FromOrderedBits(uint64_t ordered) {
  return BitsToDouble((ordered >> 63) ? ordered ^ (uint64_t{1} << 63) : ~ordered);
}

void AppendBigEndian64(std::string* out, uint64_t v) {
  char buf[8];
  absl::big_endian::Store64(buf, v);
  out->append(buf, 8);
}

}  // namespace

bool operator==(const Scalar& a, const Scalar& b) {
  if (a.rep_.index() != b.rep_.index()) return false;
  if (const double* da = std::get_if<double>(&a.rep_)) {
    return DoubleBits(*da) == DoubleBits(std::get<double>(b.rep_));
  }
  return a.rep_ == b.rep_;
}

std::string Scalar::EncodeKey() const {
  std::string out;
  struct Visitor {
    std::string* out;
    void operator()(Null) const { out->push_back(kTagNull); }
    void operator()(bool v) const {
      out->push_back(kTagBool);
      out->push_back(v ? 1 : 0);
    }
    void operator()(int64_t v) const {
      out->push_back(kTagInt);
      AppendBigEndian64(out, static_cast<uint64_t>(v) ^ (uint64_t{1} << 63));
    }
    void operator()(double v) const {
      out->push_back(kTagDouble);
      AppendBigEndian64(out, OrderedBits(v));
    }
    void operator()(const std::string& v) const {
      out->push_back(kTagString);
      out->append(v);
    }
  };
  std::visit(Visitor{&out}, rep_);
  return out;
}

absl::StatusOr<Scalar> Scalar::DecodeKey(absl::string_view key) {
  if (key.empty()) return absl::InvalidArgumentError("scalar key: empty");
  const char tag = key[0];
  absl::string_view body = key.substr(1);
  switch (tag) {
    case kTagNull:
      if (!body.empty()) break;
      return OfNull();
    case kTagBool:
      if (body.size() != 1 || static_cast<unsigned char>(body[0]) > 1) break;
      return OfBool(body[0] == 1);
    case kTagInt:
      if (body.size() != 8) break;
      return OfInt(static_cast<int64_t>(absl::big_endian::Load64(body.data()) ^
                                        (uint64_t{1} << 63)));
    case kTagDouble:
      if (body.size() != 8) break;
      return OfDouble(FromOrderedBits(absl::big_endian::Load64(body.data())));
    case kTagString:
      return OfString(std::string(body));
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("scalar key: malformed encoding with tag ", static_cast<int>(tag)));
}

void Scalar::EncodeTo(mergedb::v1::Scalar* out) const {
  struct Visitor {
    mergedb::v1::Scalar* out;
    void operator()(Null) const { out->mutable_null_value(); }
    void operator()(bool v) const { out->set_bool_value(v); }
    void operator()(int64_t v) const { out->set_int_value(v); }
    void operator()(double v) const { out->set_double_value(v); }
    void operator()(const std::string& v) const { out->set_string_value(v); }
  };
  out->Clear();
  std::visit(Visitor{out}, rep_);
}

absl::StatusOr<Scalar> Scalar::Decode(const mergedb::v1::Scalar& in) {
  switch (in.kind_case()) {
    case mergedb::v1::Scalar::kNullValue:
      return OfNull();
    case mergedb::v1::Scalar::kBoolValue:
      return OfBool(in.bool_value());
    case mergedb::v1::Scalar::kIntValue:
      return OfInt(in.int_value());
    case mergedb::v1::Scalar::kDoubleValue:
      return OfDouble(in.double_value());
    case mergedb::v1::Scalar::kStringValue:
      return OfString(in.string_value());
    case mergedb::v1::Scalar::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("scalar: no value set (one of null, bool, int, double, string)");
}

google::protobuf::Value Scalar::ToJson() const {
  google::protobuf::Value out;
  struct Visitor {
    google::protobuf::Value* out;
    void operator()(Null) const { out->set_null_value(google::protobuf::NULL_VALUE); }
    void operator()(bool v) const { out->set_bool_value(v); }
    void operator()(int64_t v) const {
      if (v >= -kMaxExactInDouble && v <= kMaxExactInDouble) {
        out->set_number_value(static_cast<double>(v));
      } else {
        out->set_string_value(absl::StrCat(v));
      }
    }
    void operator()(double v) const { out->set_number_value(v); }
    void operator()(const std::string& v) const { out->set_string_value(v); }
  };
  std::visit(Visitor{&out}, rep_);
  return out;
}

namespace {
// JSON's number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. `integer` says whether
// it has neither fraction nor exponent.
bool IsJsonNumber(absl::string_view t, bool* integer) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < t.size() && t[i] >= '0' && t[i] <= '9') ++i;
    return i > start;
  };
  if (i < t.size() && t[i] == '-') ++i;
  if (i < t.size() && t[i] == '0') {
    ++i;
  } else if (!digits()) {
    return false;
  }
  *integer = true;
  if (i < t.size() && t[i] == '.') {
    ++i;
    if (!digits()) return false;
    *integer = false;
  }
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
    if (!digits()) return false;
    *integer = false;
  }
  return i == t.size();
}
}  // namespace

Scalar Scalar::ParseText(absl::string_view text) {
  if (text == "null") return OfNull();
  if (text == "true" || text == "false") return OfBool(text == "true");
  bool integer = false;
  if (IsJsonNumber(text, &integer)) {
    int64_t i;
    if (integer && absl::SimpleAtoi(text, &i)) return OfInt(i);
    double d;
    if (absl::SimpleAtod(text, &d)) return OfDouble(d);
  }
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"') {
    return OfString(std::string(text.substr(1, text.size() - 2)));
  }
  return OfString(std::string(text));
}

std::string Scalar::DebugString() const {
  struct Visitor {
    std::string operator()(Null) const { return "null"; }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(int64_t v) const { return absl::StrCat(v); }
    std::string operator()(double v) const { return absl::StrCat(v, "d"); }
    std::string operator()(const std::string& v) const { return absl::StrCat("\"", v, "\""); }
  };
  return std::visit(Visitor{}, rep_);
}

std::string SerializeDeterministic(const google::protobuf::MessageLite& message) {
  std::string serialized;
  {
    google::protobuf::io::StringOutputStream stream(&serialized);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }
  return serialized;
}

RegisterValue RegisterValue::OfJson(const google::protobuf::Value& json) {
  return OfSerializedJson(SerializeDeterministic(json));
}

void RegisterValue::EncodeTo(mergedb::v1::RegisterValue* out) const {
  if (is_json_) {
    // Valid by construction: OfJson serialized it, or Decode re-serialized a parsed value.
    (void)out->mutable_json()->ParseFromString(json_);
  } else {
    scalar_.EncodeTo(out->mutable_scalar());
  }
}

absl::StatusOr<RegisterValue> RegisterValue::Decode(const mergedb::v1::RegisterValue& in) {
  switch (in.kind_case()) {
    case mergedb::v1::RegisterValue::kScalar: {
      auto scalar = Scalar::Decode(in.scalar());
      if (!scalar.ok()) return scalar.status();
      return OfScalar(*std::move(scalar));
    }
    case mergedb::v1::RegisterValue::kJson:
      return OfJson(in.json());
    case mergedb::v1::RegisterValue::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("register value: neither scalar nor json set");
}

google::protobuf::Value RegisterValue::ToJson() const {
  if (!is_json_) return scalar_.ToJson();
  google::protobuf::Value out;
  // Decode() verified the bytes; a value built by OfJson() is valid by construction.
  (void)out.ParseFromString(json_);
  return out;
}

std::string RegisterValue::DebugString() const {
  if (!is_json_) return scalar_.DebugString();
  return absl::StrCat("json(", ToJson().ShortDebugString(), ")");
}

}  // namespace mergedb::crdt

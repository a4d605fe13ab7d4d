#include "crdt/scalar.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace mergedb::crdt {
namespace {

TEST(Scalar, IntegerOneAndDoubleOneDiffer) {
  EXPECT_FALSE(Scalar::OfInt(1) == Scalar::OfDouble(1.0));
  EXPECT_NE(Scalar::OfInt(1).EncodeKey(), Scalar::OfDouble(1.0).EncodeKey());
}

TEST(Scalar, KeyEncodingPreservesOrderWithinEachType) {
  const std::vector<Scalar> ordered = {
      Scalar::OfNull(),
      Scalar::OfBool(false),
      Scalar::OfBool(true),
      Scalar::OfInt(std::numeric_limits<int64_t>::min()),
      Scalar::OfInt(-1),
      Scalar::OfInt(0),
      Scalar::OfInt(7),
      Scalar::OfInt(std::numeric_limits<int64_t>::max()),
      Scalar::OfDouble(-std::numeric_limits<double>::infinity()),
      Scalar::OfDouble(-2.5),
      Scalar::OfDouble(-0.0),
      Scalar::OfDouble(0.0),
      Scalar::OfDouble(1e-300),
      Scalar::OfDouble(3.0),
      Scalar::OfString(""),
      Scalar::OfString("a"),
      Scalar::OfString(std::string("a\0b", 3)),
      Scalar::OfString("b"),
  };
  for (size_t i = 0; i + 1 < ordered.size(); ++i) {
    EXPECT_LT(ordered[i].EncodeKey(), ordered[i + 1].EncodeKey())
        << ordered[i].DebugString() << " vs " << ordered[i + 1].DebugString();
  }
  for (const Scalar& s : ordered) {
    auto decoded = Scalar::DecodeKey(s.EncodeKey());
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_TRUE(*decoded == s) << s.DebugString();
  }
}

TEST(Scalar, MalformedKeysAreRejected) {
  for (const std::string& key : {std::string(), std::string("\x03\x01", 2), std::string("\x02\x05", 2),
                                 std::string("\x09"), std::string("\x01x")}) {
    EXPECT_EQ(Scalar::DecodeKey(key).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(Scalar, ProtoRoundTripAndUnsetIsAnError) {
  for (const Scalar& s : {Scalar::OfNull(), Scalar::OfBool(true), Scalar::OfInt(-5),
                          Scalar::OfDouble(2.5), Scalar::OfString("x")}) {
    mergedb::v1::Scalar proto;
    s.EncodeTo(&proto);
    auto back = Scalar::Decode(proto);
    ASSERT_TRUE(back.ok());
    EXPECT_TRUE(*back == s);
  }
  EXPECT_EQ(Scalar::Decode(mergedb::v1::Scalar()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Scalar, JsonViewKeepsLargeIntegersExactAsStrings) {
  EXPECT_EQ(Scalar::OfInt(42).ToJson().number_value(), 42.0);
  EXPECT_EQ(Scalar::OfInt((int64_t{1} << 53) + 1).ToJson().string_value(), "9007199254740993");
}

TEST(RegisterValue, JsonIsOpaqueAndCanonical) {
  google::protobuf::Value a;
  (*a.mutable_struct_value()->mutable_fields())["x"].set_number_value(1);
  (*a.mutable_struct_value()->mutable_fields())["y"].set_string_value("z");
  google::protobuf::Value b;
  (*b.mutable_struct_value()->mutable_fields())["y"].set_string_value("z");
  (*b.mutable_struct_value()->mutable_fields())["x"].set_number_value(1);
  EXPECT_EQ(RegisterValue::OfJson(a), RegisterValue::OfJson(b));
  mergedb::v1::RegisterValue proto;
  RegisterValue::OfJson(a).EncodeTo(&proto);
  auto back = RegisterValue::Decode(proto);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->ToJson().struct_value().fields().at("y").string_value(), "z");
}

TEST(Scalar, TextIsTypedByJsonScalarSyntaxAndAnythingElseIsAString) {
  EXPECT_EQ(Scalar::ParseText("null"), Scalar::OfNull());
  EXPECT_EQ(Scalar::ParseText("true"), Scalar::OfBool(true));
  EXPECT_EQ(Scalar::ParseText("42"), Scalar::OfInt(42));
  EXPECT_EQ(Scalar::ParseText("-0"), Scalar::OfInt(0));
  EXPECT_EQ(Scalar::ParseText("-9223372036854775808"), Scalar::OfInt(INT64_MIN));
  EXPECT_EQ(Scalar::ParseText("9223372036854775808"), Scalar::OfDouble(9223372036854775808.0));
  EXPECT_EQ(Scalar::ParseText("1.5"), Scalar::OfDouble(1.5));
  EXPECT_EQ(Scalar::ParseText("2e3"), Scalar::OfDouble(2000));
  EXPECT_EQ(Scalar::ParseText("\"42\""), Scalar::OfString("42"));
  // Not JSON numbers: kept as written (a ZIP code keeps its leading zero).
  for (const char* text :
       {"02134", "+5", " 42", "42 ", "1.", ".5", "1e", "0x10", "nan", "inf", "True", "", "\""}) {
    EXPECT_EQ(Scalar::ParseText(text), Scalar::OfString(text)) << text;
  }
}

}  // namespace
}  // namespace mergedb::crdt

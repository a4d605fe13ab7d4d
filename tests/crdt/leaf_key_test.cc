#include "crdt/leaf_key.h"

#include "crdt/scalar.h"
#include "gtest/gtest.h"

namespace mergedb::crdt {
namespace {

TEST(LeafKey, RoundTripsNestedPathsWithAwkwardNames) {
  const std::vector<std::string> path = {"a", std::string("b\0c", 3), "\xff"};
  std::string key = FieldKey(path, FieldKind::kSet) + Scalar::OfInt(3).EncodeKey();
  auto decoded = DecodeLeafKey(key);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->names, path);
  EXPECT_EQ(decoded->kind, FieldKind::kSet);
  EXPECT_EQ(decoded->element_key, Scalar::OfInt(3).EncodeKey());
}

TEST(LeafKey, EverythingUnderAMapSharesItsPrefix) {
  const std::string prefix = MapPrefix(std::vector<std::string>{"m"});
  const std::string inside = FieldKey(std::vector<std::string>{"m", "x"}, FieldKind::kCounter);
  const std::string sibling = FieldKey(std::vector<std::string>{"m2"}, FieldKind::kCounter);
  EXPECT_EQ(inside.compare(0, prefix.size(), prefix), 0);
  EXPECT_NE(sibling.compare(0, prefix.size(), prefix), 0);
  EXPECT_LT(inside, PrefixSuccessor(prefix));
}

TEST(LeafKey, MalformedKeysAreRejected) {
  EXPECT_FALSE(DecodeLeafKey("").ok());
  EXPECT_FALSE(DecodeLeafKey(std::string("a\0\x01", 3)).ok());                // no kind
  EXPECT_FALSE(DecodeLeafKey(std::string("a\0\x01\x09", 4)).ok());            // bad kind
  EXPECT_FALSE(DecodeLeafKey(std::string("a\0\x01\x05", 4)).ok());            // ends in a map
  EXPECT_FALSE(DecodeLeafKey(std::string("a\0\x01\x01z", 5)).ok());           // trailing bytes
  EXPECT_FALSE(DecodeLeafKey(std::string("a\0\x01\x04\x09", 5)).ok());        // bad element
  EXPECT_FALSE(DecodeLeafKey(std::string("a\0\x07\x01", 4)).ok());            // bad escape
}

}  // namespace
}  // namespace mergedb::crdt

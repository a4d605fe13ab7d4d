#include "node/stream_codec.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace mergedb::node {
namespace {

constexpr size_t kMax = size_t{64} << 20;

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Every test runs with both codecs: the contract (empty messages, errors that break the stream,
// the expansion bound) is the same.
class StreamCodecTest : public ::testing::TestWithParam<StreamCodec> {
 protected:
  std::unique_ptr<StreamCompressor> NewCompressor() const {
    return StreamCompressor::Create(GetParam());
  }
  std::unique_ptr<StreamCompressor> compressor_ = NewCompressor();
  std::unique_ptr<StreamDecompressor> decompressor_ = StreamDecompressor::Create(GetParam());
};

TEST_P(StreamCodecTest, MessagesRoundTripInOrderAndRepetitionGetsCheap) {
  StreamCompressor& compressor = *compressor_;
  StreamDecompressor& decompressor = *decompressor_;
  std::mt19937_64 rng(7);
  const std::string common = RandomBytes(rng, 60);  // e.g. replica ids and keys of every frame
  std::vector<size_t> sizes;
  for (int i = 0; i < 200; ++i) {
    const std::string message = common + RandomBytes(rng, 8);
    const std::string wire = compressor.Compress(message);
    sizes.push_back(wire.size());
    auto plain = decompressor.Decompress(wire, kMax);
    ASSERT_TRUE(plain.ok()) << plain.status();
    ASSERT_EQ(*plain, message) << "message " << i;
  }
  // The first message pays for the common part; later ones refer back to it.
  EXPECT_GT(sizes.front(), 60u);
  EXPECT_LT(sizes.back(), 30u);
}

TEST_P(StreamCodecTest, EmptyLargeAndIncompressibleMessagesRoundTrip) {
  StreamCompressor& compressor = *compressor_;
  StreamDecompressor& decompressor = *decompressor_;
  std::mt19937_64 rng(8);
  for (size_t n : {size_t{0}, size_t{1}, size_t{100000}, size_t{3} << 20, size_t{0}}) {
    const std::string message = RandomBytes(rng, n);
    auto plain = decompressor.Decompress(compressor.Compress(message), kMax);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_EQ(*plain, message);
  }
}

// zlib emits nothing for a sync flush right after another, so an empty message used to leave
// the receiver appending a flush tail the sender never produced, and the next message did not
// decode (found by tests/fuzz/stream_codec_fuzzer).
TEST_P(StreamCodecTest, EmptyMessagesBetweenOthersKeepBothEndsInStep) {
  StreamCompressor& compressor = *compressor_;
  StreamDecompressor& decompressor = *decompressor_;
  for (const std::string message : {"first", "", "", "after two empty ones", ""}) {
    auto plain = decompressor.Decompress(compressor.Compress(message), kMax);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_EQ(*plain, message);
  }
}

TEST_P(StreamCodecTest, CorruptDataIsAnErrorAndTheStreamStaysBroken) {
  StreamCompressor& compressor = *compressor_;
  StreamDecompressor& decompressor = *decompressor_;
  std::string wire = compressor.Compress(std::string(1000, 'a'));
  wire[0] = static_cast<char>(0xff);  // DEFLATE: an invalid block type; zstd: a bad magic number
  auto plain = decompressor.Decompress(wire, kMax);
  ASSERT_FALSE(plain.ok());
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(decompressor.Decompress(compressor.Compress("x"), kMax).ok());
}

// gRPC delivers messages whole, so a cut message means a broken sender: it must not pass as a
// shorter one (which could still parse as a replication message). Cut anywhere, a message of
// less than a compressed block (DEFLATE's or zstd's; larger messages have block boundaries
// inside, where a cut cannot be told from an end) is an error, whether it comes first on its
// stream or refers back to earlier messages.
TEST_P(StreamCodecTest, AMessageCutShortIsAnError) {
  std::mt19937_64 rng(11);
  const std::string earlier = "frame " + RandomBytes(rng, 300);
  const std::string message = "frame " + RandomBytes(rng, 200) + earlier.substr(0, 200) +
                              std::string(300, 'a') + RandomBytes(rng, 100);
  for (const bool first : {true, false}) {
    std::unique_ptr<StreamCompressor> compressor = NewCompressor();
    const std::string before = first ? "" : compressor->Compress(earlier);
    const std::string wire = compressor->Compress(message);
    for (size_t cut = 1; cut < wire.size(); ++cut) {
      std::unique_ptr<StreamDecompressor> decompressor = StreamDecompressor::Create(GetParam());
      if (!first) {
        ASSERT_EQ(decompressor->Decompress(before, kMax).value(), earlier);
      }
      auto plain = decompressor->Decompress(absl::string_view(wire).substr(0, cut), kMax);
      EXPECT_FALSE(plain.ok()) << "cut at " << cut << " of " << wire.size() << " decoded "
                               << plain->size() << " bytes, first: " << first;
      if (!plain.ok()) {
        EXPECT_EQ(plain.status().code(), absl::StatusCode::kInvalidArgument);
      }
    }
  }
}

TEST_P(StreamCodecTest, AMessageOfAnotherStreamDoesNotDecode) {
  std::unique_ptr<StreamCompressor> first = NewCompressor();
  std::unique_ptr<StreamCompressor> second = NewCompressor();
  StreamDecompressor& decompressor = *decompressor_;
  const std::string message = "frame frame frame frame frame";
  ASSERT_TRUE(decompressor.Decompress(first->Compress(message), kMax).ok());
  // Random bytes, so the repeat can only be a reference into the previous message (a run of
  // one byte would compress to something that decodes in any context: a zstd RLE block).
  std::mt19937_64 rng(9);
  const std::string repeated = RandomBytes(rng, 5000);
  (void)second->Compress(repeated);
  const std::string wire = second->Compress(repeated);
  ASSERT_LT(wire.size(), 100u);  // the reference, not the bytes
  // Refers back into a history this decompressor never saw.
  auto plain = decompressor.Decompress(wire, kMax);
  EXPECT_FALSE(plain.ok() && *plain == repeated);
}

TEST_P(StreamCodecTest, ExpansionBeyondTheLimitIsRefused) {
  StreamCompressor& compressor = *compressor_;
  StreamDecompressor& decompressor = *decompressor_;
  const std::string wire = compressor.Compress(std::string(size_t{8} << 20, '\0'));
  EXPECT_LT(wire.size(), size_t{64} << 10);
  auto plain = decompressor.Decompress(wire, size_t{1} << 20);
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.status().message().find("expands beyond"), std::string::npos);
}

TEST_P(StreamCodecTest, AMessageOfExactlyTheLimitPassesAndOneByteMoreDoesNot) {
  constexpr size_t kLimit = 10000;
  std::mt19937_64 rng(10);
  const std::string at_limit = RandomBytes(rng, kLimit);
  auto plain = decompressor_->Decompress(compressor_->Compress(at_limit), kLimit);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(*plain, at_limit);
  auto over = decompressor_->Decompress(compressor_->Compress(at_limit + "x"), kLimit);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.status().message().find("expands beyond 10000 bytes"), std::string::npos)
      << over.status();
}

INSTANTIATE_TEST_SUITE_P(Codecs, StreamCodecTest,
                         ::testing::Values(StreamCodec::kDeflate, StreamCodec::kZstd),
                         [](const ::testing::TestParamInfo<StreamCodec>& info) {
                           return info.param == StreamCodec::kZstd ? "Zstd" : "Deflate";
                         });

}  // namespace
}  // namespace mergedb::node

// Fuzzes the decompression of replication streams: bytes -> mergedb.fuzz.CompressedStream -> one
// node::StreamDecompressor (of the input's codec) over its compressed messages, each result parsed
// as the ReplicationRequest it claims to be, as the replication transport does before a message
// reaches LinkReceiver. On a compressed stream, these are the first of a peer's bytes a node
// decodes.
//
// Invariants besides "no crash, no sanitizer report, no hang":
//   - no message expands beyond the limit given;
//   - after one message fails, the stream stays broken (its context is lost);
//   - plain messages compressed by a StreamCompressor come back exactly, in order.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "fuzz_input.pb.h"
#include "mergedb/v1/replication.pb.h"
#include "node/replication.h"
#include "node/stream_codec.h"
#include "tests/fuzz/fuzz_util.h"

namespace mergedb::fuzz {
namespace {

constexpr int kMaxMessages = 64;
// Smaller than the transport's 64 MiB so that inputs that expand far stay cheap; the code path
// is the same.
constexpr size_t kMaxPlainBytes = size_t{1} << 20;

void Run(const CompressedStream& input) {
  // NONE (older seeds, which have no codec field) means DEFLATE.
  const node::StreamCodec codec =
      node::StreamCodecOf(input.codec()).value_or(node::StreamCodec::kDeflate);
  auto decompressor_owner = node::StreamDecompressor::Create(codec);
  node::StreamDecompressor& decompressor = *decompressor_owner;
  bool broken = false;
  for (int i = 0; i < input.compressed_size() && i < kMaxMessages; ++i) {
    auto plain = decompressor.Decompress(input.compressed(i), kMaxPlainBytes);
    if (!plain.ok()) {
      MERGEDB_FUZZ_CHECK(absl::IsInvalidArgument(plain.status()), "decompression failed with ",
                         plain.status().ToString());
      broken = true;
      continue;
    }
    MERGEDB_FUZZ_CHECK(!broken, "a broken compressed stream decoded another message");
    MERGEDB_FUZZ_CHECK(plain->size() <= kMaxPlainBytes, "a message expanded to ", plain->size(),
                       " bytes, beyond the limit of ", kMaxPlainBytes);
    mergedb::v1::ReplicationRequest request;
    (void)request.ParseFromString(*plain);
  }

  auto compressor = node::StreamCompressor::Create(codec);
  auto receiver = node::StreamDecompressor::Create(codec);
  for (int i = 0; i < input.plain_size() && i < kMaxMessages; ++i) {
    const std::string& message = input.plain(i);
    auto back = receiver->Decompress(compressor->Compress(message), kMaxPlainBytes);
    MERGEDB_FUZZ_CHECK(back.ok(), "message ", i, " of ", message.size(),
                       " bytes does not decompress: ", back.status().ToString());
    MERGEDB_FUZZ_CHECK(*back == message, "message ", i, " changes through compression");
  }
}

}  // namespace
}  // namespace mergedb::fuzz

MERGEDB_FUZZ_TARGET(mergedb::fuzz::CompressedStream)

// Compression over a whole replication stream, with the compression context carried from one
// message to the next (as WebSocket's permessage-deflate with context takeover does).
//
// Replication messages are small and alike: the same replica ids, collections, document ids and
// field keys recur in every frame and every acknowledgement. Compressed one message at a time
// they barely shrink; against the stream's recent history, a repeated id or key costs a few
// bits. The context is per stream and both ends see the messages in order (gRPC streams are
// ordered), so a stream that breaks simply starts the next with fresh contexts.
//
// Two codecs (mergedb.v1.StreamCompression): zstd, which nodes prefer, and DEFLATE, which
// nodes of earlier versions speak. Replaying W1's messages captured from a run, zstd's fast
// level took a sixth of DEFLATE's time on frames (about 800 bytes) and half on acks (about 70),
// for 8 % more bytes: DEFLATE builds Huffman tables for every flushed block, which on messages
// this small dominates. In a node's profile compression fell from 8 % of its CPU to 4 %.
#ifndef MERGEDB_NODE_STREAM_CODEC_H_
#define MERGEDB_NODE_STREAM_CODEC_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mergedb::node {

enum class StreamCodec { kDeflate, kZstd };

class StreamCompressor {
 public:
  static std::unique_ptr<StreamCompressor> Create(StreamCodec codec);
  virtual ~StreamCompressor() = default;
  // Each codec owns a C library's stream state: a copy would free it twice.
  StreamCompressor(const StreamCompressor&) = delete;
  StreamCompressor& operator=(const StreamCompressor&) = delete;

  // The next message of the stream, compressed and flushed so that the peer can decode it
  // without waiting for more. An empty message compresses to no bytes.
  std::string Compress(absl::string_view message);

 protected:
  StreamCompressor() = default;

 private:
  // `message` is not empty.
  virtual std::string CompressNonEmpty(absl::string_view message) = 0;
};

class StreamDecompressor {
 public:
  static std::unique_ptr<StreamDecompressor> Create(StreamCodec codec);
  virtual ~StreamDecompressor() = default;
  StreamDecompressor(const StreamDecompressor&) = delete;
  StreamDecompressor& operator=(const StreamDecompressor&) = delete;

  // The next message of the stream. INVALID_ARGUMENT when the data is not the continuation of
  // this stream or would expand beyond `max_bytes`; the stream cannot continue after an error.
  absl::StatusOr<std::string> Decompress(absl::string_view data, size_t max_bytes);

 protected:
  StreamDecompressor() = default;

 private:
  // `data` is not empty; an error breaks the stream for good.
  virtual absl::StatusOr<std::string> DecompressNonEmpty(absl::string_view data,
                                                         size_t max_bytes) = 0;
  bool failed_ = false;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_STREAM_CODEC_H_

// DEFLATE over a whole replication stream, with the compression context carried from one message
// to the next (as WebSocket's permessage-deflate with context takeover does).
//
// Replication messages are small and alike: the same replica ids, collections, document ids and
// field keys recur in every frame and every acknowledgement. Compressed one message at a time
// they barely shrink; against the stream's last 32 KiB, a repeated id or key costs a few bits.
// The context is per stream and both ends see the messages in order (gRPC streams are ordered),
// so a stream that breaks simply starts the next with fresh contexts.
#ifndef MERGEDB_NODE_STREAM_CODEC_H_
#define MERGEDB_NODE_STREAM_CODEC_H_

#include <zlib.h>

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mergedb::node {

class StreamCompressor {
 public:
  StreamCompressor();
  ~StreamCompressor();
  StreamCompressor(const StreamCompressor&) = delete;
  StreamCompressor& operator=(const StreamCompressor&) = delete;

  // The next message of the stream, compressed and flushed so that the peer can decode it
  // without waiting for more. An empty message compresses to no bytes.
  std::string Compress(absl::string_view message);

 private:
  z_stream z_{};
};

class StreamDecompressor {
 public:
  StreamDecompressor();
  ~StreamDecompressor();
  StreamDecompressor(const StreamDecompressor&) = delete;
  StreamDecompressor& operator=(const StreamDecompressor&) = delete;

  // The next message of the stream. INVALID_ARGUMENT when the data is not the continuation of
  // this stream or would expand beyond `max_bytes`; the stream cannot continue after an error.
  absl::StatusOr<std::string> Decompress(absl::string_view data, size_t max_bytes);

 private:
  z_stream z_{};
  bool failed_ = false;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_STREAM_CODEC_H_

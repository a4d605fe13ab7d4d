#include "node/stream_codec.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace mergedb::node {
namespace {

// Raw DEFLATE (no zlib header or checksum: the transport already checks integrity), the full
// 32 KiB window, and the fastest level: replication is latency-bound, and on these messages the
// fast level keeps nearly all of the gain.
constexpr int kWindowBits = -15;
constexpr int kLevel = 1;
constexpr int kMemLevel = 8;
// Z_SYNC_FLUSH ends every message with an empty stored block, 00 00 FF FF. The sender leaves it
// out and the receiver puts it back (RFC 7692's trick): four bytes saved per message.
constexpr unsigned char kFlushTail[4] = {0x00, 0x00, 0xff, 0xff};

}  // namespace

StreamCompressor::StreamCompressor() {
  // deflateInit2 fails only on bad parameters or no memory; both are programming errors here.
  if (deflateInit2(&z_, kLevel, Z_DEFLATED, kWindowBits, kMemLevel, Z_DEFAULT_STRATEGY) != Z_OK) {
    std::abort();
  }
}

StreamCompressor::~StreamCompressor() { deflateEnd(&z_); }

std::string StreamCompressor::Compress(absl::string_view message) {
  // An empty message travels as no bytes at all. deflate() refuses a second sync flush with no
  // input in between (Z_BUF_ERROR, no output), so it would yield no flush tail for the
  // receiver to put back; Decompress() treats empty data the same way, keeping both ends in
  // step.
  if (message.empty()) return std::string();
  std::string out;
  out.resize(deflateBound(&z_, message.size()) + 16);
  z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(message.data()));
  z_.avail_in = static_cast<uInt>(message.size());
  size_t produced = 0;
  while (true) {
    z_.next_out = reinterpret_cast<Bytef*>(out.data() + produced);
    z_.avail_out = static_cast<uInt>(out.size() - produced);
    deflate(&z_, Z_SYNC_FLUSH);
    produced = out.size() - z_.avail_out;
    // Done once the input is consumed and the flush fit (deflate filled less than the buffer).
    if (z_.avail_in == 0 && z_.avail_out > 0) break;
    out.resize(out.size() * 2);
  }
  out.resize(produced);
  if (out.size() >= 4 && absl::string_view(out).substr(out.size() - 4) ==
                             absl::string_view(reinterpret_cast<const char*>(kFlushTail), 4)) {
    out.resize(out.size() - 4);
  }
  return out;
}

StreamDecompressor::StreamDecompressor() {
  if (inflateInit2(&z_, kWindowBits) != Z_OK) std::abort();
}

StreamDecompressor::~StreamDecompressor() { inflateEnd(&z_); }

absl::StatusOr<std::string> StreamDecompressor::Decompress(absl::string_view data,
                                                           size_t max_bytes) {
  if (failed_) return absl::InvalidArgumentError("compressed stream: already broken");
  if (data.empty()) return std::string();  // an empty message (see Compress)
  std::string out;
  size_t produced = 0;
  auto run = [&](absl::string_view in) -> absl::Status {
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z_.avail_in = static_cast<uInt>(in.size());
    while (true) {
      if (produced == out.size()) {
        if (out.size() >= max_bytes) {
          return absl::InvalidArgumentError(
              absl::StrCat("compressed message expands beyond ", max_bytes, " bytes"));
        }
        out.resize(std::min(max_bytes, std::max<size_t>(4096, out.size() * 2)));
      }
      z_.next_out = reinterpret_cast<Bytef*>(out.data() + produced);
      z_.avail_out = static_cast<uInt>(out.size() - produced);
      const int rc = inflate(&z_, Z_SYNC_FLUSH);
      produced = out.size() - z_.avail_out;
      if (rc == Z_STREAM_END) {
        return absl::InvalidArgumentError("compressed stream: unexpected end of stream");
      }
      if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return absl::InvalidArgumentError(absl::StrCat(
            "compressed stream: corrupt data (", z_.msg != nullptr ? z_.msg : "inflate error",
            ")"));
      }
      // Done when the input is consumed and the output was not cut short by a full buffer.
      if (z_.avail_in == 0 && (z_.avail_out > 0 || rc == Z_BUF_ERROR)) break;
    }
    return absl::OkStatus();
  };
  absl::Status status = run(data);
  if (status.ok()) status = run(absl::string_view(reinterpret_cast<const char*>(kFlushTail), 4));
  if (!status.ok()) {
    failed_ = true;
    return status;
  }
  out.resize(produced);
  return out;
}

}  // namespace mergedb::node

#include "node/stream_codec.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "crdt/status_macros.h"

namespace mergedb::node {
namespace {

// Both decompressors write into a buffer that doubles up to one byte past `max_bytes`, and
// call this when it is full: a message that fills the byte past the bound is refused (a peer's
// few bytes must not make this node allocate without bound), one of exactly `max_bytes` is not.
absl::Status ExpandsBeyond(size_t max_bytes) {
  return absl::InvalidArgumentError(
      absl::StrCat("compressed message expands beyond ", max_bytes, " bytes"));
}
absl::Status GrowWithin(std::string* out, size_t max_bytes) {
  if (out->size() > max_bytes) return ExpandsBeyond(max_bytes);
  out->resize(std::min(max_bytes + 1, std::max<size_t>(4096, out->size() * 2)));
  return absl::OkStatus();
}

// ---- DEFLATE ----

// Raw DEFLATE (no zlib header or checksum: the transport already checks integrity), the full
// 32 KiB window, and the fastest level: replication is latency-bound, and on these messages the
// fast level keeps nearly all of the gain.
constexpr int kWindowBits = -15;
constexpr int kLevel = 1;
constexpr int kMemLevel = 8;
// Z_SYNC_FLUSH ends every message with an empty stored block, 00 00 FF FF. The sender leaves it
// out and the receiver puts it back (RFC 7692's trick): four bytes saved per message.
constexpr unsigned char kFlushTail[4] = {0x00, 0x00, 0xff, 0xff};

class DeflateCompressor final : public StreamCompressor {
 public:
  DeflateCompressor() {
    // deflateInit2 fails only on bad parameters or no memory; both are programming errors here.
    if (deflateInit2(&z_, kLevel, Z_DEFLATED, kWindowBits, kMemLevel, Z_DEFAULT_STRATEGY) != Z_OK) {
      std::abort();
    }
  }
  ~DeflateCompressor() override { deflateEnd(&z_); }

 private:
  std::string CompressNonEmpty(absl::string_view message) override;
  z_stream z_{};
};

class DeflateDecompressor final : public StreamDecompressor {
 public:
  DeflateDecompressor() {
    if (inflateInit2(&z_, kWindowBits) != Z_OK) std::abort();
  }
  ~DeflateDecompressor() override { inflateEnd(&z_); }

 private:
  absl::StatusOr<std::string> DecompressNonEmpty(absl::string_view data, size_t max_bytes) override;
  z_stream z_{};
};

// ---- zstd ----

// One zstd frame per stream, never ended: every message is the output of a flush
// (ZSTD_e_flush), so it ends on a block boundary and decodes without what follows. The fast
// level -1 and a 32 KiB window (as DEFLATE's): on W1's frames, larger windows (128 KiB, 1 MiB)
// saved no byte and cost more CPU, and level 1 saved 5 % of the bytes for twice the CPU.
constexpr int kZstdLevel = -1;
constexpr int kZstdWindowLog = 15;
// What a receiver accepts of a peer's frame header: 1 MiB, so a later version may widen its
// window, and a peer cannot make this node reserve more than that per stream.
constexpr int kZstdWindowLogMax = 20;

class ZstdCompressor final : public StreamCompressor {
 public:
  ZstdCompressor() : cctx_(ZSTD_createCCtx()) {
    // Fails only without memory or on bad parameters: programming errors here.
    if (cctx_ == nullptr ||
        ZSTD_isError(ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, kZstdLevel)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(cctx_, ZSTD_c_windowLog, kZstdWindowLog))) {
      std::abort();
    }
  }
  ~ZstdCompressor() override { ZSTD_freeCCtx(cctx_); }

 private:
  std::string CompressNonEmpty(absl::string_view message) override {
    std::string out(ZSTD_compressBound(message.size()) + 16, '\0');
    ZSTD_inBuffer in{message.data(), message.size(), 0};
    ZSTD_outBuffer sink{out.data(), out.size(), 0};
    while (true) {
      // Returns what the flush still has to write: 0 once the message is all out.
      const size_t left = ZSTD_compressStream2(cctx_, &sink, &in, ZSTD_e_flush);
      if (ZSTD_isError(left)) std::abort();  // only on misuse or without memory
      if (left == 0) break;
      out.resize(out.size() * 2);
      sink.dst = out.data();
      sink.size = out.size();
    }
    out.resize(sink.pos);
    return out;
  }
  ZSTD_CCtx* const cctx_;
};

class ZstdDecompressor final : public StreamDecompressor {
 public:
  ZstdDecompressor() : dctx_(ZSTD_createDCtx()) {
    if (dctx_ == nullptr ||
        ZSTD_isError(ZSTD_DCtx_setParameter(dctx_, ZSTD_d_windowLogMax, kZstdWindowLogMax))) {
      std::abort();
    }
  }
  ~ZstdDecompressor() override { ZSTD_freeDCtx(dctx_); }

 private:
  absl::StatusOr<std::string> DecompressNonEmpty(absl::string_view data,
                                                 size_t max_bytes) override {
    std::string out;
    size_t produced = 0;
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    while (true) {
      if (produced == out.size()) {
        MERGEDB_RETURN_IF_ERROR(GrowWithin(&out, max_bytes));
      }
      ZSTD_outBuffer sink{out.data(), out.size(), produced};
      const size_t rc = ZSTD_decompressStream(dctx_, &sink, &in);
      produced = sink.pos;
      if (ZSTD_isError(rc)) {
        return absl::InvalidArgumentError(
            absl::StrCat("compressed stream: corrupt data (", ZSTD_getErrorName(rc), ")"));
      }
      // 0: a frame ended, which a sender of this protocol never does (see above).
      if (rc == 0) {
        return absl::InvalidArgumentError("compressed stream: unexpected end of stream");
      }
      // Done when the input is consumed and the output was not cut short by a full buffer.
      if (in.pos == in.size && sink.pos < sink.size) {
        // A sender flushes every message to the end of a block, so the decoder must now wait
        // for the next block's header: its hint is then exactly the header's size. Anything
        // else means the message was cut inside a block. (zstd documents the value only as a
        // hint; every round-trip test here would fail at once if a libzstd changed it. A cut
        // at a block boundary inside a message larger than a block passes unseen.)
        if (rc != kZstdBlockHeaderBytes) {
          return absl::InvalidArgumentError("compressed stream: a message ends inside a block");
        }
        break;
      }
    }
    out.resize(produced);
    return out;
  }
  // ZSTD_blockHeaderSize, which zstd.h exposes only to static linking.
  static constexpr size_t kZstdBlockHeaderBytes = 3;
  ZSTD_DCtx* const dctx_;
};

std::string DeflateCompressor::CompressNonEmpty(absl::string_view message) {
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

absl::StatusOr<std::string> DeflateDecompressor::DecompressNonEmpty(absl::string_view data,
                                                                    size_t max_bytes) {
  std::string out;
  size_t produced = 0;
  auto run = [&](absl::string_view in) -> absl::Status {
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z_.avail_in = static_cast<uInt>(in.size());
    while (true) {
      if (produced == out.size()) {
        MERGEDB_RETURN_IF_ERROR(GrowWithin(&out, max_bytes));
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
  MERGEDB_RETURN_IF_ERROR(run(data));
  MERGEDB_RETURN_IF_ERROR(run(absl::string_view(reinterpret_cast<const char*>(kFlushTail), 4)));
  // The flush tail put back is an empty stored block, which ends at a block boundary (zlib's
  // data_type has 128 set there) only if the message did too: a message cut inside a block
  // reads the tail as more of that block.
  if ((z_.data_type & 128) == 0) {
    return absl::InvalidArgumentError("compressed stream: a message ends inside a block");
  }
  out.resize(produced);
  return out;
}

}  // namespace

std::unique_ptr<StreamCompressor> StreamCompressor::Create(StreamCodec codec) {
  switch (codec) {
    case StreamCodec::kDeflate:
      return std::make_unique<DeflateCompressor>();
    case StreamCodec::kZstd:
      return std::make_unique<ZstdCompressor>();
  }
  std::abort();
}

std::string StreamCompressor::Compress(absl::string_view message) {
  // An empty message travels as no bytes at all. deflate() refuses a second sync flush with no
  // input in between (Z_BUF_ERROR, no output), so it would yield no flush tail for the
  // receiver to put back; Decompress() treats empty data the same way, keeping both ends in
  // step.
  if (message.empty()) return std::string();
  return CompressNonEmpty(message);
}

std::unique_ptr<StreamDecompressor> StreamDecompressor::Create(StreamCodec codec) {
  switch (codec) {
    case StreamCodec::kDeflate:
      return std::make_unique<DeflateDecompressor>();
    case StreamCodec::kZstd:
      return std::make_unique<ZstdDecompressor>();
  }
  std::abort();
}

absl::StatusOr<std::string> StreamDecompressor::Decompress(absl::string_view data,
                                                           size_t max_bytes) {
  if (failed_) return absl::InvalidArgumentError("compressed stream: already broken");
  if (data.empty()) return std::string();  // an empty message (see Compress)
  absl::StatusOr<std::string> plain = DecompressNonEmpty(data, max_bytes);
  // GrowWithin's bound, checked once more whatever path a codec's loop took.
  if (plain.ok() && plain->size() > max_bytes) plain = ExpandsBeyond(max_bytes);
  // Only an empty message travels as no bytes: data that decodes to nothing is a message cut
  // short (after zstd's frame header, say).
  if (plain.ok() && plain->empty()) {
    plain = absl::InvalidArgumentError("compressed stream: a message decodes to nothing");
  }
  if (!plain.ok()) failed_ = true;
  return plain;
}

}  // namespace mergedb::node

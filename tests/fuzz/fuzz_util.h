// What the fuzz targets share: nodes whose stores live on LevelDB's in-memory Env with fixed
// replica ids and a deterministic clock (so that an input replays exactly), the client write
// path without its gRPC shell, and the checks every target makes after applying an input.
//
// A broken invariant aborts the process with a message, so that libFuzzer records the input
// like any crash. Thread safety: single-threaded use only, as libFuzzer calls its targets.
#ifndef MERGEDB_TESTS_FUZZ_FUZZ_UTIL_H_
#define MERGEDB_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "crdt/document.h"
#include "mergedb/v1/api.pb.h"
#include "node/clock.h"
#include "node/validation.h"
#include "storage/store.h"

namespace leveldb {
class Env;
}

namespace mergedb::fuzz {

// Fixed identities, so that seeds (tests/fuzz/make_fuzz_corpus.cc) can name them: the fuzzed
// node, the peer that streams to it, and a third node whose entries the peer forwards.
inline constexpr char kClusterId[] = "fuzz";
inline constexpr crdt::ReplicaId kLocalReplica = 0x1111;
inline constexpr crdt::ReplicaId kPeerReplica = 0x2222;
inline constexpr crdt::ReplicaId kThirdReplica = 0x3333;

// Starts at a fixed time and advances one millisecond per reading: deterministic, and register
// writes still get increasing timestamps.
class StepClock : public node::Clock {
 public:
  int64_t NowMillis() override { return now_++; }

 private:
  int64_t now_ = 1'700'000'000'000;
};

// One node's store in its own in-memory Env, with its hybrid clock.
class MemNode {
 public:
  // Aborts when the store cannot be opened: that is never the input's fault.
  MemNode(const std::string& name, crdt::ReplicaId replica);
  ~MemNode();

  storage::Store* store() { return store_.get(); }
  node::HybridClock* hlc() { return &hlc_; }
  const std::string& name() const { return name_; }

 private:
  const std::string name_;
  std::unique_ptr<leveldb::Env> env_;
  StepClock clock_;
  node::HybridClock hlc_;
  std::unique_ptr<storage::Store> store_;
};

// Applies a client update as DocumentService::Update does (PreparedUpdate, then
// Store::ApplyLocal), minus the write-concern wait. An update based on a version this node has
// not applied fails with DEADLINE_EXCEEDED at once, where the node would wait for it.
absl::StatusOr<storage::WriteResult> ApplyClientUpdate(MemNode& node,
                                                       const mergedb::v1::UpdateRequest& request,
                                                       const node::Limits& limits);

// Called once per process: drops the node's and protobuf's logging below errors of our own
// (malformed inputs make the protobuf library log every invalid UTF-8 string it parses).
void SilenceLogs();

// Prints `what` and aborts.
[[noreturn]] void Fail(absl::string_view what);

// Fails with the absl::StrCat of the message arguments unless `condition` holds. The message is
// built only on failure: it may print whole documents.
#define MERGEDB_FUZZ_CHECK(condition, ...)                                \
  do {                                                                    \
    if (!(condition)) ::mergedb::fuzz::Fail(::absl::StrCat(__VA_ARGS__)); \
  } while (0)

// Reads `doc` back as a client would (node::RenderGetResponse): the whole document, and each
// field of the typed view by its path. Every answer must survive the trip to a client:
// serialized, parsed again and equal.
void ReadBack(const crdt::Document& doc);

using DocName = std::pair<std::string, std::string>;  // (collection, id)

// Checks `store` against itself: every stored document decodes, reads back (ReadBack), has a
// name that List and Watch can send (UTF-8), and equals what Store::Get answers (its cache) for
// it; the documents in `touched` that LevelDB does not hold are empty in the cache too; and a
// fresh store joining every document (a full-state transfer) reaches the same state digest,
// which checks the digest `store` keeps incrementally.
void CheckStore(storage::Store* store, const std::set<DocName>& touched);

}  // namespace mergedb::fuzz

// The libFuzzer entry points of a target whose input is the proto message `Input`, handed to
// mergedb::fuzz::Run(const Input&). Bytes that do not parse are the protobuf library's
// business: returning -1 keeps them out of the corpus.
#define MERGEDB_FUZZ_TARGET(Input)                                             \
  extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {      \
    mergedb::fuzz::SilenceLogs();                                             \
    return 0;                                                                 \
  }                                                                           \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {   \
    Input input;                                                              \
    if (!input.ParseFromArray(data, static_cast<int>(size))) return -1;       \
    mergedb::fuzz::Run(input);                                                \
    return 0;                                                                 \
  }

#endif  // MERGEDB_TESTS_FUZZ_FUZZ_UTIL_H_

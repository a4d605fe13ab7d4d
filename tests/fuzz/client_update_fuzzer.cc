// Fuzzes the client write path: bytes -> mergedb.fuzz.ClientSession (updates on two replicas,
// with log exchanges between them) -> node::PreparedUpdate (validation) -> Store::ApplyLocal on
// LevelDB's in-memory Env, then reads every written document back as Get would answer it (JSON
// and typed views, conflicts; node::RenderGetResponse). Two replicas, so that concurrent writes
// make register siblings and type conflicts for the read path.
//
// Invariants checked besides "no crash, no sanitizer report":
//   - a refused update gets one of the codes the API documents and changes nothing (all or none);
//   - an applied update's version token decodes, and the document's context covers it;
//   - after the replicas exchange their logs, their states are byte-identical (equal digests);
//   - each store stays consistent with itself (fuzz::CheckStore).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "fuzz_input.pb.h"
#include "node/validation.h"
#include "tests/fuzz/fuzz_util.h"

namespace mergedb::fuzz {
namespace {

constexpr int kMaxSteps = 32;

// Small limits, so that inputs reach them without megabytes of bytes.
node::Limits FuzzLimits() {
  node::Limits limits;
  limits.max_name_bytes = 64;
  limits.max_path_depth = 8;
  limits.max_value_bytes = 256;
  limits.max_update_bytes = 16 << 10;
  limits.max_ops_per_update = 64;
  limits.max_request_id_bytes = 16;
  return limits;
}

// Ships to `to` what it lacks of `from`'s log (every origin, as replication forwards them).
void Ship(MemNode& from, MemNode& to) {
  auto log = from.store()->ReadLog(to.store()->AppliedVector(), 1 << 20);
  MERGEDB_FUZZ_CHECK(log.ok(), "reading the log of ", from.name(), ": ", log.status().ToString());
  if (log->empty()) return;
  auto applied = to.store()->ApplyRemote(*log);
  MERGEDB_FUZZ_CHECK(applied.ok() && !applied->gap, "applying the log of ", from.name(), " on ",
                     to.name(), ": ", applied.status().ToString());
}

bool IsDocumentedRefusal(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:     // malformed request
    case absl::StatusCode::kResourceExhausted:   // over a limit
    case absl::StatusCode::kFailedPrecondition:  // a field of another kind
    case absl::StatusCode::kOutOfRange:          // counter overflow
    case absl::StatusCode::kDeadlineExceeded:    // base version not applied here
      return true;
    default:
      return false;
  }
}

void Run(const ClientSession& input) {
  const node::Limits limits = FuzzLimits();
  MemNode a("a", kLocalReplica);
  MemNode b("b", kPeerReplica);
  MemNode* nodes[] = {&a, &b};
  std::set<DocName> touched;
  const int steps = std::min(input.steps_size(), kMaxSteps);
  for (int i = 0; i < steps; ++i) {
    const ClientStep& step = input.steps(i);
    MemNode& node = *nodes[step.replica() & 1];
    const mergedb::v1::UpdateRequest& request = step.update();
    storage::Store* store = node.store();
    const DocName name{request.collection(), request.id()};
    auto before = store->Get(name.first, name.second);
    MERGEDB_FUZZ_CHECK(before.ok(), "reading a document: ", before.status().ToString());
    const std::string digest_before = store->state_digest();

    auto result = ApplyClientUpdate(node, request, limits);
    auto after = store->Get(name.first, name.second);
    MERGEDB_FUZZ_CHECK(after.ok(), "reading a document: ", after.status().ToString());
    if (!result.ok()) {
      MERGEDB_FUZZ_CHECK(IsDocumentedRefusal(result.status()), "an update refused with ",
                         result.status().ToString());
      MERGEDB_FUZZ_CHECK(*after == *before && store->state_digest() == digest_before,
                         "a refused update changed the store: ", result.status().ToString());
    } else {
      touched.insert(name);
      const std::string token = node::EncodeVersionToken(result->version);
      auto decoded = node::DecodeVersionToken("version", token);
      MERGEDB_FUZZ_CHECK(decoded.ok() && *decoded == result->version,
                         "a version token does not round-trip");
      MERGEDB_FUZZ_CHECK(after->context().Includes(result->version),
                         "the document's context does not cover the version its update returned");
      if (!result->duplicate_request) {
        MERGEDB_FUZZ_CHECK(after->context() == result->version,
                           "an update returned another version");
      }
      ReadBack(*after);
    }
    if (step.sync()) {
      Ship(a, b);
      Ship(b, a);
    }
  }

  // Convergence: once each has what the other logged, the replicas hold the same state.
  Ship(a, b);
  Ship(b, a);
  MERGEDB_FUZZ_CHECK(a.store()->AppliedVector() == b.store()->AppliedVector(),
                     "after a full exchange the applied vectors differ");
  MERGEDB_FUZZ_CHECK(a.store()->state_digest() == b.store()->state_digest(),
                     "after a full exchange the replicas' states differ");
  CheckStore(a.store(), touched);
  CheckStore(b.store(), touched);
}

}  // namespace
}  // namespace mergedb::fuzz

MERGEDB_FUZZ_TARGET(mergedb::fuzz::ClientSession)

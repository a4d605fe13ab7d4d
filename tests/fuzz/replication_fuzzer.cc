// Fuzzes what a node does with the messages of an inbound replication stream: bytes ->
// mergedb.fuzz.ReplicationStream -> FragmentAssembler (fragments reassembled) ->
// LinkReceiver::OnHello and OnRequest (the code Replication::Replicate runs for every message,
// without the gRPC stream) -> Store::ApplyRemote,
// ApplySnapshot and FinishSnapshot on LevelDB's in-memory Env.
//
// Frames and snapshot chunks may be malformed, duplicated, gapped or contradictory. Each must get
// an answer or an error status, never a crash or a sanitizer report, and:
//   - an INVALID_ARGUMENT answer changes nothing; applied vectors never go back;
//   - a refused stream ends; the input goes on over a new stream, as the reconnecting peer would;
//   - afterwards a client write lands on every document the stream touched (remote state must
//     never break local writes);
//   - the store stays consistent with itself (fuzz::CheckStore), and when no full-state transfer
//     took part (and no frame forged a dot), replaying its log into a fresh node rebuilds
//     exactly its state.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_input.pb.h"
#include "crdt/utf8.h"
#include "mergedb/v1/replication.pb.h"
#include "node/replication.h"
#include "tests/fuzz/fuzz_util.h"

namespace mergedb::fuzz {
namespace {

// Bounds the work of one input (libFuzzer's inputs are small, but the counts inside are free).
constexpr int kMaxRequests = 64;
constexpr size_t kMaxLocalWrites = 8;
constexpr size_t kMaxReplayEntries = 100000;
// The node that replays the log: a replica id no seed uses.
constexpr crdt::ReplicaId kReplayReplica = 0x4444;

mergedb::v1::Hello PeerHello() {
  mergedb::v1::Hello hello;
  hello.set_cluster_id(kClusterId);
  hello.set_node_name("peer");
  hello.set_replica_id(kPeerReplica);
  hello.set_protocol_version(node::kReplicationProtocolVersion);
  hello.set_role(mergedb::v1::PRIMARY);
  return hello;
}

bool VectorCovers(const storage::VersionVector& now, const storage::VersionVector& before) {
  for (const auto& [origin, seq] : before) {
    auto it = now.find(origin);
    if (it == now.end() || it->second < seq) return false;
  }
  return true;
}

// Whether every dot of a document names one event in all of `log`: wherever it is live, it is
// in the same leaf with the same payload. Real nodes never reuse a dot (replica ids are random
// incarnations), but a fuzzed frame can forge one: two entries giving one dot different
// payloads. The join then keeps whichever arrived first, so the state depends on the arrival
// order and a replay (in log order) may rightly differ.
bool DotsNameOneEventEach(const std::vector<storage::LogRecord>& log) {
  std::map<std::tuple<std::string, std::string, crdt::Dot>, std::pair<std::string, crdt::Payload>>
      events;
  for (const storage::LogRecord& record : log) {
    auto delta = crdt::Document::Decode(record.entry.delta());
    MERGEDB_FUZZ_CHECK(delta.ok(), "a logged delta does not decode: ", delta.status().ToString());
    for (const auto& [key, leaf] : delta->kernel().leaves()) {
      for (const auto& [dot, payload] : leaf) {
        auto [it, added] =
            events.try_emplace({record.entry.collection(), record.entry.id(), dot}, key, payload);
        if (!added && !(it->second.first == key && it->second.second == payload)) return false;
      }
    }
  }
  return true;
}

void Run(const ReplicationStream& input) {
  MemNode local("local", kLocalReplica);
  storage::Store* store = local.store();
  node::ReplicationOptions options;
  options.cluster_id = kClusterId;
  options.node_name = "local";
  options.members = {"peer", "third"};
  node::ClusterView view("local", options.members, store);

  auto receiver = std::make_unique<node::LinkReceiver>(options, store, &view, local.hlc());
  node::FragmentAssembler assembler;
  // A new stream from the peer, opened with a valid hello.
  auto reconnect = [&] {
    receiver = std::make_unique<node::LinkReceiver>(options, store, &view, local.hlc());
    assembler = node::FragmentAssembler();
    auto ack = receiver->OnHello(PeerHello());
    MERGEDB_FUZZ_CHECK(ack.ok(), "a valid hello is refused: ", ack.status().ToString());
  };

  int first = 0;
  if (input.requests_size() > 0 && input.requests(0).has_hello()) {
    first = 1;
    auto ack = receiver->OnHello(input.requests(0).hello());
    if (ack.ok()) {
      MERGEDB_FUZZ_CHECK(ack->has_hello_ack(), "a hello answered without a hello ack");
    } else {
      MERGEDB_FUZZ_CHECK(
          absl::IsFailedPrecondition(ack.status()) || absl::IsInvalidArgument(ack.status()),
          "a hello refused with ", ack.status().ToString());
      reconnect();
    }
  } else {
    reconnect();
  }

  std::set<DocName> touched;
  bool snapshot_applied = false;
  const int end = std::min(input.requests_size(), kMaxRequests);
  for (int i = first; i < end; ++i) {
    auto whole = assembler.Add(input.requests(i));
    if (!whole.ok()) {
      MERGEDB_FUZZ_CHECK(absl::IsInvalidArgument(whole.status()), "fragments refused with ",
                         whole.status().ToString());
      reconnect();
      continue;
    }
    if (!whole->has_value()) continue;  // a piece held
    const mergedb::v1::ReplicationRequest& request = **whole;
    for (const auto& record : request.frame().records()) {
      mergedb::v1::LogEntry entry;
      if (entry.ParseFromString(record.entry())) touched.emplace(entry.collection(), entry.id());
    }
    for (const auto& doc : request.snapshot().documents()) {
      touched.emplace(doc.collection(), doc.id());
    }
    const auto [applied_before, digest_before] = store->AppliedAndDigest();
    auto response = receiver->OnRequest(request);
    const auto [applied_after, digest_after] = store->AppliedAndDigest();
    MERGEDB_FUZZ_CHECK(VectorCovers(applied_after, applied_before), "the applied vector went back");
    if (response.ok()) {
      if (request.has_snapshot()) snapshot_applied = true;
      continue;
    }
    const absl::Status& status = response.status();
    MERGEDB_FUZZ_CHECK(absl::IsInvalidArgument(status) || absl::IsAborted(status),
                       "a request refused with ", status.ToString());
    if (absl::IsInvalidArgument(status)) {
      MERGEDB_FUZZ_CHECK(applied_after == applied_before && digest_after == digest_before,
                         "a request refused as invalid changed the store: ", status.ToString());
    }
    // The stream ends with the error; the peer reconnects and goes on.
    reconnect();
  }

  // Local writes on every touched document, as clients would make them.
  size_t writes = 0;
  for (const DocName& doc : touched) {
    // Clients can name only UTF-8 documents (gRPC would not even parse anything else).
    if (crdt::InvalidUtf8At(doc.first) != absl::string_view::npos ||
        crdt::InvalidUtf8At(doc.second) != absl::string_view::npos) {
      continue;
    }
    if (writes++ == kMaxLocalWrites) break;
    storage::LocalWrite write;
    write.collection = doc.first;
    write.id = doc.second;
    write.unix_millis = 1'700'000'000'000;
    node::HybridClock* clock = local.hlc();
    write.mutate = [clock](crdt::Document& d) -> absl::StatusOr<crdt::Document> {
      crdt::Document delta;
      // Type conflicts with what arrived (FAILED_PRECONDITION) are fine; the others still apply.
      if (auto r = d.Increment({"n"}, 1, kLocalReplica); r.ok()) delta.Join(*r);
      if (auto r = d.SetRegister({"r"}, crdt::RegisterValue::OfScalar(crdt::Scalar::OfInt(1)),
                                 kLocalReplica, clock->Tick());
          r.ok()) {
        delta.Join(*r);
      }
      if (auto r = d.AddElements({"s"}, {crdt::Scalar::OfBool(true)}, kLocalReplica); r.ok()) {
        delta.Join(*r);
      }
      delta.Join(d.RemoveField({"gone"}));
      return delta;
    };
    auto result = store->ApplyLocal(write);
    MERGEDB_FUZZ_CHECK(result.ok(),
                       "a local write after replication failed: ", result.status().ToString());
  }

  CheckStore(store, touched);

  // Without a full-state transfer, the state is exactly the join of the logged deltas (local
  // writes and every applied remote entry): replaying the log must rebuild it.
  if (snapshot_applied) return;
  auto log = store->ReadLog({}, kMaxReplayEntries);
  MERGEDB_FUZZ_CHECK(log.ok(), "reading the log: ", log.status().ToString());
  if (log->size() == kMaxReplayEntries) return;
  for (const storage::LogRecord& record : *log) {
    if (record.origin == kReplayReplica) return;  // the replaying node would skip it as its own
  }
  if (!DotsNameOneEventEach(*log)) return;
  MemNode replay("replay", kReplayReplica);
  auto replayed = replay.store()->ApplyRemote(*log);
  MERGEDB_FUZZ_CHECK(replayed.ok() && !replayed->gap && replayed->applied == log->size(),
                     "replaying the log: ", replayed.status().ToString());
  MERGEDB_FUZZ_CHECK(replay.store()->state_digest() == store->state_digest(),
                     "replaying the log does not rebuild the state");
}

}  // namespace
}  // namespace mergedb::fuzz

MERGEDB_FUZZ_TARGET(mergedb::fuzz::ReplicationStream)

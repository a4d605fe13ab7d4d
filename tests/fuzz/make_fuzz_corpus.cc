// Writes the fuzzers' seed corpus: small, valid-looking inputs that reach deep into each target,
// produced by running the real code (stores on LevelDB's in-memory Env with the replica ids and
// clock the fuzzers use), so that the version tokens, log records and states they carry are
// the ones a node would see.
//
//   build/fuzz/tests/fuzz/make_fuzz_corpus tests/fuzz/corpus
//
// Deterministic: running it again writes the same bytes. Inputs that crashed a fuzzer live
// beside these (named crash-*) and are never rewritten.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "crdt/scalar.h"
#include "fuzz_input.pb.h"
#include "node/replication.h"
#include "node/stream_codec.h"
#include "node/validation.h"
#include "tests/fuzz/fuzz_util.h"

namespace mergedb::fuzz {
namespace {

using mergedb::v1::Operation;
using mergedb::v1::ReplicationRequest;
using mergedb::v1::UpdateRequest;

std::filesystem::path out_root;

void Write(const std::string& target, const std::string& name,
           const google::protobuf::MessageLite& message) {
  const std::filesystem::path dir = out_root / target;
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out << crdt::SerializeDeterministic(message);
  MERGEDB_FUZZ_CHECK(out.good(), "writing ", (dir / name).string());
}

// ---- Building client updates ----

Operation* AddOp(UpdateRequest* request, std::initializer_list<const char*> path) {
  Operation* op = request->add_ops();
  for (const char* name : path) op->add_path(name);
  return op;
}

UpdateRequest Update(const std::string& collection, const std::string& id) {
  UpdateRequest request;
  request.set_collection(collection);
  request.set_id(id);
  return request;
}

void SetString(UpdateRequest* r, std::initializer_list<const char*> path, const std::string& v) {
  AddOp(r, path)->mutable_set()->mutable_value()->mutable_scalar()->set_string_value(v);
}
void SetInt(UpdateRequest* r, std::initializer_list<const char*> path, int64_t v) {
  AddOp(r, path)->mutable_set()->mutable_value()->mutable_scalar()->set_int_value(v);
}
void Increment(UpdateRequest* r, std::initializer_list<const char*> path, int64_t by) {
  AddOp(r, path)->mutable_increment()->set_by(by);
}
void AddInts(UpdateRequest* r, std::initializer_list<const char*> path,
             std::initializer_list<int64_t> values) {
  auto* add = AddOp(r, path)->mutable_add();
  for (int64_t v : values) add->add_elements()->set_int_value(v);
}
void AddStrings(UpdateRequest* r, std::initializer_list<const char*> path,
                std::initializer_list<const char*> values) {
  auto* add = AddOp(r, path)->mutable_add();
  for (const char* v : values) add->add_elements()->set_string_value(v);
}
void RemoveInts(UpdateRequest* r, std::initializer_list<const char*> path,
                std::initializer_list<int64_t> values) {
  auto* remove = AddOp(r, path)->mutable_remove();
  for (int64_t v : values) remove->add_elements()->set_int_value(v);
}

// Applies `request` on `node` and returns its version token ("" if refused).
std::string Apply(MemNode& node, const UpdateRequest& request) {
  auto result = ApplyClientUpdate(node, request, node::Limits());
  return result.ok() ? node::EncodeVersionToken(result->version) : std::string();
}

void Exchange(MemNode& from, MemNode& to) {
  auto log = from.store()->ReadLog(to.store()->AppliedVector(), 1 << 20);
  MERGEDB_FUZZ_CHECK(log.ok(), "reading a log");
  if (!log->empty()) MERGEDB_FUZZ_CHECK(to.store()->ApplyRemote(*log).ok(), "applying a log");
}

// ---- client_update_fuzzer ----

// Records the steps of a session while running them, so that later steps can carry the
// version tokens earlier ones returned.
class SessionBuilder {
 public:
  SessionBuilder() : a_("a", kLocalReplica), b_("b", kPeerReplica) {}

  std::string Step(int replica, const UpdateRequest& request, bool sync = false) {
    ClientStep* step = session_.add_steps();
    step->set_replica(static_cast<uint32_t>(replica));
    *step->mutable_update() = request;
    step->set_sync(sync);
    const std::string token = Apply(replica == 0 ? a_ : b_, request);
    if (sync) {
      Exchange(a_, b_);
      Exchange(b_, a_);
    }
    return token;
  }
  const ClientSession& session() const { return session_; }
  MemNode& node(int replica) { return replica == 0 ? a_ : b_; }

 private:
  MemNode a_, b_;
  ClientSession session_;
};

// States of one document as replicas saw it over time (the crdt_join_fuzzer seeds), by name.
std::map<std::string, std::vector<std::string>> state_groups;

void KeepState(const std::string& group, MemNode& node, const std::string& collection,
               const std::string& id) {
  auto doc = node.store()->Get(collection, id);
  MERGEDB_FUZZ_CHECK(doc.ok(), "reading a document");
  state_groups[group].push_back(doc->Encode());
}

void ClientSeeds() {
  const std::string target = "client_update_fuzzer";
  {
    // Every operation once, nested maps and JSON included.
    SessionBuilder s;
    UpdateRequest r = Update("users", "alice");
    SetString(&r, {"name"}, "Alice");
    Increment(&r, {"visits"}, 3);
    AddStrings(&r, {"tags"}, {"admin", "ops"});
    AddOp(&r, {"active"})->mutable_enable();
    SetString(&r, {"address", "city"}, "Lyon");
    auto* json = AddOp(&r, {"prefs"})->mutable_set()->mutable_value()->mutable_json();
    (*json->mutable_struct_value()->mutable_fields())["theme"].set_string_value("dark");
    (*json->mutable_struct_value()->mutable_fields())["size"].set_number_value(12);
    s.Step(0, r);
    r = Update("users", "alice");
    Increment(&r, {"visits"}, -1);
    AddOp(&r, {"active"})->mutable_disable();
    AddOp(&r, {"tags"})->mutable_remove()->add_elements()->set_string_value("ops");
    AddOp(&r, {"address"})->mutable_remove_field();
    AddOp(&r, {"nothing"})->mutable_set()->mutable_value()->mutable_scalar()->mutable_null_value();
    AddOp(&r, {"pi"})->mutable_set()->mutable_value()->mutable_scalar()->set_double_value(3.25);
    AddOp(&r, {"ok"})->mutable_set()->mutable_value()->mutable_scalar()->set_bool_value(true);
    s.Step(0, r);
    KeepState("one_replica", s.node(0), "users", "alice");
    r = Update("users", "alice");
    AddOp(&r, {})->mutable_delete_document();
    s.Step(0, r);
    KeepState("one_replica", s.node(0), "users", "alice");
    r = Update("users", "alice");
    SetInt(&r, {"back"}, 1);
    s.Step(0, r);
    KeepState("one_replica", s.node(0), "users", "alice");
    Write(target, "every_operation", s.session());
  }
  {
    // Concurrent writes on two replicas: register siblings, a counter from both sides, and the
    // same name written as a counter on one replica and a register on the other.
    SessionBuilder s;
    UpdateRequest r = Update("docs", "d1");
    SetString(&r, {"title"}, "base");
    Increment(&r, {"n"}, 1);
    s.Step(0, r, /*sync=*/true);
    r = Update("docs", "d1");
    SetString(&r, {"title"}, "from a");
    Increment(&r, {"n"}, 5);
    Increment(&r, {"x"}, 1);
    AddInts(&r, {"s"}, {1, 2});
    s.Step(0, r);
    r = Update("docs", "d1");
    SetString(&r, {"title"}, "from b");
    Increment(&r, {"n"}, -2);
    SetInt(&r, {"x"}, 9);
    RemoveInts(&r, {"s"}, {1});
    AddOp(&r, {"m"})->mutable_remove_field();
    SetString(&r, {"m", "k"}, "v");
    s.Step(1, r);
    KeepState("concurrent", s.node(0), "docs", "d1");
    KeepState("concurrent", s.node(1), "docs", "d1");
    r = Update("docs", "d1");
    Increment(&r, {"n"}, 1);
    s.Step(1, r, /*sync=*/true);
    KeepState("concurrent", s.node(1), "docs", "d1");
    Write(target, "concurrent_conflicts", s.session());
  }
  {
    // Retries by request id, updates based on an earlier read, and a delete racing a write.
    SessionBuilder s;
    UpdateRequest r = Update("carts", "c7");
    r.set_request_id("req-1");
    AddInts(&r, {"items"}, {10, 11, 12});
    const std::string version = s.Step(0, r, /*sync=*/true);
    s.Step(0, r);  // a retry: acknowledged again, not applied twice
    UpdateRequest other = Update("carts", "c8");
    other.set_request_id("req-1");
    Increment(&other, {"n"}, 1);
    s.Step(0, other);  // the same id for another document: refused
    r = Update("carts", "c7");
    AddInts(&r, {"items"}, {13});
    s.Step(1, r);
    r = Update("carts", "c7");
    r.set_base_version(version);
    RemoveInts(&r, {"items"}, {10, 13});
    s.Step(0, r);
    KeepState("delete_racing_add", s.node(0), "carts", "c7");
    r = Update("carts", "c7");
    r.set_base_version(version);
    r.set_write_concern(mergedb::v1::LOCAL);
    AddOp(&r, {})->mutable_delete_document();
    s.Step(1, r);
    KeepState("delete_racing_add", s.node(1), "carts", "c7");
    s.Step(0, Update("carts", "c7"), /*sync=*/true);  // no operations: refused; then a sync
    KeepState("delete_racing_add", s.node(0), "carts", "c7");
    Write(target, "retries_and_base_versions", s.session());
  }
  {
    // Requests validation refuses, and a counter overflow.
    SessionBuilder s;
    UpdateRequest r = Update("", "x");
    Increment(&r, {"n"}, 1);
    s.Step(0, r);
    r = Update("c", "bad\x01name");
    Increment(&r, {"n"}, 1);
    s.Step(0, r);
    r = Update("c", "d");
    AddOp(&r, {"a", "b", "c", "d", "e", "f", "g", "h", "i"})->mutable_enable();
    s.Step(0, r);
    r = Update("c", "d");
    AddOp(&r, {"f"})->mutable_set()->mutable_value()->mutable_scalar()->set_double_value(
        std::numeric_limits<double>::quiet_NaN());
    s.Step(0, r);
    r = Update("c", "d");
    AddOp(&r, {"f"});
    s.Step(0, r);
    r = Update("c", "d");
    AddOp(&r, {"f"})->mutable_delete_document();
    s.Step(0, r);
    r = Update("c", "d");
    r.set_base_version("\x0a\x02\x09");
    Increment(&r, {"n"}, 1);
    s.Step(0, r);
    r = Update("c", "d");
    Increment(&r, {"n"}, 1);
    s.Step(0, r);
    r = Update("c", "d");
    Increment(&r, {"big"}, std::numeric_limits<int64_t>::max());
    Increment(&r, {"big"}, 1);
    s.Step(0, r);
    r = Update("c", "d");
    SetInt(&r, {"n"}, 1);  // a register where a counter lives
    s.Step(0, r);
    r = Update("c", "d");
    auto* json = AddOp(&r, {"deep"})->mutable_set()->mutable_value()->mutable_json();
    for (int i = 0; i < 10; ++i) json = json->mutable_list_value()->add_values();
    json->set_number_value(1);
    s.Step(0, r);
    Write(target, "refused_requests", s.session());
  }
}

// ---- replication_fuzzer and stream_codec_fuzzer ----

// Writes `stream` as a replication_fuzzer seed, and its requests compressed as one compressed
// stream (and again as plain messages) as a stream_codec_fuzzer seed.
void WriteReplication(const std::string& name, const mergedb::fuzz::ReplicationStream& stream) {
  Write("replication_fuzzer", name, stream);
  for (const auto codec :
       {mergedb::v1::STREAM_COMPRESSION_DEFLATE, mergedb::v1::STREAM_COMPRESSION_ZSTD}) {
    mergedb::fuzz::CompressedStream compressed;
    compressed.set_codec(codec);
    auto compressor = node::StreamCompressor::Create(*node::StreamCodecOf(codec));
    for (const auto& request : stream.requests()) {
      const std::string plain = crdt::SerializeDeterministic(request);
      compressed.add_compressed(compressor->Compress(plain));
      compressed.add_plain(plain);
    }
    // DEFLATE's seeds keep the names they had before zstd.
    Write("stream_codec_fuzzer",
          codec == mergedb::v1::STREAM_COMPRESSION_ZSTD ? name + "_zstd" : name, compressed);
  }
}

void AddFrame(mergedb::fuzz::ReplicationStream* stream, const std::vector<storage::LogRecord>& log,
              std::initializer_list<int> indexes) {
  auto* frame = stream->add_requests()->mutable_frame();
  for (int i : indexes) {
    const storage::LogRecord& record = log[static_cast<size_t>(i)];
    auto* out = frame->add_records();
    out->set_origin(record.origin);
    out->set_seq(record.seq);
    out->set_entry(record.encoded);
  }
}

void AddWholeLog(mergedb::fuzz::ReplicationStream* stream,
                 const std::vector<storage::LogRecord>& log) {
  auto* frame = stream->add_requests()->mutable_frame();
  for (const storage::LogRecord& record : log) {
    auto* out = frame->add_records();
    out->set_origin(record.origin);
    out->set_seq(record.seq);
    out->set_entry(record.encoded);
  }
}

void ReplicationSeeds() {
  // Three nodes: `local` has the fuzzed node's replica id, so the peer's log carries dots of
  // the fuzzed node itself, as a real peer's would.
  MemNode local("local", kLocalReplica);
  MemNode peer("peer", kPeerReplica);
  MemNode third("third", kThirdReplica);

  UpdateRequest r = Update("docs", "d1");
  SetString(&r, {"title"}, "first");
  Increment(&r, {"n"}, 2);
  Apply(peer, r);
  r = Update("docs", "d2");
  AddInts(&r, {"s"}, {1, 2, 3});
  AddOp(&r, {"f"})->mutable_enable();
  Apply(peer, r);
  r = Update("docs", "d1");
  Increment(&r, {"n"}, -1);
  SetString(&r, {"m", "k"}, "v");
  Apply(peer, r);
  r = Update("docs", "d2");
  RemoveInts(&r, {"s"}, {2});
  Apply(peer, r);
  r = Update("docs", "d1");
  AddOp(&r, {"title"})->mutable_remove_field();
  Apply(peer, r);
  r = Update("docs", "d3");
  SetInt(&r, {"x"}, 1);
  Apply(peer, r);
  r = Update("docs", "d3");
  AddOp(&r, {})->mutable_delete_document();
  Apply(peer, r);
  auto own = peer.store()->ReadLog({}, 100);
  MERGEDB_FUZZ_CHECK(own.ok() && own->size() == 7, "the peer's log");
  {
    // In order, in two frames, then a heartbeat.
    mergedb::fuzz::ReplicationStream stream;
    AddFrame(&stream, *own, {0, 1, 2});
    AddFrame(&stream, *own, {3, 4, 5, 6});
    stream.add_requests()->mutable_heartbeat();
    WriteReplication("frames_in_order", stream);
  }
  {
    // The same frames, each in fragments of 40 bytes, as a sender splits a request larger than
    // the receiver takes in one message.
    mergedb::fuzz::ReplicationStream whole;
    AddFrame(&whole, *own, {0, 1, 2});
    AddFrame(&whole, *own, {3, 4, 5, 6});
    mergedb::fuzz::ReplicationStream stream;
    for (const auto& request : whole.requests()) {
      node::WriteFragments(request.SerializeAsString(), 40,
                           [&](mergedb::v1::ReplicationRequest& piece) {
                             *stream.add_requests() = piece;
                             return true;
                           });
    }
    WriteReplication("frames_in_fragments", stream);
  }
  {
    // Duplicated, gapped and reordered frames.
    mergedb::fuzz::ReplicationStream stream;
    AddFrame(&stream, *own, {0, 1});
    AddFrame(&stream, *own, {0, 1});
    AddFrame(&stream, *own, {4, 5});
    AddFrame(&stream, *own, {3, 2});
    AddWholeLog(&stream, *own);
    WriteReplication("frames_duplicated_gapped_reordered", stream);
  }

  // Concurrent writes on the three nodes, which the peer forwards: siblings, type conflicts,
  // a delete racing a write, and the fuzzed node's own entries coming back.
  r = Update("docs", "d1");
  SetString(&r, {"title"}, "local");
  Increment(&r, {"n"}, 10);
  Apply(local, r);
  r = Update("docs", "d1");
  SetString(&r, {"title"}, "third");
  SetInt(&r, {"m"}, 4);
  AddStrings(&r, {"tags"}, {"t"});
  Apply(third, r);
  KeepState("three_replicas", local, "docs", "d1");
  KeepState("three_replicas", third, "docs", "d1");
  Exchange(local, peer);
  Exchange(third, peer);
  r = Update("docs", "d1");
  Increment(&r, {"n"}, 1);
  AddOp(&r, {"tags"})->mutable_remove_field();
  Apply(peer, r);
  KeepState("three_replicas", peer, "docs", "d1");
  {
    mergedb::fuzz::ReplicationStream stream;
    auto log = peer.store()->ReadLog({}, 100);
    MERGEDB_FUZZ_CHECK(log.ok(), "the peer's forwarded log");
    AddWholeLog(&stream, *log);
    stream.add_requests()->mutable_heartbeat();
    WriteReplication("forwarded_concurrent_writes", stream);
  }
  {
    // A full-state transfer of the peer's documents, split into parts, then a frame.
    mergedb::fuzz::ReplicationStream stream;
    auto cursor = peer.store()->OpenSnapshot();
    MERGEDB_FUZZ_CHECK(cursor.ok(), "a snapshot");
    mergedb::v1::SnapshotChunk* chunk = stream.add_requests()->mutable_snapshot();
    while (true) {
      storage::SnapshotDoc doc;
      auto more = (*cursor)->Next(&doc);
      MERGEDB_FUZZ_CHECK(more.ok(), "reading a snapshot");
      if (!*more) break;
      const std::vector<crdt::Document> parts = node::SplitForTransfer(doc.state, 48);
      for (size_t i = 0; i < parts.size(); ++i) {
        auto* out = chunk->add_documents();
        out->set_collection(doc.collection);
        out->set_id(doc.id);
        parts[i].EncodeTo(out->mutable_state());
        out->set_partial(i + 1 < parts.size());
        if (chunk->documents_size() >= 3) chunk = stream.add_requests()->mutable_snapshot();
      }
    }
    chunk->set_last(true);
    for (const auto& [origin, seq] : (*cursor)->applied()) {
      auto* entry = chunk->add_applied();
      entry->set_replica(origin);
      entry->set_counter(seq);
    }
    r = Update("docs", "d4");
    Increment(&r, {"after"}, 1);
    Apply(peer, r);
    auto tail = peer.store()->ReadLog((*cursor)->applied(), 100);
    MERGEDB_FUZZ_CHECK(tail.ok(), "the log after the snapshot");
    AddWholeLog(&stream, *tail);
    WriteReplication("snapshot_split_then_frame", stream);
  }
  {
    // A stream opened by a foreign node (refused; the harness reconnects), then malformed
    // requests: a zero origin, an undecodable delta, a second hello, a request with no kind.
    mergedb::fuzz::ReplicationStream stream;
    auto* hello = stream.add_requests()->mutable_hello();
    hello->set_cluster_id("other");
    hello->set_node_name("peer");
    hello->set_replica_id(kPeerReplica);
    hello->set_protocol_version(node::kReplicationProtocolVersion);
    AddFrame(&stream, *own, {0});
    stream.mutable_requests(1)->mutable_frame()->mutable_records(0)->set_origin(0);
    AddFrame(&stream, *own, {0});
    mergedb::v1::LogEntry malformed = (*own)[0].entry;
    malformed.mutable_delta()->mutable_leaves(0)->set_key("\x01\x02");
    stream.mutable_requests(2)->mutable_frame()->mutable_records(0)->set_entry(
        malformed.SerializeAsString());
    *stream.add_requests()->mutable_hello() = *hello;
    stream.add_requests();
    AddFrame(&stream, *own, {0, 1});
    WriteReplication("refused_and_malformed", stream);
  }
}

// ---- crdt_join_fuzzer ----

void CrdtSeeds() {
  const std::string target = "crdt_join_fuzzer";
  // Each group's states, with a few mutations of their join: a kind in the low 4 bits, a
  // field, a replica and an amount above (see crdt_join_fuzzer.cc).
  const std::vector<uint32_t> mutations = {0x00100010, 0x00200001, 0x00000013, 0x00001025,
                                           0x80000002, 0x00300014, 0x00000006};
  for (const auto& [group, states] : state_groups) {
    mergedb::fuzz::EncodedStates input;
    for (const std::string& state : states) input.add_states(state);
    for (uint32_t m : mutations) input.add_mutations(m);
    Write(target, group, input);
  }
}

}  // namespace
}  // namespace mergedb::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR (e.g. tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  mergedb::fuzz::SilenceLogs();
  mergedb::fuzz::out_root = argv[1];
  mergedb::fuzz::ClientSeeds();
  mergedb::fuzz::ReplicationSeeds();
  mergedb::fuzz::CrdtSeeds();
  return 0;
}

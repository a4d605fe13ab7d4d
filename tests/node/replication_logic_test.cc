// The transport-free replication logic: receivers fed duplicated, reordered and gapped frames,
// membership refusals, and document splitting for full-state transfer.
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "leveldb/env.h"
#include "leveldb/helpers/memenv.h"
#include "node/replication.h"
#include "storage/keys.h"
#include "tests/storage/store_test_util.h"

namespace mergedb::node {
namespace {

using Vector = storage::VersionVector;

class ReplicationLogicTest : public ::testing::Test {
 protected:
  ReplicationLogicTest() : env_(leveldb::NewMemEnv(leveldb::Env::Default())), hlc_(&clock_) {
    options_.cluster_id = "c";
    options_.node_name = "n2";
    options_.peers = {{"n1", "unused:1"}};
    options_.members = {"n1"};
  }

  std::unique_ptr<storage::Store> OpenStore(const std::string& path, const std::string& name) {
    storage::StoreOptions options;
    options.path = path;
    options.cluster_id = "c";
    options.node_name = name;
    options.env = env_.get();
    return *storage::Store::Open(options);
  }

  mergedb::v1::Hello HelloFrom(const std::string& name, crdt::ReplicaId replica) {
    mergedb::v1::Hello hello;
    hello.set_cluster_id("c");
    hello.set_node_name(name);
    hello.set_replica_id(replica);
    hello.set_protocol_version(kReplicationProtocolVersion);
    return hello;
  }

  static mergedb::v1::ReplicationRequest FrameOf(const std::vector<storage::LogRecord>& log,
                                                 std::vector<int> seqs) {
    mergedb::v1::ReplicationRequest request;
    for (int seq : seqs) {
      const auto& record = log[static_cast<size_t>(seq - 1)];
      auto* out = request.mutable_frame()->add_records();
      out->set_origin(record.origin);
      out->set_seq(record.seq);
      out->set_entry(record.encoded);
    }
    return request;
  }

  static std::string RequestId(int k) { return absl::StrCat("r", absl::Dec(k, absl::kZeroPad5)); }

  // Store `name` at `path` takes 3,000 increments (documents d0..d49) with request ids
  // RequestId(0..2999), then the checksum of the table block holding RequestId(1500) breaks.
  void WriteRequestIdsAndDamageABlockOfThem(const std::string& path, const std::string& name) {
    {
      auto store = OpenStore(path, name);
      for (int k = 0; k < 3000; ++k) {
        ASSERT_TRUE(
            store
                ->ApplyLocal(storage::testing::Increment("c", absl::StrCat("d", k % 50), "n", 1,
                                                         store->replica_id(), RequestId(k)))
                .ok());
      }
    }
    OpenStore(path, name);  // opening again moves LevelDB's write-ahead log into a table file
    storage::testing::BreakBlockChecksum(
        env_.get(), path, [](int k) { return storage::keys::Request(RequestId(1500 + k)); });
  }

  // n2's receiving end of a link from n1 (replica 7), past the hello.
  std::unique_ptr<LinkReceiver> HelloedReceiver(storage::Store* store, ClusterView* view) {
    auto receiver = std::make_unique<LinkReceiver>(options_, store, view, &hlc_);
    EXPECT_TRUE(receiver->OnHello(HelloFrom("n1", 7)).ok());
    return receiver;
  }

  // A log entry as a frame carries it: `writer` increments c/`id`'s counter n as replica 7.
  static std::string EncodedIncrement(crdt::Document& writer, const std::string& id) {
    mergedb::v1::LogEntry entry;
    entry.set_collection("c");
    entry.set_id(id);
    writer.Increment({"n"}, 1, 7)->EncodeTo(entry.mutable_delta());
    return entry.SerializeAsString();
  }

  // `times` local writes on `store`, each incrementing c/d's counter n by one.
  static void IncrementLocally(storage::Store* store, int times) {
    const crdt::ReplicaId origin = store->replica_id();
    for (int k = 0; k < times; ++k) {
      storage::LocalWrite write;
      write.collection = "c";
      write.id = "d";
      write.mutate = [origin](crdt::Document& doc) { return doc.Increment({"n"}, 1, origin); };
      ASSERT_TRUE(store->ApplyLocal(write).ok());
    }
  }

  // n1's options for its link to n2 (the fixture's options are n2's).
  ReplicationOptions SenderOptions() const {
    ReplicationOptions options = options_;
    options.node_name = "n1";
    options.peers = {{"n2", "unused:2"}};
    options.members = {"n2"};
    return options;
  }

  // The hello exchange a stream starts with.
  static void Connect(LinkSender& sender, LinkReceiver& receiver) {
    auto hello_ack = receiver.OnHello(sender.Hello().hello());
    ASSERT_TRUE(hello_ack.ok()) << hello_ack.status();
    ASSERT_TRUE(sender.OnHelloAck(hello_ack->hello_ack()).ok());
  }

  // The sender's next message, delivered, and the receiver's answer (if any) handed back.
  // Returns the message; nullopt when the sender had none (or on a failure, reported).
  static std::optional<mergedb::v1::ReplicationRequest> Step(LinkSender& sender,
                                                             LinkReceiver& receiver) {
    auto produced = sender.Next();
    EXPECT_TRUE(produced.ok()) << produced.status();
    if (!produced.ok() || !produced->has_value()) return std::nullopt;
    auto ack = receiver.OnRequest(**produced);
    EXPECT_TRUE(ack.ok()) << ack.status();
    if (ack.ok() && ack->has_value()) sender.OnResponse(**ack);
    return *std::move(produced);
  }

  // Steps until the sender has nothing left to send.
  static void Drain(LinkSender& sender, LinkReceiver& receiver) {
    for (int k = 0; k < 1000; ++k) {
      if (!Step(sender, receiver).has_value()) return;
    }
    FAIL() << "the sender did not run out of messages";
  }

  // A heartbeat through the receiver, its ack handed to the sender. Returns the ack.
  static mergedb::v1::Ack HeartbeatAck(LinkSender& sender, LinkReceiver& receiver) {
    mergedb::v1::ReplicationRequest heartbeat;
    heartbeat.mutable_heartbeat();
    auto ack = receiver.OnRequest(heartbeat);
    EXPECT_TRUE(ack.ok() && ack->has_value());
    if (!ack.ok() || !ack->has_value()) return {};
    sender.OnResponse(**ack);
    return (*ack)->ack();
  }

  std::unique_ptr<leveldb::Env> env_;
  SystemClock clock_;
  HybridClock hlc_;
  ReplicationOptions options_;
};

TEST_F(ReplicationLogicTest, DuplicatedAndReorderedFramesChangeNothing) {
  auto source = OpenStore("/a", "n1");
  const crdt::ReplicaId origin = source->replica_id();
  for (int k = 0; k < 20; ++k) {
    storage::LocalWrite write;
    write.collection = "c";
    write.id = "d" + std::to_string(k % 3);
    write.mutate = [origin, k](crdt::Document& doc) -> absl::StatusOr<crdt::Document> {
      if (k % 4 == 3) return doc.RemoveField({"n"});
      return doc.Increment({"n"}, k, origin);
    };
    ASSERT_TRUE(source->ApplyLocal(write).ok());
  }
  std::vector<storage::LogRecord> log = *source->ReadLog({}, 100);
  ASSERT_EQ(log.size(), 20u);

  auto sink = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1"}, sink.get());
  LinkReceiver receiver(options_, sink.get(), &view, &hlc_);
  ASSERT_TRUE(receiver.OnHello(HelloFrom("n1", origin)).ok());
  ASSERT_TRUE(receiver.OnRequest(FrameOf(log, {1, 2, 3, 4, 5})).ok());
  ASSERT_TRUE(receiver.OnRequest(FrameOf(log, {1, 2, 3, 4, 5})).ok());  // duplicate
  // A frame whose predecessors are missing is refused whole, and asks for a resync.
  auto gap = receiver.OnRequest(FrameOf(log, {11, 12}));
  EXPECT_EQ(gap.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(sink->AppliedVector().at(origin), 5u);
  // Reordered inside a frame: 7 before 6 stops at the gap; the rest arrives later.
  auto partial = receiver.OnRequest(FrameOf(log, {7, 6}));
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kAborted);
  std::vector<int> all;
  for (int seq = 1; seq <= 20; ++seq) all.push_back(seq);
  auto ack = receiver.OnRequest(FrameOf(log, all));
  ASSERT_TRUE(ack.ok()) << ack.status();
  ASSERT_TRUE(ack->has_value());
  EXPECT_EQ(sink->AppliedVector().at(origin), 20u);
  EXPECT_EQ(sink->state_digest(), source->state_digest());
  // Replaying everything again changes nothing.
  ASSERT_TRUE(receiver.OnRequest(FrameOf(log, all)).ok());
  EXPECT_EQ(sink->state_digest(), source->state_digest());
}

TEST_F(ReplicationLogicTest, AForgedFarFutureTimestampAppliesButDoesNotDragTheClock) {
  auto source = OpenStore("/a", "n1");
  const crdt::ReplicaId origin = source->replica_id();
  // A register write stamped with the largest timestamp there is (a forged one, or a clock gone
  // wild), then an ordinary one.
  for (const crdt::Hlc hlc : {crdt::Hlc::FromPacked(~uint64_t{0}), hlc_.Tick()}) {
    storage::LocalWrite write;
    write.collection = "c";
    write.id = hlc.packed() == ~uint64_t{0} ? "forged" : "plain";
    write.mutate = [origin, hlc](crdt::Document& doc) -> absl::StatusOr<crdt::Document> {
      return doc.SetRegister({"r"}, crdt::RegisterValue(), origin, hlc);
    };
    ASSERT_TRUE(source->ApplyLocal(write).ok());
  }
  std::vector<storage::LogRecord> log = *source->ReadLog({}, 100);
  ASSERT_EQ(log.size(), 2u);

  auto sink = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1"}, sink.get());
  LinkReceiver receiver(options_, sink.get(), &view, &hlc_);
  ASSERT_TRUE(receiver.OnHello(HelloFrom("n1", origin)).ok());
  ASSERT_TRUE(receiver.OnRequest(FrameOf(log, {1, 2})).ok());
  // The write applies (every node must merge the same data) ...
  EXPECT_EQ(sink->state_digest(), source->state_digest());
  // ... but the clock followed it no further than its bound past the wall clock.
  const int64_t now = clock_.NowMillis();
  const crdt::Hlc next = hlc_.Tick();
  EXPECT_LE(next.wall_millis(),
            static_cast<uint64_t>(now + HybridClock::kDefaultMaxAheadMillis + 1000));
  EXPECT_GE(next.wall_millis(), static_cast<uint64_t>(now));
}

TEST_F(ReplicationLogicTest, ForeignClustersUnknownNodesAndOtherProtocolsAreRefused) {
  auto store = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1"}, store.get());
  LinkReceiver receiver(options_, store.get(), &view, &hlc_);
  mergedb::v1::Hello foreign = HelloFrom("n1", 7);
  foreign.set_cluster_id("other");
  auto refused = receiver.OnHello(foreign);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "belongs to cluster 'other'"));
  refused = receiver.OnHello(HelloFrom("n9", 7));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "not a member"));
  mergedb::v1::Hello future = HelloFrom("n1", 7);
  future.set_protocol_version(99);
  refused = receiver.OnHello(future);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "protocol 99"));
  // A rebuilt node is a known name with a new replica id: accepted.
  EXPECT_TRUE(receiver.OnHello(HelloFrom("n1", 12345)).ok());
}

// Which origins a receiver gets first-hand decides what its senders forward to it: a stream
// that ends while a newer one from the same peer is up must not hide the newer one, and losing
// the last first-hand stream is announced, empty as the set then is.
TEST_F(ReplicationLogicTest, FirstHandStreamsAreCountedAndTheirEndIsAnnouncedEvenWhenNoneIsLeft) {
  ReplicationOptions options = options_;
  options.members = {"n1", "n3"};
  auto store = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1", "n3"}, store.get());
  constexpr crdt::ReplicaId kN3 = 33;
  // n3 reconnects before its stalled stream has ended; then the stalled one ends.
  view.SetInbound("n3", kN3, ClusterView::Link::kUp);
  view.SetInbound("n3", kN3, ClusterView::Link::kUp);
  view.SetInbound("n3", kN3, ClusterView::Link::kDown);
  EXPECT_EQ(view.DirectOrigins(), std::vector<crdt::ReplicaId>{kN3});

  LinkReceiver receiver(options, store.get(), &view, &hlc_);
  auto hello = receiver.OnHello(HelloFrom("n1", 11));
  ASSERT_TRUE(hello.ok());
  ASSERT_EQ(hello->hello_ack().direct().replicas_size(), 1);
  mergedb::v1::ReplicationRequest heartbeat;
  heartbeat.mutable_heartbeat();
  // The newer stream from n3 ends too: n1 must learn that n2 no longer hears n3 first-hand.
  view.SetInbound("n3", kN3, ClusterView::Link::kDown);
  EXPECT_TRUE(view.DirectOrigins().empty());
  auto ack = receiver.OnRequest(heartbeat);
  ASSERT_TRUE(ack.ok()) << ack.status();
  ASSERT_TRUE(ack->has_value());
  EXPECT_TRUE((*ack)->ack().has_direct()) << "an empty set of first-hand origins was not sent";
  EXPECT_EQ((*ack)->ack().direct().replicas_size(), 0);
  // Unchanged since: not sent again.
  ack = receiver.OnRequest(heartbeat);
  ASSERT_TRUE(ack.ok() && ack->has_value());
  EXPECT_FALSE((*ack)->ack().has_direct());
}

// Collections and ids go out again in protobuf strings (List, Watch), so a frame or snapshot
// chunk naming a document in bytes that are not UTF-8 is refused whole (found by
// tests/fuzz/replication_fuzzer).
TEST_F(ReplicationLogicTest, DocumentNamesThatAreNotUtf8AreRefused) {
  auto store = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1"}, store.get());
  auto receiver = HelloedReceiver(store.get(), &view);
  crdt::Document writer;
  mergedb::v1::ReplicationRequest frame;
  for (const char* id : {"fine", "d\x85"}) {
    auto* record = frame.mutable_frame()->add_records();
    record->set_origin(7);
    record->set_seq(static_cast<uint64_t>(frame.frame().records_size()));
    record->set_entry(EncodedIncrement(writer, id));
  }
  auto refused = receiver->OnRequest(frame);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "not UTF-8"));
  EXPECT_TRUE(store->AppliedVector().empty());
  EXPECT_FALSE(store->Get("c", "fine")->exists());

  mergedb::v1::ReplicationRequest chunk;
  auto* doc = chunk.mutable_snapshot()->add_documents();
  doc->set_collection("c\xff");
  doc->set_id("d");
  writer.EncodeTo(doc->mutable_state());
  EXPECT_EQ(receiver->OnRequest(chunk).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->document_count(), 0);
}

// A frame carries each entry as bytes (the sender passes its log's bytes on unparsed), so the
// receiver is the first to parse them: bytes that are not a log entry refuse the frame whole.
TEST_F(ReplicationLogicTest, AnEntryThatIsNotALogEntryRefusesTheFrame) {
  auto store = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1"}, store.get());
  auto receiver = HelloedReceiver(store.get(), &view);
  crdt::Document writer;
  const std::string entry = EncodedIncrement(writer, "fine");
  mergedb::v1::ReplicationRequest frame;
  auto* good = frame.mutable_frame()->add_records();
  good->set_origin(7);
  good->set_seq(1);
  good->set_entry(entry);
  auto* bad = frame.mutable_frame()->add_records();
  bad->set_origin(7);
  bad->set_seq(2);
  bad->set_entry(entry.substr(0, 5));  // cut inside a field
  auto refused = receiver->OnRequest(frame);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "7:2 is not a log entry"))
      << refused.status();
  EXPECT_TRUE(store->AppliedVector().empty());
  EXPECT_FALSE(store->Get("c", "fine")->exists());

  frame.mutable_frame()->mutable_records()->RemoveLast();
  auto accepted = receiver->OnRequest(frame);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(store->AppliedVector().at(7), 1u);
}

// Live writes share frames: while one frame is unacknowledged, a partial one waits and leaves
// at the ack with everything that accumulated (or when the driver stops holding it after
// max_hold; with two unacknowledged, only at an ack); a backlog of min_pipelined_entries or
// more is pipelined without waiting (catch-up keeps its throughput).
TEST_F(ReplicationLogicTest, PartialFramesWaitForTheAckAndBacklogsPipeline) {
  auto source = OpenStore("/a", "n1");
  auto sink = OpenStore("/b", "n2");
  ReplicationOptions sender_options = SenderOptions();
  sender_options.min_pipelined_entries = 8;
  ClusterView source_view("n1", {"n2"}, source.get());
  ClusterView sink_view("n2", {"n1"}, sink.get());
  LinkSender sender(sender_options, source.get(), &source_view, "n2");
  LinkReceiver receiver(options_, sink.get(), &sink_view, &hlc_);
  Connect(sender, receiver);
  if (HasFatalFailure()) return;

  const crdt::ReplicaId origin = source->replica_id();
  auto write = [&](int n) { IncrementLocally(source.get(), n); };
  auto next = [&]() -> std::optional<mergedb::v1::ReplicationRequest> {
    auto produced = sender.Next();
    EXPECT_TRUE(produced.ok()) << produced.status();
    return produced.ok() ? *std::move(produced) : std::nullopt;
  };
  auto deliver = [&](const mergedb::v1::ReplicationRequest& frame) {
    auto ack = receiver.OnRequest(frame);
    ASSERT_TRUE(ack.ok()) << ack.status();
    ASSERT_TRUE(ack->has_value());
    sender.OnResponse(**ack);
  };

  write(1);
  auto first = next();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->frame().records_size(), 1);
  write(3);
  EXPECT_FALSE(next().has_value());  // held: a frame is in flight and only 3 entries wait
  EXPECT_TRUE(sender.waiting_for_ack());
  deliver(*first);
  EXPECT_FALSE(sender.waiting_for_ack());
  auto second = next();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->frame().records_size(), 3);  // everything that waited, in one frame
  write(10);
  auto third = next();  // 10 >= 8 wait: pipelined behind the unacknowledged second frame
  ASSERT_TRUE(third.has_value());
  EXPECT_EQ(third->frame().records_size(), 10);
  // Two frames in flight: the peer is behind, and a partial frame waits for an ack even when
  // the driver gives up holding (it would only queue behind them).
  write(2);
  EXPECT_FALSE(next().has_value());
  ASSERT_TRUE(sender.holding_partial());
  sender.StopHolding();
  EXPECT_FALSE(next().has_value());
  EXPECT_TRUE(sender.holding_partial());
  deliver(*second);
  // One frame in flight, and the held frame leaves at that ack.
  EXPECT_FALSE(sender.waiting_for_ack());
  auto fourth = next();
  ASSERT_TRUE(fourth.has_value());
  EXPECT_EQ(fourth->frame().records_size(), 2);
  deliver(*third);
  // An ack that is slow to come with one frame in flight: the driver gives up holding and the
  // partial frame leaves.
  write(3);
  EXPECT_FALSE(next().has_value());
  ASSERT_TRUE(sender.holding_partial());
  sender.StopHolding();
  EXPECT_FALSE(sender.waiting_for_ack());
  auto fifth = next();
  ASSERT_TRUE(fifth.has_value());
  EXPECT_EQ(fifth->frame().records_size(), 3);
  write(1);
  EXPECT_FALSE(next().has_value());  // and the next partial frame is held again
  deliver(*fourth);
  deliver(*fifth);
  auto sixth = next();
  ASSERT_TRUE(sixth.has_value());
  EXPECT_EQ(sixth->frame().records_size(), 1);
  deliver(*sixth);
  EXPECT_EQ(sink->AppliedVector().at(origin), 20u);
  EXPECT_EQ(sink->state_digest(), source->state_digest());
  EXPECT_FALSE(next().has_value());
  EXPECT_FALSE(sender.waiting_for_ack());
}

// A peer that has applied what this node has but holds another state gets a full-state
// transfer to reconcile. If it still differs after it, it holds something this node lacks
// (which only its own stream to this node brings): further transfers come ever more rarely.
TEST_F(ReplicationLogicTest, ReconcilingTransfersBackOffWhileThePeerStillHoldsMore) {
  auto source = OpenStore("/a", "n1");
  auto sink = OpenStore("/b", "n2");
  auto third = OpenStore("/c", "n3");
  ReplicationOptions sender_options = SenderOptions();
  ClusterView source_view("n1", {"n2"}, source.get());
  ClusterView sink_view("n2", {"n1"}, sink.get());
  LinkSender sender(sender_options, source.get(), &source_view, "n2");
  LinkReceiver receiver(options_, sink.get(), &sink_view, &hlc_);
  Connect(sender, receiver);
  if (HasFatalFailure()) return;
  auto drain = [&] { Drain(sender, receiver); };
  auto heartbeat_ack = [&] { HeartbeatAck(sender, receiver); };
  IncrementLocally(source.get(), 3);
  drain();
  ASSERT_EQ(sink->AppliedVector(), source->AppliedVector());
  heartbeat_ack();
  EXPECT_FALSE(sender.in_snapshot()) << "same vector, same state: nothing to reconcile";

  // The sink gets a document of n3's outside any log (as a transfer from n3 would bring it),
  // so its applied vector stays that of the source.
  IncrementLocally(third.get(), 1);
  auto cursor = third->OpenSnapshot();
  ASSERT_TRUE(cursor.ok());
  storage::SnapshotDoc doc;
  ASSERT_TRUE(*(*cursor)->Next(&doc));
  ASSERT_TRUE(sink->ApplySnapshot({doc}).ok());
  ASSERT_EQ(sink->AppliedVector(), source->AppliedVector());
  ASSERT_NE(sink->state_digest(), source->state_digest());
  heartbeat_ack();
  ASSERT_TRUE(sender.in_snapshot()) << "diverged: a transfer reconciles";
  drain();
  EXPECT_FALSE(sender.in_snapshot());
  EXPECT_NE(sink->state_digest(), source->state_digest()) << "the sink still holds n3's document";
  // Then one after 1, 2, 4, 8 and 16 more divergent heartbeats: 5 in 40, a write in between or
  // not.
  int transfers = 0;
  for (int k = 0; k < 40; ++k) {
    if (k == 7) {
      IncrementLocally(source.get(), 1);
      drain();
    }
    heartbeat_ack();
    if (sender.in_snapshot()) {
      ++transfers;
      drain();
    }
  }
  EXPECT_EQ(transfers, 5);
}

// A log block that fails its checksum cannot be sent, and a link that failed on it would fail
// again at every reconnect: the peer gets the documents whole instead, the damage shows as the
// link's last error, and live writes then flow as frames again.
TEST_F(ReplicationLogicTest, ADamagedLogBlockIsReplacedByAFullStateTransfer) {
  auto sink = OpenStore("/b", "n2");
  ClusterView sink_view("n2", {"n1"}, sink.get());
  const ReplicationOptions sender_options = SenderOptions();
  crdt::ReplicaId origin = 0;
  {
    // The sink takes the first write over a link (an empty node would get a full-state
    // transfer anyway), and misses the rest.
    auto source = OpenStore("/a", "n1");
    origin = source->replica_id();
    IncrementLocally(source.get(), 1);
    ClusterView source_view("n1", {"n2"}, source.get());
    LinkSender sender(sender_options, source.get(), &source_view, "n2");
    LinkReceiver receiver(options_, sink.get(), &sink_view, &hlc_);
    Connect(sender, receiver);
    Drain(sender, receiver);
    IncrementLocally(source.get(), 1999);
  }
  if (HasFatalFailure()) return;
  OpenStore("/a", "n1");  // opening again moves LevelDB's write-ahead log into a table file
  storage::testing::BreakBlockChecksum(
      env_.get(), "/a", [origin](int k) { return storage::keys::Log(origin, 1000 + k); });
  if (HasFatalFailure()) return;
  auto source = OpenStore("/a", "n1");
  ClusterView source_view("n1", {"n2"}, source.get());
  LinkSender sender(sender_options, source.get(), &source_view, "n2");
  LinkReceiver receiver(options_, sink.get(), &sink_view, &hlc_);
  Connect(sender, receiver);
  if (HasFatalFailure()) return;
  ASSERT_FALSE(sender.in_snapshot()) << "the sink is behind by log entries, not empty";

  auto counter = [&] { return storage::testing::CounterOf(*sink->Get("c", "d"), "n"); };
  Drain(sender, receiver);
  EXPECT_EQ(counter(), 2000);
  EXPECT_EQ(sink->AppliedVector(), source->AppliedVector());
  EXPECT_EQ(sink->state_digest(), source->state_digest());
  const std::string report = sender.TakeDamageReport();
  EXPECT_TRUE(absl::StrContains(report, "checksum")) << report;
  EXPECT_TRUE(absl::StrContains(report, "mergedb-repair")) << report;

  IncrementLocally(source.get(), 3);
  auto frame = Step(sender, receiver);
  ASSERT_TRUE(frame.has_value());
  EXPECT_TRUE(frame->has_frame());
  EXPECT_EQ(counter(), 2003);
  EXPECT_EQ(sender.TakeDamageReport(), "");
}

// Request ids are a convenience beside the state: a block of request records whose checksum
// fails must not stop a full-state transfer (it failed at the same record on every attempt and
// never ended). The records before the damage still arrive, and the documents all of them.
TEST_F(ReplicationLogicTest, ADamagedRequestRecordDoesNotStopAFullStateTransfer) {
  WriteRequestIdsAndDamageABlockOfThem("/a", "n1");
  if (HasFatalFailure()) return;
  auto source = OpenStore("/a", "n1");
  auto sink = OpenStore("/b", "n2");
  ClusterView source_view("n1", {"n2"}, source.get());
  ClusterView sink_view("n2", {"n1"}, sink.get());
  LinkSender sender(SenderOptions(), source.get(), &source_view, "n2");
  LinkReceiver receiver(options_, sink.get(), &sink_view, &hlc_);
  Connect(sender, receiver);
  if (HasFatalFailure()) return;
  ASSERT_TRUE(sender.in_snapshot()) << "an empty node gets a full-state transfer";
  Drain(sender, receiver);
  EXPECT_FALSE(sender.in_snapshot()) << "the transfer never ended";
  EXPECT_EQ(sink->AppliedVector(), source->AppliedVector());
  EXPECT_EQ(sink->state_digest(), source->state_digest());
  EXPECT_EQ(sink->document_count(), 50);
  EXPECT_TRUE(sink->LookupRequest(RequestId(0))->has_value());
  EXPECT_TRUE(sink->LookupRequest(RequestId(1000))->has_value());
}

// The same on the receiving side: a damaged block of this node's own request records must not
// fail the frames of a peer's entries that carry ids from it (on every attempt: replication from
// that peer would stop).
TEST_F(ReplicationLogicTest, ADamagedRequestRecordHereDoesNotStopAPeersFrames) {
  WriteRequestIdsAndDamageABlockOfThem("/b", "n2");
  if (HasFatalFailure()) return;
  auto sink = OpenStore("/b", "n2");
  ASSERT_FALSE(sink->LookupRequest(RequestId(1500)).ok()) << "the block is not damaged";
  auto source = OpenStore("/a", "n1");
  for (int k = 0; k < 5; ++k) {
    ASSERT_TRUE(source
                    ->ApplyLocal(storage::testing::Increment("c", "d", "n", 1, source->replica_id(),
                                                             RequestId(1500 + k)))
                    .ok());
  }
  auto log = source->ReadLog({}, 100);
  ASSERT_TRUE(log.ok()) << log.status();
  auto applied = sink->ApplyRemote(*log);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(applied->applied, 5u);
  EXPECT_EQ(storage::testing::CounterOf(*sink->Get("c", "d"), "n"), 5);
}

// While a node receives a full-state transfer, its documents already hold state its applied
// vector names only at the end. A third node at the same vector must not take the difference
// for a divergence and send a whole-database transfer of its own: acks leave the digest out
// until the transfer ends (or its stream breaks).
TEST_F(ReplicationLogicTest, AStateMidTransferIsNotComparedAndStartsNoReconcile) {
  auto source = OpenStore("/a", "n1");
  auto sink = OpenStore("/b", "n2");
  auto third = OpenStore("/c", "n3");  // applied nothing, as the sink before the transfer
  for (int k = 0; k < 200; ++k) {
    storage::LocalWrite write;
    write.collection = "c";
    write.id = "d" + std::to_string(k);
    const crdt::ReplicaId origin = source->replica_id();
    write.mutate = [origin](crdt::Document& doc) { return doc.Increment({"n"}, 1, origin); };
    ASSERT_TRUE(source->ApplyLocal(write).ok());
  }
  ReplicationOptions sender_options = SenderOptions();
  sender_options.max_message_bytes = 2 << 10;  // several chunks
  ReplicationOptions sink_options = options_;
  sink_options.members = {"n1", "n3"};
  ReplicationOptions third_options = SenderOptions();
  third_options.node_name = "n3";
  third_options.members = {"n1", "n2"};
  ClusterView source_view("n1", {"n2", "n3"}, source.get());
  ClusterView sink_view("n2", {"n1", "n3"}, sink.get());
  ClusterView third_view("n3", {"n1", "n2"}, third.get());
  LinkSender sender(sender_options, source.get(), &source_view, "n2");
  LinkReceiver receiver(sink_options, sink.get(), &sink_view, &hlc_);
  Connect(sender, receiver);
  if (HasFatalFailure()) return;

  // Two chunks of the transfer in: the sink has documents, and still an empty vector.
  for (int chunks = 0; chunks < 2; ++chunks) {
    auto sent = Step(sender, receiver);
    ASSERT_TRUE(sent.has_value());
    ASSERT_TRUE(sent->has_snapshot());
    ASSERT_FALSE(sent->snapshot().last());
  }
  ASSERT_TRUE(sink->AppliedVector().empty());
  ASSERT_NE(sink->state_digest(), third->state_digest());
  {
    LinkSender third_sender(third_options, third.get(), &third_view, "n2");
    LinkReceiver third_receiver(sink_options, sink.get(), &sink_view, &hlc_);
    Connect(third_sender, third_receiver);
    if (HasFatalFailure()) return;
    EXPECT_FALSE(third_sender.in_snapshot()) << "the hello ack started a reconcile";
    EXPECT_TRUE(HeartbeatAck(third_sender, third_receiver).state_digest().empty());
    EXPECT_FALSE(third_sender.in_snapshot()) << "a heartbeat started a reconcile";
  }
  {
    // Nor does the sink, mid-transfer, compare its own state with n3's.
    ReplicationOptions sink_sender_options = sink_options;
    sink_sender_options.peers = {{"n3", "unused:3"}};
    ReplicationOptions third_receiver_options = third_options;
    third_receiver_options.peers = {};
    LinkSender sink_sender(sink_sender_options, sink.get(), &sink_view, "n3");
    LinkReceiver third_receiver(third_receiver_options, third.get(), &third_view, &hlc_);
    Connect(sink_sender, third_receiver);
    if (HasFatalFailure()) return;
    EXPECT_FALSE(sink_sender.in_snapshot()) << "the receiving node started a reconcile";
    EXPECT_FALSE(HeartbeatAck(sink_sender, third_receiver).state_digest().empty())
        << "n3 receives no transfer";
    EXPECT_FALSE(sink_sender.in_snapshot()) << "the receiving node started a reconcile";
  }

  // The rest of the transfer: acks carry the digest again.
  Drain(sender, receiver);
  if (HasFatalFailure()) return;
  ASSERT_EQ(sink->AppliedVector(), source->AppliedVector());
  EXPECT_EQ(HeartbeatAck(sender, receiver).state_digest(), source->state_digest());

  // A transfer whose stream breaks after a chunk stops counting with the stream.
  auto other_sink = OpenStore("/d", "n2");
  ClusterView other_view("n2", {"n1", "n3"}, other_sink.get());
  {
    LinkSender broken_sender(sender_options, source.get(), &source_view, "n2");
    LinkReceiver broken_receiver(sink_options, other_sink.get(), &other_view, &hlc_);
    Connect(broken_sender, broken_receiver);
    if (HasFatalFailure()) return;
    auto sent = Step(broken_sender, broken_receiver);
    ASSERT_TRUE(sent.has_value());
    ASSERT_TRUE(sent->has_snapshot());
    EXPECT_TRUE(other_view.receiving_transfer());
  }
  EXPECT_FALSE(other_view.receiving_transfer());
  LinkReceiver next_receiver(sink_options, other_sink.get(), &other_view, &hlc_);
  auto hello_ack = next_receiver.OnHello(HelloFrom("n3", third->replica_id()));
  ASSERT_TRUE(hello_ack.ok()) << hello_ack.status();
  EXPECT_EQ(hello_ack->hello_ack().state_digest(), other_sink->state_digest());
}

// A document larger than a message goes in parts in a full-state transfer. The receiver shows
// it as it was until the last part arrives, then as the sender has it; a stream that breaks
// between the parts leaves it as it was.
// What a buggy or hostile peer could send in a full-state transfer: parts of many documents
// never finished (held without bound before), and a vector naming a replica that cannot exist
// (persisted, then offered to every other node). Both are refused, and nothing is applied.
TEST(ParsePeers, TakesNameEqualsHostColonPortAndRefusesAnythingElse) {
  auto peers = ParsePeers("n2=127.0.0.1:7002,n3=[::1]:7003,n4=db-4.example:65535");
  ASSERT_TRUE(peers.ok()) << peers.status();
  ASSERT_EQ(peers->size(), 3u);
  EXPECT_EQ((*peers)[1].name, "n3");
  EXPECT_EQ((*peers)[1].address, "[::1]:7003");
  EXPECT_TRUE(ParsePeers("")->empty());
  for (const char* bad :
       {"n2", "n2=", "=h:1", "n2=host", "n2=:7002", "n2=host:", "n2=host:abc", "n2=host:0",
        "n2=host:65536", "n2=host:+5", "n2=host:7002x", "n2=h:1,n2=h:2"}) {
    EXPECT_EQ(ParsePeers(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST_F(ReplicationLogicTest, ATransferThatNoSenderWouldSendIsRefused) {
  auto sink = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1"}, sink.get());
  crdt::Document part;
  ASSERT_TRUE(part.SetFlag({"f"}, true, 0x7777).ok());
  auto chunk_of = [&](std::initializer_list<const char*> partial_ids) {
    mergedb::v1::ReplicationRequest request;
    for (const char* id : partial_ids) {
      auto* doc = request.mutable_snapshot()->add_documents();
      doc->set_collection("c");
      doc->set_id(id);
      doc->set_partial(true);
      part.EncodeTo(doc->mutable_state());
    }
    return request;
  };
  {
    LinkReceiver receiver(options_, sink.get(), &view, &hlc_);
    ASSERT_TRUE(receiver.OnHello(HelloFrom("n1", 0x7777)).ok());
    ASSERT_TRUE(receiver.OnRequest(chunk_of({"d1", "d1"})).ok());  // one document, two parts
    auto second = receiver.OnRequest(chunk_of({"d2"}));
    EXPECT_EQ(second.status().code(), absl::StatusCode::kInvalidArgument) << second.status();
    EXPECT_TRUE(absl::StrContains(second.status().message(),
                                  "before the last part of split "
                                  "document c/d1"))
        << second.status();
  }
  {
    LinkReceiver receiver(options_, sink.get(), &view, &hlc_);
    ASSERT_TRUE(receiver.OnHello(HelloFrom("n1", 0x7777)).ok());
    // The final chunk also carries a document: a refused chunk applies none of it (found by
    // tests/fuzz/replication_fuzzer, corpus crash-transfer-vector-with-replica-zero).
    mergedb::v1::ReplicationRequest last = chunk_of({});
    auto* doc = last.mutable_snapshot()->add_documents();
    doc->set_collection("c");
    doc->set_id("d3");
    part.EncodeTo(doc->mutable_state());
    last.mutable_snapshot()->set_last(true);
    auto* entry = last.mutable_snapshot()->add_applied();
    entry->set_replica(0);
    entry->set_counter(5);
    auto refused = receiver.OnRequest(last);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
    EXPECT_TRUE(absl::StrContains(refused.status().message(), "no replica can have written"))
        << refused.status();
  }
  EXPECT_TRUE(sink->AppliedVector().empty());
  EXPECT_FALSE(sink->Get("c", "d1")->exists());
  EXPECT_FALSE(sink->Get("c", "d2")->exists());
  EXPECT_FALSE(sink->Get("c", "d3")->exists());
}

TEST_F(ReplicationLogicTest, ASplitDocumentIsAppliedWholeAtItsLastPart) {
  auto source = OpenStore("/a", "n1");
  auto sink = OpenStore("/b", "n2");
  ReplicationOptions sender_options = SenderOptions();
  sender_options.max_message_bytes = 8 << 10;
  ClusterView source_view("n1", {"n2"}, source.get());
  ClusterView sink_view("n2", {"n1"}, sink.get());
  const crdt::ReplicaId origin = source->replica_id();
  auto add_elements = [&](int64_t from, int64_t to) {
    std::vector<crdt::Scalar> elements;
    for (int64_t i = from; i < to; ++i) elements.push_back(crdt::Scalar::OfInt(i));
    storage::LocalWrite write;
    write.collection = "c";
    write.id = "d";
    write.mutate = [&elements, origin](crdt::Document& doc) {
      return doc.AddElements({"set"}, elements, origin);
    };
    ASSERT_TRUE(source->ApplyLocal(write).ok());
  };
  // One stream: hello, then every message it has, delivered one by one; `after_each` runs
  // after each snapshot chunk that is not the transfer's last. Stops after `max_chunks` chunks.
  auto stream = [&](int max_chunks, const std::function<void()>& after_each) {
    LinkSender sender(sender_options, source.get(), &source_view, "n2");
    LinkReceiver receiver(options_, sink.get(), &sink_view, &hlc_);
    Connect(sender, receiver);
    if (HasFatalFailure()) return;
    int chunks = 0;
    for (int k = 0; k < 1000; ++k) {
      auto sent = Step(sender, receiver);
      if (!sent.has_value()) return;
      if (sent->has_snapshot() && !sent->snapshot().last()) {
        after_each();
        if (++chunks == max_chunks) return;  // the stream breaks here
      }
    }
    FAIL() << "the sender did not run out of messages";
  };

  add_elements(0, 100);
  IncrementLocally(source.get(), 5);
  stream(1000, [] {});
  const crdt::Document before = *sink->Get("c", "d");
  // The document grows past the message bound, and the log that would carry the change goes.
  add_elements(100, 4000);
  IncrementLocally(source.get(), 7);
  ASSERT_TRUE(source->TruncateLog(source->AppliedVector()).ok());
  const crdt::Document after = *source->Get("c", "d");

  int checked = 0;
  auto unchanged = [&] {
    ++checked;
    EXPECT_EQ(*sink->Get("c", "d"), before)
        << "a part showed before the last one, chunk " << checked;
  };
  stream(3, unchanged);  // breaks after three chunks
  ASSERT_EQ(checked, 3);
  EXPECT_EQ(*sink->Get("c", "d"), before);
  stream(1000, unchanged);  // the next stream's transfer completes
  EXPECT_GT(checked, 6);
  EXPECT_EQ(*sink->Get("c", "d"), after);
  EXPECT_EQ(sink->state_digest(), source->state_digest());
}

// A peer rebuilt (a new incarnation) and its link to this node blipped: a third node that has
// not heard of the rebuild still relays the old incarnation's vector. Merged in, it would count
// the rebuilt node for QUORUM, ALL and truncation as holding what it lost. Relays carry the
// incarnation they describe, and one other than the peer's last first-hand one is ignored,
// also while no first-hand link is up; the current incarnation's still count.
TEST_F(ReplicationLogicTest, ARelayOfAPeersOldIncarnationIsIgnored) {
  auto store = OpenStore("/b", "n1");
  const crdt::ReplicaId me = store->replica_id();
  IncrementLocally(store.get(), 5);
  ClusterView view("n1", {"n2", "n3"}, store.get());
  constexpr crdt::ReplicaId kOld = 0x3a, kRebuilt = 0x3b;
  view.SetFirstHand("n3", true);
  view.Update("n3", Vector{{me, 5}}, ClusterView::Mode::kReplace, kOld);
  view.SetFirstHand("n3", false);
  EXPECT_EQ(view.Confirmations(me, 5), 2);
  view.SetFirstHand("n3", true);
  view.Update("n3", Vector{}, ClusterView::Mode::kReplace, kRebuilt);  // its hello answer
  EXPECT_EQ(view.Incarnation("n3"), kRebuilt);
  view.SetFirstHand("n3", false);                                         // the link blips
  view.Update("n3", Vector{{me, 5}}, ClusterView::Mode::kRelayed, kOld);  // n2's stale view
  EXPECT_EQ(view.Confirmations(me, 5), 1);
  EXPECT_EQ(view.Known()["n3"].count(me), 0u);
  // What n2 hears from the rebuilt n3 itself still counts here, and so does an untagged relay
  // (from a node that never heard n3 first-hand).
  view.Update("n3", Vector{{me, 3}}, ClusterView::Mode::kRelayed, kRebuilt);
  EXPECT_EQ(view.Known()["n3"][me], 3u);
  view.Update("n3", Vector{{me, 4}}, ClusterView::Mode::kRelayed, 0);
  EXPECT_EQ(view.Known()["n3"][me], 4u);
}

// What a third node relays of a peer never overrides the peer's own word while this node hears
// the peer first-hand: after the peer lost data (a new incarnation, a restore), a relay of its
// old vector would let the log drop entries it needs.
TEST_F(ReplicationLogicTest, RelayedVectorsYieldToAPeersOwnWhileItIsHeardFirstHand) {
  auto store = OpenStore("/b", "n2");
  ClusterView view("n2", {"n1", "n3"}, store.get());
  constexpr crdt::ReplicaId kX = 77;
  {
    // A stream from n2 to n3, past its hello: n3's own word counts, relays about n3 do not.
    auto n3 = OpenStore("/n3", "n3");
    ReplicationOptions n3_options = options_;
    n3_options.node_name = "n3";
    n3_options.members = {"n2"};
    ClusterView n3_view("n3", {"n2"}, n3.get());
    LinkReceiver n3_receiver(n3_options, n3.get(), &n3_view, &hlc_);
    ReplicationOptions to_n3 = options_;
    to_n3.peers = {{"n3", "unused:3"}};
    to_n3.members = {"n1", "n3"};
    LinkSender sender(to_n3, store.get(), &view, "n3");
    Connect(sender, n3_receiver);
    if (HasFatalFailure()) return;
    view.Update("n3", Vector{{kX, 50}}, ClusterView::Mode::kRelayed);
    EXPECT_EQ(view.Known()["n3"].count(kX), 0u);
  }
  // The stream ended: relays are all this node has of n3 again.
  view.Update("n3", Vector{{kX, 50}}, ClusterView::Mode::kRelayed);
  EXPECT_EQ(view.Known()["n3"][kX], 50u);
  view.SetFirstHand("n3", true);
  view.Update("n3", Vector{{kX, 10}}, ClusterView::Mode::kReplace);  // n3's hello answer
  view.Update("n3", Vector{{kX, 50}}, ClusterView::Mode::kRelayed);  // n1's stale view of n3
  EXPECT_EQ(view.Known()["n3"][kX], 10u);
  view.Update("n3", Vector{{kX, 12}}, ClusterView::Mode::kMerge);  // n3's own ack
  EXPECT_EQ(view.Known()["n3"][kX], 12u);
  // A second link up and one down: still first-hand.
  view.SetFirstHand("n3", true);
  view.SetFirstHand("n3", false);
  view.Update("n3", Vector{{kX, 50}}, ClusterView::Mode::kRelayed);
  EXPECT_EQ(view.Known()["n3"][kX], 12u);
  // Without a first-hand link, relays are all this node has of n3.
  view.SetFirstHand("n3", false);
  view.Update("n3", Vector{{kX, 50}}, ClusterView::Mode::kRelayed);
  EXPECT_EQ(view.Known()["n3"][kX], 50u);
  // A relay still reveals that this dir went back in time.
  view.SetFirstHand("n1", true);
  view.Update("n1", Vector{{store->replica_id(), 5}}, ClusterView::Mode::kRelayed);
  EXPECT_FALSE(view.rolled_back_reason().empty());
}

TEST_F(ReplicationLogicTest, TheLogDropsWhatEveryMemberHasAndPastItsBoundWhatSomeLack) {
  auto store = OpenStore("/a", "n1");
  const crdt::ReplicaId me = store->replica_id();
  IncrementLocally(store.get(), 120);
  ClusterView view("n1", {"n2", "n3"}, store.get());
  // n3 never reported: nothing is known to be everywhere, only the bound drops entries.
  view.Update("n2", Vector{{me, 100}}, ClusterView::Mode::kReplace);
  EXPECT_TRUE(view.TruncationPoint(1000).through.empty());
  EXPECT_TRUE(view.TruncationPoint(1000).lacking.empty());
  ClusterView::Truncation bounded = view.TruncationPoint(10);
  EXPECT_EQ(bounded.through, (Vector{{me, 110}}));
  EXPECT_EQ(bounded.lacking, (std::set<std::string>{"n2", "n3"}));
  // Everyone reported: what all have applied goes; the bound drops more only from n2.
  view.Update("n3", Vector{{me, 120}}, ClusterView::Mode::kReplace);
  EXPECT_EQ(view.TruncationPoint(1000).through, (Vector{{me, 100}}));
  EXPECT_TRUE(view.TruncationPoint(1000).lacking.empty());
  bounded = view.TruncationPoint(10);
  EXPECT_EQ(bounded.through, (Vector{{me, 110}}));
  EXPECT_EQ(bounded.lacking, (std::set<std::string>{"n2"}));
  // n2 at 115 is past the bound: nobody lacks what goes.
  view.Update("n2", Vector{{me, 115}}, ClusterView::Mode::kReplace);
  EXPECT_EQ(view.TruncationPoint(10).through, (Vector{{me, 115}}));
  EXPECT_TRUE(view.TruncationPoint(10).lacking.empty());
  // The store applies it: the floor moves, and a reader behind it needs a full-state transfer.
  ASSERT_TRUE(store->TruncateLog(view.TruncationPoint(10).through).ok());
  EXPECT_EQ(store->LogFloor().at(me), 115u);
  EXPECT_TRUE(absl::IsFailedPrecondition(store->ReadLog(Vector{{me, 100}}, 100).status()));
  EXPECT_EQ(store->ReadLog(Vector{{me, 115}}, 100)->size(), 5u);
}

TEST_F(ReplicationLogicTest, AMemberAheadOfThisDirOnItsOwnWritesFencesWrites) {
  auto store = OpenStore("/a", "n1");
  const crdt::ReplicaId me = store->replica_id();
  IncrementLocally(store.get(), 10);
  ClusterView view("n1", {"n2", "n3"}, store.get());
  // Members behind or level with this node on its own writes: all is well.
  view.Update("n2", Vector{{me, 10}}, ClusterView::Mode::kReplace);
  view.Update("n3", Vector{{me, 4}, {me + 1, 99}}, ClusterView::Mode::kMerge);
  EXPECT_TRUE(view.rolled_back_reason().empty());
  // A vector relayed from n3 (say, in an ack from n2) with one write of this node's more than
  // this dir holds: the dir went back in time.
  view.Update("n3", Vector{{me, 11}}, ClusterView::Mode::kMerge);
  const std::string why = view.rolled_back_reason();
  EXPECT_TRUE(absl::StrContains(why, "holds 10 of its own writes")) << why;
  EXPECT_TRUE(absl::StrContains(why, "n3 has applied 11")) << why;
  EXPECT_TRUE(absl::StrContains(why, "--new_incarnation")) << why;
  // It sticks.
  view.Update("n3", Vector{{me, 5}}, ClusterView::Mode::kReplace);
  EXPECT_EQ(view.rolled_back_reason(), why);
}

TEST(SplitForTransfer, PartsJoinedInOrderRebuildTheDocumentExactly) {
  crdt::Document doc;
  const crdt::ReplicaId a = 11, b = 22;
  std::vector<crdt::Scalar> elements;
  for (int64_t i = 0; i < 5000; ++i) elements.push_back(crdt::Scalar::OfInt(i));
  ASSERT_TRUE(doc.AddElements({"set"}, elements, a).ok());
  ASSERT_TRUE(doc.Increment({"n"}, 5, b).ok());
  // A stale copy that still holds an element the document has since removed.
  crdt::Document stale = doc;
  ASSERT_TRUE(doc.RemoveElements({"set"}, {crdt::Scalar::OfInt(42)}).ok());
  std::vector<crdt::Document> parts = SplitForTransfer(doc, 8 << 10);
  ASSERT_GT(parts.size(), 3u);
  for (const auto& part : parts) EXPECT_LT(part.Encode().size(), size_t{16} << 10);
  // As a receiver does: the last part's context must not remove what earlier parts delivered.
  crdt::Document fresh;
  std::set<crdt::Dot> delivered;
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    fresh.Join(parts[i], nullptr, last ? &delivered : nullptr);
    stale.Join(parts[i], nullptr, last ? &delivered : nullptr);
    for (const auto& [key, leaf] : parts[i].kernel().leaves()) {
      for (const auto& entry : leaf) delivered.insert(entry.first);
    }
  }
  EXPECT_EQ(fresh, doc);
  EXPECT_EQ(stale, doc);
}

// The pieces of a request, fed back in order, rebuild it exactly, whatever the piece size
// (one piece, a size that divides the request, and one that does not).
TEST(Fragments, PiecesReassembleIntoTheRequest) {
  mergedb::v1::ReplicationRequest frame;
  for (int i = 0; i < 200; ++i) {
    auto* record = frame.mutable_frame()->add_records();
    record->set_origin(7);
    record->set_seq(static_cast<uint64_t>(i + 1));
    mergedb::v1::LogEntry entry;
    entry.set_collection("c");
    entry.set_id("doc" + std::to_string(i));
    record->set_entry(entry.SerializeAsString());
  }
  const std::string serialized = frame.SerializeAsString();
  for (size_t piece_bytes :
       {serialized.size() + 1, serialized.size(), serialized.size() / 4, size_t{1000}, size_t{1}}) {
    FragmentAssembler assembler;
    size_t pieces = 0;
    std::optional<mergedb::v1::ReplicationRequest> whole;
    ASSERT_TRUE(
        WriteFragments(serialized, piece_bytes, [&](mergedb::v1::ReplicationRequest& piece) {
          EXPECT_LE(piece.fragment().data().size(), piece_bytes);
          EXPECT_FALSE(whole.has_value()) << "a piece after the last one";
          ++pieces;
          auto added = assembler.Add(piece);
          EXPECT_TRUE(added.ok()) << added.status();
          if (added.ok() && added->has_value()) whole = *std::move(*added);
          return true;
        }));
    EXPECT_EQ(pieces, (serialized.size() + piece_bytes - 1) / piece_bytes) << piece_bytes;
    ASSERT_TRUE(whole.has_value()) << piece_bytes;
    EXPECT_EQ(whole->SerializeAsString(), serialized);
    EXPECT_EQ(assembler.pending_bytes(), 0u);
  }
  // A request that is not a fragment passes through; a writer that fails stops the pieces.
  FragmentAssembler assembler;
  auto passed = assembler.Add(frame);
  ASSERT_TRUE(passed.ok() && passed->has_value());
  EXPECT_EQ((*passed)->SerializeAsString(), serialized);
  int written = 0;
  EXPECT_FALSE(WriteFragments(serialized, 100,
                              [&](mergedb::v1::ReplicationRequest&) { return ++written < 3; }));
  EXPECT_EQ(written, 3);
}

TEST(Fragments, MalformedSequencesAreRefused) {
  mergedb::v1::ReplicationRequest first;
  first.mutable_fragment()->set_data("\x12");
  mergedb::v1::ReplicationRequest heartbeat;
  heartbeat.mutable_heartbeat();
  {
    // A whole request between the pieces of another.
    FragmentAssembler assembler;
    ASSERT_TRUE(assembler.Add(first).ok());
    auto between = assembler.Add(heartbeat);
    ASSERT_FALSE(between.ok());
    EXPECT_TRUE(absl::StrContains(between.status().message(), "between the fragments"));
  }
  {
    // Pieces that do not parse, or that make a fragment or a compressed request.
    mergedb::v1::ReplicationRequest nested;
    nested.mutable_fragment()->set_data("x");
    mergedb::v1::ReplicationRequest compressed;
    compressed.set_compressed("x");
    for (const std::string& bytes : {std::string("\xff\xff\xff"), nested.SerializeAsString(),
                                     compressed.SerializeAsString()}) {
      FragmentAssembler assembler;
      mergedb::v1::ReplicationRequest piece;
      piece.mutable_fragment()->set_data(bytes);
      piece.mutable_fragment()->set_last(true);
      auto added = assembler.Add(piece);
      ASSERT_FALSE(added.ok());
      EXPECT_TRUE(absl::StrContains(added.status().message(), "do not parse"));
    }
  }
}

}  // namespace
}  // namespace mergedb::node

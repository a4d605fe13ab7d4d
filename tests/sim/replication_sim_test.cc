// Deterministic simulation of replication (FoundationDB's idea at our scale): N nodes in one
// thread, stores on LevelDB's in-memory Env, and the real protocol logic (LinkSender,
// LinkReceiver, ClusterView) over a seeded network of streams. A stream is FIFO, as TCP is; the
// network severs streams at random (losing whatever was in flight), partitions and heals links
// (both ways, or one node's stream to another only),
// and crashes and restarts nodes (process kills, which keep what was committed, and power losses,
// which drop what was never synced), while random document updates land on random nodes, and
// nodes truncate their logs as their janitors do. At the end everything
// heals and every node must hold the same state (equal digests and applied vectors), and that
// state must hold every acknowledged write: each node's document right after each write it
// acknowledged since the last power loss (which may take unsynced writes with it, by design)
// is joined into a reference, and the final state must already contain the reference (joining
// it in changes nothing). Agreeing on a state that lost writes would pass the first check alone.
//
// A failure prints the seed; MERGEDB_SEED=<seed> replays exactly that schedule.
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "leveldb/env.h"
#include "leveldb/helpers/memenv.h"
#include "node/log.h"
#include "node/replication.h"
#include "storage/fault_env.h"
#include "tests/crdt/random_ops.h"

namespace mergedb::node {
namespace {

using crdt::testing::Rng;

// Time in the simulation is a step counter (each node's offset by up to 30 s); nothing reads the
// wall clock.
class SimClock : public Clock {
 public:
  int64_t NowMillis() override { return now; }
  int64_t now = 1'700'000'000'000;
};

struct SimNode {
  std::string name;
  std::unique_ptr<leveldb::Env> mem_env;
  std::unique_ptr<storage::FaultInjectionEnv> env;  // over mem_env: can drop unsynced data
  std::unique_ptr<storage::Store> store;
  std::unique_ptr<ClusterView> view;
  SimClock clock;
  std::unique_ptr<HybridClock> hlc;
  ReplicationOptions options;
  crdt::testing::ClockState write_clock;
  bool sync = false;  // fsyncs every commit (--fsync): a power loss loses nothing it committed
  bool up = false;
};

// One direction of one link: a stream from `from` (sender) to `to` (receiver).
struct Stream {
  int from = 0, to = 0;
  bool open = false;
  bool cut = false;  // partitioned: cannot open
  bool hello_acked = false;
  std::unique_ptr<LinkSender> sender;
  std::unique_ptr<LinkReceiver> receiver;
  std::deque<mergedb::v1::ReplicationRequest> requests;
  std::deque<mergedb::v1::ReplicationResponse> responses;
};

class Simulation {
 public:
  Simulation(uint64_t seed, int n) : rng_(seed) {
    for (int i = 0; i < n; ++i) {
      auto node = std::make_unique<SimNode>();
      node->name = absl::StrCat("n", i + 1);
      node->mem_env.reset(leveldb::NewMemEnv(leveldb::Env::Default()));
      node->env = std::make_unique<storage::FaultInjectionEnv>(node->mem_env.get());
      // Wall clocks disagree by up to half a minute either way (hybrid clocks must cope).
      node->clock.now += rng_.Range(-30000, 30000);
      node->hlc = std::make_unique<HybridClock>(&node->clock);
      node->options.cluster_id = "sim";
      node->options.node_name = node->name;
      for (int j = 0; j < n; ++j) {
        if (j == i) continue;
        node->options.peers.push_back({absl::StrCat("n", j + 1), "sim"});
        node->options.members.push_back(absl::StrCat("n", j + 1));
      }
      node->options.max_frame_records = static_cast<size_t>(rng_.Range(1, 8));
      node->options.window = static_cast<int>(rng_.Range(1, 4));
      node->options.max_message_bytes = static_cast<size_t>(rng_.Range(512, 4096));
      node->sync = rng_.Chance(0.3);
      // Half the nodes keep a short log, so members that are away or cut off come back by
      // full-state transfer rather than from the log.
      if (rng_.Chance(0.5)) node->options.max_log_entries = static_cast<uint64_t>(rng_.Range(2, 30));
      nodes_.push_back(std::move(node));
      Boot(i);
    }
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        if (i == j) continue;
        Stream stream;
        stream.from = i;
        stream.to = j;
        streams_.push_back(std::move(stream));
      }
    }
  }

  void Boot(int i) {
    SimNode& node = *nodes_[static_cast<size_t>(i)];
    storage::StoreOptions options;
    options.path = "/data";
    options.cluster_id = "sim";
    options.node_name = node.name;
    options.env = node.env.get();
    options.durability =
        node.sync ? storage::Durability::kSyncEachCommit : storage::Durability::kNoSync;
    options.cache_bytes = static_cast<size_t>(rng_.Range(0, 1)) ? 1 : size_t{1} << 20;
    // Replica ids from the schedule's own generator: a seed replays exactly.
    options.random = [this] { return static_cast<uint64_t>(rng_.Range(1, INT64_MAX)); };
    auto store = storage::Store::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
    node.store = *std::move(store);
    node.view = std::make_unique<ClusterView>(node.name, node.options.members, node.store.get());
    node.up = true;
  }

  // A new process on a crashed node: its hybrid clock starts afresh, and its wall clock may
  // have been stepped back meanwhile (by up to 20 s: an NTP correction, a host that resumed),
  // so its new writes can carry older timestamps than the ones it wrote before.
  void Restart(int i) {
    SimNode& node = *nodes_[static_cast<size_t>(i)];
    if (rng_.Chance(0.5)) node.clock.now -= rng_.Range(0, 20000);
    node.hlc = std::make_unique<HybridClock>(&node.clock);
    node.write_clock = crdt::testing::ClockState();
    Boot(i);
    if (::testing::Test::HasFatalFailure()) return;
    // After a crash a node that syncs every commit lost nothing and keeps its incarnation; one
    // that does not may have lost its tail after peers got it, and must take a new one (Riak's
    // kv679): reusing its dots would make the peers drop its next writes as duplicates.
    ASSERT_EQ(node.store->rotated_incarnation(), !node.sync) << node.name;
  }

  // A process kill keeps everything committed (it is in the OS); a power loss also drops what
  // was never synced, which without fsync is the tail of the node's writes.
  enum class CrashKind { kProcessKill, kPowerLoss };
  void Crash(int i, CrashKind kind) {
    for (Stream& s : streams_) {
      if (s.from == i || s.to == i) Close(s);
    }
    SimNode& node = *nodes_[static_cast<size_t>(i)];
    node.view.reset();
    node.store->AbandonForTesting();
    node.store.reset();
    if (kind == CrashKind::kPowerLoss) {
      ASSERT_TRUE(node.env->DropUnsyncedData().ok());
      // Writes acknowledged without a sync may be gone now: the reference starts again. A node
      // that syncs every commit keeps everything it acknowledged (and its incarnation), so the
      // reference stands.
      if (!node.sync) {
        reference_.clear();
        ++power_losses_;
      }
    }
    node.up = false;
  }

  void Close(Stream& s) {
    if (s.open && s.receiver != nullptr && s.receiver->peer_replica() != 0 &&
        nodes_[static_cast<size_t>(s.to)]->up) {
      nodes_[static_cast<size_t>(s.to)]->view->SetInbound(
          nodes_[static_cast<size_t>(s.from)]->name, s.receiver->peer_replica(),
          ClusterView::Link::kDown);
    }
    s.open = false;
    s.hello_acked = false;
    s.sender.reset();
    s.receiver.reset();
    s.requests.clear();
    s.responses.clear();
  }

  void Open(Stream& s) {
    SimNode& from = *nodes_[static_cast<size_t>(s.from)];
    SimNode& to = *nodes_[static_cast<size_t>(s.to)];
    if (s.open || s.cut || !from.up || !to.up) return;
    s.open = true;
    s.sender = std::make_unique<LinkSender>(from.options, from.store.get(), from.view.get(), to.name);
    s.receiver = std::make_unique<LinkReceiver>(to.options, to.store.get(), to.view.get(), to.hlc.get());
    s.requests.push_back(s.sender->Hello());
  }

  // Delivers one message of the stream (a request to the receiver, or a response back).
  void Deliver(Stream& s) {
    if (!s.open) return;
    if (!s.requests.empty() && (s.responses.empty() || rng_.Chance(0.5))) {
      mergedb::v1::ReplicationRequest request = std::move(s.requests.front());
      s.requests.pop_front();
      SimNode& to = *nodes_[static_cast<size_t>(s.to)];
      if (request.has_hello()) {
        auto ack = s.receiver->OnHello(request.hello());
        if (!ack.ok()) return Refused(s, "hello", ack.status());
        to.view->SetInbound(nodes_[static_cast<size_t>(s.from)]->name, s.receiver->peer_replica(),
                            ClusterView::Link::kUp);
        s.responses.push_back(*std::move(ack));
        return;
      }
      if (request.has_snapshot()) ++snapshot_chunks_;
      auto response = s.receiver->OnRequest(request);
      if (!response.ok()) return Refused(s, "request", response.status());
      if (response->has_value()) s.responses.push_back(**std::move(response));
      return;
    }
    if (!s.responses.empty()) {
      mergedb::v1::ReplicationResponse response = std::move(s.responses.front());
      s.responses.pop_front();
      if (response.has_hello_ack()) {
        if (absl::Status accepted = s.sender->OnHelloAck(response.hello_ack()); !accepted.ok()) {
          return Refused(s, "hello answer", accepted);
        }
        s.hello_acked = true;
      } else {
        s.sender->OnResponse(response);
      }
    }
  }

  // Honest members of one cluster never refuse each other's messages: such a refusal is a bug
  // (it used to close the stream quietly, and only a lack of convergence could show it).
  void Refused(Stream& s, absl::string_view what, const absl::Status& status) {
    ADD_FAILURE() << nodes_[static_cast<size_t>(s.from)]->name << " -> "
                  << nodes_[static_cast<size_t>(s.to)]->name << ": " << what
                  << " refused: " << status;
    Close(s);
  }

  void Heartbeat(Stream& s) {
    if (!s.open || !s.hello_acked) return;
    mergedb::v1::ReplicationRequest heartbeat;
    heartbeat.mutable_heartbeat();
    s.requests.push_back(std::move(heartbeat));
  }

  // Lets the sender produce what it has to send now.
  void Pump(Stream& s) {
    if (!s.open || !s.hello_acked) return;
    for (int k = 0; k < 4; ++k) {
      auto next = s.sender->Next();
      if (!next.ok()) return Refused(s, "sender", next.status());
      if (!next->has_value()) return;
      s.requests.push_back(**std::move(next));
    }
  }

  // One client write, or a batch of two to four (as a stream's queued messages commit): a
  // batch often writes one document twice with others between, which with a one-byte cache
  // evicts it in between.
  void Write(int i) {
    SimNode& node = *nodes_[static_cast<size_t>(i)];
    if (!node.up) return;
    const crdt::ReplicaId replica = node.store->replica_id();
    const uint64_t now = static_cast<uint64_t>(node.clock.now);
    std::vector<storage::LocalWrite> writes(
        rng_.Chance(0.7) ? size_t{1} : static_cast<size_t>(rng_.Range(2, 4)));
    for (storage::LocalWrite& write : writes) {
      write.collection = "c";
      write.id = absl::StrCat("d", rng_.Range(0, 3));
      write.mutate = [&](crdt::Document& doc) -> absl::StatusOr<crdt::Document> {
        return crdt::testing::Ops<crdt::Document>::Mutate(doc, replica, rng_, node.write_clock,
                                                          now);
      };
    }
    if (writes.size() == 1) {
      auto result = node.store->ApplyLocal(writes[0]);
      ASSERT_TRUE(result.ok()) << result.status();
    } else {
      for (const auto& result : node.store->ApplyLocalBatch(writes)) {
        ASSERT_TRUE(result.ok()) << result.status();
      }
    }
    for (const storage::LocalWrite& write : writes) {
      auto doc = node.store->Get(write.collection, write.id);
      ASSERT_TRUE(doc.ok()) << doc.status();
      reference_[write.id].Join(*doc);
      ++acknowledged_;
    }
  }

  // Every node's state holds every acknowledged write since the last power loss: joining the
  // reference into it changes nothing. Returns what is missing where, empty when nothing is.
  std::string MissingAcknowledged() {
    std::string missing;
    for (auto& node : nodes_) {
      for (const auto& [id, reference] : reference_) {
        auto doc = node->store->Get("c", id);
        if (!doc.ok()) {
          absl::StrAppend(&missing, node->name, " ", id, ": ", doc.status().message(), "\n");
          continue;
        }
        crdt::Document joined = *doc;
        joined.Join(reference);
        if (!(joined == *doc)) {
          absl::StrAppend(&missing, node->name, " ", id, " lacks acknowledged writes:\n  has ",
                          doc->DebugString(), "\n  reference ", reference.DebugString(), "\n");
        }
      }
    }
    return missing;
  }
  // Writes acknowledged since the last power loss, and power losses so far.
  int checked_writes() const {
    int n = 0;
    for (const auto& entry : reference_) n += !entry.second.context().empty();
    return n;
  }
  int acknowledged() const { return acknowledged_; }
  int power_losses() const { return power_losses_; }

  void Step() {
    for (auto& node : nodes_) node->clock.now += 1;
    const int n = static_cast<int>(nodes_.size());
    Stream& s = streams_[static_cast<size_t>(rng_.Range(0, static_cast<int64_t>(streams_.size()) - 1))];
    switch (rng_.Range(0, 19)) {
      case 0: case 1: case 2: case 3:
        Write(static_cast<int>(rng_.Range(0, n - 1)));
        break;
      case 4:
        Close(s);  // the connection breaks; what was in flight is lost
        break;
      case 5: {
        // Partition or heal the link between two nodes, both directions; or, a time in four,
        // only the stream one of them opens to the other (it cannot reach the other's port,
        // while the other still reaches its own): deltas then flow one way only.
        const bool cut = rng_.Chance(0.5);
        const bool one_way = rng_.Chance(0.25);
        for (Stream& t : streams_) {
          if ((t.from == s.from && t.to == s.to) ||
              (!one_way && t.from == s.to && t.to == s.from)) {
            t.cut = cut;
            if (cut) Close(t);
          }
        }
        break;
      }
      case 6:
        if (rng_.Chance(0.2)) {
          const int i = static_cast<int>(rng_.Range(0, n - 1));
          if (nodes_[static_cast<size_t>(i)]->up) {
            Crash(i, rng_.Chance(0.5) ? CrashKind::kPowerLoss : CrashKind::kProcessKill);
          } else {
            Restart(i);
          }
        }
        break;
      case 7: {
        // Log truncation on a node, as its janitor does (Replication::TruncateLog).
        SimNode& node = *nodes_[static_cast<size_t>(rng_.Range(0, n - 1))];
        if (node.up) {
          const ClusterView::Truncation truncation = node.view->TruncationPoint(node.options.max_log_entries);
          if (!truncation.through.empty()) {
            ASSERT_TRUE(node.store->TruncateLog(truncation.through).ok());
          }
        }
        break;
      }
      case 8:
        Heartbeat(s);
        break;
      default:
        Open(s);
        Pump(s);
        Deliver(s);
        break;
    }
  }

  // Heals everything and runs the network until it is quiet. Returns true once converged.
  bool HealAndConverge() {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (!nodes_[i]->up) Restart(static_cast<int>(i));
    }
    for (Stream& s : streams_) s.cut = false;
    for (int round = 0; round < 20000; ++round) {
      bool busy = false;
      for (Stream& s : streams_) {
        Open(s);
        Pump(s);
        busy = busy || !s.requests.empty() || !s.responses.empty();
        Deliver(s);
      }
      if (!busy) {
        if (Converged()) return true;
        // Idle links exchange heartbeats, whose answers let senders compare digests.
        for (Stream& s : streams_) Heartbeat(s);
      }
    }
    return false;
  }

  bool Converged() {
    const std::string digest = nodes_[0]->store->state_digest();
    const auto applied = nodes_[0]->store->AppliedVector();
    for (auto& node : nodes_) {
      if (node->store->state_digest() != digest || node->store->AppliedVector() != applied) {
        return false;
      }
    }
    return true;
  }

  std::string Describe() {
    std::string out;
    for (auto& node : nodes_) {
      absl::StrAppend(&out, node->name, " docs=", node->store->document_count(), " applied={");
      for (const auto& [o, s] : node->store->AppliedVector()) absl::StrAppend(&out, absl::Hex(o), ":", s, " ");
      absl::StrAppend(&out, "} replica=", absl::Hex(node->store->replica_id()), "\n");
      for (int d = 0; d < 4; ++d) {
        auto doc = node->store->Get("c", absl::StrCat("d", d));
        if (doc.ok()) absl::StrAppend(&out, "  d", d, ": ", doc->DebugString(), "\n");
      }
    }
    return out;
  }

  // Full-state transfer messages delivered so far.
  int snapshot_chunks() const { return snapshot_chunks_; }

 private:
  Rng rng_;
  int snapshot_chunks_ = 0;
  int acknowledged_ = 0;
  int power_losses_ = 0;
  // Document id -> the join of its states right after each write acknowledged since the last
  // power loss, on whichever node took it.
  std::map<std::string, crdt::Document> reference_;
  std::vector<std::unique_ptr<SimNode>> nodes_;
  std::vector<Stream> streams_;
};

TEST(ReplicationSimulation, SeededSchedulesOfBreaksPartitionsAndRestartsConverge) {
  SetMinLogLevel(LogLevel::kError);
  const std::vector<uint64_t> seeds = crdt::testing::SeedsToRun(1, 5000);
  int schedules_with_transfers = 0;
  int schedules_checking_writes = 0;
  for (uint64_t seed : seeds) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " (replay: MERGEDB_SEED=" << seed << ")");
    Rng pick(seed);
    Simulation sim(seed, static_cast<int>(pick.Range(2, 4)));
    for (int step = 0; step < 400 && !::testing::Test::HasFatalFailure(); ++step) sim.Step();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ASSERT_TRUE(sim.HealAndConverge()) << sim.Describe();
    const std::string missing = sim.MissingAcknowledged();
    ASSERT_TRUE(missing.empty()) << missing << sim.Describe();
    if (sim.snapshot_chunks() > 0) ++schedules_with_transfers;
    if (sim.checked_writes() > 0) ++schedules_checking_writes;
  }
  // The schedules must reach the full-state transfer path (short logs, restarts, partitions),
  // or they do not test it.
  if (seeds.size() > 1) {
    EXPECT_GT(schedules_with_transfers, static_cast<int>(seeds.size()) / 10);
    // And most schedules must hold acknowledged writes to check after their last power loss.
    EXPECT_GT(schedules_checking_writes, static_cast<int>(seeds.size()) / 2);
  }
  std::printf(
      "%d of %zu schedules included a full-state transfer; %d checked acknowledged "
      "writes survived\n",
      schedules_with_transfers, seeds.size(), schedules_checking_writes);
}

}  // namespace
}  // namespace mergedb::node

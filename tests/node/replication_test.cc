// Replication between in-process nodes over real gRPC links on 127.0.0.1.
#include <atomic>
#include <functional>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "node/stream_codec.h"
#include "storage/fault_env.h"
#include "storage/keys.h"
#include "tests/node/cluster_test_util.h"
#include "tests/node/node_test_util.h"
#include "tests/node/tcp_proxy.h"
#include "tests/storage/store_test_util.h"

namespace mergedb::node {
namespace {

using mergedb::v1::BackupResponse;
using mergedb::v1::UpdateRequest;
using mergedb::v1::UpdateResponse;
using testing::Cluster;
using testing::CounterIn;
using testing::Incr;
using testing::SetStr;
using testing::UpdateOf;

UpdateRequest IncrementOf(const std::string& id, int64_t by) {
  UpdateRequest request = UpdateOf("c", id);
  Incr(&request, {"n"}, by);
  return request;
}

TEST(Replication, ThreeNodesWritingConflictingUpdatesConverge) {
  Cluster cluster(3);
  cluster.StartAll();
  std::vector<std::thread> writers;
  for (int i = 0; i < 3; ++i) {
    writers.emplace_back([&, i] {
      for (int k = 0; k < 60; ++k) {
        UpdateRequest request = UpdateOf("c", "doc" + std::to_string(k % 5));
        Incr(&request, {"n"}, 1);
        SetStr(&request, {"last"}, "node" + std::to_string(i));
        ASSERT_TRUE(cluster.Update(i, request).ok());
      }
    });
  }
  for (auto& w : writers) w.join();
  ASSERT_TRUE(cluster.WaitConverged());
  int64_t total = 0;
  for (int d = 0; d < 5; ++d) {
    const auto a = cluster.Get(0, "c", "doc" + std::to_string(d));
    for (int i = 1; i < 3; ++i) {
      const auto b = cluster.Get(i, "c", "doc" + std::to_string(d));
      EXPECT_EQ(a.version(), b.version());
      EXPECT_EQ(a.value().SerializeAsString().size(), b.value().SerializeAsString().size());
    }
    total += CounterIn(a, "n");
  }
  EXPECT_EQ(total, 180);
}

TEST(Replication, APartitionDuringWritesHealsIntoOneState) {
  Cluster cluster(3);
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  // Isolate node 3; both sides keep accepting writes.
  cluster.SetLink(2, 0, false);
  cluster.SetLink(2, 1, false);
  for (int k = 0; k < 20; ++k) {
    ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
    ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 10)).ok());
  }
  ASSERT_TRUE(cluster.WaitConverged({0, 1}));
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "d"), "n"), 21);
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), 201);
  cluster.SetLink(2, 0, true);
  cluster.SetLink(2, 1, true);
  ASSERT_TRUE(cluster.WaitConverged());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(CounterIn(cluster.Get(i, "c", "d"), "n"), 221);
}

TEST(Replication, ARestartedNodeCatchesUpFromTheLog) {
  Cluster cluster(3);
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  const auto replica_before = cluster.node(2)->store()->replica_id();
  const storage::VersionVector had = cluster.node(2)->store()->AppliedVector();
  cluster.Stop(2);
  for (int k = 0; k < 100; ++k) ASSERT_TRUE(cluster.Update(k % 2, IncrementOf("d", 1)).ok());
  // Past a few truncation intervals the others still hold every entry node 3 lacks.
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  for (int i = 0; i < 2; ++i) {
    for (const auto& [origin, floor] : cluster.node(i)->store()->LogFloor()) {
      EXPECT_LE(floor, had.count(origin) > 0 ? had.at(origin) : 0) << "node " << i;
    }
  }
  cluster.Start(2);
  ASSERT_TRUE(cluster.WaitConverged());
  EXPECT_EQ(cluster.node(2)->store()->replica_id(), replica_before);
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), 101);
}

// Polls `done` every 20 ms for at most `timeout`; returns its last answer.
template <typename Done>
bool Eventually(Done done, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

TEST(Replication, LogsAndChangeFeedsStayBoundedWhileAllNodesAreUp) {
  constexpr uint64_t kRetention = 100;
  Cluster cluster(3);
  for (int i = 0; i < 3; ++i) cluster.options(i).change_feed_retention = kRetention;
  cluster.StartAll();
  for (int round = 1; round <= 3; ++round) {
    for (int k = 0; k < 300; ++k) {
      ASSERT_TRUE(cluster.Update(k % 3, IncrementOf("d" + std::to_string(k % 7), 1)).ok());
    }
    ASSERT_TRUE(cluster.WaitConverged());
    // Within a heartbeat and a truncation interval every node learns that the others have
    // everything (of every origin, its own and forwarded ones alike) and drops it.
    for (int i = 0; i < 3; ++i) {
      mergedb::v1::StatusResponse status;
      EXPECT_TRUE(Eventually([&] {
        status = cluster.Status(i);
        return status.log_entries() == 0 && status.change_feed_entries() <= kRetention;
      })) << "round " << round << ", node " << i << " holds " << status.log_entries()
          << " log entries and " << status.change_feed_entries() << " changes";
    }
  }
  EXPECT_EQ(cluster.Status(0).last_position(), 900u);
  EXPECT_EQ(cluster.Status(0).change_feed_entries(), kRetention);
}

TEST(Replication, ADownNodeCostsTheOthersAtMostMaxLogEntriesAndComesBackByFullStateTransfer) {
  constexpr uint64_t kMaxLog = 50;
  Cluster cluster(3);
  for (int i = 0; i < 3; ++i) cluster.options(i).replication.max_log_entries = kMaxLog;
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  const storage::VersionVector had = cluster.node(2)->store()->AppliedVector();
  cluster.Stop(2);
  for (int k = 0; k < 400; ++k) ASSERT_TRUE(cluster.Update(k % 2, IncrementOf("d", 1)).ok());
  // Node 3 lacks 200 entries of each writer's; the others keep only the newest 50 of each.
  for (int i = 0; i < 2; ++i) {
    storage::Store* store = cluster.node(i)->store();
    EXPECT_TRUE(Eventually([&] { return cluster.Status(i).log_entries() <= 2 * kMaxLog; }))
        << "node " << i << " holds " << cluster.Status(i).log_entries() << " log entries";
    const crdt::ReplicaId writer = store->replica_id();
    const uint64_t node3_had = had.count(writer) > 0 ? had.at(writer) : 0;
    EXPECT_GT(store->LogFloor()[writer], node3_had) << "node 3 can no longer be served from the log";
  }
  cluster.Start(2);
  ASSERT_TRUE(cluster.WaitConverged({0, 1, 2}, std::chrono::seconds(30)));
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), 401);
}

TEST(Replication, ANodeRestoredFromAnOlderCopyRefusesWritesUntilItTakesANewIncarnation) {
  Cluster cluster(3);
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  cluster.Stop(2);
  std::unique_ptr<leveldb::Env> copy = cluster.CopyData(2);
  cluster.Start(2);
  // Writes node 3 makes after the copy; the others apply them.
  for (int k = 0; k < 5; ++k) ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 10)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  cluster.Stop(2);
  cluster.RestoreData(2, std::move(copy));
  cluster.Start(2);
  const crdt::ReplicaId restored = cluster.node(2)->store()->replica_id();
  // At its first handshake node 3 learns that its peers have more of its own writes than it
  // does: its next write would reuse sequence numbers 2..6, which the cluster has for others.
  EXPECT_TRUE(Eventually([&] {
    const mergedb::v1::StatusResponse status = cluster.Status(2);
    for (const auto& peer : status.peers()) {
      if (absl::StrContains(peer.last_error(), "restored from an older copy")) return true;
    }
    return false;
  }));
  const grpc::Status refused = cluster.Update(2, IncrementOf("d", 100));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "--new_incarnation")) << refused.error_message();
  // Reads still work there, and the other nodes go on.
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), 1);
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1000)).ok());
  ASSERT_TRUE(cluster.WaitConverged({0, 1}));
  // Restarted as a new incarnation it keeps its data, gets back the writes the copy lacks and
  // takes writes again.
  cluster.Stop(2);
  cluster.options(2).new_incarnation = true;
  cluster.Start(2);
  EXPECT_NE(cluster.node(2)->store()->replica_id(), restored);
  ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 100)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(CounterIn(cluster.Get(i, "c", "d"), "n"), 1151) << "node " << i;
}

TEST(Replication, ABackupTakenDuringWritesRestoresAsANewIncarnationAndNothingIsLost) {
  Cluster cluster(3);
  cluster.options(2).backup_dir = "/backups";
  // A node that fsyncs every commit keeps its replica id across an unclean stop, so only the
  // backup's own marker makes the restored copy a new incarnation.
  cluster.options(2).durability = storage::Durability::kSyncEachCommit;
  cluster.StartAll();
  std::atomic<int64_t> acknowledged{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int k = 0; !stop && k < 5000; ++k) {
      const grpc::Status status = cluster.Update(k % 3, IncrementOf("d", 1));
      EXPECT_TRUE(status.ok()) << status.error_message();
      if (status.ok()) acknowledged += 1;
    }
  });
  for (int wait = 0; wait < 1000 && acknowledged < 100; ++wait) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  BackupResponse backup;
  const grpc::Status backed_up = cluster.Backup(2, "before-the-loss", &backup);
  stop = true;
  writer.join();
  ASSERT_TRUE(backed_up.ok()) << backed_up.error_message();
  EXPECT_EQ(backup.path(), "/backups/before-the-loss");
  EXPECT_GT(backup.records(), 0u);
  const crdt::ReplicaId original = cluster.node(2)->store()->replica_id();
  // Node 3's own writes after the backup: the copy lacks them, the cluster has them.
  for (int k = 0; k < 5; ++k) {
    ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 1000)).ok());
    acknowledged += 1000;
  }
  ASSERT_TRUE(cluster.WaitConverged());
  // Node 3's data dir is lost; the backup takes its place, with no flag.
  cluster.Stop(2);
  cluster.RestoreData(2, cluster.CopyData(2, "/backups/before-the-loss"));
  cluster.Start(2);
  EXPECT_NE(cluster.node(2)->store()->replica_id(), original);
  // It takes writes at once (a copy under the old id would be fenced, or worse, reuse sequence
  // numbers) and gets back what the backup lacked.
  ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 1)).ok());
  acknowledged += 1;
  ASSERT_TRUE(cluster.WaitConverged());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(CounterIn(cluster.Get(i, "c", "d"), "n"), acknowledged.load()) << "node " << i;
  }
}

// A Watch client resumes with the position and the feed of the last event it processed. After
// the node is restored from a backup, its feed goes back to the copy's position and then refills
// with other changes; a resume from a position given out after the copy is refused, even once
// the feed has passed that position again, while one from inside the copy goes on.
TEST(Replication, AWatchResumeFromBeforeARestoreIsRefusedUnlessTheCopyHoldsItsPosition) {
  Cluster cluster(1);
  cluster.options(0).backup_dir = "/backups";
  cluster.options(0).durability = storage::Durability::kSyncEachCommit;
  cluster.StartAll();
  auto watch_from = [&](uint64_t after_position, uint64_t after_feed,
                        std::vector<mergedb::v1::WatchEvent>* events, size_t want) {
    mergedb::v1::WatchRequest request;
    request.set_collection("c");
    request.set_after_position(after_position);
    request.set_after_feed(after_feed);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto reader = cluster.Docs(0)->Watch(&context, request);
    mergedb::v1::WatchEvent event;
    while (events->size() < want && reader->Read(&event)) events->push_back(event);
    if (events->size() == want) context.TryCancel();
    return reader->Finish();
  };
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  BackupResponse backup;
  ASSERT_TRUE(cluster.Backup(0, "copy", &backup).ok());
  // A write's answer names its place in the feed the way a Watch event does.
  UpdateResponse last_write;
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1), &last_write).ok());
  EXPECT_EQ(last_write.position(), 6u);
  std::vector<mergedb::v1::WatchEvent> before;
  (void)watch_from(0, 0, &before, 6);
  ASSERT_EQ(before.size(), 6u);
  const uint64_t feed = before[5].feed();
  EXPECT_EQ(feed, cluster.node(0)->store()->replica_id());
  EXPECT_EQ(last_write.feed(), feed);
  EXPECT_EQ(before[2].position(), 3u);
  EXPECT_EQ(before[5].position(), 6u);

  cluster.Stop(0);
  cluster.RestoreData(0, cluster.CopyData(0, "/backups/copy"));
  cluster.Start(0);
  const uint64_t restored_feed = cluster.node(0)->store()->replica_id();
  ASSERT_NE(restored_feed, feed);
  // Other changes take positions 4 to 8.
  for (int k = 0; k < 5; ++k) ASSERT_TRUE(cluster.Update(0, IncrementOf("e", 1)).ok());

  std::vector<mergedb::v1::WatchEvent> refused_events;
  const grpc::Status refused = watch_from(6, feed, &refused_events, 1);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::OUT_OF_RANGE) << refused.error_message();
  EXPECT_TRUE(
      absl::StrContains(refused.error_message(), "does not name a change in this node's feed"))
      << refused.error_message();
  EXPECT_TRUE(refused_events.empty());
  // Unknown feeds are refused too (another node's, say).
  refused_events.clear();
  EXPECT_EQ(watch_from(1, feed ^ 1, &refused_events, 1).error_code(),
            grpc::StatusCode::OUT_OF_RANGE);

  // Position 3 is in the copy: the resume goes on with the restored feed's changes.
  std::vector<mergedb::v1::WatchEvent> after;
  (void)watch_from(3, feed, &after, 5);
  ASSERT_EQ(after.size(), 5u);
  EXPECT_EQ(after[0].position(), 4u);
  EXPECT_EQ(after[0].id(), "e");
  EXPECT_EQ(after[0].feed(), restored_feed);
  // And the restored feed's own positions resume as usual.
  after.clear();
  (void)watch_from(7, restored_feed, &after, 1);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].position(), 8u);
}

TEST(Replication, BackupsNeedABackupDirAValidNameAndANewName) {
  Cluster cluster(2);
  cluster.options(0).backup_dir = "/backups";
  cluster.StartAll();
  BackupResponse response;
  grpc::Status off = cluster.Backup(1, "b", &response);
  EXPECT_EQ(off.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(off.error_message(), "--backup_dir")) << off.error_message();
  const std::vector<std::string> bad = {"",          "..",         ".hidden", "a/b",
                                       "../escape", "tab\tname", std::string(256, 'x')};
  for (const std::string& name : bad) {
    EXPECT_EQ(cluster.Backup(0, name, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << name;
  }
  ASSERT_TRUE(cluster.Backup(0, "nightly-2026.11.27_1", &response).ok());
  const grpc::Status again = cluster.Backup(0, "nightly-2026.11.27_1", &response);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::ALREADY_EXISTS) << again.error_message();
}

TEST(Replication, ABackupIsRefusedWhileAnotherRunsOrWhenItWouldFillTheDisk) {
  Cluster cluster(2);
  cluster.options(0).backup_dir = "/backups";
  // The free-space probe is the first thing a backup does once it holds the node's one backup
  // slot: the copy named "slow" waits there until released.
  absl::Mutex mu;
  bool entered = false;
  bool released = false;
  std::atomic<uint64_t> free{uint64_t{1} << 40};
  cluster.options(0).free_space = [&](const std::string& path) -> absl::StatusOr<uint64_t> {
    if (absl::EndsWith(path, "/slow")) {
      absl::MutexLock lock(&mu);
      entered = true;
      mu.Await(absl::Condition(&released));
    }
    return free.load();
  };
  cluster.StartAll();
  grpc::Status slow_status;
  std::thread slow([&] {
    BackupResponse slow_response;
    slow_status = cluster.Backup(0, "slow", &slow_response);
  });
  bool slow_started = false;
  {
    absl::MutexLock lock(&mu);
    slow_started = mu.AwaitWithTimeout(absl::Condition(&entered), absl::Seconds(30));
  }
  if (!slow_started) {
    ADD_FAILURE() << "the first backup never reached its free-space check";
    {
      absl::MutexLock lock(&mu);
      released = true;
    }
    slow.join();
    return;
  }
  BackupResponse response;
  const grpc::Status busy = cluster.Backup(0, "other", &response);
  EXPECT_EQ(busy.error_code(), grpc::StatusCode::ABORTED) << busy.error_message();
  EXPECT_TRUE(absl::StrContains(busy.error_message(), "another backup is running"))
      << busy.error_message();
  {
    absl::MutexLock lock(&mu);
    released = true;
  }
  slow.join();
  EXPECT_TRUE(slow_status.ok()) << slow_status.error_message();
  const grpc::Status after = cluster.Backup(0, "other", &response);
  EXPECT_TRUE(after.ok()) << after.error_message();

  // 100 MiB free is less than the default 256 MiB a backup leaves to the node.
  free = uint64_t{100} << 20;
  const grpc::Status full = cluster.Backup(0, "third", &response);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();
  EXPECT_TRUE(absl::StrContains(full.error_message(), "256 MiB are kept free"))
      << full.error_message();
  EXPECT_TRUE(absl::StrContains(full.error_message(), "--backup_min_free_mb"))
      << full.error_message();
}

// A backup disk that fills during the copy (the free-space check passed, or is off) is
// RESOURCE_EXHAUSTED, not UNAVAILABLE: a retry fails the same way until space is freed. The
// node's own store is on another disk and takes writes as before.
TEST(Replication, ABackupDiskThatFillsDuringTheCopyIsResourceExhausted) {
  Cluster cluster(1);
  storage::FaultInjectionEnv& faulty = *cluster.InjectFaults(0);
  cluster.options(0).backup_dir = "/backups";
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  faulty.set_full_disk_under("/backups/");
  BackupResponse response;
  const grpc::Status full = cluster.Backup(0, "full", &response);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();
  EXPECT_TRUE(absl::StrContains(full.error_message(), "the backup disk is full"))
      << full.error_message();
  EXPECT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  faulty.set_full_disk_under("");
  EXPECT_TRUE(cluster.Backup(0, "after", &response).ok());
}

// A backup streamed to a client and written on another machine (here: another file system)
// restores exactly like one written on the node's machine.
TEST(Replication, AStreamedBackupWrittenElsewhereRestoresAndNothingIsLost) {
  Cluster cluster(3);
  cluster.options(2).durability = storage::Durability::kSyncEachCommit;
  cluster.StartAll();
  // Over 2 MiB, so that the copy takes several messages.
  for (int k = 0; k < 300; ++k) {
    UpdateRequest request = UpdateOf("big", "doc" + std::to_string(k));
    SetStr(&request, {"payload"}, std::string(8 << 10, static_cast<char>('a' + k % 26)));
    ASSERT_TRUE(cluster.Update(k % 3, request).ok());
  }
  int64_t acknowledged = 0;
  for (int k = 0; k < 30; ++k, ++acknowledged)
    ASSERT_TRUE(cluster.Update(k % 3, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());

  std::unique_ptr<leveldb::Env> elsewhere(leveldb::NewMemEnv(leveldb::Env::Default()));
  const std::string dir = cluster.options(2).data_dir;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto stub = mergedb::v1::ClusterService::NewStub(
      grpc::CreateCustomChannel(cluster.Address(2), grpc::InsecureChannelCredentials(), args));
  int messages = 0;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = stub->StreamBackup(&context, mergedb::v1::StreamBackupRequest());
    mergedb::v1::BackupChunk chunk;
    ASSERT_TRUE(reader->Read(&chunk));
    EXPECT_GT(chunk.applied_size(), 0);
    EXPECT_GT(chunk.approximate_bytes(), uint64_t{2} << 20);
    storage::BackupWriter::Options options;
    options.env = elsewhere.get();
    auto writer = storage::BackupWriter::Create(dir, options);
    ASSERT_TRUE(writer.ok()) << writer.status();
    bool complete = false;
    while (reader->Read(&chunk)) {
      ++messages;
      std::vector<std::pair<std::string, std::string>> records;
      for (const auto& record : chunk.records()) records.emplace_back(record.key(), record.value());
      if (!records.empty()) {
        ASSERT_TRUE((*writer)->Append(records).ok());
      }
      if (chunk.complete()) {
        complete = true;
        EXPECT_EQ(chunk.total_records(), (*writer)->records());
        EXPECT_EQ(chunk.total_bytes(), (*writer)->bytes());
      }
    }
    const grpc::Status status = reader->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_TRUE(complete);
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  EXPECT_GE(messages, 3) << "the copy came in one message";
  // The copy holds exactly what node 3 held (nothing was written meanwhile): checked on a copy
  // of it, since a backup's first open uses up its marker.
  {
    std::unique_ptr<leveldb::Env> check(leveldb::NewMemEnv(leveldb::Env::Default()));
    std::vector<std::string> files;
    ASSERT_TRUE(elsewhere->GetChildren(dir, &files).ok());
    for (const std::string& name : files) {
      std::string contents;
      if (!leveldb::ReadFileToString(elsewhere.get(), dir + "/" + name, &contents).ok()) continue;
      ASSERT_TRUE(leveldb::WriteStringToFile(check.get(), contents, "/check/" + name).ok());
    }
    storage::StoreOptions options;
    options.path = "/check";
    options.cluster_id = cluster.options(2).cluster_id;
    options.node_name = cluster.options(2).node_name;
    options.create_mode = storage::CreateMode::kMustExist;
    options.env = check.get();
    auto copy = storage::Store::Open(options);
    ASSERT_TRUE(copy.ok()) << copy.status();
    EXPECT_TRUE((*copy)->opened_backup());
    EXPECT_EQ((*copy)->document_count(), cluster.node(2)->store()->document_count());
    EXPECT_EQ((*copy)->state_digest(), cluster.node(2)->store()->state_digest());
    EXPECT_EQ((*copy)->AppliedVector(), cluster.node(2)->store()->AppliedVector());
  }
  // Node 3's own writes after the backup: the copy lacks them, the cluster has them.
  for (int k = 0; k < 5; ++k, acknowledged += 1000) {
    ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 1000)).ok());
  }
  ASSERT_TRUE(cluster.WaitConverged());
  const crdt::ReplicaId original = cluster.node(2)->store()->replica_id();
  cluster.Stop(2);
  cluster.RestoreData(2, std::move(elsewhere));
  cluster.Start(2);
  EXPECT_NE(cluster.node(2)->store()->replica_id(), original);
  EXPECT_TRUE(cluster.node(2)->store()->opened_backup());
  ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 1)).ok());
  acknowledged += 1;
  ASSERT_TRUE(cluster.WaitConverged());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(CounterIn(cluster.Get(i, "c", "d"), "n"), acknowledged) << "node " << i;
  }

  // A reader that goes away mid-copy frees the node's backup slot: the next backup goes ahead.
  {
    grpc::ClientContext context;
    auto reader = stub->StreamBackup(&context, mergedb::v1::StreamBackupRequest());
    mergedb::v1::BackupChunk chunk;
    ASSERT_TRUE(reader->Read(&chunk));
    context.TryCancel();
    while (reader->Read(&chunk)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  bool finished = false;
  for (int attempt = 0; attempt < 100 && !finished; ++attempt) {
    grpc::ClientContext context;
    auto reader = stub->StreamBackup(&context, mergedb::v1::StreamBackupRequest());
    mergedb::v1::BackupChunk chunk;
    bool complete = false;
    while (reader->Read(&chunk)) complete = complete || chunk.complete();
    const grpc::Status status = reader->Finish();
    if (status.error_code() == grpc::StatusCode::ABORTED) {
      // The cancelled copy is still winding down.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(complete);
    finished = true;
  }
  EXPECT_TRUE(finished);
}

// A reader that keeps its connection but stops reading blocks the node's copy on flow control,
// holding the node's one backup slot and a snapshot; the node cancels such a copy once a message
// has waited --backup_stall_timeout_s for it.
TEST(Replication, AStalledStreamedBackupIsCancelledAndFreesTheBackupSlot) {
  Cluster cluster(1);
  cluster.options(0).backup_stall_timeout = absl::Seconds(2);
  cluster.StartAll();
  // 24 MiB: more than the stream's flow-control window and both sockets' buffers hold.
  for (int k = 0; k < 48; ++k) {
    UpdateRequest request = UpdateOf("big", "doc" + std::to_string(k));
    SetStr(&request, {"payload"}, std::string(512 << 10, static_cast<char>('a' + k % 26)));
    ASSERT_TRUE(cluster.Update(0, request).ok());
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto stub = mergedb::v1::ClusterService::NewStub(
      grpc::CreateCustomChannel(cluster.Address(0), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext stalled;
  auto stalled_reader = stub->StreamBackup(&stalled, mergedb::v1::StreamBackupRequest());
  mergedb::v1::BackupChunk chunk;
  ASSERT_TRUE(stalled_reader->Read(&chunk));
  const absl::Time stalled_at = absl::Now();

  // Other backups are refused until the node gives up on the stalled reader.
  grpc::Status next_status;
  absl::Time next_started;
  bool next_complete = false;
  for (int attempt = 0; attempt < 300; ++attempt) {
    next_started = absl::Now();
    next_complete = false;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = stub->StreamBackup(&context, mergedb::v1::StreamBackupRequest());
    while (reader->Read(&chunk)) next_complete = next_complete || chunk.complete();
    next_status = reader->Finish();
    // ABORTED while the stalled copy holds the slot; CANCELLED if this copy itself was paused
    // past the timeout (a loaded machine).
    if (next_status.ok()) break;
    ASSERT_TRUE(next_status.error_code() == grpc::StatusCode::ABORTED ||
                next_status.error_code() == grpc::StatusCode::CANCELLED)
        << next_status.error_message();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(next_status.ok()) << next_status.error_message();
  EXPECT_TRUE(next_complete);
  // The slot was held while the reader stalled: its copy had blocked, not fit in the buffers
  // (half the timeout: the node's Write may have blocked before the first Read returned here).
  EXPECT_GE(next_started - stalled_at, absl::Seconds(1));

  // What was buffered on the way still arrives; then the stalled stream ends, cancelled.
  int buffered = 0;
  while (stalled_reader->Read(&chunk)) {
    EXPECT_FALSE(chunk.complete());
    ++buffered;
  }
  EXPECT_EQ(stalled_reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(buffered, 24) << "the whole copy was buffered";
}

// Whether node i's log was truncated (within 10 s): once it is, a wiped node cannot be served
// from it and needs a full-state transfer.
bool AwaitLogTruncated(Cluster& cluster, int i) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (cluster.node(i)->store()->LogFloor().empty() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return !cluster.node(i)->store()->LogFloor().empty();
}

// One field of a document on node i, read without the client's default 4 MiB answer limit.
google::protobuf::Value FieldOn(Cluster& cluster, int i, const std::string& collection,
                                const std::string& id, const std::string& field) {
  mergedb::v1::GetRequest get;
  get.set_collection(collection);
  get.set_id(id);
  get.add_path(field);
  mergedb::v1::GetResponse response;
  grpc::ClientContext context;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto stub = mergedb::v1::DocumentService::NewStub(
      grpc::CreateCustomChannel(cluster.Address(i), grpc::InsecureChannelCredentials(), args));
  const grpc::Status status = stub->Get(&context, get, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.value();
}

// Every write a node accepts must fit in every message that later carries it: a log entry, a
// full-state transfer, a Get's JSON and typed views, a List page. Protobuf parses nothing nested
// deeper than 100 levels; a field written 31 JSON levels deep was once acknowledged, then
// refused by every peer, and stopped its origin's replication for good. So: try fields from
// shallow to far too deep; whatever is accepted must replicate, rebuild a wiped node and read
// back everywhere.
TEST(Replication, EveryFieldANodeAcceptsReplicatesAndReadsBackHoweverDeep) {
  Cluster cluster(2);
  cluster.StartAll();
  auto nested = [](int levels, bool lists) {
    google::protobuf::Value value;
    value.set_number_value(1);
    for (int i = 0; i < levels; ++i) {
      google::protobuf::Value outer;
      if (lists) {
        *outer.mutable_list_value()->add_values() = std::move(value);
      } else {
        (*outer.mutable_struct_value()->mutable_fields())["k"] = std::move(value);
      }
      value = std::move(outer);
    }
    return value;
  };
  auto deep_update = [&](const std::string& id, int path_names, int levels, bool lists) {
    UpdateRequest request = UpdateOf("deep", id);
    mergedb::v1::Operation* op = testing::AddOp(&request, {});
    for (int i = 0; i < path_names; ++i) op->add_path("p" + std::to_string(i));
    *op->mutable_set()->mutable_value()->mutable_json() = nested(levels, lists);
    return request;
  };
  std::vector<std::string> accepted;
  int refused = 0;
  for (int path_names : {1, 12, 24, 30}) {
    for (int levels = 0; levels <= 40; ++levels) {
      for (bool lists : {false, true}) {
        const std::string id = absl::StrCat(lists ? "lists-" : "objects-", path_names, "-", levels);
        const grpc::Status status = cluster.Update(0, deep_update(id, path_names, levels, lists));
        if (status.ok()) {
          accepted.push_back(id);
        } else {
          ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
              << status.error_message();
          ++refused;
        }
      }
    }
  }
  // The limit itself is reachable and the message names it.
  ASSERT_TRUE(cluster.Update(0, deep_update("at-limit", 1, Limits::kMaxDepth - 1, false)).ok());
  accepted.push_back("at-limit");
  const grpc::Status over =
      cluster.Update(0, deep_update("over-limit", 1, Limits::kMaxDepth, false));
  EXPECT_EQ(over.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(over.error_message(), "nested deeper than 24 levels"))
      << over.error_message();
  // Concurrent writes at the limit: a Get shows both siblings in its typed view.
  cluster.SetLink(0, 1, false);
  for (int i : {0, 1}) {
    ASSERT_TRUE(cluster.Update(i, deep_update("siblings", 1, Limits::kMaxDepth - 1, i == 1)).ok());
  }
  accepted.push_back("siblings");
  cluster.SetLink(0, 1, true);
  EXPECT_GT(refused, 0);
  ASSERT_TRUE(cluster.WaitConverged({0, 1}, std::chrono::seconds(20)))
      << "an accepted write did not replicate";
  auto read_everything = [&](int node) {
    for (const std::string& id : accepted) {
      SCOPED_TRACE(id);
      EXPECT_TRUE(cluster.Get(node, "deep", id).found());
    }
    EXPECT_EQ(cluster.Get(node, "deep", "siblings").conflicts_size(), 1);
    mergedb::v1::ListRequest list;
    list.set_collection("deep");
    list.set_page_size(1000);
    mergedb::v1::ListResponse page;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    const grpc::Status status = cluster.Docs(node)->List(&context, list, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(static_cast<size_t>(page.documents_size()), accepted.size());
  };
  read_everything(1);
  // A wiped node gets all of it in a full-state transfer.
  cluster.Stop(1);
  cluster.Wipe(1);
  cluster.Start(1);
  ASSERT_TRUE(cluster.WaitConverged({0, 1}, std::chrono::seconds(20)))
      << "the full-state transfer did not complete";
  EXPECT_GT(cluster.Status(0).peers(0).full_state_transfers_sent(), 0u);
  read_everything(1);
}

TEST(Replication, AWipedNodeRebuildsByFullStateTransferWhileWritesContinue) {
  Cluster cluster(3);
  cluster.StartAll();
  // Over 4 MiB of state: 600 documents with a 8 KiB register each.
  for (int k = 0; k < 600; ++k) {
    UpdateRequest request = UpdateOf("big", "doc" + std::to_string(k));
    SetStr(&request, {"payload"}, std::string(8 << 10, static_cast<char>('a' + k % 26)));
    Incr(&request, {"n"}, 1);
    ASSERT_TRUE(cluster.Update(k % 3, request).ok());
  }
  // And one document over 1 MiB, which the transfer has to split across messages.
  for (int batch = 0; batch < 6; ++batch) {
    UpdateRequest request = UpdateOf("big", "one-large-set");
    auto* add = testing::AddOp(&request, {"members"})->mutable_add();
    for (int e = 0; e < 10000; ++e) add->add_elements()->set_int_value(batch * 10000 + e);
    ASSERT_TRUE(cluster.Update(0, request).ok());
  }
  ASSERT_TRUE(cluster.WaitConverged());
  // Everyone acknowledged everything, so the logs get truncated: the wiped node cannot be
  // served from them.
  ASSERT_TRUE(AwaitLogTruncated(cluster, 0)) << "logs were never truncated";
  const auto old_replica = cluster.node(2)->store()->replica_id();
  cluster.Stop(2);
  cluster.Wipe(2);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int k = 0; !stop && k < 2000; ++k) {
      (void)cluster.Update(k % 2, IncrementOf("live", 1));
    }
  });
  cluster.Start(2);
  EXPECT_NE(cluster.node(2)->store()->replica_id(), old_replica) << "a wiped node is a new incarnation";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  writer.join();
  ASSERT_TRUE(cluster.WaitConverged({0, 1, 2}, std::chrono::seconds(30)));
  EXPECT_EQ(cluster.node(2)->store()->document_count(), cluster.node(0)->store()->document_count());
  EXPECT_EQ(cluster.Get(2, "big", "doc599").value().struct_value().fields().at("payload").string_value().size(),
            size_t{8 << 10});
  EXPECT_EQ(FieldOn(cluster, 2, "big", "one-large-set", "members").list_value().values_size(),
            60000);
}

// `n` random letters and digits: about 6 bits a byte, so compression cannot shrink them much.
std::string RandomText(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string text(n, ' ');
  for (char& c : text) c = alphabet[rng() % alphabet.size()];
  return text;
}

// An update over what a peer takes in one message (here its own --max_update_bytes; the 64 MiB
// bound of every replication message is the same case, too large for a test) still reaches it,
// and so does every later write of its node: such a message travels in fragments. Whole, its
// frame was refused by the receiver's message limit and the link retried it forever, so nothing
// its node wrote after it reached that peer again.
TEST(Replication, AnUpdateOverAPeersMessageLimitReachesItAndSoDoesEverythingAfterIt) {
  Cluster cluster(3);
  cluster.options(0).limits.max_update_bytes = 8 << 20;
  cluster.options(0).limits.max_value_bytes = 8 << 20;
  // These two take messages of at most 2 MiB (the larger of this and 1 MiB, plus 1 MiB).
  for (int i : {1, 2}) cluster.options(i).limits.max_update_bytes = 256 << 10;
  // A Get answers the value twice (as a value and as a typed field).
  for (int i : {0, 1, 2}) cluster.options(i).limits.max_response_bytes = 16 << 20;
  cluster.StartAll();
  // 5 MiB that compress to about 4: over 2 MiB on the wire too.
  const std::string payload = RandomText(5 << 20, 7);
  UpdateRequest large = UpdateOf("big", "large");
  SetStr(&large, {"payload"}, payload);
  const grpc::Status written = cluster.Update(0, large);
  ASSERT_TRUE(written.ok()) << written.error_message();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("after", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged({0, 1, 2}, std::chrono::seconds(30)));
  auto payload_on = [&](int i) {
    return FieldOn(cluster, i, "big", "large", "payload").string_value();
  };
  for (int i : {1, 2}) {
    EXPECT_TRUE(payload_on(i) == payload) << "n" << i + 1;
    EXPECT_EQ(CounterIn(cluster.Get(i, "c", "after"), "n"), 1);
  }
  // A full-state transfer carries it too (a snapshot chunk with the one large leaf).
  ASSERT_TRUE(AwaitLogTruncated(cluster, 0)) << "logs were never truncated";
  cluster.Stop(2);
  cluster.Wipe(2);
  cluster.Start(2);
  ASSERT_TRUE(cluster.WaitConverged({0, 1, 2}, std::chrono::seconds(30)));
  EXPECT_TRUE(payload_on(2) == payload);
}

// A file system whose disk writes LevelDB's log files at 10 MiB/s (a pause of 100 ms after each
// MiB appended), so a large commit takes most of a second or more.
class SlowLogDiskEnv : public leveldb::EnvWrapper {
 public:
  explicit SlowLogDiskEnv(leveldb::Env* base) : EnvWrapper(base) {}
  leveldb::Status NewWritableFile(const std::string& name, leveldb::WritableFile** file) override {
    leveldb::Status s = target()->NewWritableFile(name, file);
    if (s.ok() && absl::EndsWith(name, ".log")) *file = new SlowFile(*file, &appended_);
    return s;
  }

 private:
  class SlowFile : public leveldb::WritableFile {
   public:
    SlowFile(leveldb::WritableFile* file, std::atomic<size_t>* appended)
        : file_(file), appended_(appended) {}
    leveldb::Status Append(const leveldb::Slice& data) override {
      if (appended_->fetch_add(data.size()) + data.size() >= (size_t{1} << 20)) {
        appended_->store(0);
        absl::SleepFor(absl::Milliseconds(100));
      }
      return file_->Append(data);
    }
    leveldb::Status Close() override { return file_->Close(); }
    leveldb::Status Flush() override { return file_->Flush(); }
    leveldb::Status Sync() override { return file_->Sync(); }

   private:
    std::unique_ptr<leveldb::WritableFile> file_;
    std::atomic<size_t>* appended_;
  };
  std::atomic<size_t> appended_{0};
};

// A peer says nothing while it applies a large request, which may take longer than the link's
// watchdog allows a silent peer (dead_after): the sender allows it a second per 4 MiB of the
// request. Otherwise the link is cut during every apply, and a full-state transfer whose large
// chunk takes that long restarts forever (here an 8 MiB chunk takes 0.8 s or more to commit,
// the watchdog allows 0.3 s, and the grace 2 s more). A cut shows as a transfer sent again: the
// receiver goes on with what it had buffered when the link was cut, so a cut transfer may
// still complete, but only after the sender has begun it anew.
TEST(Replication, APeerApplyingALargeRequestSlowlyIsNotTakenForDead) {
  std::unique_ptr<SlowLogDiskEnv> slow;  // outlives the cluster's nodes
  Cluster cluster(2);
  cluster.options(0).limits.max_update_bytes = 16 << 20;
  cluster.options(0).limits.max_value_bytes = 16 << 20;
  cluster.options(0).replication.heartbeat = absl::Milliseconds(100);
  cluster.options(0).replication.dead_after = absl::Milliseconds(300);
  for (int i : {0, 1}) cluster.options(i).limits.max_response_bytes = 32 << 20;
  cluster.StartAll();
  const std::vector<std::string> payloads = {RandomText(8 << 20, 11), RandomText(8 << 20, 12)};
  for (size_t k = 0; k < payloads.size(); ++k) {
    UpdateRequest large = UpdateOf("big", "large" + std::to_string(k));
    SetStr(&large, {"payload"}, payloads[k]);
    const grpc::Status written = cluster.Update(0, large, nullptr, 30000);
    ASSERT_TRUE(written.ok()) << written.error_message();
  }
  ASSERT_TRUE(cluster.Update(0, IncrementOf("after", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged({0, 1}, std::chrono::seconds(30)));
  ASSERT_TRUE(AwaitLogTruncated(cluster, 0)) << "logs were never truncated";
  cluster.Stop(1);
  cluster.Wipe(1);
  slow = std::make_unique<SlowLogDiskEnv>(cluster.options(1).env);
  cluster.options(1).env = slow.get();
  auto sent_to_n2 = [&] {
    for (const auto& peer : cluster.node(0)->replication()->PeerStatuses()) {
      if (peer.name() == "n2") return peer.bytes_sent();
    }
    return uint64_t{0};
  };
  const uint64_t sent_before = sent_to_n2();
  cluster.Start(1);
  ASSERT_TRUE(cluster.WaitConverged({0, 1}, std::chrono::seconds(30)));
  // One transfer of the 16 MiB (about 12 MiB compressed), not one begun anew after a cut.
  EXPECT_LT(sent_to_n2() - sent_before, uint64_t{18} << 20);
  for (size_t k = 0; k < payloads.size(); ++k) {
    EXPECT_TRUE(FieldOn(cluster, 1, "big", "large" + std::to_string(k), "payload").string_value() ==
                payloads[k]);
  }
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "after"), "n"), 1);
}

TEST(Replication, NodesWithAndWithoutStreamCompressionInteroperate) {
  Cluster cluster(3);
  cluster.options(1).replication.compress_streams = false;
  cluster.StartAll();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(cluster.Update(i, IncrementOf("mixed", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(CounterIn(cluster.Get(i, "c", "mixed"), "n"), 3);
  // Status names what each link speaks: zstd between n1 and n3, none with n2 (once both
  // links are up: the writes may have converged through n3 first).
  std::map<std::string, std::string> codecs;
  EXPECT_TRUE(Eventually([&] {
    codecs.clear();
    for (const auto& peer : cluster.node(0)->replication()->PeerStatuses()) {
      if (!peer.connected()) return false;
      codecs[peer.name()] = peer.compression();
    }
    return true;
  }));
  EXPECT_EQ(codecs, (std::map<std::string, std::string>{{"n2", "none"}, {"n3", "zstd"}}));
}

// Opens a replication stream to `address` as n2, offering what `offer` sets in the hello, and
// returns the compression the hello ack chose. When it chose a codec, the stream must carry a
// heartbeat compressed with it and answer with an ack compressed with it: the choice is what
// the node then speaks, not only what it says.
mergedb::v1::StreamCompression NegotiateAsN2(
    const std::string& address, const std::function<void(mergedb::v1::Hello*)>& offer) {
  auto stub = mergedb::v1::ReplicationService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stream = stub->Replicate(&context);
  mergedb::v1::ReplicationRequest hello = testing::HelloAs("n2");
  offer(hello.mutable_hello());
  mergedb::v1::ReplicationResponse response;
  EXPECT_TRUE(stream->Write(hello) && stream->Read(&response));
  EXPECT_TRUE(response.has_hello_ack());
  const mergedb::v1::StreamCompression chosen = response.hello_ack().compression();
  // (A value no codec has comes back to the caller's comparison.)
  if (const std::optional<StreamCodec> codec = StreamCodecOf(chosen); codec.has_value()) {
    auto compressor = StreamCompressor::Create(*codec);
    auto decompressor = StreamDecompressor::Create(*codec);
    mergedb::v1::ReplicationRequest heartbeat;
    heartbeat.mutable_heartbeat();
    mergedb::v1::ReplicationRequest wrapped;
    wrapped.set_compressed(compressor->Compress(heartbeat.SerializeAsString()));
    EXPECT_TRUE(stream->Write(wrapped));
    EXPECT_TRUE(stream->Read(&response));
    auto plain = decompressor->Decompress(response.compressed(), size_t{1} << 20);
    EXPECT_TRUE(plain.ok()) << plain.status();
    mergedb::v1::ReplicationResponse ack;
    EXPECT_TRUE(plain.ok() && ack.ParseFromString(*plain) && ack.has_ack()) << ack.DebugString();
  }
  context.TryCancel();
  (void)stream->Finish();
  return chosen;
}

// Nodes prefer zstd and still speak DEFLATE with nodes of earlier versions, which offer only
// DEFLATE, in the older field.
TEST(Replication, StreamCompressionIsTheFirstOfTheOffersTheNodeSupports) {
  Cluster cluster(2);  // n2 is a member of n1's cluster; the test speaks for it
  cluster.Start(0);
  using mergedb::v1::Hello;
  EXPECT_EQ(NegotiateAsN2(cluster.Address(0),
                          [](Hello* hello) {
                            hello->set_compression(mergedb::v1::STREAM_COMPRESSION_DEFLATE);
                            hello->add_compression_offers(mergedb::v1::STREAM_COMPRESSION_ZSTD);
                            hello->add_compression_offers(mergedb::v1::STREAM_COMPRESSION_DEFLATE);
                          }),
            mergedb::v1::STREAM_COMPRESSION_ZSTD);
  EXPECT_EQ(NegotiateAsN2(cluster.Address(0),
                          [](Hello* hello) {
                            hello->set_compression(mergedb::v1::STREAM_COMPRESSION_DEFLATE);
                          }),
            mergedb::v1::STREAM_COMPRESSION_DEFLATE);
  // An offer it does not know (a later version's) is passed over.
  EXPECT_EQ(NegotiateAsN2(cluster.Address(0),
                          [](Hello* hello) {
                            hello->add_compression_offers(
                                static_cast<mergedb::v1::StreamCompression>(99));
                            hello->add_compression_offers(mergedb::v1::STREAM_COMPRESSION_DEFLATE);
                          }),
            mergedb::v1::STREAM_COMPRESSION_DEFLATE);
  EXPECT_EQ(NegotiateAsN2(cluster.Address(0), [](Hello*) {}), mergedb::v1::STREAM_COMPRESSION_NONE);
}

// The receiving side of fragments, over a raw stream (uncompressed): the hello ack says how
// large a piece may be, every piece but the last is answered with a heartbeat (the sender's
// watchdog hears the node while a large message arrives), and the whole request is answered
// at its last piece as if it had come in one message.
// Each inbound stream holds a server thread. One that never says hello is cancelled after
// dead_after; and of a peer's streams only the newest two are kept (a peer runs one at a time,
// so older ones are over on its side), so that neither can pile up.
TEST(Replication, SilentAndSupersededInboundStreamsAreCancelled) {
  Cluster cluster(2);  // n2 is a member of n1's cluster; the test speaks for it
  cluster.options(0).replication.dead_after = absl::Milliseconds(500);
  cluster.Start(0);
  auto stub = mergedb::v1::ReplicationService::NewStub(
      grpc::CreateChannel(cluster.Address(0), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto stream = stub->Replicate(&context);
    const absl::Time start = absl::Now();
    mergedb::v1::ReplicationResponse response;
    EXPECT_FALSE(stream->Read(&response));
    const grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
    // dead_after, plus up to the janitor's interval (200 ms here), with room for a busy machine.
    EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  }
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<
      grpc::ClientReaderWriter<mergedb::v1::ReplicationRequest, mergedb::v1::ReplicationResponse>>>
      streams;
  for (int i = 0; i < 3; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    streams.push_back(stub->Replicate(contexts.back().get()));
    mergedb::v1::ReplicationResponse response;
    ASSERT_TRUE(streams.back()->Write(testing::HelloAs("n2")) && streams.back()->Read(&response));
  }
  // The oldest ends; the other two still answer.
  mergedb::v1::ReplicationResponse response;
  while (streams[0]->Read(&response)) {
  }
  EXPECT_EQ(streams[0]->Finish().error_code(), grpc::StatusCode::CANCELLED);
  mergedb::v1::ReplicationRequest heartbeat;
  heartbeat.mutable_heartbeat();
  for (int i : {1, 2}) {
    ASSERT_TRUE(streams[i]->Write(heartbeat) && streams[i]->Read(&response)) << i;
    EXPECT_TRUE(response.has_ack()) << response.DebugString();
    contexts[i]->TryCancel();
    (void)streams[i]->Finish();
  }
}

TEST(Replication, AFragmentedRequestIsAnsweredPieceByPieceThenWhole) {
  Cluster cluster(2);  // n2 is a member of n1's cluster; the test speaks for it
  cluster.Start(0);
  auto stub = mergedb::v1::ReplicationService::NewStub(
      grpc::CreateChannel(cluster.Address(0), grpc::InsecureChannelCredentials()));
  auto open = [&](grpc::ClientContext* context) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto stream = stub->Replicate(context);
    mergedb::v1::ReplicationResponse response;
    EXPECT_TRUE(stream->Write(testing::HelloAs("n2")) && stream->Read(&response));
    EXPECT_EQ(response.hello_ack().fragment_bytes(), uint32_t{1} << 20);  // max_message_bytes
    return stream;
  };
  mergedb::v1::ReplicationRequest heartbeat;
  heartbeat.mutable_heartbeat();
  // A heartbeat serializes to two bytes: two pieces of one byte, the second marked last.
  const std::string serialized = heartbeat.SerializeAsString();
  ASSERT_EQ(serialized.size(), 2u);
  std::vector<mergedb::v1::ReplicationRequest> pieces;
  WriteFragments(serialized, 1, [&](mergedb::v1::ReplicationRequest& piece) {
    pieces.push_back(piece);
    return true;
  });
  ASSERT_EQ(pieces.size(), 2u);
  {
    grpc::ClientContext context;
    auto stream = open(&context);
    mergedb::v1::ReplicationResponse response;
    ASSERT_TRUE(stream->Write(pieces[0]) && stream->Read(&response));
    EXPECT_TRUE(response.has_heartbeat()) << response.DebugString();
    ASSERT_TRUE(stream->Write(pieces[1]) && stream->Read(&response));
    EXPECT_TRUE(response.has_ack() && response.ack().for_heartbeat()) << response.DebugString();
    context.TryCancel();
    (void)stream->Finish();
  }
  {
    // Another request between the pieces ends the stream.
    grpc::ClientContext context;
    auto stream = open(&context);
    mergedb::v1::ReplicationResponse response;
    ASSERT_TRUE(stream->Write(pieces[0]) && stream->Read(&response));
    (void)stream->Write(heartbeat);
    while (stream->Read(&response)) {
    }
    const grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), "between the fragments"))
        << status.error_message();
  }
}

TEST(Replication, ANodeWithoutStreamCompressionAcceptsNoOffer) {
  Cluster cluster(2);
  cluster.options(0).replication.compress_streams = false;
  cluster.Start(0);
  EXPECT_EQ(NegotiateAsN2(cluster.Address(0),
                          [](mergedb::v1::Hello* hello) {
                            hello->set_compression(mergedb::v1::STREAM_COMPRESSION_DEFLATE);
                            hello->add_compression_offers(mergedb::v1::STREAM_COMPRESSION_ZSTD);
                          }),
            mergedb::v1::STREAM_COMPRESSION_NONE);
}

// Stands in for member n2 on its address, as a node that reads only the hello's older
// compression field would: it answers the hello with what `choose` picks, then decodes the
// next message with that codec.
class CompressionPeer final : public mergedb::v1::ReplicationService::Service {
 public:
  explicit CompressionPeer(
      std::function<mergedb::v1::StreamCompression(const mergedb::v1::Hello&)> choose)
      : choose_(std::move(choose)) {}

  grpc::Status Replicate(
      grpc::ServerContext* /*context*/,
      grpc::ServerReaderWriter<mergedb::v1::ReplicationResponse, mergedb::v1::ReplicationRequest>*
          stream) override {
    mergedb::v1::ReplicationRequest hello;
    if (!stream->Read(&hello)) return grpc::Status::OK;
    {
      absl::MutexLock lock(&mu_);
      hellos_.push_back(hello.hello());
    }
    const mergedb::v1::StreamCompression chosen = choose_(hello.hello());
    mergedb::v1::ReplicationResponse ack;
    ack.mutable_hello_ack()->set_node_name("n2");
    ack.mutable_hello_ack()->set_replica_id(42);
    ack.mutable_hello_ack()->set_compression(chosen);
    stream->Write(ack);
    mergedb::v1::ReplicationRequest next;
    std::string decoded;
    if (stream->Read(&next) && chosen == mergedb::v1::STREAM_COMPRESSION_DEFLATE) {
      auto plain =
          StreamDecompressor::Create(StreamCodec::kDeflate)->Decompress(next.compressed(), 1 << 20);
      mergedb::v1::ReplicationRequest request;
      if (plain.ok() && request.ParseFromString(*plain)) decoded = request.DebugString();
    }
    if (!decoded.empty()) {
      absl::MutexLock lock(&mu_);
      decoded_.push_back(decoded);
    }
    while (stream->Read(&next)) {  // keeps the link up until the node ends it
    }
    return grpc::Status::OK;
  }

  std::vector<mergedb::v1::Hello> hellos() {
    absl::MutexLock lock(&mu_);
    return hellos_;
  }
  std::vector<std::string> decoded() {
    absl::MutexLock lock(&mu_);
    return decoded_;
  }

 private:
  const std::function<mergedb::v1::StreamCompression(const mergedb::v1::Hello&)> choose_;
  absl::Mutex mu_;
  std::vector<mergedb::v1::Hello> hellos_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> decoded_ ABSL_GUARDED_BY(mu_);
};

// Serves `service` on a Cluster's address for a node it does not start. As Cluster::Start
// does, it waits (bounded) for a socket that took the port as its ephemeral one to let go.
std::unique_ptr<grpc::Server> Serve(const std::string& address, grpc::Service* service) {
  for (int attempt = 0; attempt < 50; ++attempt) {
    grpc::ServerBuilder builder;
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // fail rather than share the port
    builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    builder.RegisterService(service);
    if (auto server = builder.BuildAndStart()) return server;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return nullptr;
}

// The sending side with a node of an earlier version: it still finds DEFLATE in the hello's
// older field, and the node then speaks DEFLATE on the stream.
TEST(Replication, ANodeSpeaksDeflateToAPeerThatOffersOnlyThat) {
  CompressionPeer old_peer([](const mergedb::v1::Hello& hello) { return hello.compression(); });
  std::unique_ptr<grpc::Server> server;  // outlives the node, whose stop ends its streams
  Cluster cluster(2);
  server = Serve(cluster.Address(1), &old_peer);
  ASSERT_NE(server, nullptr);
  cluster.Start(0);
  ASSERT_TRUE(Eventually([&] { return !old_peer.decoded().empty(); }));
  const mergedb::v1::Hello hello = old_peer.hellos().front();
  EXPECT_EQ(hello.compression(), mergedb::v1::STREAM_COMPRESSION_DEFLATE);
  ASSERT_EQ(hello.compression_offers_size(), 2);
  EXPECT_EQ(hello.compression_offers(0), mergedb::v1::STREAM_COMPRESSION_ZSTD);
  // Operators see what each link speaks.
  EXPECT_TRUE(Eventually([&] {
    return cluster.node(0)->replication()->PeerStatuses().front().compression() == "deflate";
  }));
}

// A peer that answers with a codec the node did not offer gets no stream: the node could not
// read what follows, and says why.
TEST(Replication, AnAnswerNamingACodecTheNodeDidNotOfferEndsTheLink) {
  for (const bool compress : {true, false}) {
    SCOPED_TRACE(compress ? "offering zstd and DEFLATE" : "offering nothing");
    CompressionPeer odd_peer([compress](const mergedb::v1::Hello&) {
      return compress ? static_cast<mergedb::v1::StreamCompression>(99)
                      : mergedb::v1::STREAM_COMPRESSION_DEFLATE;
    });
    std::unique_ptr<grpc::Server> server;  // outlives the node, whose stop ends its streams
    Cluster cluster(2);
    cluster.options(0).replication.compress_streams = compress;
    server = Serve(cluster.Address(1), &odd_peer);
    ASSERT_NE(server, nullptr);
    cluster.Start(0);
    EXPECT_TRUE(Eventually([&] {
      for (const auto& peer : cluster.node(0)->replication()->PeerStatuses()) {
        if (peer.name() == "n2" && absl::StrContains(peer.last_error(), "did not offer")) {
          return true;
        }
      }
      return false;
    }));
    EXPECT_TRUE(odd_peer.decoded().empty());
    ASSERT_FALSE(odd_peer.hellos().empty());  // recorded before the answer
    if (!compress) {
      EXPECT_EQ(odd_peer.hellos().front().compression(), mergedb::v1::STREAM_COMPRESSION_NONE);
      EXPECT_EQ(odd_peer.hellos().front().compression_offers_size(), 0);
    }
  }
}

TEST(Replication, WritesAreForwardedAlongAChain) {
  // Links n1-n2 and n2-n3 only.
  Cluster cluster(3, {{1}, {0, 2}, {1}});
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 5)).ok());
  ASSERT_TRUE(cluster.Update(2, IncrementOf("d", 7)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), 12);
  EXPECT_EQ(CounterIn(cluster.Get(0, "c", "d"), "n"), 12);
  // n1 learns through n2's acknowledgements what n3 has applied.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool learned = false;
  while (!learned && std::chrono::steady_clock::now() < deadline) {
    auto known = cluster.node(0)->replication()->view()->Known();
    learned = known.count("n3") > 0 && known.at("n3") == cluster.node(2)->store()->AppliedVector();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(learned);
}

TEST(Replication, AReadOnlyReplicaAppliesAndServesButRefusesWrites) {
  Cluster cluster(3);
  cluster.options(2).role = mergedb::v1::REPLICA;
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 3)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), 3);
  grpc::Status refused = cluster.Update(2, IncrementOf("d", 1));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // The refusal names the writable nodes.
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "n1 (" + cluster.Address(0) + ")"))
      << refused.error_message();
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "n2 (")) << refused.error_message();
}

TEST(Replication, QuorumSucceedsWithOneOfThreeDownAndTimesOutWithTwoDown) {
  Cluster cluster(3);
  cluster.StartAll();
  cluster.Stop(2);
  UpdateRequest request = IncrementOf("d", 1);
  request.set_write_concern(mergedb::v1::QUORUM);
  EXPECT_TRUE(cluster.Update(0, request).ok());
  request.set_write_concern(mergedb::v1::ALL);
  grpc::Status all = cluster.Update(0, request, nullptr, 500);
  EXPECT_EQ(all.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  cluster.Stop(1);
  request.set_write_concern(mergedb::v1::QUORUM);
  grpc::Status quorum = cluster.Update(0, request, nullptr, 500);
  EXPECT_EQ(quorum.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(absl::StrContains(quorum.error_message(), "durable on node n1 and will still replicate"))
      << quorum.error_message();
  // The timed-out writes were durable locally and replicate once the others return.
  cluster.Start(1);
  cluster.Start(2);
  ASSERT_TRUE(cluster.WaitConverged());
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), 3);
}

// Write streams apply LOCAL writes on the threads that read them, and hand writes that wait for
// peers to threads of their own: a QUORUM wait must neither reorder a stream's answers nor hold
// up other streams.
TEST(Replication, AStreamWaitingForAQuorumAnswersInOrderWhileOtherStreamsGoOn) {
  Cluster cluster(3);
  cluster.StartAll();
  cluster.Stop(1);
  cluster.Stop(2);
  // More waiting streams than the node has threads that read.
  constexpr int kWaiting = 4;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<UpdateRequest, UpdateResponse>>> waiting;
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(3);
  for (int s = 0; s < kWaiting; ++s) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(deadline);
    waiting.push_back(cluster.Docs(0)->UpdateStream(contexts.back().get()));
    for (int i = 0; i < 3; ++i) {
      UpdateRequest request = IncrementOf("d", 1);
      request.set_request_id(absl::StrCat("s", s, "w", i));
      if (i == 1) request.set_write_concern(mergedb::v1::QUORUM);  // cannot be met: 1 of 3 up
      ASSERT_TRUE(waiting.back()->Write(request));
    }
    waiting.back()->WritesDone();
    UpdateResponse response;
    ASSERT_TRUE(waiting.back()->Read(&response));  // w0 is LOCAL: answered before w1 waits
    EXPECT_EQ(response.request_id(), absl::StrCat("s", s, "w0"));
    EXPECT_EQ(response.code(), 0) << response.message();
  }

  // Meanwhile another stream's writes are answered: nothing waits behind the w1s.
  std::atomic<bool> waiting_answered{false};
  std::thread reader([&] {
    for (int s = 0; s < kWaiting; ++s) {
      auto& stream = waiting[static_cast<size_t>(s)];
      UpdateResponse next;
      std::vector<UpdateResponse> rest;
      while (stream->Read(&next)) rest.push_back(next);
      waiting_answered = true;
      ASSERT_EQ(rest.size(), 2u);
      EXPECT_EQ(rest[0].request_id(), absl::StrCat("s", s, "w1"));
      EXPECT_EQ(rest[0].code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
      EXPECT_TRUE(absl::StrContains(rest[0].message(), "durable on node n1")) << rest[0].message();
      EXPECT_EQ(rest[1].request_id(), absl::StrCat("s", s, "w2"));  // answered after w1
      EXPECT_EQ(rest[1].code(), 0) << rest[1].message();
      EXPECT_TRUE(stream->Finish().ok());
    }
  });
  grpc::ClientContext other_context;
  other_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto other = cluster.Docs(0)->UpdateBatchStream(&other_context);
  mergedb::v1::UpdateBatch batch;
  for (int i = 0; i < 5; ++i) *batch.add_updates() = IncrementOf("d", 10);
  for (int k = 0; k < 4; ++k) {
    ASSERT_TRUE(other->Write(batch));
    mergedb::v1::UpdateBatchResponse answers;
    ASSERT_TRUE(other->Read(&answers));
    ASSERT_EQ(answers.responses_size(), 5);
    for (const UpdateResponse& answer : answers.responses()) EXPECT_EQ(answer.code(), 0);
  }
  EXPECT_FALSE(waiting_answered) << "a LOCAL stream waited for the QUORUM writes of others";
  other->WritesDone();
  EXPECT_TRUE(other->Finish().ok());
  reader.join();

  cluster.Start(1);
  cluster.Start(2);
  ASSERT_TRUE(cluster.WaitConverged());
  EXPECT_EQ(CounterIn(cluster.Get(2, "c", "d"), "n"), kWaiting * 3 + 4 * 5 * 10);
}

// A stream does not carry one batch per round trip to the peers: the writes behind a QUORUM
// write are committed (and replicated) while it waits, and still answered after it.
TEST(Replication, AStreamCommitsTheWritesBehindAWaitingQuorumWriteAndAnswersInOrder) {
  Cluster cluster(3);
  cluster.StartAll();
  cluster.Stop(1);
  cluster.Stop(2);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = cluster.Docs(0)->UpdateStream(&context);
  UpdateRequest quorum = IncrementOf("waits", 1);
  quorum.set_request_id("quorum");
  quorum.set_write_concern(mergedb::v1::QUORUM);  // 1 of 3 up: cannot be met yet
  ASSERT_TRUE(stream->Write(quorum));
  // The QUORUM write is committed and waits; only then comes the next one (sent together, the
  // two would share a commit anyway).
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (CounterIn(cluster.Get(0, "c", "waits"), "n") != 1 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(CounterIn(cluster.Get(0, "c", "waits"), "n"), 1);
  UpdateRequest local = IncrementOf("behind", 1);
  local.set_request_id("local");
  ASSERT_TRUE(stream->Write(local));
  stream->WritesDone();

  absl::Mutex mu;
  std::vector<UpdateResponse> answers;
  std::thread reader([&] {
    UpdateResponse answer;
    while (stream->Read(&answer)) {
      absl::MutexLock lock(&mu);
      answers.push_back(answer);
    }
  });
  // The write behind the waiting one is committed on n1 ...
  until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (CounterIn(cluster.Get(0, "c", "behind"), "n") != 1 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(CounterIn(cluster.Get(0, "c", "behind"), "n"), 1)
      << "the write behind a waiting QUORUM write was not committed";
  // ... but not answered before it.
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(answers.empty()) << answers.front().request_id() << " answered too soon";
  }
  // A second node back makes the quorum: both are answered, in order.
  cluster.Start(1);
  reader.join();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[0].request_id(), "quorum");
  EXPECT_EQ(answers[0].code(), 0) << answers[0].message();
  EXPECT_EQ(answers[1].request_id(), "local");
  EXPECT_EQ(answers[1].code(), 0) << answers[1].message();
  EXPECT_TRUE(stream->Finish().ok());
  // The QUORUM answer held: n2 has the write.
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "waits"), "n"), 1);
}

// A request id travels with its update's log entry, so a retry on any node the entry has reached
// is recognized: on another node, and on the node that took it after it was restored from a
// backup taken before (its peers send it the entry again). Before, request ids lived only in
// the data dir of the node that took the update, and both retries applied it a second time.
TEST(Replication, ARetryIsRecognizedOnEveryNodeTheUpdateReached) {
  Cluster cluster(2);
  cluster.options(0).backup_dir = "/backups";
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  BackupResponse backup;
  ASSERT_TRUE(cluster.Backup(0, "before", &backup).ok());
  UpdateRequest first = IncrementOf("d", 10);
  first.set_request_id("once");
  UpdateResponse original;
  ASSERT_TRUE(cluster.Update(0, first, &original).ok());
  EXPECT_FALSE(original.duplicate());
  ASSERT_TRUE(cluster.WaitConverged());
  // A retry on the other node.
  UpdateResponse elsewhere;
  ASSERT_TRUE(cluster.Update(1, first, &elsewhere).ok());
  EXPECT_TRUE(elsewhere.duplicate());
  // The same id for another update is refused there too.
  UpdateRequest other = IncrementOf("d", 99);
  other.set_request_id("once");
  EXPECT_EQ(cluster.Update(1, other).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // n1 restored from the backup taken before the update: its peer sends the entry back, and a
  // retry there is recognized too.
  cluster.Stop(0);
  cluster.RestoreData(0, cluster.CopyData(0, "/backups/before"));
  cluster.Start(0);
  ASSERT_TRUE(cluster.WaitConverged());
  UpdateResponse restored;
  ASSERT_TRUE(cluster.Update(0, first, &restored).ok());
  EXPECT_TRUE(restored.duplicate());
  ASSERT_TRUE(cluster.WaitConverged());
  for (int i : {0, 1}) EXPECT_EQ(CounterIn(cluster.Get(i, "c", "d"), "n"), 11) << "on n" << i + 1;
}

// A node rebuilt from its peers gets the updates inside a full-state transfer, not as log
// entries: the transfer carries the request ids too, so a retry there is recognized, and the same
// id for another update is refused.
TEST(Replication, ARetryIsRecognizedOnANodeRebuiltByFullStateTransfer) {
  Cluster cluster(3);
  cluster.StartAll();
  UpdateRequest first = IncrementOf("d", 10);
  first.set_request_id("once");
  ASSERT_TRUE(cluster.Update(0, first).ok());
  for (int k = 0; k < 20; ++k) {
    UpdateRequest more = IncrementOf("e" + std::to_string(k), 1);
    more.set_request_id("more-" + std::to_string(k));
    ASSERT_TRUE(cluster.Update(k % 2, more).ok());
  }
  ASSERT_TRUE(cluster.WaitConverged());
  // Truncated logs cannot serve the wiped node: it needs a full-state transfer.
  ASSERT_TRUE(AwaitLogTruncated(cluster, 0)) << "logs were never truncated";
  ASSERT_TRUE(AwaitLogTruncated(cluster, 1)) << "logs were never truncated";
  cluster.Stop(2);
  cluster.Wipe(2);
  cluster.Start(2);
  ASSERT_TRUE(cluster.WaitConverged({0, 1, 2}, std::chrono::seconds(30)));
  uint64_t transfers = 0;
  for (int i : {0, 1}) {
    const mergedb::v1::StatusResponse status = cluster.Status(i);
    for (const auto& peer : status.peers()) transfers += peer.full_state_transfers_sent();
  }
  ASSERT_GE(transfers, 1u) << "n3 was not rebuilt by a full-state transfer";
  UpdateResponse retried;
  ASSERT_TRUE(cluster.Update(2, first, &retried).ok());
  EXPECT_TRUE(retried.duplicate());
  UpdateRequest other = IncrementOf("d", 99);
  other.set_request_id("once");
  EXPECT_EQ(cluster.Update(2, other).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Request ids taken on either peer came across.
  UpdateRequest from_n2 = IncrementOf("e1", 1);
  from_n2.set_request_id("more-1");
  ASSERT_TRUE(cluster.Update(2, from_n2, &retried).ok());
  EXPECT_TRUE(retried.duplicate());
  ASSERT_TRUE(cluster.WaitConverged());
  for (int i : {0, 1, 2}) {
    EXPECT_EQ(CounterIn(cluster.Get(i, "c", "d"), "n"), 10) << "on n" << i + 1;
    EXPECT_EQ(CounterIn(cluster.Get(i, "c", "e1"), "n"), 1) << "on n" << i + 1;
  }
}

// A rolling restart: a node asked to stop while a QUORUM write waits for its peer lets the wait
// finish (its links still run) within its grace period, refusing new writes meanwhile. It used
// to cut the links first, and every synchronous write in flight failed.
TEST(Replication, AStoppingNodeLetsAWaitingQuorumWriteFinish) {
  Cluster cluster(2);
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  cluster.Stop(1);  // the quorum of two needs n2
  UpdateRequest quorum = IncrementOf("d", 1);
  quorum.set_write_concern(mergedb::v1::QUORUM);
  grpc::Status waited;
  std::thread writer([&] { waited = cluster.Update(0, quorum, nullptr, 20000); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the wait has begun
  std::thread stopper([&] { cluster.node(0)->Shutdown(absl::Seconds(15)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Draining: a new write is refused at once.
  const grpc::Status refused = cluster.Update(0, IncrementOf("d", 1));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  cluster.Start(1);
  writer.join();
  stopper.join();
  EXPECT_TRUE(waited.ok()) << waited.error_code() << ": " << waited.error_message();
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "d"), "n"), 2);
}

// A node stops while clients hold write streams open, one of them waiting for a quorum that
// cannot come: the stop neither hangs nor loses what was acknowledged.
TEST(Replication, ANodeStopsWithWriteStreamsOpenAndAQuorumWaitInFlight) {
  Cluster cluster(3);
  cluster.StartAll();
  cluster.Stop(1);
  cluster.Stop(2);
  grpc::ClientContext idle_context;
  auto idle = cluster.Docs(0)->UpdateStream(&idle_context);
  UpdateRequest local = IncrementOf("d", 1);
  ASSERT_TRUE(idle->Write(local));
  UpdateResponse response;
  ASSERT_TRUE(idle->Read(&response));
  ASSERT_EQ(response.code(), 0) << response.message();
  grpc::ClientContext waiting_context;  // no deadline: the node's default wait (10 s)
  auto waiting = cluster.Docs(0)->UpdateStream(&waiting_context);
  UpdateRequest quorum = IncrementOf("d", 1);
  quorum.set_write_concern(mergedb::v1::QUORUM);
  ASSERT_TRUE(waiting->Write(quorum));
  // And a unary one.
  grpc::CompletionQueue cq;
  grpc::ClientContext unary_context;
  unary_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  UpdateResponse unary_response;
  grpc::Status unary_status;
  auto unary = cluster.Docs(0)->AsyncUpdate(&unary_context, quorum, &cq);
  unary->Finish(&unary_response, &unary_status, &unary_status);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the waits have begun
  const auto stop_started = std::chrono::steady_clock::now();
  cluster.Stop(0);
  const double stop_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stop_started).count();
  std::cout << "stopped in " << stop_seconds << " s\n";
  // Both streams end. An answer that still reaches the client says why the write was not
  // confirmed: the node stopped (another node can take the retry), not a missed deadline.
  while (waiting->Read(&response)) {
    EXPECT_EQ(response.code(), grpc::StatusCode::UNAVAILABLE) << response.message();
    EXPECT_TRUE(absl::StrContains(response.message(), "shutting down")) << response.message();
  }
  EXPECT_FALSE(waiting->Finish().ok());
  EXPECT_FALSE(idle->Read(&response));
  EXPECT_FALSE(idle->Finish().ok());
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(unary_status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << unary_status.error_message();
  EXPECT_TRUE(absl::StrContains(unary_status.error_message(), "shutting down"))
      << unary_status.error_message();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  // The three increments were durable on n1 before it stopped.
  cluster.Start(0);
  EXPECT_EQ(CounterIn(cluster.Get(0, "c", "d"), "n"), 3);
}

// --members may list the whole cluster, this node included (as the README's chain example
// does): a majority is still two of three, and ALL is three.
TEST(Replication, MembersListingTheWholeClusterStillCountThreeNodes) {
  Cluster cluster(3);
  for (int i = 0; i < 3; ++i) cluster.options(i).members = {"n1", "n2", "n3"};
  cluster.StartAll();
  EXPECT_EQ(cluster.node(0)->replication()->view()->member_count(), 3);
  UpdateRequest request = IncrementOf("d", 1);
  request.set_write_concern(mergedb::v1::ALL);
  const grpc::Status all = cluster.Update(0, request);
  EXPECT_TRUE(all.ok()) << all.error_message();
  cluster.Stop(2);
  request.set_write_concern(mergedb::v1::QUORUM);
  const grpc::Status quorum = cluster.Update(0, request);
  EXPECT_TRUE(quorum.ok()) << quorum.error_message();
}

// A retried QUORUM write waits for the log entry its first attempt committed, also after the
// node restarted as a new incarnation, whose own log numbers its entries from 1 again.
TEST(Replication, ARetriedQuorumWriteWaitsForItsOwnEntryAfterANewIncarnation) {
  Cluster cluster(3);
  cluster.StartAll();
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  UpdateRequest request = IncrementOf("d", 1);
  request.set_request_id("retried");
  request.set_write_concern(mergedb::v1::QUORUM);
  UpdateResponse first;
  ASSERT_TRUE(cluster.Update(0, request, &first).ok());
  const uint64_t first_feed = cluster.node(0)->store()->replica_id();
  EXPECT_EQ(first.feed(), first_feed);
  cluster.Stop(0);
  cluster.options(0).new_incarnation = true;
  cluster.Start(0);
  ASSERT_NE(cluster.node(0)->store()->replica_id(), first_feed);
  // The others hold entry 4 of the first incarnation; the new one has no entry 4 to wait for.
  UpdateResponse retried;
  const grpc::Status status = cluster.Update(0, request, &retried, 3000);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(retried.duplicate());
  EXPECT_EQ(retried.version(), first.version());
  // Its place in the change feed is still the first incarnation's.
  EXPECT_EQ(retried.position(), first.position());
  EXPECT_EQ(retried.feed(), first_feed);
  ASSERT_TRUE(cluster.WaitConverged());
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "d"), "n"), 4);
}

// One server takes both client updates and the peers' replication messages: a node whose
// update limit is under a replication frame's size still takes full catch-up frames.
TEST(Replication, ANodeWithASmallUpdateLimitStillTakesFullSizeFrames) {
  Cluster cluster(2);
  cluster.options(1).limits.max_update_bytes = 100000;
  cluster.StartAll();
  cluster.Stop(1);
  // 2 MiB of values that compress little, so that frames of about 1 MiB go on the wire.
  std::mt19937 rng(7);
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  for (int k = 0; k < 24; ++k) {
    std::string value(90000, ' ');
    for (char& c : value) c = alphabet[rng() % alphabet.size()];
    UpdateRequest request = UpdateOf("c", "big" + std::to_string(k));
    SetStr(&request, {"v"}, value);
    ASSERT_TRUE(cluster.Update(0, request).ok());
  }
  cluster.Start(1);
  ASSERT_TRUE(cluster.WaitConverged());
}

// Waits for the peers have threads of their own: with the peers gone and more QUORUM writes
// waiting than the node keeps threads for, a LOCAL write under fsync per commit (whose commit
// needs a thread that may block) still goes through, and so does each QUORUM write's commit.
TEST(Replication, QuorumWritesWaitingOnAPartitionDoNotHoldUpLocalWrites) {
  Cluster cluster(3);
  cluster.options(0).durability = storage::Durability::kSyncEachCommit;
  cluster.StartAll();
  cluster.Stop(1);
  cluster.Stop(2);
  constexpr int kWaiting = 300;  // more than the 256 threads a node keeps for either kind
  std::vector<UpdateRequest> quorum(kWaiting, IncrementOf("waiting", 1));
  for (UpdateRequest& request : quorum) request.set_write_concern(mergedb::v1::QUORUM);
  testing::PendingUpdates waiting(cluster.Docs(0), quorum, std::chrono::seconds(60));
  // Every one of them is committed, and waits.
  EXPECT_TRUE(
      Eventually([&] { return CounterIn(cluster.Get(0, "c", "waiting"), "n") == kWaiting; }));
  const auto started = std::chrono::steady_clock::now();
  const grpc::Status local = cluster.Update(0, IncrementOf("d", 1), nullptr, 5000);
  EXPECT_TRUE(local.ok()) << local.error_message();
  std::cout << "a LOCAL write with " << kWaiting << " QUORUM writes waiting took "
            << std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
                   .count()
            << " ms\n";
  for (const grpc::Status& waited : waiting.CancelAndCollect()) EXPECT_FALSE(waited.ok());
}

TEST(Replication, ANodeOfAnotherClusterIsRefused) {
  Cluster ours(2);
  Cluster theirs(1, {{}}, "other-cluster");
  // Their node claims to be our n2 peer.
  theirs.options(0).peers = {{"n1", ours.Address(0)}};
  theirs.options(0).node_name = "n2";
  ours.Start(0);
  theirs.Start(0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::string error;
  while (std::chrono::steady_clock::now() < deadline) {
    const mergedb::v1::StatusResponse status = theirs.Status(0);
    ASSERT_EQ(status.peers_size(), 1) << status.DebugString();
    error = status.peers(0).last_error();
    if (absl::StrContains(error, "cluster")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(error, "belongs to cluster 'other-cluster'")) << error;
  EXPECT_FALSE(theirs.Status(0).peers(0).connected());
}

// An idle link sleeps until a commit of entries it sends wakes it (Store::AddAppliedListener
// and the link's alarm); its periodic checks and heartbeats are not what carries a write. Here
// they come once a minute or less, so a write that arrives within seconds was carried by the
// wake-up: with that broken, this test fails.
TEST(Replication, ACommitWakesAnIdleLinkAtOnce) {
  Cluster cluster(2);
  for (int i : {0, 1}) {
    cluster.options(i).replication.idle_check = absl::Minutes(10);
    cluster.options(i).replication.heartbeat = absl::Minutes(1);
    cluster.options(i).replication.dead_after = absl::Minutes(10);
  }
  cluster.StartAll();
  const grpc::Status first = cluster.Update(0, IncrementOf("idle", 1));
  ASSERT_TRUE(first.ok()) << first.error_code() << ": " << first.error_message();
  ASSERT_TRUE(cluster.WaitConverged({0, 1}, std::chrono::seconds(20)));
  for (int round = 0; round < 3; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // both links go idle
    const int writer = round % 2;
    ASSERT_TRUE(cluster.Update(writer, IncrementOf("idle", 1)).ok());
    EXPECT_TRUE(Eventually(
        [&] { return CounterIn(cluster.Get(1 - writer, "c", "idle"), "n") == 2 + round; },
        std::chrono::seconds(20)))
        << "round " << round << ": n" << 2 - writer << " did not see n" << writer + 1 << "'s write";
  }
}

// A link waiting out its reconnect backoff, which grows to seconds while a peer is down, tries
// again as soon as that peer's own link says hello: a restarted node gets what it missed at
// once. Here the backoff is 15 to 30 s, so without that the sync below would time out.
TEST(Replication, ARestartedPeerIsReconnectedToAtOnceNotAtTheEndOfTheBackoff) {
  Cluster cluster(2);
  for (int i = 0; i < 2; ++i) {
    cluster.options(i).replication.backoff_min = absl::Seconds(30);
    cluster.options(i).replication.backoff_max = absl::Seconds(30);
  }
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  cluster.Stop(1);
  auto link_down = [&] {
    for (const auto& peer : cluster.node(0)->replication()->PeerStatuses()) {
      if (peer.connected()) return false;
    }
    return true;
  };
  ASSERT_TRUE(Eventually(link_down)) << "n1 did not notice n2 stop";
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  cluster.Start(1);
  EXPECT_TRUE(cluster.WaitConverged({}, std::chrono::seconds(10)))
      << "n1 reconnected only at the end of its backoff";
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "d"), "n"), 2);
}

// n2 is down while n1 takes 2,000 increments over 50 documents (d0 holds 40); then a block of
// n1's log around entry 1,000, moved into a table file by a restart, fails its checksum. Both
// nodes are left stopped; `origin` is n1's replica id, the writes' origin.
void WritesOnlyN1HoldsThenADamagedLogBlock(Cluster& cluster, crdt::ReplicaId* origin) {
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d0", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  *origin = cluster.node(0)->store()->replica_id();
  cluster.Stop(1);
  for (int k = 1; k < 2000; ++k) {
    ASSERT_TRUE(cluster.Update(0, IncrementOf(absl::StrCat("d", k % 50), 1)).ok());
  }
  cluster.Stop(0);
  cluster.Start(0);
  cluster.Stop(0);
  const crdt::ReplicaId writer = *origin;
  storage::testing::BreakBlockChecksum(cluster.env(0), cluster.options(0).data_dir,
                                       [&](int k) { return storage::keys::Log(writer, 1000 + k); });
}

// A damaged block of a node's log does not stop replication: the peer that needs those entries
// gets a full-state transfer instead, and Status counts the damage and names the repair.
TEST(Replication, ADamagedLogBlockIsReplacedByAFullStateTransferAndShowsInStatus) {
  Cluster cluster(2);
  crdt::ReplicaId origin = 0;
  WritesOnlyN1HoldsThenADamagedLogBlock(cluster, &origin);
  if (::testing::Test::HasFatalFailure()) return;
  cluster.Start(0);
  cluster.Start(1);
  ASSERT_TRUE(cluster.WaitConverged());
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "d0"), "n"), 40);
  const mergedb::v1::StatusResponse status = cluster.Status(0);
  ASSERT_EQ(status.peers_size(), 1);
  const mergedb::v1::PeerStatus& peer = status.peers(0);
  EXPECT_GE(peer.log_damage_events(), 1u);
  EXPECT_GE(peer.full_state_transfers_sent(), 1u);
  EXPECT_TRUE(absl::StrContains(peer.last_error(), "mergedb-repair")) << peer.last_error();
}

// The repair a damaged log block calls for must not lose what only that node holds. n2 was down
// while n1 took 2,000 writes; a block of n1's log is damaged and n1 is repaired, which clears its
// documents. Its log still holds every other entry, and n2 must get their writes: an empty
// full-state transfer carrying n1's applied vector once made n2 skip them for good.
TEST(Replication, ARepairedNodeStillGivesItsPeersTheWritesItsLogHeld) {
  Cluster cluster(2);
  crdt::ReplicaId origin = 0;
  WritesOnlyN1HoldsThenADamagedLogBlock(cluster, &origin);
  if (::testing::Test::HasFatalFailure()) return;
  ASSERT_TRUE(storage::Store::Repair(cluster.options(0).data_dir, cluster.env(0)).ok());
  cluster.Start(0);
  EXPECT_NE(cluster.node(0)->store()->replica_id(), origin);
  cluster.Start(1);
  ASSERT_TRUE(cluster.WaitConverged());
  // A counter's entry carries its replica's running total, so each document's last surviving
  // entry (all well past the damaged block) restores all of it.
  for (int node : {0, 1}) {
    int64_t total = 0;
    for (int d = 0; d < 50; ++d)
      total += CounterIn(cluster.Get(node, "c", absl::StrCat("d", d)), "n");
    EXPECT_EQ(total, 2000) << "on n" << node + 1;
  }
}

// mergedb-repair drops the records of a damaged block. The repaired node comes back under a new
// replica id with no documents (what is left of a damaged one could read as removals) but what
// its log still holds; here the log is truncated, so its digest differs from its peer's at the
// same applied vector, and the peer's reconciling full-state transfer brings every document
// back. (Before, the stored digest still matched the peer's, and nothing brought back what the
// repair dropped.)
TEST(Replication, ARepairedNodeGetsBackWhatTheRepairDroppedFromItsPeer) {
  constexpr int kDocs = 400;
  auto id = [](int i) { return absl::StrCat("d", absl::Dec(i, absl::kZeroPad4)); };
  Cluster cluster(2);
  cluster.StartAll();
  for (int i = 0; i < kDocs; ++i) ASSERT_TRUE(cluster.Update(0, IncrementOf(id(i), 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  const crdt::ReplicaId before = cluster.node(1)->store()->replica_id();
  const crdt::ReplicaId writer = cluster.node(0)->store()->replica_id();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (cluster.node(1)->store()->LogFloor()[writer] < kDocs &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(cluster.node(1)->store()->LogFloor()[writer], uint64_t{kDocs}) << "never truncated";
  // A restart moves n2's write-ahead log into a table file, where a block can be damaged.
  cluster.Stop(1);
  cluster.Start(1);
  cluster.Stop(1);
  storage::testing::BreakBlockChecksum(cluster.env(1), cluster.options(1).data_dir, [&](int k) {
    return storage::keys::DocContext(storage::keys::DocPrefix("c", id(100 + k)));
  });
  if (::testing::Test::HasFatalFailure()) return;
  ASSERT_TRUE(storage::Store::Repair(cluster.options(1).data_dir, cluster.env(1)).ok());
  cluster.Start(1);
  EXPECT_NE(cluster.node(1)->store()->replica_id(), before);
  ASSERT_TRUE(cluster.WaitConverged());
  int found = 0;
  for (int i = 0; i < kDocs; ++i) found += CounterIn(cluster.Get(1, "c", id(i)), "n");
  EXPECT_EQ(found, kDocs);
  EXPECT_GE(cluster.Status(0).peers(0).full_state_transfers_sent(), 1u);
}

// A failed commit leaves the store refusing every write and every replicated change until a
// restart. The node must say so where operators and load balancers look: Status names the
// reason, and the standard health service turns NOT_SERVING (it stayed SERVING).
TEST(Replication, ANodeWhoseStoreFailedSaysSoInStatusAndHealth) {
  Cluster cluster(2);
  storage::FaultInjectionEnv& faulty = *cluster.InjectFaults(0);
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  EXPECT_TRUE(cluster.Status(0).refusing_writes().empty());
  auto channel = grpc::CreateChannel(cluster.Address(0), grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  auto serving = [&] {
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    const grpc::Status status = health->Check(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.status();
  };
  EXPECT_EQ(serving(), grpc::health::v1::HealthCheckResponse::SERVING);
  faulty.set_fail_writes(true);
  EXPECT_EQ(cluster.Update(0, IncrementOf("d", 1)).error_code(), grpc::StatusCode::UNAVAILABLE);
  faulty.set_fail_writes(false);
  EXPECT_EQ(cluster.Update(0, IncrementOf("d", 1)).error_code(), grpc::StatusCode::UNAVAILABLE)
      << "a store that failed a commit takes no more writes";
  EXPECT_FALSE(cluster.Status(0).refusing_writes().empty());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (serving() != grpc::health::v1::HealthCheckResponse::NOT_SERVING &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(serving(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  // The other node takes writes as before.
  EXPECT_TRUE(cluster.Update(1, IncrementOf("d", 1)).ok());
  EXPECT_TRUE(cluster.Status(1).refusing_writes().empty());
}

TEST(Replication, StatusReportsPeersLagAndTraffic) {
  Cluster cluster(3);
  cluster.StartAll();
  // Nodes that start empty may first get a full-state transfer; past this write, every node
  // holds data and receives log entries in frames.
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  auto frames_and_entries = [&] {
    uint64_t frames = 0, entries = 0;
    for (int i = 0; i < 3; ++i) {
      const mergedb::v1::StatusResponse node_status = cluster.Status(i);
      for (const auto& peer : node_status.peers()) {
        frames += peer.frames_sent();
        entries += peer.entries_sent();
      }
    }
    return std::make_pair(frames, entries);
  };
  const auto [frames_before, entries_before] = frames_and_entries();
  for (int k = 0; k < 10; ++k) ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  mergedb::v1::StatusResponse status;
  while (std::chrono::steady_clock::now() < deadline) {
    status = cluster.Status(0);
    if (status.peers(0).entries_behind() == 0 && status.peers(1).entries_behind() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(status.peers_size(), 2);
  for (const auto& peer : status.peers()) {
    EXPECT_TRUE(peer.connected());
    EXPECT_EQ(peer.entries_behind(), 0u);
    EXPECT_GT(peer.bytes_sent(), 0u);
    EXPECT_GT(peer.bytes_received(), 0u);
  }
  // Nodes 1 and 2 each received the ten new entries from someone (directly or forwarded), in
  // frames of one entry or more.
  const auto [frames_after, entries_after] = frames_and_entries();
  EXPECT_GE(entries_after - entries_before, 20u);
  EXPECT_GE(frames_after - frames_before, 2u);
  EXPECT_LE(frames_after - frames_before, entries_after - entries_before);
}

TEST(Replication, AStalledLinkIsNoticedWithinSecondsAndUnacknowledgedDeltasAreResent) {
  Cluster cluster(2);
  // n1 reaches n2 through a proxy that can blackhole the connection: a partition that stalls
  // TCP instead of closing it.
  testing::TcpProxy proxy(cluster.Port(1));
  cluster.options(0).peers[0].address = proxy.address();
  cluster.StartAll();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 1)).ok());
  ASSERT_TRUE(cluster.WaitConverged());

  proxy.set_mode(testing::TcpProxy::Mode::kBlackhole);
  const auto cut = std::chrono::steady_clock::now();
  ASSERT_TRUE(cluster.Update(0, IncrementOf("d", 10)).ok());  // cannot reach n2 now
  bool noticed = false;
  while (!noticed && std::chrono::steady_clock::now() - cut < std::chrono::seconds(15)) {
    noticed = !cluster.Status(0).peers(0).connected();
    if (!noticed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - cut).count();
  ASSERT_TRUE(noticed);
  EXPECT_LT(seconds, 6.0) << "a dead link must be noticed within a few seconds";
  std::printf("stalled link noticed after %.2f s\n", seconds);
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "d"), "n"), 1);

  proxy.set_mode(testing::TcpProxy::Mode::kPass);
  ASSERT_TRUE(cluster.WaitConverged({0, 1}, std::chrono::seconds(30)));
  EXPECT_EQ(CounterIn(cluster.Get(1, "c", "d"), "n"), 11);
}

}  // namespace
}  // namespace mergedb::node

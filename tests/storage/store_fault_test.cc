// Durability under injected faults: failed writes and syncs, and simulated power loss.
#include "tests/storage/store_test_util.h"

namespace mergedb::storage {
namespace {

using testing::CounterOf;
using testing::Increment;
using testing::MemStoreTest;
using testing::SetString;

class StoreFaultTest : public MemStoreTest {};

TEST_F(StoreFaultTest, AFailedWriteIsFatalForTheHandleUntilReopened) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  env_.set_fail_writes(true);
  auto failed = store->ApplyLocal(Increment("c", "d", "n", 10, me));
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  env_.set_fail_writes(false);
  // The disk is back, but the handle stays refused: what LevelDB wrote is uncertain.
  auto after = store->ApplyLocal(Increment("c", "d", "n", 100, me));
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(after.status().message().find("refuses writes"), absl::string_view::npos);
  EXPECT_FALSE(store->health().ok());
  // Reads go on, and show only acknowledged state.
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1);
  store.reset();
  store = OpenOrDie();
  EXPECT_TRUE(store->health().ok());
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1);
  EXPECT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
}

// A batch's later write is prepared on the document its earlier writes changed. When the earlier
// one's commit fails and the later one is in the next group, the later one must not commit: it
// carries the failed write's changes (and LevelDB takes a write after a failed append).
TEST_F(StoreFaultTest, WritersQueuedBehindAFailedCommitFailToo) {
  StoreOptions options = Options();
  options.max_group_bytes = 1;  // one writer per group
  auto store = OpenOrDie(options);
  const crdt::ReplicaId me = store->replica_id();
  ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  env_.fail_next_appends(1);
  const std::vector<LocalWrite> batch = {Increment("c", "d", "n", 10, me),
                                         Increment("c", "d", "n", 100, me)};
  for (const auto& result : store->ApplyLocalBatch(batch)) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  }
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1);
  EXPECT_EQ(*store->ScanDigest(), store->state_digest());
  store.reset();
  store = OpenOrDie(options);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1);
  EXPECT_EQ(*store->ScanDigest(), store->state_digest());
}

TEST_F(StoreFaultTest, AFailedSyncIsFatalInSyncMode) {
  StoreOptions options = Options();
  options.durability = Durability::kSyncEachCommit;
  auto store = OpenOrDie(options);
  const crdt::ReplicaId me = store->replica_id();
  ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  env_.set_fail_syncs(true);
  EXPECT_EQ(store->ApplyLocal(Increment("c", "d", "n", 1, me)).status().code(),
            absl::StatusCode::kUnavailable);
  env_.set_fail_syncs(false);
  EXPECT_EQ(store->ApplyLocal(Increment("c", "d", "n", 1, me)).status().code(),
            absl::StatusCode::kUnavailable);
}

// With a sync per commit every acknowledged commit survives a power loss: local writes, batched
// local writes and applied replication frames alike. The power goes while the store is open (its
// close would otherwise sync the log and hide a commit that skipped its sync).
TEST_F(StoreFaultTest, EveryAcknowledgedWriteSurvivesPowerLossInSyncMode) {
  StoreOptions options = Options();
  options.durability = Durability::kSyncEachCommit;
  std::vector<LogRecord> remote;
  crdt::ReplicaId origin;
  {
    auto source = OpenOrDie(SecondNode("/other"));
    origin = source->replica_id();
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(source->ApplyLocal(Increment("c", "r", "n", 1, origin)).ok());
    }
    remote = *source->ReadLog({}, 100);
    ASSERT_EQ(remote.size(), 20u);
  }
  crdt::ReplicaId me;
  {
    auto store = OpenOrDie(options);
    me = store->replica_id();
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "d" + std::to_string(i % 7), "n", 1, me)).ok());
    }
    std::vector<LocalWrite> batch;
    for (int i = 0; i < 10; ++i) batch.push_back(Increment("c", "b", "n", 1, me));
    for (const auto& result : store->ApplyLocalBatch(batch)) ASSERT_TRUE(result.ok());
    ASSERT_TRUE(store->ApplyRemote(remote).ok());
    // The power goes while the store is open: its close below syncs nothing more.
    env_.CutPower();
    store->AbandonForTesting();
  }
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  auto store = OpenOrDie(options);
  int64_t total = 0;
  for (int i = 0; i < 7; ++i) total += CounterOf(*store->Get("c", "d" + std::to_string(i)), "n");
  EXPECT_EQ(total, 100);
  EXPECT_EQ(CounterOf(*store->Get("c", "b"), "n"), 10);
  EXPECT_EQ(CounterOf(*store->Get("c", "r"), "n"), 20);
  EXPECT_EQ(store->AppliedVector().at(me), 110u);
  EXPECT_EQ(store->AppliedVector().at(origin), 20u);
}

TEST_F(StoreFaultTest, ACompletedBackupLargerThanAMemtableSurvivesPowerLoss) {
  // 18 MiB: the copy's 16 MiB memtable fills and LevelDB switches to a new log, closing the old
  // one without a sync of its own.
  constexpr int kDocs = 2200;
  BackupResult backup;
  {
    auto store = OpenOrDie();
    for (int i = 0; i < kDocs; ++i) {
      ASSERT_TRUE(store->ApplyLocal(SetString("c", "d" + std::to_string(i), "payload",
                                              std::string(8 << 10, 'a' + i % 26), store->replica_id()))
                      .ok());
    }
    auto result = store->Backup("/backup", nullptr);
    ASSERT_TRUE(result.ok()) << result.status();
    backup = *result;
    EXPECT_GT(backup.bytes, size_t{17} << 20);
  }
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  StoreOptions restored = Options();
  restored.path = "/backup";
  restored.create_mode = CreateMode::kMustExist;
  auto store = OpenOrDie(restored);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->opened_backup()) << "the copy's last write, which marks it complete, was lost";
  EXPECT_EQ(store->AppliedVector(), backup.applied);
  EXPECT_EQ(store->document_count(), kDocs);
  for (int i = 0; i < kDocs; ++i) {
    auto doc = store->Get("c", "d" + std::to_string(i));
    ASSERT_TRUE(doc.ok()) << doc.status();
    EXPECT_TRUE(doc->exists()) << "d" << i << " lost from the backup";
  }
}

// A clean close marks the directory so that the next open keeps the replica id. LevelDB leaves
// the write-ahead log of a memtable it has just switched away from unsynced until its flush,
// and a close aborts a flush in progress: a power loss then took that log's writes while the
// (synced) mark and the meta records of later commits survived. The node claimed writes it no
// longer held, under a replica id that would reuse their sequence numbers and dots. Each log
// is now synced as LevelDB switches away from it (SyncClosedLogsEnv in storage/store.cc).
TEST_F(StoreFaultTest, ACleanCloseRightAfterAMemtableSwitchSurvivesPowerLoss) {
  crdt::ReplicaId me;
  int written = 0;
  {
    StoreOptions options = Options();                  // kNoSync
    options.random = [] { return uint64_t{0x5eed}; };  // also fixes the memtable size
    auto store = OpenOrDie(options);
    me = store->replica_id();
    const int logs = env_.FilesCreated(".log");
    const std::string value(4096, 'x');
    while (env_.FilesCreated(".log") == logs && written < 20000) {
      ASSERT_TRUE(
          store->ApplyLocal(SetString("c", "d" + std::to_string(written), "s", value, me)).ok());
      ++written;
    }
    ASSERT_GT(env_.FilesCreated(".log"), logs) << "no memtable switch";
  }  // closed cleanly at once
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  auto store = OpenOrDie();
  EXPECT_FALSE(store->rotated_incarnation());
  EXPECT_EQ(store->AppliedVector()[me], static_cast<uint64_t>(written));
  int found = 0;
  for (int i = 0; i < written; ++i) found += store->Get("c", "d" + std::to_string(i))->exists();
  EXPECT_EQ(found, written);
}

TEST_F(StoreFaultTest, PowerLossWithoutSyncLosesATailButNeverHalfAWrite) {
  crdt::ReplicaId me;
  {
    // A synced prefix: five writes, then a clean close (which syncs the log).
    auto store = OpenOrDie();  // kNoSync
    me = store->replica_id();
    for (int i = 0; i < 5; ++i)
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  }
  {
    // Then five unsynced writes, and the power goes.
    auto store = OpenOrDie();
    ASSERT_EQ(store->replica_id(), me);
    for (int i = 0; i < 5; ++i)
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
    env_.CutPower();
    store->AbandonForTesting();
  }
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  auto store = OpenOrDie();
  // Whatever survived is a consistent prefix at least as long as the synced one: the counter
  // equals the log length.
  const int64_t counter = CounterOf(*store->Get("c", "d"), "n");
  const auto applied = store->AppliedVector();
  const uint64_t logged = applied.count(me) ? applied.at(me) : 0;
  EXPECT_EQ(static_cast<uint64_t>(counter), logged);
  EXPECT_GE(counter, 5);
  EXPECT_LE(counter, 10);
  // The lost tail's dots may be reused by no one: the store continues as a new incarnation,
  // whose log starts at 1.
  EXPECT_TRUE(store->rotated_incarnation());
  const crdt::ReplicaId now = store->replica_id();
  EXPECT_NE(now, me);
  auto next = store->ApplyLocal(Increment("c", "d", "n", 1, now));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->log_seq, 1u);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), counter + 1);
}

}  // namespace
}  // namespace mergedb::storage

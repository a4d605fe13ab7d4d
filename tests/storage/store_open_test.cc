// Opening a data directory: every refusal names the problem and the path; nothing crashes.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "leveldb/db.h"
#include "leveldb/write_batch.h"
#include "storage/keys.h"
#include "tests/storage/store_test_util.h"

namespace mergedb::storage {
namespace {

using testing::Increment;

class StoreOpenTest : public ::testing::Test {
 protected:
  StoreOpenTest() {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("mergedb-open-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  ~StoreOpenTest() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    for (const auto& path : beside_) std::filesystem::remove_all(path, ignored);
  }

  StoreOptions Options() {
    StoreOptions options;
    options.path = dir_.string();
    options.cluster_id = "alpha";
    options.node_name = "n1";
    return options;
  }

  void ExpectError(const StoreOptions& options, absl::StatusCode code, absl::string_view words) {
    auto store = Store::Open(options);
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), code) << store.status();
    EXPECT_TRUE(absl::StrContains(store.status().message(), words)) << store.status();
    EXPECT_TRUE(absl::StrContains(store.status().message(), dir_.string())) << store.status();
  }

  // Writes `n` records and closes the store.
  void Populate(int n) {
    auto store = Store::Open(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    const crdt::ReplicaId me = (*store)->replica_id();
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE((*store)->ApplyLocal(Increment("c", "d" + std::to_string(i), "n", 1, me)).ok());
    }
  }

  // Ten documents, in a store opened again (nullptr after a failure, reported).
  std::unique_ptr<Store> PopulatedStore() {
    Populate(10);
    if (HasFatalFailure()) return nullptr;
    StoreOptions options = Options();
    options.create_mode = CreateMode::kMustExist;
    auto store = Store::Open(options);
    if (!store.ok()) {
      ADD_FAILURE() << store.status();
      return nullptr;
    }
    return *std::move(store);
  }

  // A path beside the data dir (nothing there yet), removed with it.
  std::filesystem::path Beside(const std::string& suffix) {
    std::filesystem::path path = dir_.parent_path() / (dir_.filename().string() + suffix);
    std::filesystem::remove_all(path);
    beside_.push_back(path);
    return path;
  }

  std::filesystem::path dir_;
  std::vector<std::filesystem::path> beside_;
};

TEST_F(StoreOpenTest, ADirectoryLockedByAnotherHandleIsRefused) {
  auto first = Store::Open(Options());
  ASSERT_TRUE(first.ok());
  ExpectError(Options(), absl::StatusCode::kFailedPrecondition, "locked");
}

TEST_F(StoreOpenTest, ADirectoryOfAnotherClusterIsRefused) {
  Populate(1);
  StoreOptions options = Options();
  options.cluster_id = "beta";
  ExpectError(options, absl::StatusCode::kFailedPrecondition, "belongs to cluster 'alpha', not 'beta'");
}

TEST_F(StoreOpenTest, ADirectoryOfAnotherNodeIsRefused) {
  Populate(1);
  StoreOptions options = Options();
  options.node_name = "n9";
  ExpectError(options, absl::StatusCode::kFailedPrecondition, "belongs to node 'n1', not 'n9'");
}

TEST_F(StoreOpenTest, ARefusedOpenDoesNotMarkAnUncleanStopAsClean) {
  crdt::ReplicaId first;
  {
    auto store = Store::Open(Options());  // no fsync per commit
    ASSERT_TRUE(store.ok()) << store.status();
    first = (*store)->replica_id();
    (*store)->AbandonForTesting();  // stops like a killed process
  }
  // An operator's typo: refused, and the directory must stay as it was.
  StoreOptions typo = Options();
  typo.node_name = "n9";
  ExpectError(typo, absl::StatusCode::kFailedPrecondition, "belongs to node 'n1'");
  auto store = Store::Open(Options());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->rotated_incarnation()) << "the stop before the typo was not clean";
  EXPECT_NE((*store)->replica_id(), first);
}

TEST_F(StoreOpenTest, AFutureSchemaIsRefused) {
  Populate(1);
  {
    leveldb::DB* db = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(leveldb::Options(), dir_.string(), &db).ok());
    ASSERT_TRUE(db->Put(leveldb::WriteOptions(), keys::Meta(keys::kMetaSchema), "99").ok());
    delete db;
  }
  ExpectError(Options(), absl::StatusCode::kFailedPrecondition, "schema version 99");
}

TEST_F(StoreOpenTest, AForeignLevelDbIsRefused) {
  {
    leveldb::Options options;
    options.create_if_missing = true;
    leveldb::DB* db = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(options, dir_.string(), &db).ok());
    ASSERT_TRUE(db->Put(leveldb::WriteOptions(), "hello", "world").ok());
    delete db;
  }
  ExpectError(Options(), absl::StatusCode::kFailedPrecondition, "not a mergedb data dir");
}

TEST_F(StoreOpenTest, AMissingDirectoryIsNotFoundWhenItMustExist) {
  StoreOptions options = Options();
  options.create_mode = CreateMode::kMustExist;
  ExpectError(options, absl::StatusCode::kNotFound, "does not exist");
}

TEST_F(StoreOpenTest, ACorruptedLogIsDataLossAndRepairSalvagesTheRest) {
  Populate(200);  // all still in LevelDB's write-ahead log (no memtable flush yet)
  std::filesystem::path log;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    if (entry.path().extension() == ".log") log = entry.path();
  }
  ASSERT_FALSE(log.empty());
  const auto size = std::filesystem::file_size(log);
  ASSERT_GT(size, 4096u);
  {
    // Garbage in the middle of the log: LevelDB without paranoid checks would skip it and
    // report OK with acknowledged records gone.
    std::fstream f(log, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 2));
    const std::string garbage(64, '\x5a');
    f.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  ExpectError(Options(), absl::StatusCode::kDataLoss, "corrupted");
  ASSERT_TRUE(Store::Repair(dir_.string()).ok());
  auto store = Store::Open(Options());
  ASSERT_TRUE(store.ok()) << store.status();
  // The documents are cleared, to come back from the peers, and those the log still has are
  // joined in again from it (StoreTest's
  // TheFirstOpenAfterARepairClearsTheDocumentsReplaysTheLogAndTakesANewReplicaId); the log
  // before the damage is kept, and so are this node's own entries in it.
  EXPECT_TRUE((*store)->rotated_incarnation());
  EXPECT_GT((*store)->document_count(), 0);
  EXPECT_LE((*store)->document_count(), 200);
  EXPECT_EQ(*(*store)->ScanDigest(), (*store)->state_digest());
  auto kept = (*store)->ReadLog({}, 10);
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_FALSE(kept->empty()) << "records before the damage are kept";
  EXPECT_EQ((*kept)[0].entry.id(), "d0");
}

// The meta records sort first, so one damaged block can take them all. A data dir in that state
// is refused, but once mergedb-repair has run the open rebuilds them instead of leaving the
// operator a directory no tool can open.
TEST_F(StoreOpenTest, ARepairThatLostTheMetaRecordsLeavesADataDirThatOpens) {
  Populate(50);
  {
    auto store = Store::Open(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->TruncateChanges(10).ok());  // the feed keeps its last 10 changes
    ASSERT_EQ((*store)->change_floor(), 40u);
  }
  {
    leveldb::DB* db = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(leveldb::Options(), dir_.string(), &db).ok());
    std::unique_ptr<leveldb::DB> owned(db);
    leveldb::WriteBatch lost;
    std::unique_ptr<leveldb::Iterator> it(db->NewIterator(leveldb::ReadOptions()));
    const std::string meta(1, keys::kMetaTag);
    for (it->Seek(meta); it->Valid() && it->key().starts_with(meta); it->Next()) {
      lost.Delete(it->key());
    }
    it.reset();
    ASSERT_TRUE(db->Write(leveldb::WriteOptions(), &lost).ok());
  }
  ExpectError(Options(), absl::StatusCode::kFailedPrecondition, "no mergedb schema record");
  ASSERT_TRUE(Store::Repair(dir_.string()).ok());
  // The names come back from the identity file every open keeps beside LevelDB's files, so the
  // repaired dir still refuses another node (and changes nothing when it does).
  ASSERT_TRUE(std::filesystem::exists(dir_ / std::string(kIdentityFile)));
  StoreOptions another_node = Options();
  another_node.node_name = "someone-else";
  ExpectError(another_node, absl::StatusCode::kFailedPrecondition, "belongs to node");
  {
    auto store = Store::Open(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_TRUE((*store)->opened_repaired());
    EXPECT_TRUE((*store)->rotated_incarnation());
    const std::vector<std::string> expected = {"schema",     "cluster",   "node",  "replica",
                                               "change_seq", "doc_count", "digest"};
    EXPECT_EQ((*store)->rebuilt_meta(), expected);
    // Alone, the node keeps its documents; the count and digest are taken again.
    EXPECT_EQ((*store)->document_count(), 50);
    EXPECT_EQ(*(*store)->ScanDigest(), (*store)->state_digest());
    EXPECT_GE((*store)->last_change_seq(), 50u) << "the feed continues after its newest change";
    EXPECT_EQ((*store)->change_floor(), 40u)
        << "without its floor a resumed Watch would pass over the trimmed changes";
    EXPECT_TRUE((*store)->ApplyLocal(Increment("c", "d0", "n", 1, (*store)->replica_id())).ok());
  }
  auto again = Store::Open(Options());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE((*again)->rotated_incarnation());
  EXPECT_TRUE((*again)->rebuilt_meta().empty()) << "the rebuilt records were written back";
  EXPECT_EQ((*again)->document_count(), 50);
}

// A repair that left nothing makes a new data dir, which must not keep the repair's mark: a
// later open would clear what the peers sent it meanwhile.
TEST_F(StoreOpenTest, ARepairThatLeftNothingMakesANewDataDirWithoutTheRepairsMark) {
  Populate(5);
  {
    leveldb::DB* db = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(leveldb::Options(), dir_.string(), &db).ok());
    std::unique_ptr<leveldb::DB> owned(db);
    leveldb::WriteBatch lost;
    std::unique_ptr<leveldb::Iterator> it(db->NewIterator(leveldb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) lost.Delete(it->key());
    it.reset();
    ASSERT_TRUE(db->Write(leveldb::WriteOptions(), &lost).ok());
  }
  ASSERT_TRUE(Store::Repair(dir_.string()).ok());
  {
    auto store = Store::Open(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->ApplyLocal(Increment("c", "kept", "n", 1, (*store)->replica_id())).ok());
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ / std::string(kRepairMarkerFile)));
  auto again = Store::Open(Options());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE((*again)->opened_repaired());
  EXPECT_EQ((*again)->document_count(), 1);
}

// LevelDB's repair takes no lock of its own: run beside a live node it would move the node's
// log and manifest aside under it. mergedb-repair refuses a data dir in use, and changes nothing.
TEST_F(StoreOpenTest, RepairRefusesADataDirInUseAndMarksTheOneItRepairs) {
  Populate(10);
  const std::string marker = (dir_ / std::string(kRepairMarkerFile)).string();
  {
    auto store = Store::Open(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    const absl::Status refused = Store::Repair(dir_.string());
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
    EXPECT_TRUE(absl::StrContains(refused.message(), "in use")) << refused;
    EXPECT_FALSE(std::filesystem::exists(dir_ / "lost"))
        << "the repair moved the live node's files";
    EXPECT_FALSE(std::filesystem::exists(marker));
    EXPECT_TRUE((*store)->Get("c", "d0").ok()) << "the live store still reads";
  }
  const absl::Status missing = Store::Repair((dir_ / "nowhere").string());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  // Stopped, it repairs; the marker is there from before the repair started until the first
  // open has taken a new replica id.
  ASSERT_TRUE(Store::Repair(dir_.string()).ok());
  EXPECT_TRUE(std::filesystem::exists(marker));
  {
    auto store = Store::Open(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_TRUE((*store)->rotated_incarnation());
  }
  EXPECT_FALSE(std::filesystem::exists(marker));
  auto again = Store::Open(Options());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE((*again)->rotated_incarnation()) << "one repair, one new replica id";
}

TEST_F(StoreOpenTest, ReopeningAfterACleanCloseNeedsNoRepair) {
  Populate(10);
  auto store = Store::Open(Options());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->document_count(), 10);
}

// The free space a backup leaves is read from the real file system, at the nearest existing
// ancestor of a backup directory that does not exist yet.
TEST_F(StoreOpenTest, ABackupReadsTheFreeSpaceOfTheRealFileSystem) {
  StoreOptions options = Options();
  options.path = (dir_ / "data").string();
  options.backup_min_free_bytes = uint64_t{1} << 62;  // more than any disk has
  auto store = Store::Open(options);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string backup = (dir_ / "backups" / "nested" / "b1").string();
  auto refused = (*store)->Backup(backup, nullptr);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "MiB free")) << refused.status();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "backups"));
  store->reset();
  options.backup_min_free_bytes = 1;
  store = Store::Open(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto taken = (*store)->Backup(backup, nullptr);
  EXPECT_TRUE(taken.ok()) << taken.status();
}

// A backup may be pointed at an empty directory made for it; if the copy fails it removes what
// it wrote, not that directory.
TEST_F(StoreOpenTest, AnAbandonedBackupKeepsTheEmptyDirectoryItWasGiven) {
  std::unique_ptr<Store> store = PopulatedStore();
  ASSERT_NE(store, nullptr);
  const std::filesystem::path backup = Beside("-b1");
  std::filesystem::create_directories(backup);
  auto cancelled = store->Backup(backup.string(), [] { return true; });
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled) << cancelled.status();
  EXPECT_TRUE(std::filesystem::is_directory(backup));
  EXPECT_TRUE(std::filesystem::is_empty(backup));
  // ...and the same directory then takes a whole copy.
  auto taken = store->Backup(backup.string(), nullptr);
  EXPECT_TRUE(taken.ok()) << taken.status();
}

// A backup's directory holds a sentinel file from before LevelDB creates anything there until
// the copy is complete: a copy cut off by a crash between LevelDB's first files and its first
// record would otherwise open as an empty new data dir, and a restore from it would quietly
// bring back nothing.
TEST_F(StoreOpenTest, ABackupCutOffBeforeItsFirstRecordIsRefusedNotTakenForANewDataDir) {
  std::unique_ptr<Store> store = PopulatedStore();
  ASSERT_NE(store, nullptr);
  const std::filesystem::path backup = Beside("-b1");
  const std::filesystem::path sentinel = backup / std::string(kBackupSentinelFile);
  bool sentinel_while_copying = false;
  auto taken = store->Backup(backup.string(), [&] {
    sentinel_while_copying = sentinel_while_copying || std::filesystem::exists(sentinel);
    return false;
  });
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_TRUE(sentinel_while_copying);
  EXPECT_FALSE(std::filesystem::exists(sentinel)) << "a complete copy keeps no sentinel";

  // The crash: the sentinel and LevelDB's first files, no record yet.
  const std::filesystem::path cut = Beside("-cut");
  std::filesystem::create_directories(cut);
  std::ofstream(cut / std::string(kBackupSentinelFile)) << "x";
  {
    leveldb::Options create;
    create.create_if_missing = true;
    leveldb::DB* raw = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(create, cut.string(), &raw).ok());
    delete raw;
  }
  StoreOptions from_cut = Options();
  from_cut.path = cut.string();
  auto refused = Store::Open(from_cut);
  ASSERT_FALSE(refused.ok()) << "an empty cut-off copy opened as a new data dir";
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "cut off")) << refused.status();
  // Repair would drop what it cannot read and could make such a copy pass for a whole one.
  const absl::Status repaired = Store::Repair(cut.string());
  EXPECT_EQ(repaired.code(), absl::StatusCode::kFailedPrecondition) << repaired;

  // A complete copy whose sentinel outlived it (a crash right after the last write) opens, and
  // its first open removes the sentinel.
  std::ofstream(sentinel) << "x";
  StoreOptions from_backup = Options();
  from_backup.path = backup.string();
  {
    auto restored = Store::Open(from_backup);
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_TRUE((*restored)->opened_backup());
    EXPECT_EQ((*restored)->document_count(), store->document_count());
  }
  EXPECT_FALSE(std::filesystem::exists(sentinel));
  // The same after that first open (the marker is gone then): a sentinel that came back after a
  // power loss does not make a used copy look cut off.
  std::ofstream(sentinel) << "x";
  {
    auto reopened = Store::Open(from_backup);
    ASSERT_TRUE(reopened.ok()) << reopened.status();
    EXPECT_FALSE((*reopened)->opened_backup());
  }
  EXPECT_FALSE(std::filesystem::exists(sentinel));

  // Cut off before LevelDB created anything: refused, and nothing is created there.
  const std::filesystem::path bare = Beside("-bare");
  std::filesystem::create_directories(bare);
  std::ofstream(bare / std::string(kBackupSentinelFile)) << "x";
  StoreOptions from_bare = Options();
  from_bare.path = bare.string();
  auto bare_refused = Store::Open(from_bare);
  ASSERT_FALSE(bare_refused.ok());
  EXPECT_TRUE(absl::StrContains(bare_refused.status().message(), "cut off"))
      << bare_refused.status();
  EXPECT_FALSE(std::filesystem::exists(bare / "CURRENT"));
}

// Two backups given the same new name at the same moment can both find the directory empty.
// Exactly one may write there; the others must stop without touching its copy (its sentinel
// above all, which is all that protects the copy from a crash before its first record).
TEST_F(StoreOpenTest, OfBackupWritersRacingForOneNameOneWritesAndTheOthersLeaveItsCopyAlone) {
  constexpr int kRounds = 40;
  constexpr int kWriters = 4;
  for (int round = 0; round < kRounds; ++round) {
    const std::filesystem::path dir = Beside("-race" + std::to_string(round));
    std::atomic<int> ready{0};
    std::vector<absl::StatusOr<std::unique_ptr<BackupWriter>>> created;
    for (int w = 0; w < kWriters; ++w) created.emplace_back(absl::UnknownError("not run"));
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
      writers.emplace_back([&, w] {
        // Released together, so that several get past the emptiness check.
        ready.fetch_add(1);
        while (ready.load() < kWriters) std::this_thread::yield();
        created[w] = BackupWriter::Create(dir.string(), {});
      });
    }
    for (auto& t : writers) t.join();
    int winner = -1;
    for (int w = 0; w < kWriters; ++w) {
      if (created[w].ok()) {
        ASSERT_EQ(winner, -1) << "round " << round << ": two writers got the same directory";
        winner = w;
      } else {
        EXPECT_EQ(created[w].status().code(), absl::StatusCode::kAlreadyExists)
            << "round " << round << ": " << created[w].status();
      }
    }
    ASSERT_NE(winner, -1) << "round " << round << ": no writer got the empty directory";
    ASSERT_TRUE(std::filesystem::exists(dir / std::string(kBackupSentinelFile)))
        << "round " << round << ": a losing writer removed the winner's sentinel";
    BackupWriter& copy = **created[winner];
    ASSERT_TRUE(copy.Append({{"race-key", "from writer " + std::to_string(winner)}}).ok());
    ASSERT_TRUE(copy.Finish().ok()) << "round " << round;
    EXPECT_FALSE(std::filesystem::exists(dir / std::string(kBackupSentinelFile)));
    created.clear();  // closes the winner's copy
    leveldb::DB* raw = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(leveldb::Options(), dir.string(), &raw).ok())
        << "round " << round;
    std::unique_ptr<leveldb::DB> db(raw);
    std::string value;
    ASSERT_TRUE(db->Get(leveldb::ReadOptions(), "race-key", &value).ok()) << "round " << round;
    EXPECT_EQ(value, "from writer " + std::to_string(winner));
  }
}

}  // namespace
}  // namespace mergedb::storage

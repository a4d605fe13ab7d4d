#include "storage/store.h"

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "leveldb/db.h"
#include "leveldb/env.h"
#include "storage/keys.h"
#include "tests/storage/store_test_util.h"

namespace mergedb::storage {
namespace {

using crdt::Document;
using testing::CounterOf;
using testing::Increment;
using testing::MemStoreTest;
using testing::SetString;

class StoreTest : public MemStoreTest {
 protected:
  // 2,000 increments over 50 documents (log entries and change records 1..2000), then the
  // store closed and opened once more, which moves LevelDB's write-ahead log into a table file.
  // Returns the writer's replica id.
  crdt::ReplicaId WriteIncrementsIntoATable() {
    crdt::ReplicaId me = 0;
    {
      auto store = OpenOrDie();
      me = store->replica_id();
      for (int i = 0; i < 2000; ++i) {
        EXPECT_TRUE(
            store->ApplyLocal(Increment("c", "d" + std::to_string(i % 50), "n", 1, me)).ok());
      }
    }
    OpenOrDie();
    return me;
  }
};

TEST_F(StoreTest, LocalWriteIsReadBackWithItsVersionAndLogEntry) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  ASSERT_NE(me, 0u);
  auto result = store->ApplyLocal(Increment("c", "d1", "n", 5, me));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->log_seq, 1u);
  EXPECT_EQ(result->change_seq, 1u);
  EXPECT_TRUE(result->version.Contains({me, 1}));
  auto doc = store->Get("c", "d1");
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(CounterOf(*doc, "n"), 5);
  EXPECT_EQ(store->AppliedVector().at(me), 1u);
  EXPECT_EQ(store->document_count(), 1);
  auto log = store->ReadLog({}, 10);
  ASSERT_TRUE(log.ok());
  ASSERT_EQ(log->size(), 1u);
  EXPECT_EQ((*log)[0].entry.id(), "d1");
}

// A log block whose checksum fails is DATA_LOSS in either form: a sender must not ship bytes
// the disk garbled, and a parse would not notice a flipped bit inside a value. (The damage is
// to the checksum alone, so the block still decodes: only verification can notice.)
TEST_F(StoreTest, ALogBlockThatFailsItsChecksumIsDataLossInEitherForm) {
  const crdt::ReplicaId me = WriteIncrementsIntoATable();
  testing::BreakBlockChecksum(&env_, "/db", [me](int k) { return keys::Log(me, 1000 + k); });
  auto store = OpenOrDie();
  for (LogForm form : {LogForm::kEncoded, LogForm::kParsed}) {
    auto log = store->ReadLog({}, 5000, {}, form);
    EXPECT_EQ(log.status().code(), absl::StatusCode::kDataLoss) << log.status();
    EXPECT_TRUE(absl::StrContains(log.status().message(), "/db")) << log.status();
  }
  // Only the damaged block is lost: the entries before and after it still read.
  auto head = store->ReadLog({}, 100, {}, LogForm::kEncoded);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->size(), 100u);
  auto tail = store->ReadLog({{me, 1990}}, 100, {}, LogForm::kEncoded);
  ASSERT_TRUE(tail.ok()) << tail.status();
  EXPECT_EQ(tail->size(), 10u);
}

// The change feed's reader verifies checksums too: a damaged block is DATA_LOSS, not change
// records that parse into the wrong documents (Watch and Changes serve them to clients).
TEST_F(StoreTest, AChangeFeedBlockThatFailsItsChecksumIsDataLoss) {
  WriteIncrementsIntoATable();
  testing::BreakBlockChecksum(&env_, "/db", [](int k) { return keys::Change(1000 + k); });
  auto store = OpenOrDie();
  auto changes = store->ReadChanges(0, 5000);
  EXPECT_EQ(changes.status().code(), absl::StatusCode::kDataLoss) << changes.status();
  auto head = store->ReadChanges(0, 100);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->size(), 100u);
}

// Repair drops the records of a damaged block, and which documents lost records is unknown: a
// context record that survived its leaves would read as their removal. The first open after a
// repair takes a new replica id (a lost context record would otherwise let this node issue again
// dots its peers hold) and clears every document, to be sent back by the peers, then joins in
// again the deltas its log still holds (what a peer may lack); the log and the applied vector
// stay.
TEST_F(StoreTest, TheFirstOpenAfterARepairClearsTheDocumentsReplaysTheLogAndTakesANewReplicaId) {
  constexpr int kDocs = 400;
  auto id = [](int i) { return absl::StrCat("d", absl::Dec(i, absl::kZeroPad4)); };
  crdt::ReplicaId before = 0;
  {
    auto store = OpenOrDie();
    before = store->replica_id();
    for (int i = 0; i < kDocs; ++i) {
      ASSERT_TRUE(
          store->ApplyLocal(SetString("c", id(i), "s", std::string(100, 'x'), before)).ok());
    }
  }
  {
    // The peers have the first half: the log keeps only the second.
    auto store = OpenOrDie();  // also moves the write-ahead log into a table
    ASSERT_TRUE(store->TruncateLog({{before, uint64_t{kDocs / 2}}}).ok());
  }
  testing::BreakBlockChecksum(
      &env_, "/db", [&](int k) { return keys::DocContext(keys::DocPrefix("c", id(100 + k))); });
  ASSERT_TRUE(Store::Repair("/db", &env_).ok());
  crdt::ReplicaId after = 0;
  {
    auto store = OpenOrDie();
    after = store->replica_id();
    EXPECT_TRUE(store->rotated_incarnation());
    EXPECT_NE(after, before);
    EXPECT_EQ(store->document_count(), kDocs / 2);
    EXPECT_EQ(*store->ScanDigest(), store->state_digest());
    EXPECT_FALSE(store->Get("c", id(0))->exists());
    EXPECT_TRUE(store->Get("c", id(kDocs - 1))->exists());
    EXPECT_EQ(store->AppliedVector()[before], static_cast<uint64_t>(kDocs));
    auto log = store->ReadLog({{before, uint64_t{kDocs / 2}}}, 10);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_EQ(log->size(), 10u);
    EXPECT_TRUE(store->ApplyLocal(SetString("c", id(0), "s", "again", after)).ok());
  }
  auto store = OpenOrDie();  // cleared once: a clean reopen keeps the new id and the new write
  EXPECT_FALSE(store->rotated_incarnation());
  EXPECT_EQ(store->replica_id(), after);
  EXPECT_EQ(store->document_count(), kDocs / 2 + 1);
}

// The replay after a repair also brings back a request record the repair dropped (its log entry
// carries the id), so that a client's retry is still recognized, not applied a second time.
TEST_F(StoreTest, AReplayedLogEntryBringsBackTheRequestRecordTheRepairDropped) {
  {
    auto store = OpenOrDie();
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 10, store->replica_id(), "r1")).ok());
  }
  {
    // As if the record's block had been damaged and dropped.
    leveldb::Options options;
    options.env = &env_;
    leveldb::DB* raw = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(options, "/db", &raw).ok());
    std::unique_ptr<leveldb::DB> db(raw);
    ASSERT_TRUE(db->Delete(leveldb::WriteOptions(), keys::Request("r1")).ok());
  }
  ASSERT_TRUE(Store::Repair("/db", &env_).ok());
  auto store = OpenOrDie();
  auto retry = store->ApplyLocal(Increment("c", "d", "n", 10, store->replica_id(), "r1"));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_TRUE(retry->duplicate_request);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 10);
}

// A node alone has no peers to send its documents back: after a repair it keeps every document
// whose records still form a state, drops the others whole, and counts the documents and the
// digest again from what is left (a new replica id all the same).
TEST_F(StoreTest, ANodeAloneKeepsWhatTheRepairSalvaged) {
  constexpr int kDocs = 400;
  auto id = [](int i) { return absl::StrCat("d", absl::Dec(i, absl::kZeroPad4)); };
  StoreOptions alone = Options();
  alone.has_peers = false;
  crdt::ReplicaId before = 0;
  {
    auto store = OpenOrDie(alone);
    before = store->replica_id();
    for (int i = 0; i < kDocs; ++i) {
      ASSERT_TRUE(
          store->ApplyLocal(SetString("c", id(i), "s", std::string(100, 'x'), before)).ok());
    }
  }
  OpenOrDie(alone);  // moves the write-ahead log into a table
  testing::BreakBlockChecksum(
      &env_, "/db", [&](int k) { return keys::DocContext(keys::DocPrefix("c", id(100 + k))); });
  ASSERT_TRUE(Store::Repair("/db", &env_).ok());
  auto store = OpenOrDie(alone);
  EXPECT_TRUE(store->rotated_incarnation());
  EXPECT_NE(store->replica_id(), before);
  EXPECT_EQ(*store->ScanDigest(), store->state_digest());
  int found = 0;
  for (int i = 0; i < kDocs; ++i) {
    auto doc = store->Get("c", id(i));
    ASSERT_TRUE(doc.ok()) << id(i) << ": " << doc.status();  // none is left half
    found += doc->exists();
  }
  EXPECT_LT(found, kDocs) << "the damaged block's documents are gone";
  EXPECT_GT(found, kDocs / 2);
  EXPECT_EQ(store->document_count(), found);
}

TEST_F(StoreTest, ReopenKeepsEverything) {
  crdt::ReplicaId me;
  {
    auto store = OpenOrDie();
    me = store->replica_id();
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "d" + std::to_string(i % 5), "n", 1, me)).ok());
    }
    ASSERT_TRUE(store->ApplyLocal(SetString("c", "s", "name", "ada", me)).ok());
    ASSERT_TRUE(store->SetPeerAcked("n2", {{me, 7}}).ok());
  }
  auto store = OpenOrDie();
  EXPECT_EQ(store->replica_id(), me) << "the incarnation id belongs to the data dir";
  EXPECT_EQ(store->AppliedVector().at(me), 51u);
  EXPECT_EQ(store->last_change_seq(), 51u);
  EXPECT_EQ(store->document_count(), 6);
  EXPECT_EQ(CounterOf(*store->Get("c", "d3"), "n"), 10);
  EXPECT_EQ(store->Get("c", "s")->ToJson().struct_value().fields().at("name").string_value(),
            "ada");
  EXPECT_EQ(store->PeerAcked("n2")->at(me), 7u);
  // The next local write continues the log without a hole.
  EXPECT_EQ(store->ApplyLocal(Increment("c", "d0", "n", 1, me))->log_seq, 52u);
}

TEST_F(StoreTest, AnUncleanStopWithoutFsyncStartsANewIncarnation) {
  crdt::ReplicaId first;
  {
    auto store = OpenOrDie();
    first = store->replica_id();
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, first)).ok());
    (void)store.release();  // the process dies: no clean close
  }
  auto store = OpenOrDie();
  EXPECT_TRUE(store->rotated_incarnation());
  EXPECT_NE(store->replica_id(), first);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1) << "the old writes stay";
  EXPECT_EQ(store->AppliedVector().at(first), 1u) << "under the old origin";
  store.reset();
  store = OpenOrDie();
  EXPECT_FALSE(store->rotated_incarnation()) << "a clean close keeps the incarnation";
}

TEST_F(StoreTest, AnUncleanStopWithFsyncKeepsTheIncarnation) {
  StoreOptions options = Options();
  options.durability = Durability::kSyncEachCommit;
  crdt::ReplicaId first;
  {
    auto store = OpenOrDie(options);
    first = store->replica_id();
    (void)store.release();
  }
  auto store = OpenOrDie(options);
  EXPECT_FALSE(store->rotated_incarnation());
  EXPECT_EQ(store->replica_id(), first);
}

TEST_F(StoreTest, AnUncleanStopWithoutFsyncStartsANewIncarnationEvenIfTheNextRunFsyncs) {
  crdt::ReplicaId first;
  {
    auto store = OpenOrDie();  // no fsync per commit: a power loss may drop the log's tail
    first = store->replica_id();
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, first)).ok());
    (void)store.release();
  }
  StoreOptions synced = Options();
  synced.durability = Durability::kSyncEachCommit;
  auto store = OpenOrDie(synced);
  EXPECT_TRUE(store->rotated_incarnation());
  EXPECT_NE(store->replica_id(), first);
}

TEST_F(StoreTest, ANewIncarnationOnRequestKeepsTheDataUnderTheOldOrigin) {
  crdt::ReplicaId first;
  {
    auto store = OpenOrDie();
    first = store->replica_id();
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 5, first)).ok());
  }  // a clean close: on its own the next open would keep the replica id
  StoreOptions restored = Options();
  restored.new_incarnation = true;
  auto store = OpenOrDie(restored);
  EXPECT_TRUE(store->rotated_incarnation());
  EXPECT_NE(store->replica_id(), first);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 5);
  EXPECT_EQ(store->AppliedVector().at(first), 1u);
  EXPECT_EQ(store->AppliedVector().count(store->replica_id()), 0u) << "nothing written under the new id yet";
}

TEST_F(StoreTest, ANewDataDirGetsANewReplicaId) {
  crdt::ReplicaId first;
  {
    first = OpenOrDie()->replica_id();
  }
  StoreOptions other = Options();
  other.path = "/db2";
  EXPECT_NE(OpenOrDie(other)->replica_id(), first);
}

TEST_F(StoreTest, ConcurrentWritersGetContiguousSequencesAndExactCounters) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  constexpr int kThreads = 16;
  constexpr int kWrites = 150;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kWrites; ++i) {
        // Half the writers share one hot document; the others spread out.
        const std::string id = t % 2 == 0 ? "hot" : "doc" + std::to_string(t);
        ASSERT_TRUE(store->ApplyLocal(Increment("c", id, "n", 1, me)).ok());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(CounterOf(*store->Get("c", "hot"), "n"), kThreads / 2 * kWrites);
  EXPECT_EQ(store->AppliedVector().at(me), uint64_t{kThreads * kWrites});
  EXPECT_EQ(store->last_change_seq(), uint64_t{kThreads * kWrites});
  auto log = store->ReadLog({}, 100000);
  ASSERT_TRUE(log.ok());
  ASSERT_EQ(log->size(), size_t{kThreads * kWrites});
  for (size_t i = 0; i < log->size(); ++i) EXPECT_EQ((*log)[i].seq, i + 1);
}

// An update that applies +100 in memory, then is refused: nothing of it may remain.
LocalWrite HalfAppliedThenRefused(crdt::ReplicaId me) {
  LocalWrite write;
  write.collection = "c";
  write.id = "d";
  write.mutate = [me](Document& doc) -> absl::StatusOr<Document> {
    auto first = doc.Increment({"n"}, 100, me);
    if (!first.ok()) return first.status();
    return doc.SetRegister({"n"}, crdt::RegisterValue(), me, crdt::Hlc());
  };
  return write;
}

TEST_F(StoreTest, AFailedUpdateLeavesTheDocumentAsItWas) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  EXPECT_EQ(store->ApplyLocal(HalfAppliedThenRefused(me)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1);
  EXPECT_EQ(store->AppliedVector().at(me), 1u);
}

TEST_F(StoreTest, ABatchCommitsTogetherInOrderAndAFailedWriteSparesTheOthers) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  std::vector<LocalWrite> writes;
  writes.push_back(Increment("c", "d", "n", 1, me, "r1"));
  writes.push_back(Increment("c", "e", "n", 5, me));
  writes.push_back(Increment("c", "d", "n", 2, me, "r2"));
  writes.push_back(HalfAppliedThenRefused(me));  // same document as the writes around it
  writes.push_back(Increment("c", "d", "n", 4, me, "r1"));  // a retry of the first: not applied
  writes.push_back(Increment("c", "d", "n", 8, me));
  const uint64_t commits_before = store->commit_count();
  auto results = store->ApplyLocalBatch(writes);
  ASSERT_EQ(results.size(), writes.size());
  EXPECT_EQ(results[3].status().code(), absl::StatusCode::kFailedPrecondition);
  for (size_t i : {0, 1, 2, 4, 5}) ASSERT_TRUE(results[i].ok()) << i << results[i].status();
  EXPECT_TRUE(results[4]->duplicate_request);
  EXPECT_EQ(results[4]->log_seq, results[0]->log_seq);
  // Log sequences follow the batch order.
  EXPECT_EQ(results[0]->log_seq, 1u);
  EXPECT_EQ(results[1]->log_seq, 2u);
  EXPECT_EQ(results[2]->log_seq, 3u);
  EXPECT_EQ(results[5]->log_seq, 4u);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1 + 2 + 8);
  EXPECT_EQ(CounterOf(*store->Get("c", "e"), "n"), 5);
  EXPECT_EQ(store->AppliedVector().at(me), 4u);
  // Committed before the failure (so the retry finds the first write's record), then the rest:
  // two commits, where one write at a time would take four.
  EXPECT_EQ(store->commit_count() - commits_before, 2u);
  // A request repeated within one batch is applied once.
  std::vector<LocalWrite> twice;
  twice.push_back(Increment("c", "d", "n", 16, me, "r3"));
  twice.push_back(Increment("c", "d", "n", 16, me, "r3"));
  auto repeated = store->ApplyLocalBatch(twice);
  ASSERT_TRUE(repeated[0].ok() && repeated[1].ok());
  EXPECT_FALSE(repeated[0]->duplicate_request);
  EXPECT_TRUE(repeated[1]->duplicate_request);
  // All of it is on disk, not only in the document cache.
  store.reset();
  store = OpenOrDie();
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 11 + 16);
  auto log = store->ReadLog({}, 100);
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->size(), 5u);
}

// A batch's writes commit together at its end, so a later write to a document an earlier one
// changed must build on that pending state. With a cache that holds one document, the three
// documents between the two writes to "d" evict it: reloading it then read the committed
// state, and the second write's records overwrote the first's increment — an acknowledged
// write lost (the counter read 2, and the digest no longer matched the records).
TEST_F(StoreTest, ALaterWriteOfABatchBuildsOnTheEarlierOnesThoughTheCacheEvictedTheDocument) {
  StoreOptions one_document = Options();
  one_document.cache_bytes = 300;  // less than any document costs: one stays
  auto store = OpenOrDie(one_document);
  const crdt::ReplicaId me = store->replica_id();
  std::vector<LocalWrite> batch;
  batch.push_back(Increment("c", "d", "n", 1, me));
  batch.push_back(Increment("c", "e", "n", 1, me));
  batch.push_back(Increment("c", "f", "n", 1, me));
  batch.push_back(Increment("c", "g", "n", 1, me));
  batch.push_back(Increment("c", "d", "n", 2, me));
  const uint64_t commits_before = store->commit_count();
  for (const auto& result : store->ApplyLocalBatch(batch))
    ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(store->commit_count() - commits_before, 1u);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 3);
  auto scanned = store->ScanDigest();
  ASSERT_TRUE(scanned.ok()) << scanned.status();
  EXPECT_EQ(*scanned, store->state_digest());
  store.reset();
  store = OpenOrDie(one_document);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 3) << "on disk, not only in the cache";
}

TEST_F(StoreTest, ANoOpUpdateWritesNothing) {
  auto store = OpenOrDie();
  LocalWrite write;
  write.collection = "c";
  write.id = "d";
  write.mutate = [](Document& doc) -> absl::StatusOr<Document> { return doc.RemoveField({"x"}); };
  auto result = store->ApplyLocal(write);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->log_seq, 0u);
  EXPECT_EQ(store->last_change_seq(), 0u);
  EXPECT_EQ(store->document_count(), 0);
}

TEST_F(StoreTest, ARetriedRequestIsAcknowledgedWithoutApplyingTwiceEvenAfterReopen) {
  crdt::ReplicaId me;
  {
    auto store = OpenOrDie();
    me = store->replica_id();
    auto first = store->ApplyLocal(Increment("c", "d", "n", 1, me, "req-1"));
    ASSERT_TRUE(first.ok());
    EXPECT_FALSE(first->duplicate_request);
    auto retry = store->ApplyLocal(Increment("c", "d", "n", 1, me, "req-1"));
    ASSERT_TRUE(retry.ok());
    EXPECT_TRUE(retry->duplicate_request);
    EXPECT_EQ(retry->version, first->version);
  }
  auto store = OpenOrDie();
  auto retry = store->ApplyLocal(Increment("c", "d", "n", 1, me, "req-1"));
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate_request);
  EXPECT_EQ(CounterOf(*store->Get("c", "d"), "n"), 1);
  auto misuse = store->ApplyLocal(Increment("c", "other", "n", 1, me, "req-1"));
  EXPECT_EQ(misuse.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(misuse.status().message(), "request id req-1 was already used for document c/d");
  // The window: expired ids are forgotten.
  EXPECT_EQ(*store->ExpireRequests(2000), 1u);
  EXPECT_FALSE(store->LookupRequest("req-1")->has_value());
}

// One request id used at the same moment for different documents, by single writes and by
// batches: exactly one is applied, the others are refused as a reuse.
TEST_F(StoreTest, ARequestIdUsedConcurrentlyForTwoDocumentsIsAppliedOnce) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  constexpr int kRounds = 50;
  constexpr int kWriters = 4;
  for (int round = 0; round < kRounds; ++round) {
    const std::string id = "shared-" + std::to_string(round);
    std::atomic<int> ready{0};
    std::atomic<int> applied{0}, refused{0};
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
      writers.emplace_back([&, w] {
        const std::string doc = "d" + std::to_string(w);
        ready.fetch_add(1);
        while (ready.load() < kWriters) std::this_thread::yield();
        absl::StatusOr<WriteResult> result;
        if (w % 2 == 0) {
          result = store->ApplyLocal(Increment("race", doc, "n", 1, me, id));
        } else {
          std::vector<LocalWrite> batch;
          batch.push_back(Increment("race", doc + "-other", "n", 1, me));
          batch.push_back(Increment("race", doc, "n", 1, me, id));
          result = std::move(store->ApplyLocalBatch(batch)[1]);
        }
        if (result.ok()) {
          applied.fetch_add(1);
        } else if (result.status().code() == absl::StatusCode::kInvalidArgument) {
          refused.fetch_add(1);
        }
      });
    }
    for (auto& t : writers) t.join();
    ASSERT_EQ(applied.load(), 1) << "round " << round;
    ASSERT_EQ(refused.load(), kWriters - 1) << "round " << round;
  }
}

TEST_F(StoreTest, RemoteFramesApplyInOrderSkipDuplicatesAndStopAtGaps) {
  auto source = OpenOrDie();
  auto sink = OpenOrDie(SecondNode("/other"));
  const crdt::ReplicaId origin = source->replica_id();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(source->ApplyLocal(Increment("c", "d", "n", 1, origin)).ok());
  std::vector<LogRecord> log = *source->ReadLog({}, 100);
  ASSERT_EQ(log.size(), 5u);

  // Entries 1, 2 and a gap (4): 1 and 2 apply, 4 waits for 3.
  std::vector<LogRecord> frame = {log[0], log[1], log[3]};
  auto result = sink->ApplyRemote(frame);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->applied, 2u);
  EXPECT_TRUE(result->gap);
  EXPECT_EQ(sink->AppliedVector().at(origin), 2u);
  EXPECT_EQ(CounterOf(*sink->Get("c", "d"), "n"), 2);

  // The whole log again, duplicated: 3..5 apply once.
  std::vector<LogRecord> all = log;
  all.insert(all.end(), log.begin(), log.end());
  result = sink->ApplyRemote(all);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->applied, 3u);
  EXPECT_EQ(result->duplicates, 7u);
  EXPECT_EQ(CounterOf(*sink->Get("c", "d"), "n"), 5);
  // The sink logged them under their origin, so it can forward them.
  auto forwarded = sink->ReadLog({}, 100);
  ASSERT_TRUE(forwarded.ok());
  ASSERT_EQ(forwarded->size(), 5u);
  EXPECT_EQ((*forwarded)[4].origin, origin);
  EXPECT_EQ(sink->last_change_seq(), 5u);
}

// Log entries travel as the bytes the origin's log holds: a sender reads them unparsed
// (LogForm::kEncoded), and a receiver logs what it parsed exactly as it came, so a node that
// forwards them passes on the same bytes. Fields in an order a serializer would not write show
// that nothing re-encoded them on the way.
TEST_F(StoreTest, RemoteEntriesAreLoggedAndForwardedAsTheyCame) {
  auto source = OpenOrDie();
  auto sink = OpenOrDie(SecondNode("/other"));
  const crdt::ReplicaId origin = source->replica_id();
  ASSERT_TRUE(source->ApplyLocal(Increment("c", "d", "n", 1, origin)).ok());
  ASSERT_TRUE(source->ApplyLocal(Increment("c", "e", "n", 2, origin)).ok());
  auto parsed = source->ReadLog({}, 100);
  auto encoded = source->ReadLog({}, 100, {}, LogForm::kEncoded);
  ASSERT_TRUE(parsed.ok() && encoded.ok());
  ASSERT_EQ(encoded->size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ((*encoded)[i].seq, (*parsed)[i].seq);
    EXPECT_EQ((*encoded)[i].encoded, (*parsed)[i].encoded);
    EXPECT_EQ((*encoded)[i].entry.ByteSizeLong(), 0u) << "kEncoded parsed the entry";
    mergedb::v1::LogEntry entry;
    ASSERT_TRUE(entry.ParseFromString((*encoded)[i].encoded));
    EXPECT_EQ(crdt::SerializeDeterministic(entry),
              crdt::SerializeDeterministic((*parsed)[i].entry));
  }

  // Entry 1 with its fields in reverse order (delta, id, collection): the same entry, other bytes.
  LogRecord reordered = (*parsed)[0];
  mergedb::v1::LogEntry only_delta;
  *only_delta.mutable_delta() = reordered.entry.delta();
  mergedb::v1::LogEntry only_id;
  only_id.set_id(reordered.entry.id());
  mergedb::v1::LogEntry only_collection;
  only_collection.set_collection(reordered.entry.collection());
  reordered.encoded = only_delta.SerializeAsString() + only_id.SerializeAsString() +
                      only_collection.SerializeAsString();
  mergedb::v1::LogEntry check;
  ASSERT_TRUE(check.ParseFromString(reordered.encoded));
  ASSERT_EQ(crdt::SerializeDeterministic(check), crdt::SerializeDeterministic(reordered.entry));
  ASSERT_NE(reordered.encoded, (*parsed)[0].encoded);

  // One frame from a sender that parsed nothing (an entry with only its bytes set and with only
  // its parsed form set both apply: the store serializes what came without bytes).
  LogRecord second = (*parsed)[1];
  second.encoded.clear();
  auto result = sink->ApplyRemote({reordered, second});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->applied, 2u);
  EXPECT_EQ(CounterOf(*sink->Get("c", "d"), "n"), 1);
  EXPECT_EQ(CounterOf(*sink->Get("c", "e"), "n"), 2);
  auto forwarded = sink->ReadLog({}, 100, {}, LogForm::kEncoded);
  ASSERT_TRUE(forwarded.ok());
  ASSERT_EQ(forwarded->size(), 2u);
  EXPECT_EQ((*forwarded)[0].encoded, reordered.encoded) << "the receiver re-encoded the entry";
  EXPECT_EQ((*forwarded)[1].encoded, crdt::SerializeDeterministic((*parsed)[1].entry));
}

// A replication link sleeps until a commit of the entries it sends: the listener must see
// every commit, local or remote, with the vector that commit made, and nothing once removed.
TEST_F(StoreTest, AppliedListenersSeeEveryCommitUntilRemoved) {
  auto source = OpenOrDie();
  auto sink = OpenOrDie(SecondNode("/other"));
  const crdt::ReplicaId origin = source->replica_id();
  std::vector<uint64_t> seen_by_first;
  std::vector<uint64_t> seen_by_second;
  const auto applied_from = [origin](const VersionVector& applied) {
    const auto it = applied.find(origin);
    return it == applied.end() ? uint64_t{0} : it->second;
  };
  const uint64_t first = sink->AddAppliedListener(
      [&](const VersionVector& applied) { seen_by_first.push_back(applied_from(applied)); });
  const uint64_t second = sink->AddAppliedListener(
      [&](const VersionVector& applied) { seen_by_second.push_back(applied_from(applied)); });
  EXPECT_NE(first, second);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(source->ApplyLocal(Increment("c", "d", "n", 1, origin)).ok());
  }
  const std::vector<LogRecord> log = *source->ReadLog({}, 100);
  ASSERT_EQ(log.size(), 3u);

  ASSERT_TRUE(sink->ApplyRemote({log[0], log[1]}).ok());
  EXPECT_EQ(seen_by_first, (std::vector<uint64_t>{2}));  // one commit, one call
  sink->RemoveAppliedListener(first);
  ASSERT_TRUE(sink->ApplyRemote({log[2]}).ok());
  ASSERT_TRUE(sink->ApplyLocal(Increment("c", "e", "n", 1, sink->replica_id())).ok());
  EXPECT_EQ(seen_by_first, (std::vector<uint64_t>{2})) << "called after its removal";
  EXPECT_EQ(seen_by_second, (std::vector<uint64_t>{2, 3, 3}));
  sink->RemoveAppliedListener(second);
  sink->RemoveAppliedListener(second);  // removing twice is harmless
}

TEST_F(StoreTest, AMalformedRemoteDeltaIsRejectedAndNothingApplies) {
  auto store = OpenOrDie();
  LogRecord good;
  good.origin = 42;
  good.seq = 1;
  good.entry.set_collection("c");
  good.entry.set_id("d");
  Document writer;
  writer.Increment({"n"}, 1, 42)->EncodeTo(good.entry.mutable_delta());
  LogRecord bad = good;
  bad.seq = 2;
  bad.entry.mutable_delta()->mutable_leaves(0)->set_key("\x09garbage");
  std::vector<LogRecord> frame = {good, bad};
  auto result = store->ApplyRemote(frame);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(store->AppliedVector().empty());
  EXPECT_FALSE(store->Get("c", "d")->exists());
}

TEST_F(StoreTest, ScanPagesThroughLiveDocumentsInIdOrder) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  for (const char* id : {"e", "a", "c", "b", "d"}) {
    ASSERT_TRUE(store->ApplyLocal(Increment("users", id, "n", 1, me)).ok());
  }
  ASSERT_TRUE(store->ApplyLocal(Increment("other", "zz", "n", 1, me)).ok());
  LocalWrite del;
  del.collection = "users";
  del.id = "c";
  del.mutate = [](Document& doc) -> absl::StatusOr<Document> { return doc.Delete(); };
  ASSERT_TRUE(store->ApplyLocal(del).ok());
  EXPECT_EQ(store->document_count(), 5);

  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    auto page = store->Scan("users", 2, token);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& [id, doc] : page->documents) seen.push_back(id);
    token = page->next_token;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "d", "e"}));
  // The deleted document keeps its tombstone.
  auto tombstone = store->Get("users", "c");
  EXPECT_FALSE(tombstone->exists());
  EXPECT_FALSE(tombstone->context().empty());
}

TEST_F(StoreTest, TruncatedLogAsksForAFullStateTransfer) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  ASSERT_TRUE(store->TruncateLog({{me, 6}}).ok());
  EXPECT_EQ(store->LogFloor().at(me), 6u);
  auto tail = store->ReadLog({{me, 6}}, 100);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->size(), 4u);
  EXPECT_EQ(tail->front().seq, 7u);
  auto behind = store->ReadLog({{me, 3}}, 100);
  EXPECT_EQ(behind.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(behind.status().message().find("full-state transfer"), absl::string_view::npos);
  store.reset();
  store = OpenOrDie();
  EXPECT_EQ(store->LogFloor().at(me), 6u);
}

// A full-state transfer that ends while the log is being truncated raises the origin's log
// floor; the truncation's remaining chunks must not write it back lower: the entries in
// between never existed here, and a peer that asked for them would get silence instead of a
// full-state transfer.
TEST_F(StoreTest, ATruncationRacingAFullStateTransferNeverLowersTheLogFloor) {
  constexpr uint64_t kEntries = 2048;  // 4 truncation chunks
  constexpr uint64_t transferred = kEntries + 1000;
  Store* raw = nullptr;
  crdt::ReplicaId origin = 0;
  int chunks = 0;
  StoreOptions options = Options();
  // The transfer ends right after the truncation's first chunk.
  options.testonly_between_truncation_chunks = [&] {
    if (++chunks == 1) {
      EXPECT_TRUE(raw->FinishSnapshot({{origin, transferred}}).ok());
    }
  };
  auto store = OpenOrDie(options);
  raw = store.get();
  auto peer = OpenOrDie(SecondNode("/peer"));
  origin = peer->replica_id();
  for (uint64_t i = 0; i < kEntries; ++i) {
    ASSERT_TRUE(
        peer->ApplyLocal(Increment("c", "d" + std::to_string(i % 64), "n", 1, origin)).ok());
  }
  VersionVector have;
  while (have[origin] < kEntries) {
    auto frame = peer->ReadLog(have, 1024);
    ASSERT_TRUE(frame.ok()) << frame.status();
    ASSERT_FALSE(frame->empty());
    ASSERT_TRUE(store->ApplyRemote(*frame).ok());
    have[origin] = frame->back().seq;
  }
  ASSERT_TRUE(store->TruncateLog({{origin, kEntries}}).ok());
  EXPECT_EQ(chunks, 1) << "the raised floor ended the truncation";
  EXPECT_EQ(store->LogFloor()[origin], transferred);
  EXPECT_EQ(store->AppliedVector()[origin], transferred);
  EXPECT_EQ(store->ReadLog({{origin, 100}}, 10).status().code(),
            absl::StatusCode::kFailedPrecondition);
  store.reset();
  store = OpenOrDie();
  EXPECT_EQ(store->LogFloor()[origin], transferred);
}

// Log keys of `origin` in the data dir at `path` (the store closed).
int LogKeysOf(leveldb::Env* env, const std::string& path, crdt::ReplicaId origin) {
  leveldb::Options options;
  options.env = env;
  leveldb::DB* raw = nullptr;
  EXPECT_TRUE(leveldb::DB::Open(options, path, &raw).ok());
  std::unique_ptr<leveldb::DB> db(raw);
  std::unique_ptr<leveldb::Iterator> it(db->NewIterator(leveldb::ReadOptions()));
  const std::string prefix = keys::LogOrigin(origin);
  int n = 0;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) ++n;
  return n;
}

// A full-state transfer raises an origin's log floor past the entries this node held of it:
// nobody can read those any more, and they are dropped rather than kept on disk for good.
TEST_F(StoreTest, AFullStateTransferDropsTheLogEntriesItSupersedes) {
  auto store = OpenOrDie();
  auto peer = OpenOrDie(SecondNode("/peer"));
  const crdt::ReplicaId origin = peer->replica_id();
  for (int i = 0; i < 1500; ++i) {
    ASSERT_TRUE(peer->ApplyLocal(Increment("c", "d", "n", 1, origin)).ok());
  }
  ASSERT_TRUE(store->ApplyRemote(*peer->ReadLog({}, 1500)).ok());
  ASSERT_TRUE(store->FinishSnapshot({{origin, 2000}}).ok());
  EXPECT_EQ(store->LogFloor()[origin], 2000u);
  EXPECT_EQ(store->log_entries(), 0u);
  store.reset();
  EXPECT_EQ(LogKeysOf(&env_, "/db", origin), 0);
}

// The deletions run after the transfer's commit; a crash in between (here: the disk refusing
// the first deletion) leaves the superseded entries on disk, and the next open deletes them.
TEST_F(StoreTest, SupersededLogEntriesLeftByACrashAreDroppedAtTheNextOpen) {
  auto peer_a = OpenOrDie(SecondNode("/a"));
  StoreOptions b_options = SecondNode("/b");
  b_options.node_name = "n3";
  auto peer_b = OpenOrDie(b_options);
  const crdt::ReplicaId a = peer_a->replica_id();
  const crdt::ReplicaId b = peer_b->replica_id();
  for (int i = 0; i < 1500; ++i) {
    ASSERT_TRUE(peer_a->ApplyLocal(Increment("c", "d", "n", 1, a)).ok());
    if (i < 700) {
      ASSERT_TRUE(peer_b->ApplyLocal(Increment("c", "e", "n", 1, b)).ok());
    }
  }
  StoreOptions options = Options();
  options.testonly_after_transfer_commit = [&] { env_.set_fail_writes(true); };
  auto store = OpenOrDie(options);
  ASSERT_TRUE(store->ApplyRemote(*peer_a->ReadLog({}, 1500)).ok());
  ASSERT_TRUE(store->ApplyRemote(*peer_b->ReadLog({}, 700)).ok());
  EXPECT_FALSE(store->FinishSnapshot({{a, 2000}, {b, 900}}).ok());
  store.reset();
  env_.set_fail_writes(false);
  EXPECT_EQ(LogKeysOf(&env_, "/db", a), 1500) << "the crash came before any deletion";
  EXPECT_EQ(LogKeysOf(&env_, "/db", b), 700);

  store = OpenOrDie();
  EXPECT_EQ(store->LogFloor()[a], 2000u) << "the transfer's commit survived";
  EXPECT_EQ(store->LogFloor()[b], 900u);
  EXPECT_EQ(store->log_entries(), 0u);
  store.reset();
  EXPECT_EQ(LogKeysOf(&env_, "/db", a), 0);
  EXPECT_EQ(LogKeysOf(&env_, "/db", b), 0);
  // ...and the record of what was left to delete went with the deletions.
  leveldb::Options raw_options;
  raw_options.env = &env_;
  leveldb::DB* raw = nullptr;
  ASSERT_TRUE(leveldb::DB::Open(raw_options, "/db", &raw).ok());
  std::unique_ptr<leveldb::DB> db(raw);
  std::string record;
  EXPECT_TRUE(
      db->Get(leveldb::ReadOptions(), keys::Meta(keys::kMetaSupersededLog), &record).IsNotFound());
}

// An origin whose last log entries are missing (a damaged data dir, after mergedb-repair)
// cannot be forwarded from here: a reader gets a full-state transfer, not silence.
TEST_F(StoreTest, ALogWithItsLastEntriesMissingAsksForAFullStateTransfer) {
  crdt::ReplicaId me = 0;
  {
    auto store = OpenOrDie();
    me = store->replica_id();
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
    }
  }
  {
    leveldb::Options options;
    options.env = &env_;
    leveldb::DB* raw = nullptr;
    ASSERT_TRUE(leveldb::DB::Open(options, "/db", &raw).ok());
    std::unique_ptr<leveldb::DB> db(raw);
    for (uint64_t seq = 8; seq <= 10; ++seq) {
      ASSERT_TRUE(db->Delete(leveldb::WriteOptions(), keys::Log(me, seq)).ok());
    }
  }
  auto store = OpenOrDie();
  // A read that stops before the hole gets what is there.
  auto bounded = store->ReadLog({{me, 2}}, 3);
  ASSERT_TRUE(bounded.ok()) << bounded.status();
  EXPECT_EQ(bounded->size(), 3u);
  auto tail = store->ReadLog({{me, 7}}, 100);
  EXPECT_EQ(tail.status().code(), absl::StatusCode::kFailedPrecondition) << tail.status();
  EXPECT_TRUE(absl::StrContains(tail.status().message(), "lacks entries 8 to 10")) << tail.status();
}

// The document space ends with a fence key (keys::DocSpaceEnd) so that looking past the last
// document never walks the truncated log's deletion markers. The fence is not a document: reads
// past the last document, scans of the last collection and snapshots see only documents, also
// after a reopen (which writes the fence into data dirs that lack it).
TEST_F(StoreTest, LookupsPastTheLastDocumentSeeOnlyDocumentsAfterLogTruncation) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  for (int i = 0; i < 3000; ++i) {
    ASSERT_TRUE(store->ApplyLocal(Increment("zz", "d" + std::to_string(i % 3), "n", 1, me)).ok());
  }
  ASSERT_TRUE(store->TruncateLog({{me, 2990}}).ok());
  for (int round = 0; round < 2; ++round) {
    auto missing = store->Get("zzz", "nothing-sorts-later");
    ASSERT_TRUE(missing.ok()) << missing.status();
    EXPECT_FALSE(missing->exists());
    auto page = store->Scan("zz", 10, "");
    ASSERT_TRUE(page.ok()) << page.status();
    ASSERT_EQ(page->documents.size(), 3u);
    EXPECT_TRUE(page->next_token.empty());
    auto cursor = store->OpenSnapshot();
    ASSERT_TRUE(cursor.ok()) << cursor.status();
    int seen = 0;
    SnapshotDoc doc;
    while (true) {
      auto more = (*cursor)->Next(&doc);
      ASSERT_TRUE(more.ok()) << more.status();
      if (!*more) break;
      EXPECT_EQ(doc.collection, "zz");
      ++seen;
    }
    EXPECT_EQ(seen, 3);
    cursor->reset();
    store.reset();
    store = OpenOrDie();
  }
}

TEST_F(StoreTest, SnapshotIterationIsConsistentWhileWritesContinue) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d" + std::to_string(i), "n", 1, me)).ok());
  }
  auto cursor = store->OpenSnapshot();
  ASSERT_TRUE(cursor.ok()) << cursor.status();
  int seen = 0;
  int64_t total = 0;
  SnapshotDoc doc;
  while (true) {
    auto more = (*cursor)->Next(&doc);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    EXPECT_EQ(doc.collection, "c");
    ++seen;
    total += CounterOf(doc.state, "n");
    // Writes during the iteration are not part of the snapshot.
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d0", "n", 1, me)).ok());
  }
  EXPECT_EQ(seen, 20);
  EXPECT_EQ(total, 20);
  EXPECT_EQ((*cursor)->applied().at(me), 20u);
  EXPECT_EQ(CounterOf(*store->Get("c", "d0"), "n"), 21);
}

// 300 documents of 8 KiB: a backup of them takes three 1 MiB batches.
void WriteOverTwoMiB(Store& store) {
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(store.ApplyLocal(SetString("c", "d" + std::to_string(i), "payload",
                                           std::string(8 << 10, 'x'), store.replica_id()))
                    .ok());
  }
}

TEST_F(StoreTest, ABackupDuringWritesIsOnePointInTimeAndOpensAsANewIncarnation) {
  crdt::ReplicaId me;
  uint64_t acknowledged_before = 0;
  BackupResult backup;
  // A node that syncs every commit keeps its replica id after an unclean stop, so without its
  // own marker a copy would open under the original's id.
  StoreOptions options = Options();
  options.durability = Durability::kSyncEachCommit;
  {
    auto store = OpenOrDie(options);
    me = store->replica_id();
    // Over 1 MiB, so the copy takes several batches.
    for (int i = 0; i < 200; ++i) {
      const std::string id = "d" + std::to_string(i);
      ASSERT_TRUE(store->ApplyLocal(SetString("c", id, "payload", std::string(8 << 10, 'x'), me)).ok());
      ASSERT_TRUE(store->ApplyLocal(Increment("c", id, "n", 1, me)).ok());
    }
    acknowledged_before = store->AppliedVector().at(me);
    std::atomic<bool> stop{false};
    std::atomic<bool> writer_done{false};
    std::atomic<int> written{0};
    std::thread writer([&] {
      for (int k = 0; !stop && k < 100000; ++k) {
        if (!store->ApplyLocal(Increment("c", "d" + std::to_string(k % 200), "n", 1, me)).ok()) {
          ADD_FAILURE() << "write " << k << " failed";
          break;
        }
        ++written;
      }
      writer_done = true;
    });
    // Writes are going on when the copy starts...
    while (written < 50 && !writer_done) std::this_thread::yield();
    auto result = store->Backup("/backup", nullptr);
    // ...and the writer is stopped only once the store is past the copy, so that the copy is
    // checked against later writes too.
    for (int spin = 0; spin < 100000 && result.ok() &&
                       store->AppliedVector().at(me) <= result->applied.at(me);
         ++spin) {
      std::this_thread::yield();
    }
    stop = true;
    writer.join();
    ASSERT_TRUE(result.ok()) << result.status();
    backup = *result;
    EXPECT_GT(backup.bytes, size_t{1} << 20);
    EXPECT_GE(backup.applied.at(me), acknowledged_before);
    EXPECT_GT(store->AppliedVector().at(me), backup.applied.at(me));
    // A second backup never overwrites the first.
    EXPECT_EQ(store->Backup("/backup", nullptr).status().code(), absl::StatusCode::kAlreadyExists);
  }
  StoreOptions restored = options;
  restored.path = "/backup";
  crdt::ReplicaId incarnation;
  {
    auto store = OpenOrDie(restored);
    EXPECT_TRUE(store->rotated_incarnation()) << "a backup must not reuse the original's replica id";
    EXPECT_TRUE(store->opened_backup());
    incarnation = store->replica_id();
    EXPECT_NE(incarnation, me);
    EXPECT_EQ(store->AppliedVector(), backup.applied);
    // Every write is one log entry and, past the first 200, one increment: the copy holds
    // exactly the writes its applied vector names, none half and none later.
    int64_t increments = 0;
    for (int i = 0; i < 200; ++i) increments += CounterOf(*store->Get("c", "d" + std::to_string(i)), "n");
    EXPECT_EQ(static_cast<uint64_t>(increments) + 200, backup.applied.at(me));
    EXPECT_EQ(store->document_count(), 200);
  }
  auto reopened = OpenOrDie(restored);
  EXPECT_FALSE(reopened->rotated_incarnation()) << "only the first open of a backup rotates";
  EXPECT_FALSE(reopened->opened_backup());
  EXPECT_EQ(reopened->replica_id(), incarnation);
}

// A change-feed position names a change only within the feed that gave it out: a restart as a
// new incarnation keeps the positions that survived, and a restored backup keeps those up to
// its copy; the ones after are reused by new changes and must not be resumed from.
TEST_F(StoreTest, ChangeFeedPositionsOfEarlierIncarnationsHoldUpToWhatSurvived) {
  crdt::ReplicaId first;
  {
    auto store = OpenOrDie();
    first = store->replica_id();
    for (int i = 0; i < 5; ++i)
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, first)).ok());
    ASSERT_TRUE(store->Backup("/backup", nullptr).ok());
    for (int i = 0; i < 7; ++i)
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, first)).ok());
    EXPECT_EQ(store->last_change_seq(), 12u);
    EXPECT_TRUE(store->FeedPositionHolds(first, 12));
    EXPECT_FALSE(store->FeedPositionHolds(first + 1, 1)) << "an unknown feed";
    (void)store.release();  // the process dies without fsync: a new incarnation next
  }
  crdt::ReplicaId second;
  {
    auto store = OpenOrDie();
    second = store->replica_id();
    ASSERT_NE(second, first);
    EXPECT_TRUE(store->FeedPositionHolds(first, 12)) << "everything it gave out survived";
    EXPECT_FALSE(store->FeedPositionHolds(first, 13));
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, second)).ok());
    EXPECT_TRUE(store->FeedPositionHolds(second, 13));
  }
  StoreOptions restored = Options();
  restored.path = "/backup";
  crdt::ReplicaId third;
  for (int open = 0; open < 2; ++open) {  // the history is kept across a clean reopen
    auto store = OpenOrDie(restored);
    if (open == 0) third = store->replica_id();
    EXPECT_EQ(store->replica_id(), third);
    EXPECT_TRUE(store->FeedPositionHolds(first, 5)) << "in the copy";
    EXPECT_FALSE(store->FeedPositionHolds(first, 6)) << "given out after the copy was taken";
    EXPECT_FALSE(store->FeedPositionHolds(second, 6)) << "an incarnation the copy never saw";
    // The restored feed passes those positions again, with other changes.
    for (int i = 0; i < 10; ++i)
      ASSERT_TRUE(store->ApplyLocal(Increment("c", "e", "n", 1, third)).ok());
    EXPECT_GT(store->last_change_seq(), 12u);
    EXPECT_FALSE(store->FeedPositionHolds(first, 6));
    EXPECT_TRUE(store->FeedPositionHolds(third, 6));
  }
}

TEST_F(StoreTest, ACancelledBackupLeavesNothingBehind) {
  auto store = OpenOrDie();
  // The check comes before each 1 MiB batch is written: at the third, one has been.
  ASSERT_NO_FATAL_FAILURE(WriteOverTwoMiB(*store));
  int checks = 0;
  auto result = store->Backup("/backup", [&] { return ++checks >= 3; });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(checks, 3) << "cancelled after a batch was written";
  std::vector<std::string> left;
  (void)env_.GetChildren("/backup", &left);
  EXPECT_TRUE(left.empty()) << left.size() << " files left, e.g. " << left[0];
  // The name is free again.
  EXPECT_TRUE(store->Backup("/backup", nullptr).ok());
}

TEST_F(StoreTest, ABackupCutOffBeforeItsEndIsRefusedAtOpen) {
  {
    auto store = OpenOrDie();
    ASSERT_NO_FATAL_FAILURE(WriteOverTwoMiB(*store));
    // A process that dies in the middle of a copy: its first batches are on disk, its last
    // never comes. Simulated by abandoning the copy's directory before it is cleaned up.
    // Checks come before the copy and before each 1 MiB batch is written: at the third, the
    // marker and one batch are on disk.
    int checks = 0;
    auto result = store->Backup("/backup", [&] {
      std::vector<std::string> files;
      if (++checks == 3 && env_.GetChildren("/backup", &files).ok()) {
        std::string contents;
        for (const std::string& name : files) {
          if (leveldb::ReadFileToString(&env_, "/backup/" + name, &contents).ok()) {
            (void)leveldb::WriteStringToFile(&env_, contents, "/cut/" + name);
          }
        }
        return true;
      }
      return false;
    });
    ASSERT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  }
  StoreOptions cut = Options();
  cut.path = "/cut";
  cut.create_mode = CreateMode::kMustExist;
  auto opened = Store::Open(cut);
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kFailedPrecondition) << opened.status();
  EXPECT_TRUE(absl::StrContains(opened.status().message(), "cut off")) << opened.status();
}

TEST_F(StoreTest, ABackupNeverWritesIntoADirectoryThatHoldsSomething) {
  auto store = OpenOrDie();
  ASSERT_TRUE(leveldb::WriteStringToFile(&env_, "mine", "/backup/notes.txt").ok());
  EXPECT_EQ(store->Backup("/backup", nullptr).status().code(), absl::StatusCode::kAlreadyExists);
  std::string contents;
  ASSERT_TRUE(leveldb::ReadFileToString(&env_, "/backup/notes.txt", &contents).ok());
  EXPECT_EQ(contents, "mine");
}

// A backup must not fill the disk under the node: a commit that fails for want of space makes
// the store refuse writes until it is restarted.
TEST_F(StoreTest, ABackupThatWouldLeaveTooLittleSpaceIsRefusedBeforeItStarts) {
  StoreOptions options = Options();
  options.backup_min_free_bytes = uint64_t{64} << 20;
  uint64_t free = uint64_t{83} << 20;
  std::vector<std::string> asked;
  options.free_space = [&](const std::string& path) -> absl::StatusOr<uint64_t> {
    asked.push_back(path);
    return free;
  };
  auto store = OpenOrDie(options);
  ASSERT_NO_FATAL_FAILURE(WriteOverTwoMiB(*store));
  // 83 MiB free: the 64 MiB reserve and the copy's own log (16 MiB) would fit, but not with the
  // data, which is all still in the memtable (over 4 MiB with its log entries).
  auto refused = store->Backup("/backups/b1", nullptr);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "83 MiB free")) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "64 MiB are kept free"))
      << refused.status();
  EXPECT_EQ(asked, std::vector<std::string>{"/backups/b1"});
  std::vector<std::string> left;
  EXPECT_FALSE(env_.GetChildren("/backups/b1", &left).ok() && !left.empty());
  // With room for it, the same copy goes ahead, asking again before every batch.
  free = uint64_t{120} << 20;
  auto taken = store->Backup("/backups/b1", nullptr);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_GE(asked.size(), 4u);
}

TEST_F(StoreTest, ABackupThatRunsOutOfSpaceStopsAndIsRemoved) {
  StoreOptions options = Options();
  options.backup_min_free_bytes = uint64_t{64} << 20;
  int calls = 0;
  // Something else fills the disk while the copy runs: after the first batch 70 MiB are left,
  // under the reserve plus room for the next batch and the copy's log (64 + 1 + 16).
  options.free_space = [&](const std::string&) -> absl::StatusOr<uint64_t> {
    return ++calls <= 2 ? uint64_t{300} << 20 : uint64_t{70} << 20;
  };
  auto store = OpenOrDie(options);
  ASSERT_NO_FATAL_FAILURE(WriteOverTwoMiB(*store));
  auto result = store->Backup("/backup", nullptr);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(),
                                "backup stopped after 1 MiB: the file system of /backup has 70 MiB "
                                "free, under the 64 MiB kept free"))
      << result.status();
  EXPECT_EQ(calls, 3);
  std::vector<std::string> left;
  (void)env_.GetChildren("/backup", &left);
  EXPECT_TRUE(left.empty()) << left.size() << " files left, e.g. " << left[0];
  // The store itself is untouched and takes writes.
  EXPECT_TRUE(store->ApplyLocal(Increment("c", "d0", "n", 1, store->replica_id())).ok());

  // A file system whose free space cannot be read gets no copy either.
  StoreOptions blind = Options();
  blind.path = "/blind";
  blind.backup_min_free_bytes = 1;
  blind.free_space = [](const std::string& path) -> absl::StatusOr<uint64_t> {
    return absl::FailedPreconditionError("cannot read the free space of " + path);
  };
  auto other = OpenOrDie(blind);
  EXPECT_EQ(other->Backup("/backup2", nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(StoreTest, ChangeFeedListsEveryChangeInOrder) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "d" + std::to_string(i % 2), "n", 1, me)).ok());
  }
  auto changes = store->ReadChanges(2, 10);
  ASSERT_TRUE(changes.ok());
  ASSERT_EQ(changes->size(), 3u);
  EXPECT_EQ((*changes)[0].first, 3u);
  EXPECT_EQ((*changes)[0].second.id(), "d0");
  EXPECT_EQ((*changes)[0].second.origin_seq(), 3u);
}

// A change-feed waiter wakes for changes its filter matches, local or remote, and not for
// others; one that starts behind what the store remembers wakes at once and reads the feed.
TEST_F(StoreTest, ChangeWaitersWakeOnlyForTheChangesTheyFilter) {
  auto store = OpenOrDie();
  auto peer = OpenOrDie(SecondNode("/peer"));
  const crdt::ReplicaId me = store->replica_id();
  const uint64_t start = store->last_change_seq();
  std::atomic<bool> woke{false};
  std::atomic<uint64_t> returned{0};
  uint64_t unmatched = 0;
  std::thread waiter([&] {
    returned = store->WaitForChange(start, {"c", "wanted"}, absl::Seconds(60), &unmatched);
    woke = true;
  });
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(store->ApplyLocal(Increment("c", "other", "n", 1, me)).ok());
    ASSERT_TRUE(store->ApplyLocal(Increment("elsewhere", "wanted", "n", 1, me)).ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(woke) << "woken by changes the filter does not match";
  // The matching change arrives from a peer.
  ASSERT_TRUE(peer->ApplyLocal(Increment("c", "wanted", "n", 1, peer->replica_id())).ok());
  ASSERT_TRUE(store->ApplyRemote(*peer->ReadLog({}, 10)).ok());
  waiter.join();
  EXPECT_EQ(returned, start + 41);
  EXPECT_EQ(unmatched, start + 40);  // a reader resumes right before the match

  // A timeout reports how far nothing matched, so a reader need not read those changes again.
  ASSERT_TRUE(store->ApplyLocal(Increment("c", "other", "n", 1, me)).ok());
  store->WaitForChange(start + 41, {"c", "wanted"}, absl::Milliseconds(20), &unmatched);
  EXPECT_EQ(unmatched, start + 42);

  // A whole-collection filter matches every document of the collection.
  const uint64_t now = store->last_change_seq();
  std::thread collection_waiter([&] {
    returned = store->WaitForChange(now, {"c", ""}, absl::Seconds(60));
  });
  ASSERT_TRUE(store->ApplyLocal(Increment("elsewhere", "x", "n", 1, me)).ok());
  ASSERT_TRUE(store->ApplyLocal(Increment("c", "any", "n", 1, me)).ok());
  collection_waiter.join();
  EXPECT_EQ(returned, now + 2);

  // Further back than the remembered changes: the waiter cannot tell, so it returns at once.
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(store->ApplyLocal(Increment("elsewhere", "y", "n", 1, me)).ok());
  }
  const auto before = std::chrono::steady_clock::now();
  EXPECT_EQ(store->WaitForChange(0, {"c", "never"}, absl::Seconds(60)), store->last_change_seq());
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(30));
}

TEST_F(StoreTest, TheChangeFeedKeepsItsRetentionAndRefusesOlderPositions) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  ASSERT_TRUE(store->TruncateChanges(10).ok());
  EXPECT_EQ(store->change_floor(), 20u);
  auto tail = store->ReadChanges(20, 100);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->size(), 10u);
  EXPECT_EQ(store->ReadChanges(5, 100).status().code(), absl::StatusCode::kOutOfRange);
  store.reset();
  store = OpenOrDie();
  EXPECT_EQ(store->change_floor(), 20u);
}

// A reader that passed the floor check while a truncation deleted what it was about to read
// must learn that changes are gone, not get the ones after them as if they were next (a Watch
// would silently skip them).
TEST_F(StoreTest, AChangeFeedReadRacingItsTruncationIsOutOfRangeNeverAGap) {
  Store* raw = nullptr;
  int reads = 0;
  StoreOptions options = Options();
  options.testonly_before_reading_changes = [&] {
    if (++reads == 1) {
      EXPECT_TRUE(raw->TruncateChanges(5).ok());
    }
  };
  auto store = OpenOrDie(options);
  raw = store.get();
  const crdt::ReplicaId me = store->replica_id();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(store->ApplyLocal(Increment("c", "d", "n", 1, me)).ok());
  auto raced = store->ReadChanges(0, 100);
  EXPECT_EQ(raced.status().code(), absl::StatusCode::kOutOfRange) << raced.status();
  EXPECT_EQ(store->change_floor(), 15u);
  auto after = store->ReadChanges(15, 100);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->size(), 5u);
  EXPECT_EQ(after->front().first, 16u);
}

TEST_F(StoreTest, ASmallChangeToALargeDocumentWritesLittle) {
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  LocalWrite fill;
  fill.collection = "c";
  fill.id = "big";
  fill.mutate = [me](Document& doc) {
    std::vector<crdt::Scalar> elements;
    for (int64_t i = 0; i < 100000; ++i) elements.push_back(crdt::Scalar::OfInt(i));
    return doc.AddElements({"set"}, elements, me);
  };
  ASSERT_TRUE(store->ApplyLocal(fill).ok());
  const uint64_t before = env_.bytes_written();
  LocalWrite add;
  add.collection = "c";
  add.id = "big";
  add.mutate = [me](Document& doc) {
    return doc.AddElements({"set"}, {crdt::Scalar::OfString("one more")}, me);
  };
  ASSERT_TRUE(store->ApplyLocal(add).ok());
  const uint64_t written = env_.bytes_written() - before;
  EXPECT_LT(written, 1024u) << "adding one element rewrote " << written << " bytes";
}

TEST_F(StoreTest, ReadersNeverDecodeAHalfAppliedUpdate) {
  // An update of two fields commits both or neither: readers racing the writer see a == b.
  auto store = OpenOrDie();
  const crdt::ReplicaId me = store->replica_id();
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop) {
      auto doc = store->Get("c", "pair");
      ASSERT_TRUE(doc.ok());
      ASSERT_EQ(CounterOf(*doc, "a"), CounterOf(*doc, "b"));
    }
  });
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(store->ApplyLocal(testing::IncrementPair("c", "pair", me)).ok());
  }
  stop = true;
  reader.join();
}

TEST_F(StoreTest, EqualStatesHaveEqualDigestsWhateverTheOrderOfArrival) {
  auto a = OpenOrDie();
  auto b = OpenOrDie(SecondNode("/b"));
  // Concurrent writes on both, including a removal and a type conflict.
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(a->ApplyLocal(Increment("c", "d" + std::to_string(i % 3), "n", 1, a->replica_id())).ok());
    ASSERT_TRUE(b->ApplyLocal(SetString("c", "d" + std::to_string(i % 4), "n", "x", b->replica_id())).ok());
  }
  LocalWrite rm;
  rm.collection = "c";
  rm.id = "d1";
  rm.mutate = [](Document& doc) -> absl::StatusOr<Document> { return doc.RemoveField({"n"}); };
  ASSERT_TRUE(a->ApplyLocal(rm).ok());
  EXPECT_NE(a->state_digest(), b->state_digest());
  std::vector<LogRecord> from_a = *a->ReadLog({}, 1000);
  std::vector<LogRecord> from_b = *b->ReadLog({}, 1000);
  ASSERT_TRUE(b->ApplyRemote(from_a).ok());
  ASSERT_TRUE(a->ApplyRemote(from_b).ok());
  EXPECT_EQ(a->state_digest(), b->state_digest());
  for (int i = 0; i < 4; ++i) {
    const std::string id = "d" + std::to_string(i);
    EXPECT_EQ(a->Get("c", id)->Encode(), b->Get("c", id)->Encode());
  }
  const std::string digest = a->state_digest();
  EXPECT_EQ(digest.size(), 16u);
  a.reset();
  a = OpenOrDie();
  EXPECT_EQ(a->state_digest(), digest) << "the digest is durable";
  ASSERT_TRUE(a->ApplyLocal(Increment("c", "fresh", "n", 1, a->replica_id())).ok());
  EXPECT_NE(a->state_digest(), b->state_digest());
}

// The digest is kept incrementally: each write subtracts the hash of every record it replaces
// and adds the new one's. A full scan of the stored records must agree after every kind of
// write: local ones (alone, batched, a batch with a refused write in its middle, removals),
// frames of a peer's log (several entries on one document in one frame), full-state parts,
// with a cache too small to keep the documents (evictions reload them from disk), and across
// a reopen.
TEST_F(StoreTest, TheDigestAgreesWithAFullScanAfterEveryKindOfWrite) {
  StoreOptions small_cache = Options();
  small_cache.cache_bytes = 1024;  // room for one document, two while they are empty
  auto a = OpenOrDie(small_cache);
  StoreOptions other = SecondNode("/b");
  other.cache_bytes = 1024;
  auto b = OpenOrDie(other);
  const crdt::ReplicaId me = a->replica_id();
  const auto expect_exact = [](Store* store, const std::string& step) {
    auto scanned = store->ScanDigest();
    ASSERT_TRUE(scanned.ok()) << scanned.status();
    EXPECT_EQ(*scanned, store->state_digest()) << "after " << step;
  };
  expect_exact(a.get(), "opening");
  std::mt19937_64 rng(7);
  for (int round = 0; round < 30; ++round) {
    const std::string id = "d" + std::to_string(rng() % 6);
    switch (rng() % 4) {
      case 0:
        ASSERT_TRUE(a->ApplyLocal(Increment("c", id, "n", 1, me)).ok());
        break;
      case 1:
        ASSERT_TRUE(a->ApplyLocal(SetString("c", id, "s", std::to_string(round), me)).ok());
        break;
      case 2: {
        LocalWrite rm;
        rm.collection = "c";
        rm.id = id;
        rm.mutate = [](Document& doc) -> absl::StatusOr<Document> {
          return doc.RemoveField({"n"});
        };
        ASSERT_TRUE(a->ApplyLocal(rm).ok());
        break;
      }
      default: {
        std::vector<LocalWrite> batch;
        batch.push_back(Increment("c", "d", "n", 1, me));
        batch.push_back(SetString("c", id, "s", "batch", me));
        batch.push_back(HalfAppliedThenRefused(me));  // document d again, refused half-way
        batch.push_back(Increment("c", "d", "n", 2, me));
        batch.push_back(Increment("c", id, "n", 3, me));
        auto results = a->ApplyLocalBatch(batch);
        EXPECT_FALSE(results[2].ok());
        break;
      }
    }
    expect_exact(a.get(), "local write " + std::to_string(round));
    ASSERT_TRUE(
        b->ApplyLocal(Increment("c", "d" + std::to_string(rng() % 6), "n", 1, b->replica_id()))
            .ok());
    ASSERT_TRUE(
        b->ApplyLocal(SetString("c", id, "s", "b" + std::to_string(round), b->replica_id())).ok());
    if (round % 3 == 2) {
      // Frames both ways: every entry the other lacks, many on the same documents.
      auto to_a = b->ReadLog(a->AppliedVector(), 1000, {a->replica_id()});
      auto to_b = a->ReadLog(b->AppliedVector(), 1000, {b->replica_id()});
      ASSERT_TRUE(to_a.ok() && to_b.ok());
      ASSERT_TRUE(a->ApplyRemote(*to_a).ok());
      ASSERT_TRUE(b->ApplyRemote(*to_b).ok());
      expect_exact(a.get(), "a frame " + std::to_string(round));
      expect_exact(b.get(), "a frame " + std::to_string(round));
    }
  }
  // A full-state part of b's documents joined into a's.
  auto cursor = *b->OpenSnapshot();
  std::vector<SnapshotDoc> docs;
  SnapshotDoc doc;
  while (*cursor->Next(&doc)) docs.push_back(doc);
  ASSERT_FALSE(docs.empty());
  ASSERT_TRUE(a->ApplySnapshot(docs).ok());
  expect_exact(a.get(), "a full-state part");
  EXPECT_EQ(a->state_digest(), b->state_digest()) << "both hold everything now";
  a.reset();
  a = OpenOrDie(small_cache);
  expect_exact(a.get(), "reopening");
  ASSERT_TRUE(a->ApplyLocal(Increment("c", "d0", "n", 1, me)).ok());
  expect_exact(a.get(), "a write after reopening");
}

// An empty state (no context, no leaves) from a peer for a document never written here used to
// store an empty context record that the digest counted and no later write took back out, so
// the digest stayed off for good (found by tests/fuzz/replication_fuzzer).
TEST_F(StoreTest, AnEmptyRemoteStateStoresNothingAndLeavesTheDigestExact) {
  auto a = OpenOrDie();
  const std::string empty_digest = a->state_digest();
  std::vector<SnapshotDoc> empty_part = {{"c", "d", Document()}};
  ASSERT_TRUE(a->ApplySnapshot(empty_part).ok());
  LogRecord empty_delta;
  empty_delta.origin = 42;
  empty_delta.seq = 1;
  empty_delta.entry.set_collection("c");
  empty_delta.entry.set_id("e");
  std::vector<LogRecord> frame = {empty_delta};
  ASSERT_EQ(a->ApplyRemote(frame)->applied, 1u);
  EXPECT_EQ(a->state_digest(), empty_digest);
  auto cursor = *a->OpenSnapshot();
  SnapshotDoc doc;
  EXPECT_FALSE(*cursor->Next(&doc)) << "stored " << doc.collection << "/" << doc.id;
  cursor.reset();

  // Writes to both documents; a store holding the same documents has the same digest.
  ASSERT_TRUE(a->ApplyLocal(Increment("c", "d", "n", 1, a->replica_id())).ok());
  ASSERT_TRUE(a->ApplyLocal(Increment("c", "e", "n", 1, a->replica_id())).ok());
  auto b = OpenOrDie(SecondNode("/b"));
  std::vector<SnapshotDoc> docs(2);
  cursor = *a->OpenSnapshot();
  ASSERT_TRUE(*cursor->Next(&docs[0]));
  ASSERT_TRUE(*cursor->Next(&docs[1]));
  ASSERT_TRUE(b->ApplySnapshot(docs).ok());
  EXPECT_EQ(b->state_digest(), a->state_digest());
}

// A full-state transfer carries the request ids the sender remembers: the receiver keeps those
// it does not know, without the sender's change-feed position, and keeps its own record of an id
// it knows.
TEST_F(StoreTest, ASnapshotCarriesRequestIdsAndTheReceiverKeepsItsOwn) {
  auto a = OpenOrDie();
  auto b = OpenOrDie(SecondNode("/b"));
  ASSERT_TRUE(a->ApplyLocal(Increment("c", "d", "n", 1, a->replica_id(), "r1")).ok());
  ASSERT_TRUE(a->ApplyLocal(Increment("c", "e", "n", 1, a->replica_id(), "r2")).ok());
  ASSERT_TRUE(b->ApplyLocal(Increment("c", "f", "n", 1, b->replica_id(), "r2")).ok());
  auto cursor = *a->OpenSnapshot();
  // Written after the snapshot: not in it.
  ASSERT_TRUE(a->ApplyLocal(Increment("c", "d", "n", 1, a->replica_id(), "r3")).ok());
  std::vector<SnapshotDoc> docs;
  SnapshotDoc doc;
  while (*cursor->Next(&doc)) docs.push_back(doc);
  std::vector<SnapshotRequest> requests;
  SnapshotRequest request;
  while (*cursor->NextRequest(&request)) requests.push_back(request);
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].request_id, "r1");
  EXPECT_EQ(requests[1].request_id, "r2");
  EXPECT_EQ(requests[0].record.log_origin(), a->replica_id());
  EXPECT_GT(requests[0].record.change_seq(), 0u);
  ASSERT_TRUE(b->ApplySnapshot(docs, requests).ok());
  auto r1 = *b->LookupRequest("r1");
  ASSERT_TRUE(r1.has_value());
  EXPECT_EQ(r1->id(), "d");
  EXPECT_EQ(r1->log_origin(), a->replica_id());
  EXPECT_EQ(r1->log_seq(), requests[0].record.log_seq());
  EXPECT_EQ(r1->change_seq(), 0u) << "a position in a's change feed means nothing on b";
  auto r2 = *b->LookupRequest("r2");
  ASSERT_TRUE(r2.has_value());
  EXPECT_EQ(r2->id(), "f") << "b's own record of r2 stays";
  EXPECT_FALSE(b->LookupRequest("r3")->has_value());
  // Request records alone (the last chunks of a transfer may carry nothing else) commit too.
  cursor = *a->OpenSnapshot();
  requests.clear();
  while (*cursor->NextRequest(&request)) requests.push_back(request);
  cursor.reset();
  ASSERT_TRUE(b->ApplySnapshot({}, requests).ok());
  EXPECT_TRUE(b->LookupRequest("r3")->has_value());
}

}  // namespace
}  // namespace mergedb::storage

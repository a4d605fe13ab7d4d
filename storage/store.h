// Store: a node's whole durable state in one LevelDB directory (layout: storage/keys.h).
//
// Every change is one atomic WriteBatch: a local write commits the document's changed leaves and
// context, the new log entry, the applied vector, the change-feed record and the client request
// record together; a remote frame of deltas likewise commits all of its entries at once. A crash
// at any moment leaves all of a batch or none of it.
//
// Group commit (the writer queue of LevelDB's DBImpl::Write): concurrent committers queue up; the
// one at the front becomes the leader, takes the batches of the writers behind it, assigns log
// and change sequence numbers in commit order, performs one LevelDB write (one fsync in
// kSyncEachCommit mode) and wakes the others. Sequence numbers are assigned only by the leader,
// in the order of the write, so a crash can never leave a hole in this node's own log.
//
// Durability (Durability::kNoSync, the default): a commit has reached the operating system when
// it is acknowledged, so it survives a kill of the process, but a power loss or kernel crash can
// lose the last few seconds. Durability::kSyncEachCommit: every commit is fsynced before it is
// acknowledged, so it also survives power loss; group commit shares one fsync among all the
// writers waiting at that moment.
//
// No silent loss: LevelDB is opened with paranoid_checks, every iterator's status is checked,
// and a failed write or sync is fatal for the handle: every later write fails with UNAVAILABLE
// until the store is reopened (as LevelDB itself does after a failed sync). Reads go on.
//
// Writes to one document are serialized (a striped lock, never one global lock) and the lock is
// held until the commit is durable, so a reader never sees a write that could still be lost.
// A bounded LRU cache keeps hot documents decoded, so the write path does not reload them.
//
// Thread safety: thread-safe. All methods may be called concurrently.
#ifndef MERGEDB_STORAGE_STORE_H_
#define MERGEDB_STORAGE_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "crdt/document.h"
#include "mergedb/v1/storage.pb.h"

namespace leveldb {
struct Options;
class DB;
class Env;
class FilterPolicy;
class Snapshot;
class WriteBatch;
}  // namespace leveldb

namespace mergedb::storage {

// origin replica -> highest contiguous sequence.
using VersionVector = std::map<crdt::ReplicaId, uint64_t>;

enum class Durability {
  kNoSync,          // acknowledged once in the OS: survives a process kill
  kSyncEachCommit,  // fsynced before acknowledgement: survives power loss
};

enum class CreateMode {
  kCreateIfMissing,
  kMustExist,
};

struct StoreOptions {
  std::string path;
  // A data directory belongs to one cluster and one node for life; opening it under another
  // cluster id or node name is refused.
  std::string cluster_id;
  std::string node_name;
  Durability durability = Durability::kNoSync;
  CreateMode create_mode = CreateMode::kCreateIfMissing;
  // The LevelDB environment (files, threads, clock); nullptr for the default. Tests and the
  // simulator pass an in-memory, fault-injecting one. Borrowed: must outlive the Store.
  leveldb::Env* env = nullptr;
  // Approximate memory for decoded hot documents.
  size_t cache_bytes = size_t{64} << 20;
  // Upper bound of one group commit's batch.
  size_t max_group_bytes = size_t{4} << 20;
  // Draws replica ids (non-zero results). Empty: OS-seeded randomness. The simulator passes a
  // seeded source so that a schedule replays exactly.
  std::function<uint64_t()> random;
  // Draw a new replica id at this open even after a clean stop: for a data dir restored from a
  // copy, whose node may have issued sequence numbers since that the copy lacks.
  bool new_incarnation = false;
  // Whether other nodes hold this one's documents (it has cluster members). The first open after
  // mergedb-repair then clears them, to come back from those nodes; a node alone keeps what the
  // repair salvaged instead (see Store::AfterRepair).
  bool has_peers = true;
  // Backup keeps at least this many bytes free on the file system it writes to, whether or
  // not the data dir is on it too (when it is, the reserve is the node's own writes' room: a
  // node that fails a commit for want of space refuses writes until restarted): a copy that
  // would leave less is refused before it starts, and one that gets near it while copying (the
  // store grew, or something else filled the disk) stops and is removed. 0: no check.
  uint64_t backup_min_free_bytes = 0;
  // Free bytes, for an unprivileged writer, on the file system that holds `path` (which need
  // not exist yet). Empty: statvfs on the nearest existing ancestor of `path` when `env` is
  // null or leveldb::Env::Default() (the real file system); with another `env`, no check unless
  // this is set (tests set it).
  std::function<absl::StatusOr<uint64_t>(const std::string& path)> free_space;
  // Tests only: runs between two chunks of a truncation (of the log or the change feed), with
  // no lock held, so that a test can put another writer of the floors exactly there.
  std::function<void()> testonly_between_truncation_chunks;
  // Tests only: runs in ReadChanges between its check of the floor and its read, with no lock
  // held, so that a test can truncate exactly there.
  std::function<void()> testonly_before_reading_changes;
  // Tests only: runs after a full-state transfer's final commit, before the log entries it
  // superseded are deleted (where a crash leaves them for the next open to delete).
  std::function<void()> testonly_after_transfer_commit;
};

// A local update: `mutate` applies the update's operations to the document and returns their
// combined delta (an empty delta when nothing changed). If it fails, nothing is written and the
// document is as before.
struct LocalWrite {
  std::string collection;
  std::string id;
  // Empty: no retry detection. Otherwise a retry with the same id is answered from the
  // committed record instead of being applied again.
  std::string request_id;
  int64_t unix_millis = 0;  // when, for the request record's expiry
  // RequestFingerprint of what the request asks (its operations and base version): a request id
  // used again for a different update of the same document is refused, not answered as a
  // retry of the first (which would acknowledge a write that was never applied). 0: unchecked.
  uint64_t request_fingerprint = 0;
  std::function<absl::StatusOr<crdt::Document>(crdt::Document& doc)> mutate;
};

// A stable 64-bit hash of a request's content (the same bytes give the same value in every
// process and version; never 0), for LocalWrite::request_fingerprint.
uint64_t RequestFingerprint(absl::string_view content);

struct WriteResult {
  crdt::CausalContext version;  // the document's causal context after the write
  uint64_t log_seq = 0;         // this node's log sequence of the delta; 0 if nothing changed
  uint64_t change_seq = 0;      // local change sequence; 0 if nothing changed
  // The incarnation whose log holds log_seq and whose change feed holds change_seq: this one,
  // or for a retry (duplicate_request), the one that committed the original.
  crdt::ReplicaId origin = 0;
  bool duplicate_request = false;
};

// One replication log entry: a delta of `origin`, its sequence, and the document it belongs to.
struct LogRecord {
  crdt::ReplicaId origin = 0;
  uint64_t seq = 0;
  mergedb::v1::LogEntry entry;
  // When not empty: `entry` serialized, as the log stores it and frames carry it. ApplyRemote
  // logs these bytes as they are instead of serializing `entry` again, and a sender puts them
  // in a frame unparsed (ReadLog with LogForm::kEncoded then leaves `entry` empty).
  std::string encoded;
};

// What ReadLog fills in of each LogRecord.
enum class LogForm {
  kParsed,   // `entry` and `encoded`
  kEncoded,  // `encoded` only: for a sender, which passes the bytes on without looking inside
};

struct RemoteApplyResult {
  size_t applied = 0;     // entries newly applied (and logged for forwarding)
  size_t duplicates = 0;  // entries already applied here, skipped
  // True when an entry's predecessor from the same origin is missing; that entry and the
  // rest of its origin in the frame were not applied.
  bool gap = false;
};

// One document (or part of one) of a full-state transfer.
struct SnapshotDoc {
  std::string collection;
  std::string id;
  crdt::Document state;
};

// A client request id remembered by a node, as a full-state transfer carries it.
struct SnapshotRequest {
  std::string request_id;
  mergedb::v1::RequestRecord record;
};

// A consistent point-in-time view of every document, read one document at a time (full-state
// transfer, backup), and of the request ids remembered at that point. Thread safety: not
// thread-safe; the Store must outlive it.
class SnapshotCursor {
 public:
  virtual ~SnapshotCursor() = default;
  // The applied vector the snapshot reflects.
  virtual const VersionVector& applied() const = 0;
  // The next document (tombstones included), or false at the end.
  virtual absl::StatusOr<bool> Next(SnapshotDoc* doc) = 0;
  // The next remembered request id, or false at the end. A record's log_origin is always set:
  // records from before that field, which name no incarnation, are skipped.
  virtual absl::StatusOr<bool> NextRequest(SnapshotRequest* request) = 0;
};

// What Store::Backup wrote.
struct BackupResult {
  VersionVector applied;  // the applied vector of the point the copy reflects
  uint64_t records = 0;   // LevelDB records copied
  uint64_t bytes = 0;     // their keys and values
};

// Where Store::CopyOut puts a consistent copy of a store: Begin once, then Append for each
// batch of records, in key order, of about kBackupBatchBytes of keys and values.
inline constexpr size_t kBackupBatchBytes = size_t{1} << 20;
class BackupSink {
 public:
  virtual ~BackupSink() = default;
  virtual absl::Status Begin(const VersionVector& applied) = 0;
  virtual absl::Status Append(const std::vector<std::pair<std::string, std::string>>& records) = 0;
};

// The file a backup's directory holds from before LevelDB creates anything in it until the copy
// is complete: Store::Open refuses a directory holding it unless the copy is whole (its complete
// marker is there, or, after its first open, its schema record without a marker); then only the
// file's removal was lost (storage/FORMAT.md).
inline constexpr absl::string_view kBackupSentinelFile = "BACKUP-INCOMPLETE";
std::string BackupSentinelPath(const std::string& dir);

// The file `mergedb-repair` writes into a data dir before it changes anything, and its only
// mark: the next open treats the dir as repaired (also when the repair was cut short), and
// removes the file once it has drawn a new replica id and cleared the documents.
inline constexpr absl::string_view kRepairMarkerFile = "MERGEDB-REPAIRED";
// A plain file beside LevelDB's that every open keeps up to date with the data dir's cluster
// and node ("cluster=ID" and "node=NAME" lines), outside the records a repair may lose: an open
// after a repair that lost the meta records takes the names from it, so that the dir still
// refuses another node or cluster. Without it (a dir older than the file), from the flags.
inline constexpr absl::string_view kIdentityFile = "MERGEDB-IDENTITY";
std::string RepairMarkerPath(const std::string& dir);
absl::Status WriteRepairMarker(leveldb::Env* env, const std::string& dir);

// Writes a copy of a store as a new LevelDB data dir: Store::Backup's copies on the node's
// machine, and `mergedb fetch-backup`'s, streamed from a node to another machine. The copy holds
// the sentinel file until it is complete, is marked incomplete by its first write and complete
// by Finish, every write is synced, and a copy that does not reach Finish is removed (or, cut
// off by a crash, refused at open).
class BackupWriter {
 public:
  struct Options {
    leveldb::Env* env = nullptr;  // nullptr: the real file system
    // Bytes to keep free on the copy's file system (see StoreOptions::backup_min_free_bytes),
    // and how to read its free space (see StoreOptions::free_space). 0: no check.
    uint64_t min_free_bytes = 0;
    std::function<absl::StatusOr<uint64_t>(const std::string& path)> free_space;
    // About how large the copy will be, for the check before it starts.
    uint64_t expected_bytes = 0;
  };
  // Creates `dir` (and missing parents). ALREADY_EXISTS if it holds anything, which is then
  // left alone; RESOURCE_EXHAUSTED if the copy would leave less than `min_free_bytes` free.
  static absl::StatusOr<std::unique_ptr<BackupWriter>> Create(const std::string& dir,
                                                              Options options);
  // Removes the copy unless Finish succeeded.
  ~BackupWriter();
  BackupWriter(const BackupWriter&) = delete;
  BackupWriter& operator=(const BackupWriter&) = delete;

  // Writes records (synced). RESOURCE_EXHAUSTED, before writing, if the file system's free
  // space fell under `min_free_bytes` plus room for these records and the copy's log.
  absl::Status Append(const std::vector<std::pair<std::string, std::string>>& records);
  // Marks the copy complete and closes it.
  absl::Status Finish();
  // Removes the partial copy and returns `why`, with a note if the removal failed.
  absl::Status Abandon(absl::Status why);

  uint64_t records() const { return records_; }
  uint64_t bytes() const { return bytes_; }

 private:
  BackupWriter(const std::string& dir, Options options);
  absl::Status Start();
  // The sentinel file, created exclusively (ALREADY_EXISTS if another writer has one there)
  // and durably.
  absl::Status CreateSentinel();
  // Removes what this writer created: LevelDB's files, then the sentinel, then the directory
  // unless it was there before.
  // OK, or what kept LevelDB's files from being removed.
  absl::Status RemoveCopy();
  absl::Status Write(leveldb::WriteBatch* batch);
  leveldb::Options LevelDbOptions() const;

  const std::string dir_;
  Options options_;
  std::unique_ptr<const leveldb::FilterPolicy> filter_policy_;  // outlives db_
  std::unique_ptr<leveldb::DB> db_;
  bool opened_ = false;       // LevelDB created the copy: from then on, it is this writer's
  bool finished_ = false;     // Finish succeeded, or Abandon ran
  bool dir_existed_ = false;  // empty, or it would have been refused: kept when abandoning
  uint64_t records_ = 0;
  uint64_t bytes_ = 0;
};

struct ScanPage {
  std::vector<std::pair<std::string, crdt::Document>> documents;  // (id, state), in id order
  std::string next_token;  // empty at the end of the collection
};

class Store {
 public:
  // Opens (or creates) the data directory. Errors name the problem and the path:
  // FAILED_PRECONDITION for a directory locked by another process, of another cluster or node,
  // or of a newer schema; NOT_FOUND when it does not exist and kMustExist; DATA_LOSS for
  // corruption (repair with Repair(), or wipe the directory and rebuild the node from its
  // peers).
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);

  // Runs LevelDB's repair on a closed data directory: salvages every readable record and
  // rebuilds the metadata. Records in damaged blocks are dropped, so a repaired node should
  // then catch up from its peers. FAILED_PRECONDITION while a process holds the directory.
  static absl::Status Repair(const std::string& path, leveldb::Env* env = nullptr);

  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  crdt::ReplicaId replica_id() const { return replica_id_; }
  // True when this open drew a new replica id: after an unclean stop when that run or this one
  // does not fsync every commit, or on request (StoreOptions::new_incarnation).
  bool rotated_incarnation() const { return rotated_incarnation_; }
  // True when this open finished a repair (mergedb-repair's mark was found).
  bool opened_repaired() const { return repaired_; }
  // The meta records a repair had lost, by name, which this open rebuilt (see Initialize).
  const std::vector<std::string>& rebuilt_meta() const { return lost_meta_; }
  // Whether change-feed position `position`, handed out by incarnation `feed` of this node (its
  // replica id then), names the same change in this store's feed: always for the current
  // incarnation; for an earlier one of this data dir up to the last change that survived into
  // the next incarnation (a restart after an unclean stop without fsync, or a restore from a
  // backup, can drop the changes after it, and new changes take their positions); never for an
  // unknown one (another node's, or older than the last kMaxFeedHistory incarnations).
  bool FeedPositionHolds(crdt::ReplicaId feed, uint64_t position) const;
  static constexpr size_t kMaxFeedHistory = 1024;
  // True when this open was the first of a copy written by Backup (it then rotated too).
  bool opened_backup() const { return opened_backup_; }
  // Testing: makes the destructor close LevelDB like a killed process would, without the
  // clean-shutdown marker.
  void AbandonForTesting() { abandoned_ = true; }
  const std::string& path() const { return options_.path; }

  // ---- Writes ----
  absl::StatusOr<WriteResult> ApplyLocal(const LocalWrite& write);
  // Applies several local writes in order, committed together (one LevelDB write when they fit
  // one group): what a client stream pipelines costs one commit, not one per write. Each write
  // gets its own result; a failed one leaves nothing and does not stop the others.
  std::vector<absl::StatusOr<WriteResult>> ApplyLocalBatch(absl::Span<const LocalWrite> writes);

  // Applies a frame of remote log entries in one commit. Entries of one origin must appear in
  // sequence order. Already-applied entries are skipped; an entry whose predecessor is missing
  // stops its origin (see RemoteApplyResult::gap). INVALID_ARGUMENT (nothing applied) if any
  // delta does not decode. A record's `encoded`, when set, must be its `entry` serialized (the
  // caller parsed one from the other): it is logged as it is.
  absl::StatusOr<RemoteApplyResult> ApplyRemote(absl::Span<const LogRecord> records);

  // Joins document states from a full-state transfer (whole documents or parts, see
  // mergedb.v1.SnapshotDocument) in one commit. They are not deltas of one origin, so no log
  // entries are written; every changed document gets a change record (origin 0). The same
  // commit remembers the sender's request ids this node does not know yet, so that a retry of
  // an update that came inside the transfer is recognized here too.
  absl::Status ApplySnapshot(absl::Span<const SnapshotDoc> docs,
                             absl::Span<const SnapshotRequest> requests = {});
  // Ends a full-state transfer whose snapshot reflected `applied`: raises this node's applied
  // vector to it, and the log floor of every origin raised, since the entries in between never
  // arrived one by one and cannot be forwarded from here.
  absl::Status FinishSnapshot(const VersionVector& applied);

  // ---- Reads ----
  // The document's state: empty with an empty context if never written; empty with a non-empty
  // context (a tombstone) if deleted.
  absl::StatusOr<crdt::Document> Get(absl::string_view collection, absl::string_view id);
  // Calls `fn` with the document under its lock: no copy, for readers of large documents.
  absl::Status Read(absl::string_view collection, absl::string_view id,
                    absl::FunctionRef<void(const crdt::Document&)> fn);
  // Live (not deleted) documents of a collection in id order, after `page_token` (empty: from
  // the start). REQUIRES: page_size > 0.
  absl::StatusOr<ScanPage> Scan(absl::string_view collection, size_t page_size,
                                absl::string_view page_token);

  // ---- Replication log ----
  VersionVector AppliedVector() const;
  // AppliedVector()[replica_id()], without the commit lock (asked on every acknowledgement).
  uint64_t own_applied() const { return own_applied_.load(std::memory_order_acquire); }
  // Log entries the holder of `have` lacks, per origin in sequence order, at most `max_entries`,
  // none of the origins in `skip`. FAILED_PRECONDITION (naming the origin) when some are
  // already truncated or missing: the peer then needs a full-state transfer. DATA_LOSS when an
  // entry is corrupt: LevelDB's block checksums are verified in either form (a parse is no
  // integrity check: a value with flipped bits still parses), and with kParsed it must parse.
  absl::StatusOr<std::vector<LogRecord>> ReadLog(const VersionVector& have, size_t max_entries,
                                                 const std::set<crdt::ReplicaId>& skip = {},
                                                 LogForm form = LogForm::kParsed);
  // Deletes log entries at or below `through` (per origin).
  absl::Status TruncateLog(const VersionVector& through);
  // Per origin, the highest truncated sequence.
  VersionVector LogFloor() const;
  // Log entries held: applied but not yet truncated, over all origins.
  uint64_t log_entries() const;
  absl::Status SetPeerAcked(absl::string_view peer, const VersionVector& acked);
  absl::StatusOr<VersionVector> PeerAcked(absl::string_view peer);

  // ---- Change feed ----
  uint64_t last_change_seq() const;
  // Changes with sequence > after_seq, in order, at most max. OUT_OF_RANGE when changes after
  // `after_seq` were already dropped by TruncateChanges.
  absl::StatusOr<std::vector<std::pair<uint64_t, mergedb::v1::ChangeRecord>>> ReadChanges(
      uint64_t after_seq, size_t max);

  // Drops the oldest change records, keeping the newest `keep` (the change feed's retention).
  absl::Status TruncateChanges(uint64_t keep);
  uint64_t change_floor() const;
  // Change records held: last_change_seq() - change_floor(), read together.
  uint64_t change_feed_entries() const;

  // ---- Client request ids ----
  absl::StatusOr<std::optional<mergedb::v1::RequestRecord>> LookupRequest(
      absl::string_view request_id);
  // Forgets request ids committed before `before_unix_millis`; returns how many.
  absl::StatusOr<size_t> ExpireRequests(int64_t before_unix_millis);

  // ---- Snapshots (full-state transfer, backup) ----
  // A cursor over every document (tombstones included) as of one consistent point, with the
  // applied vector of that point. Writes go on meanwhile.
  absl::StatusOr<std::unique_ptr<SnapshotCursor>> OpenSnapshot();

  // Writes a consistent copy of the whole store, as of one point, into a new LevelDB
  // directory `dir` (through the store's Env; missing parents are created) while writes go
  // on. The copy is a data dir of this cluster and node: put in place of the node's data dir,
  // it opens as a new incarnation (a new replica id, see keys::kMetaFromBackup), so the writes
  // the node accepted after the copy cannot be shadowed by new writes reusing their sequence
  // numbers, and its peers send back what it lacks. Every write of the copy is synced; the
  // copy is marked complete by its last one, and an incomplete copy is refused at open.
  // `cancelled` is polled before the copy and before each 1 MiB batch. ALREADY_EXISTS if `dir`
  // holds anything; CANCELLED if `cancelled()` became true; RESOURCE_EXHAUSTED if the copy
  // would leave, or came to leave, less than StoreOptions::backup_min_free_bytes free; on any
  // error after creating `dir` the partial copy is removed.
  absl::StatusOr<BackupResult> Backup(const std::string& dir,
                                      const std::function<bool()>& cancelled);
  // The same consistent copy, handed to `sink` in batches (the clean-shutdown marker left
  // out) instead of written to a directory: for a copy streamed off the node's machine.
  // `cancelled` is polled as by Backup; an error from the sink ends the copy with that error.
  absl::StatusOr<BackupResult> CopyOut(BackupSink& sink, const std::function<bool()>& cancelled);
  // About how many bytes a copy of the store takes: its tables plus its memtables (erring high).
  uint64_t ApproximateBytes() const;

  // Live documents.
  int64_t document_count() const;
  // A digest of every document's full CRDT state (contexts included): the sum, modulo 2^128,
  // of a 128-bit XXH3 hash of each stored document record (key and canonical value). Order-
  // independent and maintained at each commit, so it reads in O(1); equal digests mean equal
  // states (up to hash collisions). 16 bytes, big-endian.
  std::string state_digest() const;
  // The applied vector and the state digest read at one point (no commit in between).
  std::pair<VersionVector, std::string> AppliedAndDigest() const;
  // The digest computed afresh from every stored document record, by a full scan: what
  // state_digest() must equal whenever no commit is in flight. For tests and checks of the
  // incremental bookkeeping.
  absl::StatusOr<std::string> ScanDigest() const;

  // The changes a waiter cares about: those of one collection, and of one document in it
  // unless `id` is empty.
  struct ChangeFilter {
    std::string collection;
    std::string id;
  };
  // Waits until the change feed holds a change past `after_seq` that `filter` matches, or
  // `timeout` passes; returns the last change sequence. Only the waiters a commit concerns wake
  // up: each Watch stream used to wake (and read the feed) at every commit, which cost every
  // write ~100 us of CPU per watcher. The store remembers the names of its recent changes for
  // this; past what it remembers, a waiter wakes and filters what it reads, as before.
  // `*unmatched_through` (optional) gets the sequence through which every change past
  // `after_seq` is known not to match: a reader may resume past it instead of reading those
  // changes again.
  uint64_t WaitForChange(uint64_t after_seq, const ChangeFilter& filter, absl::Duration timeout,
                         uint64_t* unmatched_through = nullptr);
  // Commits so far (local writes, remote frames, snapshots).
  uint64_t commit_count() const;
  // Calls `listener` with the applied vector after every commit, on the committing
  // thread with the store's commit lock held: it must be quick, must not block and must not
  // call the store. A replication sender uses it to be woken only by commits of entries its
  // link sends (in a full mesh most commits are peers' frames whose entries the other peer
  // receives first-hand). Returns a handle for RemoveAppliedListener.
  uint64_t AddAppliedListener(std::function<void(const VersionVector&)> listener);
  // Once it returns, the listener is not running and will not be called again.
  void RemoveAppliedListener(uint64_t handle);
  // OK, or the failure that made the store refuse writes.
  absl::Status health() const;

 private:
  struct Writer;
  class DocCache;
  class LevelDbSnapshotCursor;

  explicit Store(const StoreOptions& options);
  absl::Status Initialize();
  // The first open after a repair. With peers, every document goes, to come back from them,
  // and the deltas of the log's surviving entries are joined in again. Alone, the documents stay
  // but for those whose records no longer form a state, and the count and the digest are taken
  // again from what is left.
  absl::Status AfterRepair();
  // Joins every delta the log still holds (all origins, whatever gaps the repair left) into the
  // cleared documents: what no peer may have yet survives the repair wherever its entry did.
  absl::Status ReplayLogAfterRepair();
  uint64_t DrawReplicaId();
  // Whether a peer's record of `request_id` (from a log entry or a full-state transfer) is
  // written here: not when this node knows the id, nor when its own record does not read.
  // Called under the stripes of the documents involved, as a local write's lookup is.
  bool RemembersPeersRequest(absl::string_view request_id);
  // The identity file's (cluster, node) (kIdentityFile), nullopt when absent or unreadable.
  std::optional<std::pair<std::string, std::string>> ReadIdentityFile() const;
  // Writes the identity file when it is missing or names another cluster or node (a dir opened
  // by this node passed the meta records' check first). Best effort.
  void KeepIdentityFile();
  // The newest position the change feed handed out that this data dir still shows: its newest
  // change record, or its change floor.
  absl::StatusOr<uint64_t> NewestChangeSeq();

  // A state to join into a document (a remote delta, or a snapshot part) and where it came
  // from, for the change feed. Borrowed pointers: valid for the JoinAndCommit call.
  struct JoinTarget {
    std::string collection;
    std::string id;
    const crdt::Document* state;
    crdt::ReplicaId origin;
    uint64_t seq;
    // The log entry the state came from, whose request id (if any) is remembered here unless
    // this node knows it already; null for a snapshot part.
    const mergedb::v1::LogEntry* request = nullptr;
  };
  // Joins every target into its document under the documents' locks, adds the changed leaves,
  // contexts and change records to `w`, and commits `w`.
  // `requests` (a full-state transfer's) are remembered unless known here, looked up under
  // their documents' stripes as a local write's request id is.
  absl::Status JoinAndCommit(absl::Span<const JoinTarget> targets, Writer* w,
                             absl::Span<const SnapshotRequest> requests = {});

  // The striped lock serializing one document.
  absl::Mutex& DocLock(absl::string_view doc_prefix);
  // The striped lock held from a request id's lookup to its record's commit. The document's
  // lock covers a retry on the same document; this one covers the same id used at the same
  // moment for two documents, which must not both be applied. Taken with the document locks,
  // all in address order.
  absl::Mutex& RequestLock(absl::string_view request_id);
  // Loads the document from the cache or LevelDB. REQUIRES: its DocLock held.
  absl::StatusOr<std::shared_ptr<crdt::Document>> LoadLocked(const std::string& doc_prefix);
  absl::StatusOr<crdt::Document> LoadFromDb(const std::string& doc_prefix,
                                            const leveldb::Snapshot* snapshot);
  // Puts the changed leaves (deleting emptied ones) and the context of a document in `batch`,
  // and adds to `*digest_delta` the change of the state digest (new records minus old ones).
  static void EncodeDocChanges(const std::string& doc_prefix, const crdt::Document& doc,
                               const crdt::LeafChanges& changes,
                               const crdt::CausalContext& context_before,
                               leveldb::WriteBatch* batch, unsigned __int128* digest_delta);
  absl::StatusOr<VersionVector> ReadVector(absl::string_view prefix,
                                           const leveldb::Snapshot* snapshot);
  // Queues `writer` for group commit and returns when its batch is durable (or failed).
  absl::Status Commit(Writer* writer);
  // Commits `writers` in order, adjacent in the queue; the first error, each writer's in its
  // `status`.
  absl::Status Commit(absl::Span<Writer* const> writers);
  void LeadGroup(Writer* leader) ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  // The only way applied_ changes: own_applied_ follows it.
  void SetAppliedLocked(VersionVector applied) ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  // The kMetaSyncedRun record this open writes: how this run commits.
  const char* SyncedRunRecord() const;
  // Runs a local write's mutation on the document (the caller holds its lock) and encodes the
  // commit into `w`. Sets `*to_commit` to the document when there is anything to commit.
  // `pending`, when not null, is the document as an earlier write of the same batch left it,
  // not yet committed: the write builds on it rather than on what the cache or disk holds.
  absl::StatusOr<WriteResult> PrepareLocal(const LocalWrite& write, const std::string& prefix,
                                           Writer* w, std::shared_ptr<crdt::Document>* to_commit,
                                           std::shared_ptr<crdt::Document> pending = nullptr);
  absl::Status FailStore(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  // Deletes key(*floor + 1) .. key(upto) in chunks, recording each chunk's end under
  // `floor_key` and in *floor (guarded by commit_mu_). Each chunk starts from *floor as it is
  // then, under floor_mu_: a floor raised meanwhile is never written back lower.
  absl::Status DeleteThrough(uint64_t* floor, uint64_t upto,
                             absl::FunctionRef<std::string(uint64_t)> key,
                             const std::string& floor_key, absl::string_view what);
  // Log entries of `origin` from `first` to `last`, superseded by a full-state transfer.
  struct SupersededRange {
    crdt::ReplicaId origin;
    uint64_t first;
    uint64_t last;
  };
  // Deletes the superseded entries in chunks, then the record (kMetaSupersededLog) that lists
  // them.
  absl::Status DropSupersededLog(absl::Span<const SupersededRange> ranges);

  const StoreOptions options_;
  leveldb::DB* db_ = nullptr;
  const leveldb::FilterPolicy* filter_policy_ = nullptr;
  // The Env LevelDB writes through: options_.env (or the default), syncing each write-ahead log
  // as it is closed (see SyncClosedLogsEnv in store.cc). Outlives db_.
  std::unique_ptr<leveldb::Env> log_env_;
  crdt::ReplicaId replica_id_ = 0;
  bool rotated_incarnation_ = false;
  // Earlier incarnations (keys::kMetaFeedHistory), oldest first; fixed once open.
  struct FeedEpoch {
    crdt::ReplicaId feed;
    uint64_t last_kept;
  };
  std::vector<FeedEpoch> feed_history_;
  bool opened_backup_ = false;
  std::vector<std::string> lost_meta_;  // meta records a repair lost, rebuilt at open
  bool repaired_ = false;  // the repair marker (or keys::kMetaRepaired) was present at open
  bool abandoned_ = false;

  static constexpr size_t kDocLockStripes = 1024;
  std::array<absl::Mutex, kDocLockStripes> doc_locks_;
  static constexpr size_t kRequestLockStripes = 256;
  std::array<absl::Mutex, kRequestLockStripes> request_locks_;
  std::unique_ptr<DocCache> cache_;

  // Serializes FinishSnapshot from its commit to its last deletion, so that two transfers
  // ending at once never overwrite each other's record of what is still to delete.
  absl::Mutex superseded_mu_ ABSL_ACQUIRED_BEFORE(remote_mu_);
  // Serializes ApplyRemote: two peers may forward the same origin's entries at once.
  absl::Mutex remote_mu_;
  // Orders the two writers of log floors: FinishSnapshot raises them in a commit, truncation
  // in its own batches. Without it a truncation chunk could write back a floor lower than the
  // one a transfer just set (and the entries between never existed here). Taken before
  // commit_mu_.
  absl::Mutex floor_mu_ ABSL_ACQUIRED_BEFORE(commit_mu_);

  mutable absl::Mutex commit_mu_;
  std::deque<Writer*> writers_ ABSL_GUARDED_BY(commit_mu_);  // the commit queue, front first
  VersionVector applied_ ABSL_GUARDED_BY(commit_mu_);
  std::map<uint64_t, std::function<void(const VersionVector&)>> applied_listeners_
      ABSL_GUARDED_BY(commit_mu_);
  uint64_t next_listener_ ABSL_GUARDED_BY(commit_mu_) = 0;
  std::atomic<uint64_t> own_applied_{0};  // applied_[replica_id_]; see SetAppliedLocked
  VersionVector log_floor_ ABSL_GUARDED_BY(commit_mu_);
  uint64_t last_change_seq_ ABSL_GUARDED_BY(commit_mu_) = 0;
  uint64_t change_floor_ ABSL_GUARDED_BY(commit_mu_) = 0;  // changes <= this were dropped
  int64_t doc_count_ ABSL_GUARDED_BY(commit_mu_) = 0;
  unsigned __int128 digest_ ABSL_GUARDED_BY(commit_mu_) = 0;
  // The newest change-feed records' names, oldest first, at most kRecentChanges (see
  // WaitForChange).
  struct RecentChange {
    uint64_t seq;
    std::string collection;
    std::string id;
  };
  static constexpr size_t kRecentChanges = 4096;
  std::deque<RecentChange> recent_changes_ ABSL_GUARDED_BY(commit_mu_);
  uint64_t commit_count_ ABSL_GUARDED_BY(commit_mu_) = 0;
  absl::Status fatal_ ABSL_GUARDED_BY(commit_mu_);
};

}  // namespace mergedb::storage

#endif  // MERGEDB_STORAGE_STORE_H_

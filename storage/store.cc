#include "storage/store.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <list>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "crdt/leaf_key.h"
#include "crdt/leaf_ops.h"
#include "crdt/status_macros.h"
#include "leveldb/db.h"
#include "leveldb/env.h"
#include "leveldb/filter_policy.h"
#include "leveldb/write_batch.h"
#include "storage/keys.h"
#include "xxhash.h"

namespace mergedb::storage {

namespace {

using crdt::Document;
using crdt::ReplicaId;

// Keys per deletion batch (log truncation, the change feed's trim, the log entries a full-state
// transfer supersedes). LevelDB applies batches one at a time from a single queue, so a commit
// waits behind a long deletion batch: chunks of 512 keys keep that wait well under a
// millisecond (8192-key batches showed in the replication lag tail).
constexpr uint64_t kDeletionChunk = 512;

// Every read of the data dir checks the checksums of the table blocks it touches: a block the
// disk damaged is DATA_LOSS, never bytes that happen to parse (a CRC32C per 4 KiB block read
// from a table file; the memtable has none to check).
leveldb::ReadOptions VerifiedReads(const leveldb::Snapshot* snapshot = nullptr) {
  leveldb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.snapshot = snapshot;
  return ro;
}

// The one place LevelDB statuses become absl statuses.
absl::Status FromLevelDb(const leveldb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", s.ToString());
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsNotFound()) return absl::NotFoundError(message);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(message);
  if (s.IsNotSupportedError()) return absl::UnimplementedError(message);
  return absl::UnavailableError(message);  // I/O errors
}

absl::Status BackupCutOff(const std::string& path) {
  return absl::FailedPreconditionError(absl::StrCat(
      "data dir ", path,
      " is a backup that was cut off before it was complete; delete it "
      "and use another backup (or rebuild the node from its peers with an empty data dir)"));
}

// LevelDB creates only the last directory of a path; this creates the ones above it (mkdir -p).
// Errors are left for LevelDB's own open to report.
void CreateParentDirs(leveldb::Env* env, const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    (void)env->CreateDir(path.substr(0, slash));
  }
}

// Makes the entries of directory `dir` durable (what a new file's own fsync does not). Only for
// the real file system; leveldb::Env has no such call.
absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = fd < 0 ? -1 : ::fsync(fd);
  const int error = errno;
  if (fd >= 0) ::close(fd);
  if (rc != 0) {
    char buf[256];
    return absl::UnavailableError(
        absl::StrCat("syncing directory ", dir, ": ", strerror_r(error, buf, sizeof buf)));
  }
  return absl::OkStatus();
}

// Free bytes for an unprivileged writer on the file system that holds `path`, which need not
// exist yet (a backup's directory is created later): asked of its nearest existing ancestor.
absl::StatusOr<uint64_t> FreeBytesOnFileSystem(const std::string& path) {
  std::error_code ec;
  std::filesystem::path at = std::filesystem::absolute(path, ec);
  if (ec) at = ".";
  // Climb only past names that do not exist: a directory that cannot be read (or a dangling
  // link) stops the walk and fails below, rather than measuring some other file system.
  for (;;) {
    (void)std::filesystem::status(at, ec);
    const bool missing = ec == std::errc::no_such_file_or_directory;
    if (!missing || !at.has_parent_path() || at.parent_path() == at) break;
    at = at.parent_path();
  }
  struct statvfs fs {};
  if (statvfs(at.c_str(), &fs) != 0) {
    char buf[256];
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the free space of the file system holding ", path, " (at ",
                     at.string(), "): ", strerror_r(errno, buf, sizeof buf)));
  }
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
}

// LevelDB's memtable (and so its log) size, for a store and for its backups: large enough that
// a flush is rare under load.
constexpr size_t kWriteBufferBytes = size_t{16} << 20;

// The memtable size of a serving store: kWriteBufferBytes, give or take a quarter, drawn per
// open. Every node of a cluster applies the same writes, so with one size for all they fill
// their memtables within milliseconds of each other and flush them at once: on a shared machine
// three flushes of a few hundred milliseconds each then take the cores from the replication
// path together, every couple of seconds under load. Different sizes spread the flushes out.
// With injected randomness (the simulator, tests) the size is fixed, so a replay stays exact.
size_t ServingWriteBufferBytes(bool fixed) {
  if (fixed) return kWriteBufferBytes;
  absl::BitGen gen;
  return absl::Uniform<size_t>(gen, kWriteBufferBytes * 3 / 4, kWriteBufferBytes * 5 / 4);
}

// LevelDB closes a write-ahead log without syncing it when it switches memtables, and leaves it
// to that memtable's flush to make its writes durable (and a close aborts a flush in progress).
// Without an fsync per commit the next log's writes can then reach the disk before the previous
// log's, and a power loss leaves a state no run ever had: later commits, and the meta records
// each of them rewrites (the applied vector, the digest, the clean-close mark), without earlier
// ones. Peers would never send those again, and a clean-close mark would even keep the replica
// id. Syncing each log as it is closed keeps every state that survives a prefix of the commits,
// for one fsync per memtable (16 MiB of writes).
class SyncOnCloseFile : public leveldb::WritableFile {
 public:
  explicit SyncOnCloseFile(leveldb::WritableFile* base) : base_(base) {}
  // LevelDB 1.23 switches logs by deleting the old one's file object without closing it: the
  // sync happens here then (an error can only be lost, as LevelDB itself would lose it).
  ~SyncOnCloseFile() override {
    if (!closed_) (void)base_->Sync();
  }
  leveldb::Status Append(const leveldb::Slice& data) override { return base_->Append(data); }
  leveldb::Status Flush() override { return base_->Flush(); }
  leveldb::Status Sync() override { return base_->Sync(); }
  leveldb::Status Close() override {
    closed_ = true;
    leveldb::Status s = base_->Sync();
    return s.ok() ? base_->Close() : s;
  }

 private:
  std::unique_ptr<leveldb::WritableFile> base_;
  bool closed_ = false;
};

class SyncClosedLogsEnv : public leveldb::EnvWrapper {
 public:
  explicit SyncClosedLogsEnv(leveldb::Env* base) : EnvWrapper(base) {}
  leveldb::Status NewWritableFile(const std::string& fname,
                                  leveldb::WritableFile** result) override {
    leveldb::Status s = target()->NewWritableFile(fname, result);
    if (s.ok() && absl::EndsWith(fname, ".log")) *result = new SyncOnCloseFile(*result);
    return s;
  }
};

// Whole MiB, rounded down: a figure of free space never reads as more than there is.
std::string MiB(uint64_t bytes) { return absl::StrCat(bytes >> 20, " MiB"); }

bool HasPrefix(const leveldb::Slice& key, absl::string_view prefix) {
  return key.size() >= prefix.size() && memcmp(key.data(), prefix.data(), prefix.size()) == 0;
}

absl::string_view View(const leveldb::Slice& s) { return absl::string_view(s.data(), s.size()); }

// One stored record's contribution to the state digest.
unsigned __int128 RecordHash(absl::string_view key, absl::string_view value) {
  std::string buf = keys::EncodeBe64(key.size());
  buf.append(key.data(), key.size());
  buf.append(value.data(), value.size());
  const XXH128_hash_t h = XXH3_128bits(buf.data(), buf.size());
  return (static_cast<unsigned __int128>(h.high64) << 64) | h.low64;
}

std::string EncodeDigest(unsigned __int128 digest) {
  return keys::EncodeBe64(static_cast<uint64_t>(digest >> 64)) +
         keys::EncodeBe64(static_cast<uint64_t>(digest));
}

// REQUIRES: encoded.size() == 16 (EncodeDigest's output).
unsigned __int128 DecodeDigest(absl::string_view encoded) {
  return (static_cast<unsigned __int128>(keys::DecodeBe64(encoded)) << 64) |
         keys::DecodeBe64(encoded.substr(8));
}

std::string EncodeLeafValue(const crdt::DotStore& leaf) {
  mergedb::v1::Leaf proto;
  crdt::DotKernel::EncodeLeaf("", leaf, &proto);
  return crdt::SerializeDeterministic(proto);
}

std::string EncodeContextValue(const crdt::CausalContext& context) {
  mergedb::v1::CausalContext proto;
  context.EncodeTo(&proto);
  return crdt::SerializeDeterministic(proto);
}

std::string DocName(absl::string_view collection, absl::string_view id) {
  return absl::StrCat(collection, "/", id);
}

// Exclusive locks on a sorted set of stripes, released in reverse order.
class StripeLocks {
 public:
  explicit StripeLocks(std::vector<absl::Mutex*> locks) : locks_(std::move(locks)) {
    for (absl::Mutex* mu : locks_) mu->Lock();
  }
  ~StripeLocks() {
    for (auto it = locks_.rbegin(); it != locks_.rend(); ++it) (*it)->Unlock();
  }

 private:
  std::vector<absl::Mutex*> locks_;
};

}  // namespace

// A bounded LRU of decoded documents keyed by document prefix. Entries are shared_ptrs, so an
// evicted document stays valid for a writer that still holds it (under its document lock).
// Thread-safe; its mutex is held only for map and list updates.
class Store::DocCache {
 public:
  explicit DocCache(size_t capacity) : capacity_(capacity) {}

  std::shared_ptr<Document> Lookup(const std::string& key) {
    absl::MutexLock lock(&mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second.position);
    return it->second.doc;
  }

  // What a decoded document takes in memory, roughly, in O(1). Measured with glibc's
  // allocator on x86-64 (mallinfo2): a document with one live entry in one leaf takes about
  // 720 bytes; each further leaf with one entry (a set element, a counter field) about 384;
  // each further live entry in a leaf (a counter's dot per replica that incremented it, a
  // register's concurrent values) about 296; a W1 document written from three replicas 1,776.
  // The estimate below matches those within 5 %, and adds the strings the state holds (leaf
  // keys, register values: DotKernel::heap_bytes), so that a document of large values is
  // charged for them. (It used to be 256 + 160 per leaf: 1.7x under for the smallest
  // document, 3x for a W1 one, and blind to value sizes.)
  static size_t CostOf(const Document& doc) {
    const crdt::DotKernel& kernel = doc.kernel();
    return 336 + 88 * kernel.leaves().size() + 296 * kernel.live_dots() + kernel.heap_bytes();
  }

  // Inserts or refreshes `key` (re-estimating its cost), then evicts down to capacity.
  void Insert(const std::string& key, std::shared_ptr<Document> doc) {
    const size_t cost = CostOf(*doc);
    absl::MutexLock lock(&mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {
      used_ -= it->second.cost;
      lru_.splice(lru_.begin(), lru_, it->second.position);
      it->second.doc = std::move(doc);
      it->second.cost = cost;
    } else {
      lru_.push_front(key);
      map_.emplace(key, Entry{std::move(doc), cost, lru_.begin()});
    }
    used_ += cost;
    while (used_ > capacity_ && lru_.size() > 1) {
      auto victim = map_.find(lru_.back());
      used_ -= victim->second.cost;
      map_.erase(victim);
      lru_.pop_back();
    }
  }

  void Erase(const std::string& key) {
    absl::MutexLock lock(&mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return;
    used_ -= it->second.cost;
    lru_.erase(it->second.position);
    map_.erase(it);
  }

 private:
  struct Entry {
    std::shared_ptr<Document> doc;
    size_t cost;
    std::list<std::string>::iterator position;
  };
  const size_t capacity_;
  absl::Mutex mu_;
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);
  // Open addressing: each write looks a document up about twice on every node, and with
  // std::unordered_map each lookup among ~10,000 cached documents missed the cache on a bucket
  // and a node (1.4 % of all CPU samples under stream LOCAL).
  absl::flat_hash_map<std::string, Entry> map_ ABSL_GUARDED_BY(mu_);
  size_t used_ ABSL_GUARDED_BY(mu_) = 0;
};

// One committer in the group-commit queue. `batch` holds everything that does not depend on
// sequence numbers; the leader adds the rest (log and change keys) in commit order.
struct Store::Writer {
  leveldb::WriteBatch batch;

  // A local write: the delta to log under (this replica, next sequence).
  bool has_local_entry = false;
  std::string local_entry;  // serialized LogEntry
  std::string collection, id;
  bool local_changed = false;  // a change-feed record is due
  bool has_request = false;
  std::string request_id;
  mergedb::v1::RequestRecord request;

  // A remote frame: change records to number, applied-vector advances.
  std::vector<mergedb::v1::ChangeRecord> remote_changes;
  VersionVector applied_updates;
  VersionVector floor_updates;  // full-state transfers: log floors to raise

  int64_t doc_count_delta = 0;
  unsigned __int128 digest_delta = 0;

  // Outputs, set by the leader.
  uint64_t log_seq = 0;
  uint64_t change_seq = 0;
  absl::Status status;
  bool done = false;
  absl::CondVar cv;
};

Store::Store(const StoreOptions& options)
    : options_(options), cache_(std::make_unique<DocCache>(options.cache_bytes)) {}

Store::~Store() {
  if (db_ != nullptr && !abandoned_ && health().ok()) {
    // Marks the close as clean: the next open keeps this incarnation (see Initialize).
    leveldb::WriteOptions sync;
    sync.sync = true;
    (void)db_->Put(sync, keys::Meta(keys::kMetaCleanShutdown), "1");
  }
  delete db_;
  delete filter_policy_;
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("store: empty data dir path");
  if (options.cluster_id.empty() || options.node_name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data dir ", options.path, ": cluster id and node name are required"));
  }
  std::unique_ptr<Store> store(new Store(options));
  absl::Status opened = store->Initialize();
  if (opened.ok() && store->repaired_) opened = store->AfterRepair();
  if (!opened.ok()) {
    // A failed open must leave the directory as it found it: marking it cleanly closed would
    // let the next open keep the replica id after an unclean stop of a no-fsync run.
    store->abandoned_ = true;
    return opened;
  }
  return store;
}

absl::Status Store::Repair(const std::string& path, leveldb::Env* env) {
  leveldb::Options options;
  options.paranoid_checks = true;
  if (env != nullptr) options.env = env;
  // Repair could drop a cut-off copy's incomplete marker and keep the rest, which would then
  // pass for a whole copy.
  if (options.env->FileExists(BackupSentinelPath(path))) return BackupCutOff(path);
  std::vector<std::string> children;
  if (!options.env->GetChildren(path, &children).ok() || children.empty()) {
    return absl::NotFoundError(absl::StrCat("data dir ", path, " does not exist or is empty"));
  }
  // LevelDB's repair takes no lock: run beside a live node it would move that node's log and
  // manifest aside under it, losing every later write, and the node would go on under its old
  // replica id. So take the lock a running node holds, and refuse while it is held.
  leveldb::FileLock* lock = nullptr;
  const leveldb::Status locked = options.env->LockFile(absl::StrCat(path, "/LOCK"), &lock);
  if (!locked.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data dir ", path, " is in use (stop its node before repairing it): ", locked.ToString()));
  }
  // The marker goes first: an open after a repair cut short anywhere still counts the data dir
  // as repaired (a new replica id, documents cleared).
  absl::Status repaired = WriteRepairMarker(options.env, path);
  if (repaired.ok()) {
    repaired =
        FromLevelDb(leveldb::RepairDB(path, options), absl::StrCat("repair of data dir ", path));
  }
  (void)options.env->UnlockFile(lock);
  // What the repair dropped is unknown here. The next open finds the marker, takes a new replica
  // id (a lost context record would otherwise let this node issue again dots its peers hold, and
  // its writes would be dropped there as duplicates: Riak's kv679) and clears the documents,
  // which then come back from the log and the peers (Initialize, AfterRepair).
  return repaired;
}

absl::Status Store::AfterRepair() {
  // Which documents lost records is not knowable here, and a partial one is worse than none to a
  // cluster: a context record that survived its leaves reads as the removal of those leaves, and
  // a join would carry that removal to every peer. So with peers every document goes, as in a
  // wiped node, and the deltas of the log's surviving entries are joined in again; the log and
  // the applied vector stay. The state's digest then differs from the peers' at the same vector,
  // and they reconcile it by full-state transfers (LinkSender::CheckDivergence), while the log's
  // entries still reach any peer that lacks them. A node alone has no one to get documents from:
  // it keeps those that decode.
  const std::string end = keys::DocSpaceEnd();
  const std::string what = absl::StrCat("clearing repaired data dir ", options_.path);
  leveldb::WriteOptions sync;
  sync.sync = true;
  leveldb::WriteBatch chunk;
  size_t in_chunk = 0;
  auto flush = [&]() -> absl::Status {
    if (in_chunk == 0) return absl::OkStatus();
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(db_->Write(sync, &chunk), what));
    chunk.Clear();
    in_chunk = 0;
    return absl::OkStatus();
  };
  int64_t documents = 0;
  {
    // An iterator reads the state as of its creation: the deletions below do not disturb it.
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
    it->Seek(std::string(1, keys::kDocTag));
    while (it->Valid() && View(it->key()) < end) {
      absl::string_view rest = View(it->key()).substr(1);
      std::string collection, id;
      if (options_.has_peers || !crdt::ConsumeName(&rest, &collection) ||
          !crdt::ConsumeName(&rest, &id)) {
        chunk.Delete(it->key());
        ++in_chunk;
        it->Next();
      } else {
        const std::string prefix = keys::DocPrefix(collection, id);
        const std::string past = prefix + "\x02";
        absl::StatusOr<Document> doc = LoadFromDb(prefix, nullptr);
        if (doc.ok()) {
          documents += doc->exists();
        } else if (absl::IsDataLoss(doc.status())) {
          for (it->Seek(prefix); it->Valid() && View(it->key()) < past; it->Next()) {
            chunk.Delete(it->key());
            ++in_chunk;
          }
        } else {
          return doc.status();
        }
        it->Seek(past);
      }
      if (in_chunk >= 10000) MERGEDB_RETURN_IF_ERROR(flush());
    }
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), what));
  }
  MERGEDB_RETURN_IF_ERROR(flush());
  std::string digest = EncodeDigest(0);
  if (!options_.has_peers) {
    MERGEDB_ASSIGN_OR_RETURN(digest, ScanDigest());
  }
  leveldb::WriteBatch batch;
  batch.Put(keys::Meta(keys::kMetaDocCount), keys::EncodeBe64(static_cast<uint64_t>(documents)));
  batch.Put(keys::Meta(keys::kMetaDigest), digest);
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(db_->Write(sync, &batch), what));
  {
    absl::MutexLock lock(&commit_mu_);
    doc_count_ = documents;
    digest_ = DecodeDigest(digest);
  }
  if (options_.has_peers) MERGEDB_RETURN_IF_ERROR(ReplayLogAfterRepair());
  // Only now is the repair done with: an open cut short before this point does it all again
  // (another new replica id, the documents cleared and the log replayed once more).
  leveldb::WriteBatch done;
  done.Delete(keys::Meta(keys::kMetaRepaired));
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(db_->Write(sync, &done), what));
  leveldb::Env* env = options_.env != nullptr ? options_.env : leveldb::Env::Default();
  const std::string marker = RepairMarkerPath(options_.path);
  if (env->FileExists(marker)) {
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(env->RemoveFile(marker), what));
  }
  return absl::OkStatus();
}

absl::Status Store::ReplayLogAfterRepair() {
  // Each entry is a delta: a join of deltas never reads as the removal of something it did not
  // remove (unlike what a repair left of a document), so the result is safe to serve, to the
  // peers' full-state transfers above all. Without it a peer that lacked entries past a damaged
  // block got an empty transfer carrying this node's applied vector, and never asked for those
  // entries again: writes this node alone held were lost though its log still had them.
  // Entries already truncated are held by every peer, which reconcile the rest.
  absl::MutexLock remote_lock(&remote_mu_);
  const std::string end(1, static_cast<char>(keys::kLogTag + 1));
  constexpr size_t kChunk = 1000;
  std::vector<Document> deltas;
  std::vector<mergedb::v1::LogEntry> entries;
  std::vector<std::pair<ReplicaId, uint64_t>> positions;
  std::set<std::pair<std::string, std::string>> touched;
  auto join = [&]() -> absl::Status {
    if (deltas.empty()) return absl::OkStatus();
    std::vector<JoinTarget> targets;
    targets.reserve(deltas.size());
    for (size_t i = 0; i < deltas.size(); ++i) {
      targets.push_back({entries[i].collection(), entries[i].id(), &deltas[i], positions[i].first,
                         positions[i].second});
      // A request record the repair dropped comes back from its entry, so that a retry is
      // still recognized here.
      targets.back().request = &entries[i];
    }
    Writer w;
    MERGEDB_RETURN_IF_ERROR(JoinAndCommit(targets, &w));
    deltas.clear();
    entries.clear();
    positions.clear();
    return absl::OkStatus();
  };
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
  for (it->Seek(std::string(1, keys::kLogTag)); it->Valid() && View(it->key()) < end; it->Next()) {
    const absl::string_view key = View(it->key());
    // RepairDB keeps only records whose block checksums held, so an entry that does not
    // decode is not expected; it would have nothing to give, and is passed over like a lost one.
    mergedb::v1::LogEntry entry;
    if (key.size() != 17 ||
        !entry.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      continue;
    }
    absl::StatusOr<Document> delta = Document::Decode(entry.delta());
    if (!delta.ok()) continue;
    touched.emplace(entry.collection(), entry.id());
    deltas.push_back(*std::move(delta));
    entries.push_back(std::move(entry));
    positions.emplace_back(keys::DecodeBe64(key.substr(1, 8)), keys::DecodeBe64(key.substr(9)));
    if (deltas.size() >= kChunk) MERGEDB_RETURN_IF_ERROR(join());
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(
      it->status(), absl::StrCat("replaying the log of repaired data dir ", options_.path)));
  MERGEDB_RETURN_IF_ERROR(join());
  // Past a gap in an origin's entries, a counter can hold two of that origin's entries (the one
  // before the gap was replaced by a lost entry), which would count twice: only the newest stays.
  std::vector<std::pair<std::string, std::string>> names;
  for (const auto& [collection, id] : touched) {
    MERGEDB_ASSIGN_OR_RETURN(Document doc, Get(collection, id));
    MERGEDB_ASSIGN_OR_RETURN(Document stale,
                             Document::FromKernel(crdt::StaleCounterEntriesDelta(doc.kernel())));
    if (stale.context().empty()) continue;
    deltas.push_back(std::move(stale));
    names.emplace_back(collection, id);
  }
  std::vector<JoinTarget> targets;
  for (size_t i = 0; i < deltas.size(); ++i) {
    targets.push_back({names[i].first, names[i].second, &deltas[i], 0, 0});
    if (targets.size() >= kChunk || i + 1 == deltas.size()) {
      Writer w;
      MERGEDB_RETURN_IF_ERROR(JoinAndCommit(targets, &w));
      targets.clear();
    }
  }
  return absl::OkStatus();
}

absl::Status Store::Initialize() {
  const std::string& path = options_.path;
  leveldb::Options options;
  options.create_if_missing = options_.create_mode == CreateMode::kCreateIfMissing;
  // Without paranoid checks LevelDB can open a log with garbage in its middle, or recover
  // after a full disk, and report OK with acknowledged records gone.
  options.paranoid_checks = true;
  options.write_buffer_size = ServingWriteBufferBytes(static_cast<bool>(options_.random));
  filter_policy_ = leveldb::NewBloomFilterPolicy(10);
  options.filter_policy = filter_policy_;
  if (options_.env != nullptr) options.env = options_.env;
  log_env_ = std::make_unique<SyncClosedLogsEnv>(options.env);
  options.env = log_env_.get();

  // A backup's sentinel file (BackupWriter): the copy was being written. Without LevelDB's
  // CURRENT file it was cut off before it held anything (and LevelDB must not create a store
  // there); a copy cut off later may fail to open at all.
  const std::string sentinel = BackupSentinelPath(path);
  const bool backup_sentinel = options.env->FileExists(sentinel);
  if (backup_sentinel && !options.env->FileExists(absl::StrCat(path, "/CURRENT"))) {
    return BackupCutOff(path);
  }
  if (options.create_if_missing) CreateParentDirs(options.env, path);
  leveldb::Status s = leveldb::DB::Open(options, path, &db_);
  if (!s.ok()) {
    db_ = nullptr;
    // A copy whose writer died mid-write can hold a torn log; a lock or an I/O error says
    // nothing about the copy (its writer may still be at work).
    if (backup_sentinel && s.IsCorruption()) return BackupCutOff(path);
    const std::string detail = s.ToString();
    if (s.IsIOError() && absl::StrContains(detail, "lock")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data dir ", path, " is locked: another mergedb process is using it (", detail, ")"));
    }
    if (s.IsInvalidArgument() && absl::StrContains(detail, "does not exist")) {
      return absl::NotFoundError(absl::StrCat("data dir ", path, " does not exist"));
    }
    if (s.IsCorruption()) {
      return absl::DataLossError(absl::StrCat(
          "data dir ", path, " is corrupted (", detail, "). Salvage it with `mergedb-repair ", path,
          "` (drops damaged records; the node then catches up from its peers), or wipe it so the "
          "node rebuilds from its peers"));
    }
    return FromLevelDb(s, absl::StrCat("opening data dir ", path));
  }

  // A repair drops what it cannot read, and the meta records sort first: one damaged block can
  // take all of them. After mergedb-repair (its marker file), the open rebuilds what they said
  // (below) instead of refusing the data dir: the names come from the identity file (or, in a
  // dir older than it, the flags), the schema is this version's, a new replica id is drawn
  // anyway, the document count and digest are taken again (AfterRepair), and the change feed
  // continues after its newest surviving record, above a floor below its oldest one.
  const bool repair_marked = options.env->FileExists(RepairMarkerPath(path));
  std::string schema;
  s = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaSchema), &schema);
  if (s.IsNotFound() && repair_marked && !backup_sentinel) {
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
    it->SeekToFirst();
    if (it->Valid()) {
      schema = absl::StrCat(keys::kSchemaVersion);
      lost_meta_.push_back(std::string(keys::kMetaSchema));
      s = leveldb::Status::OK();
    }
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("reading data dir ", path)));
  }
  if (s.IsNotFound()) {
    // A backup writer's first record is its incomplete marker, synced before any copied record:
    // a copy with no schema record yet was cut off, and is no new data dir.
    if (backup_sentinel) return BackupCutOff(path);
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
    it->SeekToFirst();
    if (it->Valid()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data dir ", path, " holds data but no mergedb schema record: not a mergedb data dir"));
    }
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("reading data dir ", path)));
    // A new data directory: a fresh incarnation id, never derived from the name or config, so
    // a node rebuilt after losing its data never reuses old dots.
    do {
      replica_id_ = DrawReplicaId();
    } while (replica_id_ == 0);
    leveldb::WriteBatch batch;
    batch.Put(keys::Meta(keys::kMetaSchema), absl::StrCat(keys::kSchemaVersion));
    batch.Put(keys::Meta(keys::kMetaCluster), options_.cluster_id);
    batch.Put(keys::Meta(keys::kMetaNode), options_.node_name);
    batch.Put(keys::Meta(keys::kMetaReplica), keys::EncodeBe64(replica_id_));
    batch.Put(keys::Meta(keys::kMetaChangeSeq), keys::EncodeBe64(0));
    batch.Put(keys::Meta(keys::kMetaDocCount), keys::EncodeBe64(0));
    batch.Put(keys::Meta(keys::kMetaDigest), EncodeDigest(0));
    batch.Put(keys::Meta(keys::kMetaSyncedRun), SyncedRunRecord());
    batch.Put(keys::DocSpaceEnd(), "");
    leveldb::WriteOptions sync;
    sync.sync = true;
    MERGEDB_RETURN_IF_ERROR(
        FromLevelDb(db_->Write(sync, &batch), absl::StrCat("initializing data dir ", path)));
    // A repair that left nothing: this is a new data dir, and its mark must not make a later
    // open clear what the peers send it meanwhile.
    if (repair_marked) {
      MERGEDB_RETURN_IF_ERROR(FromLevelDb(options.env->RemoveFile(RepairMarkerPath(path)),
                                          absl::StrCat("initializing data dir ", path)));
    }
    KeepIdentityFile();
    return absl::OkStatus();
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(s, absl::StrCat("reading data dir ", path)));

  int version = 0;
  if (!absl::SimpleAtoi(schema, &version) || version < 1) {
    return absl::DataLossError(
        absl::StrCat("data dir ", path, ": unreadable schema version '", schema, "'"));
  }
  if (version > keys::kSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("data dir ", path, " has schema version ", version,
                     "; this mergedb supports up to ", keys::kSchemaVersion, ": upgrade mergedb"));
  }
  leveldb::WriteBatch open_batch;
  // Reads a meta record; after a repair, one the repair lost reads as `rebuilt`, written back
  // with this open.
  auto read_meta = [&](absl::string_view name, std::string* value,
                       const std::string& rebuilt) -> absl::Status {
    leveldb::Status ms = db_->Get(VerifiedReads(), keys::Meta(name), value);
    if (ms.IsNotFound() && repair_marked) {
      *value = rebuilt;
      lost_meta_.push_back(std::string(name));
      if (!rebuilt.empty()) open_batch.Put(keys::Meta(name), rebuilt);
      return absl::OkStatus();
    }
    if (ms.IsNotFound()) {
      return absl::DataLossError(absl::StrCat("data dir ", path, ": meta record '", name,
                                              "' is missing"));
    }
    return FromLevelDb(ms, absl::StrCat("reading data dir ", path));
  };
  if (!lost_meta_.empty()) open_batch.Put(keys::Meta(keys::kMetaSchema), schema);
  std::string cluster, node, replica, change_seq, doc_count, digest;
  // Lost names come from the identity file, so that a wrong node or cluster is still refused
  // below; only a dir older than that file takes them from the flags.
  const auto identity = repair_marked ? ReadIdentityFile() : std::nullopt;
  MERGEDB_RETURN_IF_ERROR(read_meta(keys::kMetaCluster, &cluster,
                                    identity.has_value() ? identity->first : options_.cluster_id));
  MERGEDB_RETURN_IF_ERROR(read_meta(keys::kMetaNode, &node,
                                    identity.has_value() ? identity->second : options_.node_name));
  // Lost, the replica id is unknown (0): a repaired data dir draws a new one below anyway.
  MERGEDB_RETURN_IF_ERROR(read_meta(keys::kMetaReplica, &replica, keys::EncodeBe64(0)));
  if (repair_marked) {
    MERGEDB_ASSIGN_OR_RETURN(const uint64_t newest_change, NewestChangeSeq());
    MERGEDB_RETURN_IF_ERROR(
        read_meta(keys::kMetaChangeSeq, &change_seq, keys::EncodeBe64(newest_change)));
    // A repair can also bring back an older value of the record (the block with the newest
    // one lost): the feed must not hand out again a position a change still holds.
    if (change_seq.size() == 8 && keys::DecodeBe64(change_seq) < newest_change) {
      change_seq = keys::EncodeBe64(newest_change);
      open_batch.Put(keys::Meta(keys::kMetaChangeSeq), change_seq);
    }
  } else {
    MERGEDB_RETURN_IF_ERROR(read_meta(keys::kMetaChangeSeq, &change_seq, ""));
  }
  // Taken again from the documents by AfterRepair.
  MERGEDB_RETURN_IF_ERROR(read_meta(keys::kMetaDocCount, &doc_count, keys::EncodeBe64(0)));
  MERGEDB_RETURN_IF_ERROR(read_meta(keys::kMetaDigest, &digest, EncodeDigest(0)));
  if (cluster != options_.cluster_id) {
    return absl::FailedPreconditionError(absl::StrCat("data dir ", path, " belongs to cluster '",
                                                      cluster, "', not '", options_.cluster_id,
                                                      "'"));
  }
  if (node != options_.node_name) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data dir ", path, " belongs to node '", node, "', not '", options_.node_name, "'"));
  }
  if (replica.size() != 8 || change_seq.size() != 8 || doc_count.size() != 8 ||
      digest.size() != 16) {
    return absl::DataLossError(absl::StrCat("data dir ", path, ": malformed meta records"));
  }
  replica_id_ = keys::DecodeBe64(replica);
  // Without an fsync per commit, a power loss after an unclean stop may have dropped the tail of
  // this node's own log after peers received it. Reusing those sequence numbers and dots for new
  // writes would make replicas silently disagree (Riak's kv679), so after any unclean stop a
  // no-fsync node continues as a new incarnation; its old writes stay under the old id, and the
  // peers send back any it lost.
  std::string clean;
  leveldb::Status cs = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaCleanShutdown), &clean);
  if (!cs.ok() && !cs.IsNotFound()) return FromLevelDb(cs, absl::StrCat("reading ", path));
  // What counts is how the run that stopped uncleanly committed, not how this one will: a
  // no-fsync node that lost power and comes back with --fsync has lost the tail all the same.
  std::string synced_run;
  leveldb::Status sr = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaSyncedRun), &synced_run);
  if (!sr.ok() && !sr.IsNotFound()) return FromLevelDb(sr, absl::StrCat("reading ", path));
  const bool unsynced_run = synced_run != "1" || options_.durability == Durability::kNoSync;
  open_batch.Delete(keys::Meta(keys::kMetaCleanShutdown));
  open_batch.Put(keys::DocSpaceEnd(), "");  // data dirs written before the fence existed
  open_batch.Put(keys::Meta(keys::kMetaSyncedRun), SyncedRunRecord());
  std::string from_backup;
  leveldb::Status fb = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaFromBackup), &from_backup);
  if (!fb.ok() && !fb.IsNotFound()) return FromLevelDb(fb, absl::StrCat("reading ", path));
  opened_backup_ = fb.ok();
  if (opened_backup_) {
    if (from_backup != keys::kBackupComplete) return BackupCutOff(path);
    open_batch.Delete(keys::Meta(keys::kMetaFromBackup));
  }
  // A whole copy (marked complete, or, opened before, with a schema record and no marker) whose
  // sentinel's removal did not last: removed now.
  if (backup_sentinel) {
    MERGEDB_RETURN_IF_ERROR(
        FromLevelDb(options.env->RemoveFile(sentinel), absl::StrCat("removing ", sentinel)));
  }
  std::string feed_history;
  leveldb::Status fh = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaFeedHistory), &feed_history);
  if (!fh.ok() && !fh.IsNotFound()) return FromLevelDb(fh, absl::StrCat("reading ", path));
  if (feed_history.size() % 16 != 0) {
    return absl::DataLossError(absl::StrCat("data dir ", path, ": malformed feed history"));
  }
  for (size_t at = 0; at < feed_history.size(); at += 16) {
    const absl::string_view entry = absl::string_view(feed_history).substr(at, 16);
    feed_history_.push_back(
        {keys::DecodeBe64(entry.substr(0, 8)), keys::DecodeBe64(entry.substr(8))});
  }
  // The repair's marker file, or the meta record mergedb-repair wrote before it had one.
  std::string repaired;
  leveldb::Status rp = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaRepaired), &repaired);
  if (!rp.ok() && !rp.IsNotFound()) return FromLevelDb(rp, absl::StrCat("reading ", path));
  repaired_ = rp.ok() || repair_marked;
  if ((cs.IsNotFound() && unsynced_run) || options_.new_incarnation || opened_backup_ ||
      repaired_) {
    const crdt::ReplicaId previous = replica_id_;
    do {
      replica_id_ = DrawReplicaId();
    } while (replica_id_ == 0 || replica_id_ == previous);
    open_batch.Put(keys::Meta(keys::kMetaReplica), keys::EncodeBe64(replica_id_));
    rotated_incarnation_ = true;
    // The feed as it is now survived the old incarnation: what it handed out beyond this point
    // was lost with an unsynced tail, or lies past the point a backup was taken, and new changes
    // will take those positions. (An old incarnation a repair lost the id of cannot be named:
    // resuming from its positions is then refused as from an unknown feed.)
    if (previous != 0) feed_history_.push_back({previous, keys::DecodeBe64(change_seq)});
    if (feed_history_.size() > kMaxFeedHistory) {
      feed_history_.erase(feed_history_.begin(),
                          feed_history_.end() - static_cast<ptrdiff_t>(kMaxFeedHistory));
    }
    std::string record;
    for (const FeedEpoch& epoch : feed_history_) {
      absl::StrAppend(&record, keys::EncodeBe64(epoch.feed), keys::EncodeBe64(epoch.last_kept));
    }
    open_batch.Put(keys::Meta(keys::kMetaFeedHistory), record);
  }
  std::string change_floor;
  leveldb::Status fs = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaChangeFloor), &change_floor);
  if (!fs.ok() && !fs.IsNotFound()) return FromLevelDb(fs, absl::StrCat("reading ", path));
  if (fs.ok() && change_floor.size() != 8) {
    return absl::DataLossError(absl::StrCat("data dir ", path, ": malformed change floor"));
  }
  if (fs.IsNotFound() && repaired_) {
    // No floor: the feed was never trimmed, or the repair lost the record. Either way the feed
    // now starts at its oldest surviving change: a Watch resuming from an older position is
    // told its changes were trimmed (OUT_OF_RANGE) rather than read a gap.
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
    it->Seek(std::string(1, keys::kChangeTag));
    uint64_t floor = keys::DecodeBe64(change_seq);  // no change left: all of them are gone
    if (it->Valid() && it->key().size() == 9 && it->key()[0] == keys::kChangeTag) {
      floor = std::min(floor, keys::DecodeBe64(View(it->key()).substr(1)) - 1);
    }
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("reading ", path)));
    if (floor > 0) {
      change_floor = keys::EncodeBe64(floor);
      open_batch.Put(keys::Meta(keys::kMetaChangeFloor), change_floor);
      fs = leveldb::Status::OK();
    }
  }
  {
    leveldb::WriteOptions sync;
    sync.sync = true;
    MERGEDB_RETURN_IF_ERROR(
        FromLevelDb(db_->Write(sync, &open_batch), absl::StrCat("opening data dir ", path)));
  }
  MERGEDB_ASSIGN_OR_RETURN(VersionVector applied,
                           ReadVector(std::string(1, keys::kAppliedTag), nullptr));
  MERGEDB_ASSIGN_OR_RETURN(VersionVector floors,
                           ReadVector(std::string(1, keys::kLogFloorTag), nullptr));
  // A crash between a full-state transfer's final commit and its deletions left entries that
  // nothing will read again: delete them now.
  std::string superseded_record;
  leveldb::Status ss =
      db_->Get(VerifiedReads(), keys::Meta(keys::kMetaSupersededLog), &superseded_record);
  if (!ss.ok() && !ss.IsNotFound()) return FromLevelDb(ss, absl::StrCat("reading ", path));
  if (ss.ok()) {
    if (superseded_record.empty() || superseded_record.size() % 24 != 0) {
      return absl::DataLossError(
          absl::StrCat("data dir ", path, ": malformed record of superseded log entries"));
    }
    std::vector<SupersededRange> superseded;
    for (size_t at = 0; at < superseded_record.size(); at += 24) {
      const absl::string_view entry = absl::string_view(superseded_record).substr(at, 24);
      SupersededRange range{keys::DecodeBe64(entry.substr(0, 8)),
                            keys::DecodeBe64(entry.substr(8, 8)),
                            keys::DecodeBe64(entry.substr(16))};
      // Only entries below the origin's floor were superseded: whatever the record says, an
      // entry a reader could still get is never deleted.
      auto floor = floors.find(range.origin);
      if (floor == floors.end() || range.first == 0) continue;
      range.last = std::min(range.last, floor->second);
      if (range.first <= range.last) superseded.push_back(range);
    }
    // With nothing left to delete, the record still goes (an empty list deletes only it).
    MERGEDB_RETURN_IF_ERROR(DropSupersededLog(superseded));
  }
  absl::MutexLock lock(&commit_mu_);
  SetAppliedLocked(std::move(applied));
  log_floor_ = std::move(floors);
  last_change_seq_ = keys::DecodeBe64(change_seq);
  doc_count_ = static_cast<int64_t>(keys::DecodeBe64(doc_count));
  digest_ = DecodeDigest(digest);
  change_floor_ = fs.ok() ? keys::DecodeBe64(change_floor) : 0;
  KeepIdentityFile();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Store::NewestChangeSeq() {
  const std::string what = absl::StrCat("reading the change feed of ", options_.path);
  uint64_t newest = 0;
  std::string floor;
  leveldb::Status fs = db_->Get(VerifiedReads(), keys::Meta(keys::kMetaChangeFloor), &floor);
  if (fs.ok() && floor.size() == 8) newest = keys::DecodeBe64(floor);
  if (!fs.ok() && !fs.IsNotFound()) return FromLevelDb(fs, what);
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
  it->Seek(std::string(1, static_cast<char>(keys::kChangeTag + 1)));
  if (it->Valid()) {
    it->Prev();
  } else {
    it->SeekToLast();
  }
  if (it->Valid() && it->key().size() == 9 && it->key()[0] == keys::kChangeTag) {
    newest = std::max(newest, keys::DecodeBe64(View(it->key()).substr(1)));
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), what));
  return newest;
}

std::string RepairMarkerPath(const std::string& dir) {
  return absl::StrCat(dir, "/", kRepairMarkerFile);
}

namespace {
// Writes `contents` into the file `name` of `dir`, synced, with its directory entry (leveldb::Env
// cannot sync a directory; only the real file system needs it).
absl::Status WriteSyncedFile(leveldb::Env* env, const std::string& dir, absl::string_view name,
                             absl::string_view contents, const std::string& what) {
  leveldb::WritableFile* raw = nullptr;
  MERGEDB_RETURN_IF_ERROR(
      FromLevelDb(env->NewWritableFile(absl::StrCat(dir, "/", name), &raw), what));
  std::unique_ptr<leveldb::WritableFile> file(raw);
  MERGEDB_RETURN_IF_ERROR(
      FromLevelDb(file->Append(leveldb::Slice(contents.data(), contents.size())), what));
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(file->Sync(), what));
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(file->Close(), what));
  return env == leveldb::Env::Default() ? SyncDirectory(dir) : absl::OkStatus();
}

// The identity file's text for `cluster` and `node`; empty when a name would not fit on a line.
std::string IdentityText(const std::string& cluster, const std::string& node) {
  if (absl::StrContains(cluster, '\n') || absl::StrContains(node, '\n')) return "";
  return absl::StrCat("cluster=", cluster, "\nnode=", node, "\n");
}
}  // namespace

absl::Status WriteRepairMarker(leveldb::Env* env, const std::string& dir) {
  // The mark must be durable before the repair changes anything.
  return WriteSyncedFile(
      env, dir, kRepairMarkerFile,
      "mergedb-repair ran here: the next open takes a new replica id and clears the documents\n",
      absl::StrCat("marking data dir ", dir, " repaired"));
}

bool Store::RemembersPeersRequest(absl::string_view request_id) {
  // A record this node holds already (its own, or an earlier copy) stays; so does one that does
  // not read: a damaged record must not fail, on every attempt, the frame or transfer chunk
  // that carries its id (request records are a convenience beside the state).
  absl::StatusOr<std::optional<mergedb::v1::RequestRecord>> known = LookupRequest(request_id);
  return known.ok() && !known->has_value();
}

std::optional<std::pair<std::string, std::string>> Store::ReadIdentityFile() const {
  leveldb::Env* env = options_.env != nullptr ? options_.env : leveldb::Env::Default();
  std::string text;
  if (!leveldb::ReadFileToString(env, absl::StrCat(options_.path, "/", kIdentityFile), &text)
           .ok()) {
    return std::nullopt;
  }
  std::string cluster, node;
  bool has_cluster = false, has_node = false;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "cluster=")) {
      cluster = std::string(line);
      has_cluster = true;
    } else if (absl::ConsumePrefix(&line, "node=")) {
      node = std::string(line);
      has_node = true;
    }
  }
  if (!has_cluster || !has_node) return std::nullopt;
  return std::make_pair(std::move(cluster), std::move(node));
}

void Store::KeepIdentityFile() {
  const std::string text = IdentityText(options_.cluster_id, options_.node_name);
  if (text.empty()) return;
  auto current = ReadIdentityFile();
  if (current.has_value() && IdentityText(current->first, current->second) == text) return;
  // An aid for a later repair, not the data: a dir whose file cannot be written still opens.
  leveldb::Env* env = options_.env != nullptr ? options_.env : leveldb::Env::Default();
  (void)WriteSyncedFile(env, options_.path, kIdentityFile, text,
                        absl::StrCat("writing the identity file of ", options_.path));
}

// ---- Backups ----

std::string BackupSentinelPath(const std::string& dir) {
  return absl::StrCat(dir, "/", kBackupSentinelFile);
}

absl::StatusOr<std::unique_ptr<BackupWriter>> BackupWriter::Create(const std::string& dir,
                                                                   Options options) {
  std::unique_ptr<BackupWriter> writer(new BackupWriter(dir, std::move(options)));
  MERGEDB_RETURN_IF_ERROR(writer->Start());
  return writer;
}

BackupWriter::BackupWriter(const std::string& dir, Options options)
    : dir_(dir), options_(std::move(options)) {
  if (options_.env == nullptr) options_.env = leveldb::Env::Default();
  if (!options_.free_space && options_.env == leveldb::Env::Default()) {
    options_.free_space = FreeBytesOnFileSystem;
  }
  if (!options_.free_space) options_.min_free_bytes = 0;
}

BackupWriter::~BackupWriter() {
  if (!finished_) (void)Abandon(absl::OkStatus());
}

leveldb::Options BackupWriter::LevelDbOptions() const {
  leveldb::Options options;
  options.create_if_missing = true;
  options.error_if_exists = true;
  options.paranoid_checks = true;
  options.write_buffer_size = kWriteBufferBytes;
  options.filter_policy = filter_policy_.get();
  options.env = options_.env;
  return options;
}

absl::Status BackupWriter::Start() {
  leveldb::Env* env = options_.env;
  // Only a directory this writer creates is written to, and removed on failure: a directory
  // that holds anything (an earlier backup, complete or not, or unrelated files) is left alone.
  std::vector<std::string> present;
  dir_existed_ = env->GetChildren(dir_, &present).ok();
  if (dir_existed_) {
    present.erase(std::remove_if(present.begin(), present.end(),
                                 [](const std::string& name) { return name == "." || name == ".."; }),
                  present.end());
    if (!present.empty()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "backup directory ", dir_, " already exists and is not empty; choose a new name"));
    }
  }
  // Space: the copy ends up about `expected_bytes` and, while being written, also holds a log
  // of up to one memtable. Checked again before every batch (Append), since the copy's source
  // and other files go on growing meanwhile.
  if (options_.min_free_bytes > 0) {
    const uint64_t needed = options_.expected_bytes + kWriteBufferBytes;
    MERGEDB_ASSIGN_OR_RETURN(const uint64_t free, options_.free_space(dir_));
    if (free < needed + options_.min_free_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("backup refused: the file system of ", dir_, " has ", MiB(free),
                       " free; the copy needs about ", MiB(needed), " and ",
                       MiB(options_.min_free_bytes), " are kept free"));
    }
  }
  filter_policy_.reset(leveldb::NewBloomFilterPolicy(10));
  const leveldb::Options options = LevelDbOptions();
  CreateParentDirs(env, dir_);
  // The sentinel file goes in, durably, before LevelDB creates anything: a crash after
  // LevelDB's first files and before the incomplete marker below would otherwise leave an empty
  // store, which a node would take for a new data dir.
  (void)env->CreateDir(dir_);
  {
    absl::Status created = CreateSentinel();
    if (!created.ok()) {
      if (!absl::IsAlreadyExists(created)) {
        (void)env->RemoveFile(BackupSentinelPath(dir_));
        if (!dir_existed_) (void)env->RemoveDir(dir_);
      }
      return created;
    }
  }
  leveldb::DB* raw = nullptr;
  leveldb::Status s = leveldb::DB::Open(options, dir_, &raw);
  if (!s.ok()) {
    // A database appeared since the check without a writer's sentinel (a node started on this
    // directory): leave it alone. Anything else failed while creating this writer's own copy.
    const std::string detail = s.ToString();
    if (absl::StrContains(detail, "exists") || absl::StrContains(detail, "lock")) {
      (void)env->RemoveFile(BackupSentinelPath(dir_));  // this writer's own (exclusive)
      return absl::AlreadyExistsError(
          absl::StrCat("backup directory ", dir_, " is being written by another backup"));
    }
    (void)RemoveCopy();
    return FromLevelDb(s, absl::StrCat("creating backup directory ", dir_));
  }
  db_.reset(raw);
  opened_ = true;
  // Until the last batch lands the copy says it is incomplete, so a copy cut off by a crash
  // is refused at open instead of passing for a whole store (its counters and digest are
  // among the first records copied). This marker is what a copy written by another client
  // carries (api.proto); the sentinel file covers the moment before it.
  leveldb::WriteBatch batch;
  batch.Put(keys::Meta(keys::kMetaFromBackup), std::string(keys::kBackupIncomplete));
  return Write(&batch);
}

absl::Status BackupWriter::CreateSentinel() {
  leveldb::Env* env = options_.env;
  const std::string path = BackupSentinelPath(dir_);
  constexpr absl::string_view kText =
      "a backup is being written here: not a data dir until it is gone\n";
  // Exclusive: of two writers of the same name that both got past the emptiness check, the
  // second stops here, before it touches the first one's copy.
  if (env != leveldb::Env::Default()) {
    if (env->FileExists(path)) {
      return absl::AlreadyExistsError(
          absl::StrCat("backup directory ", dir_, " is being written by another backup"));
    }
    return FromLevelDb(
        leveldb::WriteStringToFile(env, leveldb::Slice(kText.data(), kText.size()), path),
        absl::StrCat("creating backup directory ", dir_));
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 && errno == EEXIST) {
    return absl::AlreadyExistsError(
        absl::StrCat("backup directory ", dir_, " is being written by another backup"));
  }
  bool written = fd >= 0 &&
                 ::write(fd, kText.data(), kText.size()) == static_cast<ssize_t>(kText.size()) &&
                 ::fsync(fd) == 0;
  const int error = errno;
  if (fd >= 0) written = ::close(fd) == 0 && written;
  if (!written) {
    char buf[256];
    return absl::UnavailableError(absl::StrCat("creating backup directory ", dir_, ": ", path, ": ",
                                               strerror_r(error, buf, sizeof buf)));
  }
  // The directory entry must be durable before any of LevelDB's.
  return SyncDirectory(dir_);
}

absl::Status BackupWriter::Write(leveldb::WriteBatch* batch) {
  // Every write is synced: LevelDB closes a full memtable's log without syncing it, so one
  // synced write at the end would leave earlier parts of a copy over 16 MiB unsynced. One
  // fsync per MiB costs little beside the copying.
  leveldb::WriteOptions sync;
  sync.sync = true;
  return FromLevelDb(db_->Write(sync, batch), absl::StrCat("writing backup ", dir_));
}

absl::Status BackupWriter::Append(const std::vector<std::pair<std::string, std::string>>& records) {
  if (db_ == nullptr || finished_) {
    return absl::FailedPreconditionError(absl::StrCat("backup ", dir_, " is closed"));
  }
  uint64_t bytes = 0;
  leveldb::WriteBatch batch;
  const std::string marker = keys::Meta(keys::kMetaFromBackup);
  for (const auto& [key, value] : records) {
    if (key == marker) {
      return absl::InvalidArgumentError("a backup's records must not hold its own marker");
    }
    batch.Put(key, value);
    bytes += key.size() + value.size();
  }
  if (options_.min_free_bytes > 0) {
    MERGEDB_ASSIGN_OR_RETURN(const uint64_t free, options_.free_space(dir_));
    if (free < options_.min_free_bytes + bytes + kWriteBufferBytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "backup stopped after ", MiB(bytes_), ": the file system of ", dir_, " has ", MiB(free),
          " free, under the ", MiB(options_.min_free_bytes),
          " kept free plus room for the copy's next batch and its log (",
          MiB(bytes + kWriteBufferBytes), ")"));
    }
  }
  MERGEDB_RETURN_IF_ERROR(Write(&batch));
  records_ += records.size();
  bytes_ += bytes;
  return absl::OkStatus();
}

absl::Status BackupWriter::Finish() {
  if (db_ == nullptr || finished_) {
    return absl::FailedPreconditionError(absl::StrCat("backup ", dir_, " is closed"));
  }
  leveldb::WriteBatch batch;
  batch.Put(keys::Meta(keys::kMetaFromBackup), std::string(keys::kBackupComplete));
  MERGEDB_RETURN_IF_ERROR(Write(&batch));
  db_.reset();
  // A sentinel left behind (a crash right here, or its removal lost to a power loss) is removed
  // by the copy's first open, which finds the complete marker.
  (void)options_.env->RemoveFile(BackupSentinelPath(dir_));
  if (options_.env == leveldb::Env::Default()) {
    // The copy's own entry in its parent, made by LevelDB, which syncs only the copy's
    // directory: without it a power loss could take the whole copy after Finish said done.
    MERGEDB_RETURN_IF_ERROR(SyncDirectory(dir_));
    if (!dir_existed_) {
      std::filesystem::path copy = std::filesystem::absolute(dir_).lexically_normal();
      if (!copy.has_filename()) copy = copy.parent_path();  // "dir/" names dir
      MERGEDB_RETURN_IF_ERROR(SyncDirectory(copy.parent_path().string()));
    }
  }
  // Only now: a Finish that failed leaves the copy to Abandon, so that a caller told "failed"
  // keeps nothing.
  finished_ = true;
  return absl::OkStatus();
}

absl::Status BackupWriter::RemoveCopy() {
  // LevelDB's files first and the sentinel last, so that a crash in between leaves a copy that
  // is still refused. DestroyDB leaves the directory while the sentinel is in it.
  const leveldb::Status removed = leveldb::DestroyDB(dir_, LevelDbOptions());
  if (!removed.ok()) return FromLevelDb(removed, absl::StrCat("removing ", dir_));
  (void)options_.env->RemoveFile(BackupSentinelPath(dir_));
  // An empty directory that was there before (made ready for the copy) stays.
  if (!dir_existed_) (void)options_.env->RemoveDir(dir_);
  return absl::OkStatus();
}

absl::Status BackupWriter::Abandon(absl::Status why) {
  // Only a directory this writer created is ever removed: before that, `dir_` is someone
  // else's (an earlier backup under the same name, or files that are not a backup).
  if (finished_ || !opened_) {
    finished_ = true;
    return why;
  }
  finished_ = true;
  db_.reset();
  const absl::Status removed = RemoveCopy();
  if (!removed.ok()) {
    return absl::Status(
        why.ok() ? absl::StatusCode::kInternal : why.code(),
        absl::StrCat(why.message(), "; the partial copy in ", dir_, " could not be removed (",
                     removed.message(), ") and will be refused if started"));
  }
  return why;
}

uint64_t Store::ApproximateBytes() const {
  // Its tables plus what is still in its memtables (LevelDB's memory figure, which also counts
  // its block cache, so it errs high).
  const leveldb::Range everything(leveldb::Slice(), leveldb::Slice("\xff\xff\xff\xff"));
  uint64_t in_tables = 0;
  db_->GetApproximateSizes(&everything, 1, &in_tables);
  std::string memory;
  uint64_t in_memory = 0;
  if (db_->GetProperty("leveldb.approximate-memory-usage", &memory)) {
    (void)absl::SimpleAtoi(memory, &in_memory);
  }
  return in_tables + in_memory;
}

absl::StatusOr<BackupResult> Store::CopyOut(BackupSink& sink,
                                            const std::function<bool()>& cancelled) {
  // LevelDB's snapshot sees every commit up to one point and none after it; every commit is
  // one atomic batch holding a write's documents, log entries, change records and counters
  // together, so the copy is a state the store was in.
  const leveldb::Snapshot* snapshot = db_->GetSnapshot();
  BackupResult result;
  auto copy_all = [&]() -> absl::Status {
    if (cancelled && cancelled()) return absl::CancelledError("backup cancelled");
    MERGEDB_ASSIGN_OR_RETURN(result.applied,
                             ReadVector(std::string(1, keys::kAppliedTag), snapshot));
    MERGEDB_RETURN_IF_ERROR(sink.Begin(result.applied));
    leveldb::ReadOptions ro = VerifiedReads(snapshot);
    ro.fill_cache = false;  // a backup reads everything once; keep the hot blocks cached
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(ro));
    const std::string clean_marker = keys::Meta(keys::kMetaCleanShutdown);
    std::vector<std::pair<std::string, std::string>> batch;
    size_t batch_bytes = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      // A closed store holds the marker, an open one never does; a copy is not a clean stop.
      if (it->key() == leveldb::Slice(clean_marker)) continue;
      batch.emplace_back(it->key().ToString(), it->value().ToString());
      ++result.records;
      batch_bytes += it->key().size() + it->value().size();
      if (batch_bytes >= kBackupBatchBytes) {
        if (cancelled && cancelled()) return absl::CancelledError("backup cancelled");
        MERGEDB_RETURN_IF_ERROR(sink.Append(batch));
        batch.clear();
        result.bytes += batch_bytes;
        batch_bytes = 0;
      }
    }
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("reading ", options_.path)));
    result.bytes += batch_bytes;
    if (!batch.empty()) MERGEDB_RETURN_IF_ERROR(sink.Append(batch));
    return absl::OkStatus();
  };
  absl::Status copied = copy_all();
  db_->ReleaseSnapshot(snapshot);
  if (!copied.ok()) return copied;
  return result;
}

absl::StatusOr<BackupResult> Store::Backup(const std::string& dir,
                                           const std::function<bool()>& cancelled) {
  BackupWriter::Options options;
  options.env = options_.env;
  options.min_free_bytes = options_.backup_min_free_bytes;
  options.free_space = options_.free_space;
  options.expected_bytes = ApproximateBytes();
  MERGEDB_ASSIGN_OR_RETURN(std::unique_ptr<BackupWriter> writer,
                           BackupWriter::Create(dir, std::move(options)));
  struct IntoWriter : BackupSink {
    BackupWriter* writer;
    explicit IntoWriter(BackupWriter* w) : writer(w) {}
    absl::Status Begin(const VersionVector&) override { return absl::OkStatus(); }
    absl::Status Append(const std::vector<std::pair<std::string, std::string>>& records) override {
      return writer->Append(records);
    }
  } sink(writer.get());
  absl::StatusOr<BackupResult> result = CopyOut(sink, cancelled);
  if (!result.ok()) return writer->Abandon(result.status());
  if (absl::Status finished = writer->Finish(); !finished.ok()) return writer->Abandon(finished);
  return result;
}

uint64_t Store::DrawReplicaId() {
  if (options_.random) return options_.random();
  absl::BitGen gen;
  return absl::Uniform<uint64_t>(gen);
}

absl::StatusOr<VersionVector> Store::ReadVector(absl::string_view prefix,
                                                const leveldb::Snapshot* snapshot) {
  VersionVector out;
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads(snapshot)));
  for (it->Seek(leveldb::Slice(prefix.data(), prefix.size()));
       it->Valid() && HasPrefix(it->key(), prefix); it->Next()) {
    if (it->key().size() != prefix.size() + 8 || it->value().size() != 8) {
      return absl::DataLossError(
          absl::StrCat("data dir ", options_.path, ": malformed version vector record"));
    }
    out[keys::DecodeBe64(View(it->key()).substr(prefix.size()))] =
        keys::DecodeBe64(View(it->value()));
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("reading ", options_.path)));
  return out;
}

absl::Mutex& Store::DocLock(absl::string_view doc_prefix) {
  return doc_locks_[absl::Hash<absl::string_view>()(doc_prefix) % kDocLockStripes];
}

absl::Mutex& Store::RequestLock(absl::string_view request_id) {
  return request_locks_[absl::Hash<absl::string_view>()(request_id) % kRequestLockStripes];
}

absl::StatusOr<Document> Store::LoadFromDb(const std::string& doc_prefix,
                                           const leveldb::Snapshot* snapshot) {
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads(snapshot)));
  crdt::CausalContext context;
  crdt::LeafMap leaves;
  auto corrupt = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("data dir ", options_.path, ": document record ",
                                            absl::CHexEscape(doc_prefix), " is corrupt: ", why));
  };
  for (it->Seek(doc_prefix); it->Valid() && HasPrefix(it->key(), doc_prefix); it->Next()) {
    absl::string_view rest = View(it->key()).substr(doc_prefix.size());
    if (rest.size() == 1 && rest[0] == '\0') {
      mergedb::v1::CausalContext proto;
      if (!proto.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return corrupt("unparseable context");
      }
      auto decoded = crdt::CausalContext::Decode(proto);
      if (!decoded.ok()) return corrupt(decoded.status().message());
      context = *std::move(decoded);
    } else if (!rest.empty() && rest[0] == '\x01') {
      mergedb::v1::Leaf proto;
      if (!proto.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return corrupt("unparseable leaf");
      }
      auto store = crdt::DotKernel::DecodeLeafEntries(proto);
      if (!store.ok()) return corrupt(store.status().message());
      leaves.emplace(std::string(rest.substr(1)), *std::move(store));
    } else {
      return corrupt("unknown record");
    }
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("reading ", options_.path)));
  auto kernel = crdt::DotKernel::FromParts(std::move(context), std::move(leaves));
  if (!kernel.ok()) return corrupt(kernel.status().message());
  auto doc = Document::FromKernel(*std::move(kernel));
  if (!doc.ok()) return corrupt(doc.status().message());
  return *std::move(doc);
}

absl::StatusOr<std::shared_ptr<Document>> Store::LoadLocked(const std::string& doc_prefix) {
  if (std::shared_ptr<Document> cached = cache_->Lookup(doc_prefix)) return cached;
  MERGEDB_ASSIGN_OR_RETURN(Document doc, LoadFromDb(doc_prefix, nullptr));
  auto shared = std::make_shared<Document>(std::move(doc));
  cache_->Insert(doc_prefix, shared);
  return shared;
}

void Store::EncodeDocChanges(const std::string& doc_prefix, const Document& doc,
                             const crdt::LeafChanges& changes,
                             const crdt::CausalContext& context_before,
                             leveldb::WriteBatch* batch, unsigned __int128* digest_delta) {
  for (const auto& [leaf_key, before] : changes.before) {
    const std::string key = keys::DocLeaf(doc_prefix, leaf_key);
    if (before.has_value()) *digest_delta -= RecordHash(key, EncodeLeafValue(*before));
    if (const crdt::DotStore* leaf = doc.kernel().FindLeaf(leaf_key)) {
      const std::string value = EncodeLeafValue(*leaf);
      *digest_delta += RecordHash(key, value);
      batch->Put(key, value);
    } else {
      batch->Delete(key);
    }
  }
  const std::string context_key = keys::DocContext(doc_prefix);
  if (!context_before.empty()) {
    *digest_delta -= RecordHash(context_key, EncodeContextValue(context_before));
  }
  const std::string context = EncodeContextValue(doc.context());
  *digest_delta += RecordHash(context_key, context);
  batch->Put(context_key, context);
}

absl::Status Store::FailStore(const absl::Status& status) {
  if (fatal_.ok()) {
    fatal_ = absl::UnavailableError(absl::StrCat(
        "data dir ", options_.path, " refuses writes after a failed write (", status.message(),
        "); restart the node to recover"));
  }
  return fatal_;
}

absl::Status Store::health() const {
  absl::MutexLock lock(&commit_mu_);
  return fatal_;
}

absl::Status Store::Commit(Writer* w) {
  Writer* one[] = {w};
  return Commit(absl::MakeSpan(one));
}

absl::Status Store::Commit(absl::Span<Writer* const> ws) {
  commit_mu_.Lock();
  if (!fatal_.ok()) {
    absl::Status status = fatal_;
    commit_mu_.Unlock();
    return status;
  }
  // The caller's writers enter the queue together, so they stay contiguous and in order: the
  // leader numbers log entries in queue order.
  for (Writer* w : ws) writers_.push_back(w);
  absl::Status first_error;
  for (Writer* w : ws) {
    while (!w->done && writers_.front() != w) w->cv.Wait(&commit_mu_);
    if (!w->done) LeadGroup(w);
    if (first_error.ok()) first_error = w->status;
  }
  commit_mu_.Unlock();
  return first_error;
}

// The leader, first in the queue, takes the queue (bounded by bytes), numbers its entries in
// order and writes them in one LevelDB batch. Called and returns with commit_mu_ held.
void Store::LeadGroup(Writer* w) {
  if (!fatal_.ok()) {
    // A group ahead failed. LevelDB would take the next write after a failed log append (it
    // refuses more only after a failed sync), but the writers queued behind were prepared on
    // state that may include the failed writes (a batch's later writes build on its earlier
    // ones): none of them may commit.
    while (!writers_.empty()) {
      Writer* x = writers_.front();
      writers_.pop_front();
      x->status = fatal_;
      x->done = true;
      if (x != w) x->cv.Signal();
    }
    return;
  }
  leveldb::WriteBatch group;
  VersionVector applied = applied_;
  uint64_t change_seq = last_change_seq_;
  int64_t doc_count = doc_count_;
  unsigned __int128 digest = digest_;
  std::vector<RecentChange> fresh;
  size_t taken = 0;
  size_t bytes = 0;
  for (Writer* x : writers_) {
    const size_t size = x->batch.ApproximateSize();
    if (taken > 0 && bytes + size > options_.max_group_bytes) break;
    bytes += size;
    ++taken;
    group.Append(x->batch);
    if (x->has_local_entry) {
      x->log_seq = ++applied[replica_id_];
      group.Put(keys::Log(replica_id_, x->log_seq), x->local_entry);
    }
    if (x->local_changed) {
      x->change_seq = ++change_seq;
      mergedb::v1::ChangeRecord change;
      change.set_collection(x->collection);
      change.set_id(x->id);
      change.set_origin(replica_id_);
      change.set_origin_seq(x->log_seq);
      group.Put(keys::Change(x->change_seq), crdt::SerializeDeterministic(change));
      fresh.push_back({x->change_seq, x->collection, x->id});
    }
    if (x->has_request) {
      x->request.set_change_seq(x->change_seq);
      x->request.set_log_seq(x->log_seq);
      x->request.set_log_origin(replica_id_);
      group.Put(keys::Request(x->request_id), crdt::SerializeDeterministic(x->request));
    }
    for (const auto& change : x->remote_changes) {
      group.Put(keys::Change(++change_seq), crdt::SerializeDeterministic(change));
      fresh.push_back({change_seq, change.collection(), change.id()});
    }
    for (const auto& [origin, seq] : x->applied_updates) {
      applied[origin] = std::max(applied[origin], seq);
      group.Put(keys::Applied(origin), keys::EncodeBe64(applied[origin]));
    }
    doc_count += x->doc_count_delta;
    digest += x->digest_delta;
    for (const auto& [origin, floor] : x->floor_updates) {
      group.Put(keys::LogFloor(origin), keys::EncodeBe64(floor));
    }
  }
  if (applied[replica_id_] != applied_[replica_id_]) {
    group.Put(keys::Applied(replica_id_), keys::EncodeBe64(applied[replica_id_]));
  }
  if (applied[replica_id_] == 0) applied.erase(replica_id_);
  if (change_seq != last_change_seq_) {
    group.Put(keys::Meta(keys::kMetaChangeSeq), keys::EncodeBe64(change_seq));
  }
  if (doc_count != doc_count_) {
    group.Put(keys::Meta(keys::kMetaDocCount), keys::EncodeBe64(static_cast<uint64_t>(doc_count)));
  }
  if (digest != digest_) group.Put(keys::Meta(keys::kMetaDigest), EncodeDigest(digest));

  commit_mu_.Unlock();
  leveldb::WriteOptions wo;
  wo.sync = options_.durability == Durability::kSyncEachCommit;
  const leveldb::Status s = db_->Write(wo, &group);
  commit_mu_.Lock();

  absl::Status status;
  if (s.ok()) {
    SetAppliedLocked(std::move(applied));
    // Waiters on the change feed re-check their conditions when the lock is released.
    for (RecentChange& change : fresh) recent_changes_.push_back(std::move(change));
    while (recent_changes_.size() > kRecentChanges) recent_changes_.pop_front();
    last_change_seq_ = change_seq;
    doc_count_ = doc_count;
    digest_ = digest;
    for (size_t i = 0; i < taken; ++i) {
      for (const auto& [origin, floor] : writers_[i]->floor_updates) {
        log_floor_[origin] = std::max(log_floor_[origin], floor);
      }
    }
    ++commit_count_;
  } else {
    // LevelDB refuses further writes after a failed sync; refuse every write, whatever failed.
    status = FailStore(FromLevelDb(s, "commit"));
  }
  for (size_t i = 0; i < taken; ++i) {
    Writer* x = writers_.front();
    writers_.pop_front();
    x->status = status;
    x->done = true;
    if (x != w) x->cv.Signal();
  }
  if (!writers_.empty()) writers_.front()->cv.Signal();
}

absl::StatusOr<WriteResult> Store::ApplyLocal(const LocalWrite& write) {
  MERGEDB_RETURN_IF_ERROR(health());
  const std::string prefix = keys::DocPrefix(write.collection, write.id);
  std::vector<absl::Mutex*> stripes = {&DocLock(prefix)};
  if (!write.request_id.empty()) stripes.push_back(&RequestLock(write.request_id));
  std::sort(stripes.begin(), stripes.end());
  StripeLocks locks(std::move(stripes));
  Writer w;
  std::shared_ptr<Document> doc;
  MERGEDB_ASSIGN_OR_RETURN(WriteResult result, PrepareLocal(write, prefix, &w, &doc));
  if (doc == nullptr) return result;  // nothing to commit
  absl::Status status = Commit(&w);
  if (!status.ok()) {
    cache_->Erase(prefix);
    return status;
  }
  cache_->Insert(prefix, doc);
  result.log_seq = w.log_seq;
  result.change_seq = w.change_seq;
  result.origin = replica_id_;
  return result;
}

std::vector<absl::StatusOr<WriteResult>> Store::ApplyLocalBatch(
    absl::Span<const LocalWrite> writes) {
  std::vector<absl::StatusOr<WriteResult>> results(writes.size(), WriteResult{});
  if (absl::Status health_status = health(); !health_status.ok()) {
    for (auto& result : results) result = health_status;
    return results;
  }
  std::vector<std::string> prefixes;
  std::vector<absl::Mutex*> stripes;
  for (const LocalWrite& write : writes) {
    prefixes.push_back(keys::DocPrefix(write.collection, write.id));
    stripes.push_back(&DocLock(prefixes.back()));
    if (!write.request_id.empty()) stripes.push_back(&RequestLock(write.request_id));
  }
  // Several documents and request ids: their stripes in address order, as everyone takes them.
  std::sort(stripes.begin(), stripes.end());
  stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
  StripeLocks locks(std::move(stripes));

  // Writes prepared but not yet committed, in order.
  struct Pending {
    size_t index;
    std::unique_ptr<Writer> writer;
    std::shared_ptr<Document> doc;
  };
  std::vector<Pending> pending;
  std::set<std::string> pending_requests;
  // The documents of the pending writes, as the last of them left each. A later write of the
  // batch to the same document must build on that state: the cache may have evicted the
  // document meanwhile (other documents loaded since, here or by other threads), and reloading
  // it would read the committed state without the pending writes, whose changes the later
  // write's records would then overwrite — an acknowledged write lost.
  absl::flat_hash_map<std::string, std::shared_ptr<Document>> pending_docs;
  auto flush = [&] {
    if (pending.empty()) return;
    std::vector<Writer*> ws;
    for (const Pending& p : pending) ws.push_back(p.writer.get());
    const absl::Status status = Commit(absl::MakeSpan(ws));
    for (Pending& p : pending) {
      const std::string& prefix = prefixes[p.index];
      if (!p.writer->status.ok() || !status.ok()) {
        cache_->Erase(prefix);
        results[p.index] = p.writer->status.ok() ? status : p.writer->status;
        continue;
      }
      cache_->Insert(prefix, p.doc);
      results[p.index]->log_seq = p.writer->log_seq;
      results[p.index]->change_seq = p.writer->change_seq;
      results[p.index]->origin = replica_id_;
    }
    pending.clear();
    pending_requests.clear();
    pending_docs.clear();
  };
  for (size_t i = 0; i < writes.size(); ++i) {
    // A retry of a request still pending here would not find its record: commit first.
    if (!writes[i].request_id.empty() && pending_requests.count(writes[i].request_id) > 0) {
      flush();
    }
    auto writer = std::make_unique<Writer>();
    std::shared_ptr<Document> doc;
    const auto earlier = pending_docs.find(prefixes[i]);
    results[i] = PrepareLocal(writes[i], prefixes[i], writer.get(), &doc,
                              earlier == pending_docs.end() ? nullptr : earlier->second);
    if (!results[i].ok()) {
      // The failed update may have half-applied to the cached document that earlier writes of
      // this batch also changed: commit those (their changes are already encoded), then drop
      // the cached state so the next access reloads what is committed.
      flush();
      cache_->Erase(prefixes[i]);
      continue;
    }
    if (doc == nullptr) continue;  // nothing to commit
    if (!writes[i].request_id.empty()) pending_requests.insert(writes[i].request_id);
    pending_docs[prefixes[i]] = doc;
    pending.push_back({i, std::move(writer), std::move(doc)});
  }
  flush();
  return results;
}

uint64_t RequestFingerprint(absl::string_view content) {
  const uint64_t h = XXH3_64bits(content.data(), content.size());
  return h == 0 ? 1 : h;  // 0 means "unchecked"
}

absl::StatusOr<WriteResult> Store::PrepareLocal(const LocalWrite& write, const std::string& prefix,
                                                Writer* w, std::shared_ptr<Document>* to_commit,
                                                std::shared_ptr<Document> pending) {
  WriteResult result;
  if (!write.request_id.empty()) {
    MERGEDB_ASSIGN_OR_RETURN(std::optional<mergedb::v1::RequestRecord> previous,
                             LookupRequest(write.request_id));
    if (previous.has_value()) {
      if (previous->collection() != write.collection || previous->id() != write.id) {
        return absl::InvalidArgumentError(absl::StrCat(
            "request id ", write.request_id, " was already used for document ",
            DocName(previous->collection(), previous->id())));
      }
      if (previous->fingerprint() != 0 && write.request_fingerprint != 0 &&
          previous->fingerprint() != write.request_fingerprint) {
        return absl::InvalidArgumentError(absl::StrCat(
            "request id ", write.request_id, " was already used for a different update of ",
            DocName(write.collection, write.id),
            ": a retry must repeat the same operations and base version; a new update needs a "
            "new request id"));
      }
      MERGEDB_ASSIGN_OR_RETURN(result.version, crdt::CausalContext::Decode(previous->version()));
      result.change_seq = previous->change_seq();
      result.log_seq = previous->log_seq();
      result.origin = previous->log_origin() != 0 ? previous->log_origin() : replica_id_;
      result.duplicate_request = true;
      return result;
    }
  }

  std::shared_ptr<Document> doc = std::move(pending);
  if (doc == nullptr) {
    MERGEDB_ASSIGN_OR_RETURN(doc, LoadLocked(prefix));
  }
  const bool existed = doc->exists();
  const crdt::CausalContext context_before = doc->context();
  crdt::LeafChanges changes;
  doc->set_change_journal(&changes);
  absl::StatusOr<Document> delta = write.mutate(*doc);
  doc->set_change_journal(nullptr);
  if (!delta.ok()) {
    // The update may have applied some of its operations before failing: forget the cached
    // state so the next access reloads the committed one.
    cache_->Erase(prefix);
    return delta.status();
  }

  w->collection = write.collection;
  w->id = write.id;
  if (!delta->context().empty()) {
    EncodeDocChanges(prefix, *doc, changes, context_before, &w->batch, &w->digest_delta);
    mergedb::v1::LogEntry entry;
    entry.set_collection(write.collection);
    entry.set_id(write.id);
    delta->EncodeTo(entry.mutable_delta());
    if (!write.request_id.empty()) {
      entry.set_request_id(write.request_id);
      entry.set_request_fingerprint(write.request_fingerprint);
      entry.set_request_unix_millis(write.unix_millis);
    }
    w->local_entry = crdt::SerializeDeterministic(entry);
    w->has_local_entry = true;
    w->local_changed = true;
    w->doc_count_delta = static_cast<int64_t>(doc->exists()) - static_cast<int64_t>(existed);
  }
  if (!write.request_id.empty()) {
    w->has_request = true;
    w->request_id = write.request_id;
    w->request.set_collection(write.collection);
    w->request.set_id(write.id);
    doc->context().EncodeTo(w->request.mutable_version());
    w->request.set_unix_millis(write.unix_millis);
    w->request.set_fingerprint(write.request_fingerprint);
  }
  result.version = doc->context();
  if (w->has_local_entry || w->has_request) *to_commit = std::move(doc);
  return result;
}

absl::StatusOr<RemoteApplyResult> Store::ApplyRemote(absl::Span<const LogRecord> records) {
  MERGEDB_RETURN_IF_ERROR(health());
  absl::MutexLock remote_lock(&remote_mu_);
  RemoteApplyResult result;
  VersionVector applied = AppliedVector();
  std::set<ReplicaId> stopped;
  std::vector<std::pair<const LogRecord*, Document>> to_apply;
  for (const LogRecord& record : records) {
    if (record.origin == 0 || record.seq == 0) {
      return absl::InvalidArgumentError("log record with a zero origin or sequence");
    }
    if (stopped.count(record.origin) > 0) continue;
    uint64_t& have = applied[record.origin];
    if (record.origin == replica_id_ || record.seq <= have) {
      ++result.duplicates;
      continue;
    }
    if (record.seq != have + 1) {
      result.gap = true;
      stopped.insert(record.origin);
      continue;
    }
    auto delta = Document::Decode(record.entry.delta());
    if (!delta.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("log record ", absl::Hex(record.origin), ":", record.seq, " for ",
                       DocName(record.entry.collection(), record.entry.id()),
                       " does not decode: ", delta.status().message()));
    }
    have = record.seq;
    to_apply.emplace_back(&record, *std::move(delta));
  }
  if (to_apply.empty()) return result;

  Writer w;
  std::vector<JoinTarget> targets;
  targets.reserve(to_apply.size());
  for (const auto& [record, delta] : to_apply) {
    // Bytes that came encoded (a peer's frame, this node's own log) are logged as they are:
    // serializing the parsed entry again would cost as much as parsing it did.
    w.batch.Put(
        keys::Log(record->origin, record->seq),
        record->encoded.empty() ? crdt::SerializeDeterministic(record->entry) : record->encoded);
    w.applied_updates[record->origin] = record->seq;
    targets.push_back(
        {record->entry.collection(), record->entry.id(), &delta, record->origin, record->seq});
    targets.back().request = &record->entry;  // its request id is remembered here too
  }
  MERGEDB_RETURN_IF_ERROR(JoinAndCommit(targets, &w));
  result.applied = to_apply.size();
  return result;
}

absl::Status Store::JoinAndCommit(absl::Span<const JoinTarget> targets, Writer* w,
                                  absl::Span<const SnapshotRequest> requests) {
  struct Touched {
    std::shared_ptr<Document> doc;
    crdt::LeafChanges changes;
    crdt::CausalContext context_before;
    bool existed = false;
  };
  std::map<std::string, Touched> docs;
  std::vector<absl::Mutex*> stripes;
  for (const JoinTarget& target : targets) {
    const std::string prefix = keys::DocPrefix(target.collection, target.id);
    stripes.push_back(&DocLock(prefix));
    docs.try_emplace(prefix);
  }
  for (const SnapshotRequest& request : requests) {
    stripes.push_back(&DocLock(keys::DocPrefix(request.record.collection(), request.record.id())));
  }
  // Several documents: take their stripes in address order, so no two committers deadlock.
  std::sort(stripes.begin(), stripes.end());
  stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
  StripeLocks locks(std::move(stripes));
  for (const SnapshotRequest& request : requests) {
    if (!RemembersPeersRequest(request.request_id)) continue;
    mergedb::v1::RequestRecord record = request.record;
    record.clear_change_seq();  // a position in the sender's change feed, not in this one
    w->batch.Put(keys::Request(request.request_id), crdt::SerializeDeterministic(record));
  }
  // Request ids to remember: those of entries that carry one this node does not know yet.
  std::vector<bool> remember(targets.size(), false);
  for (size_t i = 0; i < targets.size(); ++i) {
    const mergedb::v1::LogEntry* entry = targets[i].request;
    if (entry == nullptr || entry->request_id().empty()) continue;
    remember[i] = RemembersPeersRequest(entry->request_id());
  }
  for (auto& [prefix, touched] : docs) {
    MERGEDB_ASSIGN_OR_RETURN(touched.doc, LoadLocked(prefix));
    touched.existed = touched.doc->exists();
    touched.context_before = touched.doc->context();
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    const JoinTarget& target = targets[i];
    Touched& touched = docs[keys::DocPrefix(target.collection, target.id)];
    const crdt::CausalContext before = touched.doc->context();
    crdt::LeafChanges changes;
    touched.doc->Join(*target.state, &changes);
    if (remember[i]) {
      mergedb::v1::RequestRecord request;
      request.set_collection(target.collection);
      request.set_id(target.id);
      touched.doc->context().EncodeTo(request.mutable_version());
      request.set_unix_millis(target.request->request_unix_millis());
      request.set_log_seq(target.seq);
      request.set_log_origin(target.origin);
      request.set_fingerprint(target.request->request_fingerprint());
      w->batch.Put(keys::Request(target.request->request_id()),
                   crdt::SerializeDeterministic(request));
    }
    if (!changes.empty() || !(touched.doc->context() == before)) {
      mergedb::v1::ChangeRecord change;
      change.set_collection(target.collection);
      change.set_id(target.id);
      change.set_origin(target.origin);
      change.set_origin_seq(target.seq);
      w->remote_changes.push_back(std::move(change));
    }
    // Keep the earliest pre-image of each leaf across the targets.
    touched.changes.before.merge(changes.before);
  }
  for (auto& [prefix, touched] : docs) {
    // A join that changed nothing writes nothing. Above all, a state with an empty context
    // joined into a document never written must not store an (empty) context record: the
    // digest would count it, and no later write could take it back out, since an empty
    // context_before means "no record" to EncodeDocChanges.
    if (touched.changes.empty() && touched.doc->context() == touched.context_before) continue;
    EncodeDocChanges(prefix, *touched.doc, touched.changes, touched.context_before, &w->batch,
                     &w->digest_delta);
    w->doc_count_delta +=
        static_cast<int64_t>(touched.doc->exists()) - static_cast<int64_t>(touched.existed);
  }
  absl::Status status = Commit(w);
  for (auto& [prefix, touched] : docs) {
    if (status.ok()) {
      cache_->Insert(prefix, touched.doc);
    } else {
      cache_->Erase(prefix);
    }
  }
  return status;
}

absl::Status Store::ApplySnapshot(absl::Span<const SnapshotDoc> docs,
                                  absl::Span<const SnapshotRequest> requests) {
  MERGEDB_RETURN_IF_ERROR(health());
  if (docs.empty() && requests.empty()) return absl::OkStatus();
  absl::MutexLock remote_lock(&remote_mu_);
  Writer w;
  std::vector<JoinTarget> targets;
  targets.reserve(docs.size());
  for (const SnapshotDoc& doc : docs) {
    targets.push_back({doc.collection, doc.id, &doc.state, 0, 0});
  }
  return JoinAndCommit(targets, &w, requests);
}

absl::Status Store::FinishSnapshot(const VersionVector& applied) {
  MERGEDB_RETURN_IF_ERROR(health());
  absl::MutexLock superseded_lock(&superseded_mu_);
  // The raised floors supersede the entries this node holds of those origins between their old
  // floor and what it had applied: no reader gets entries below a floor, and truncation starts
  // at it. They are deleted after the commit, without holding up the peers' frames; the commit
  // records them, so that an open after a crash in between finishes the deletions.
  std::vector<SupersededRange> superseded;
  {
    absl::MutexLock remote_lock(&remote_mu_);  // no frame adds entries meanwhile
    absl::MutexLock floors(&floor_mu_);        // no truncation chunk writes a floor meanwhile
    const VersionVector mine = AppliedVector();
    const VersionVector floor = LogFloor();
    Writer w;
    for (const auto& [origin, seq] : applied) {
      if (origin == replica_id_) continue;  // our own log is never behind a peer's view of it
      auto it = mine.find(origin);
      const uint64_t held = it == mine.end() ? 0 : it->second;
      if (held >= seq) continue;
      w.applied_updates[origin] = seq;
      w.floor_updates[origin] = seq;
      auto f = floor.find(origin);
      const uint64_t first = (f == floor.end() ? 0 : f->second) + 1;
      if (first <= held) superseded.push_back({origin, first, held});
    }
    if (w.applied_updates.empty()) return absl::OkStatus();
    if (!superseded.empty()) {
      std::string record;
      for (const SupersededRange& range : superseded) {
        absl::StrAppend(&record, keys::EncodeBe64(range.origin), keys::EncodeBe64(range.first),
                        keys::EncodeBe64(range.last));
      }
      w.batch.Put(keys::Meta(keys::kMetaSupersededLog), record);
    }
    MERGEDB_RETURN_IF_ERROR(Commit(&w));
  }
  if (options_.testonly_after_transfer_commit) options_.testonly_after_transfer_commit();
  if (superseded.empty()) return absl::OkStatus();
  if (absl::Status dropped = DropSupersededLog(superseded); !dropped.ok()) {
    absl::MutexLock lock(&commit_mu_);
    return FailStore(dropped);
  }
  return absl::OkStatus();
}

absl::Status Store::DropSupersededLog(absl::Span<const SupersededRange> ranges) {
  auto write = [this](leveldb::WriteBatch* batch) {
    return FromLevelDb(db_->Write(leveldb::WriteOptions(), batch),
                       "dropping the log entries a full-state transfer superseded");
  };
  for (const SupersededRange& range : ranges) {
    // Stepped by `to`, not by adding to `from`: a range ending near 2^64 must not wrap.
    for (uint64_t from = range.first;; from = from + kDeletionChunk) {
      const uint64_t to =
          range.last - from < kDeletionChunk ? range.last : from + kDeletionChunk - 1;
      leveldb::WriteBatch batch;
      for (uint64_t seq = from;; ++seq) {
        batch.Delete(keys::Log(range.origin, seq));
        if (seq == to) break;
      }
      MERGEDB_RETURN_IF_ERROR(write(&batch));
      if (to == range.last) break;
    }
  }
  // Last, once every range is gone: a crash before it repeats some deletions, harmlessly.
  leveldb::WriteBatch done;
  done.Delete(keys::Meta(keys::kMetaSupersededLog));
  return write(&done);
}

absl::StatusOr<Document> Store::Get(absl::string_view collection, absl::string_view id) {
  Document out;
  MERGEDB_RETURN_IF_ERROR(Read(collection, id, [&](const Document& doc) { out = doc; }));
  return out;
}

absl::Status Store::Read(absl::string_view collection, absl::string_view id,
                         absl::FunctionRef<void(const Document&)> fn) {
  const std::string prefix = keys::DocPrefix(collection, id);
  absl::MutexLock doc_lock(&DocLock(prefix));
  MERGEDB_ASSIGN_OR_RETURN(std::shared_ptr<Document> doc, LoadLocked(prefix));
  fn(*doc);
  return absl::OkStatus();
}

absl::StatusOr<ScanPage> Store::Scan(absl::string_view collection, size_t page_size,
                                     absl::string_view page_token) {
  if (page_size == 0) return absl::InvalidArgumentError("scan: page size must be positive");
  const std::string collection_prefix = keys::CollectionPrefix(collection);
  ScanPage page;
  const leveldb::Snapshot* snapshot = db_->GetSnapshot();
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads(snapshot)));
  // Past every key of the token's document: its keys continue with 0x00 or 0x01.
  std::string start = collection_prefix;
  if (!page_token.empty()) start = keys::DocPrefix(collection, page_token) + "\x02";
  absl::Status status;
  std::string last_id;
  for (it->Seek(start); it->Valid() && HasPrefix(it->key(), collection_prefix);) {
    absl::string_view rest = View(it->key()).substr(collection_prefix.size());
    std::string id;
    if (!crdt::ConsumeName(&rest, &id)) {
      status = absl::DataLossError(absl::StrCat("data dir ", options_.path,
                                                ": malformed document key in scan"));
      break;
    }
    if (page.documents.size() == page_size) {
      page.next_token = last_id;
      break;
    }
    const std::string prefix = keys::DocPrefix(collection, id);
    auto doc = LoadFromDb(prefix, snapshot);
    if (!doc.ok()) {
      status = doc.status();
      break;
    }
    if (doc->exists()) {
      last_id = id;
      page.documents.emplace_back(id, *std::move(doc));
    }
    it->Seek(prefix + "\x02");
  }
  if (status.ok()) status = FromLevelDb(it->status(), absl::StrCat("scanning ", options_.path));
  it.reset();
  db_->ReleaseSnapshot(snapshot);
  MERGEDB_RETURN_IF_ERROR(status);
  return page;
}

VersionVector Store::AppliedVector() const {
  absl::MutexLock lock(&commit_mu_);
  return applied_;
}

VersionVector Store::LogFloor() const {
  absl::MutexLock lock(&commit_mu_);
  return log_floor_;
}

void Store::SetAppliedLocked(VersionVector applied) {
  applied_ = std::move(applied);
  auto own = applied_.find(replica_id_);
  own_applied_.store(own == applied_.end() ? 0 : own->second, std::memory_order_release);
  for (const auto& [handle, listener] : applied_listeners_) listener(applied_);
}

const char* Store::SyncedRunRecord() const {
  return options_.durability == Durability::kSyncEachCommit ? "1" : "0";
}

uint64_t Store::log_entries() const {
  absl::MutexLock lock(&commit_mu_);
  uint64_t held = 0;
  for (const auto& [origin, seq] : applied_) {
    auto floor = log_floor_.find(origin);
    held += seq - (floor == log_floor_.end() ? 0 : floor->second);
  }
  return held;
}

absl::StatusOr<std::vector<LogRecord>> Store::ReadLog(const VersionVector& have, size_t max_entries,
                                                      const std::set<crdt::ReplicaId>& skip,
                                                      LogForm form) {
  VersionVector applied, floors;
  {
    absl::MutexLock lock(&commit_mu_);
    applied = applied_;
    floors = log_floor_;
  }
  std::vector<LogRecord> out;
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
  for (const auto& [origin, top] : applied) {
    if (skip.count(origin) > 0) continue;
    auto h = have.find(origin);
    uint64_t next = (h == have.end() ? 0 : h->second) + 1;
    if (next > top) continue;
    auto f = floors.find(origin);
    if (f != floors.end() && next <= f->second) {
      return absl::FailedPreconditionError(absl::StrCat(
          "log of origin ", absl::Hex(origin), " is truncated through ", f->second,
          " but the reader has only ", next - 1, ": it needs a full-state transfer"));
    }
    const std::string origin_prefix = keys::LogOrigin(origin);
    // The iterator never steps past `top`: the keys after an origin's last entry are often the
    // next origin's truncated entries, and LevelDB's Next() walks every such deletion marker
    // until compaction drops them (that walk once cost a fifth of a node's CPU).
    it->Seek(keys::Log(origin, next));
    for (; it->Valid() && HasPrefix(it->key(), origin_prefix); it->Next()) {
      const uint64_t seq = keys::DecodeBe64(View(it->key()).substr(origin_prefix.size()));
      if (seq != next) {
        // LevelDB's iterator steps over a block that fails its checksum and keeps the error for
        // status(): a gap is damage, not truncation, until the status says otherwise. (Taken
        // for truncation, the damage went unreported and the peer got a full-state transfer.)
        MERGEDB_RETURN_IF_ERROR(
            FromLevelDb(it->status(), absl::StrCat("reading log of ", options_.path)));
        return absl::FailedPreconditionError(absl::StrCat(
            "log of origin ", absl::Hex(origin), " lacks entry ", next,
            " (truncated meanwhile): the reader needs a full-state transfer"));
      }
      LogRecord record;
      record.origin = origin;
      record.seq = seq;
      record.encoded.assign(it->value().data(), it->value().size());
      if (form == LogForm::kParsed && !record.entry.ParseFromString(record.encoded)) {
        return absl::DataLossError(absl::StrCat("data dir ", options_.path, ": log entry ",
                                                absl::Hex(origin), ":", seq, " is corrupt"));
      }
      out.push_back(std::move(record));
      if (++next > top || out.size() >= max_entries) break;
    }
    MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("reading log of ", options_.path)));
    if (out.size() >= max_entries) break;
    if (next <= top) {
      // The origin's last entries are not there: truncated meanwhile, or lost from a damaged
      // data dir (mergedb-repair drops unreadable blocks). Either way only a full-state transfer
      // can give the reader what this node has applied of that origin; skipping them would leave
      // the reader behind for good, and its sender looking again and again.
      return absl::FailedPreconditionError(
          absl::StrCat("log of origin ", absl::Hex(origin), " lacks entries ", next, " to ", top,
                       ": the reader needs a full-state transfer"));
    }
  }
  return out;
}

absl::Status Store::TruncateLog(const VersionVector& through) {
  MERGEDB_RETURN_IF_ERROR(health());
  const VersionVector applied = AppliedVector();
  for (const auto& [origin, requested] : through) {
    auto it = applied.find(origin);
    const uint64_t upto = std::min(requested, it == applied.end() ? 0 : it->second);
    if (upto == 0) continue;
    uint64_t* floor = nullptr;
    {
      absl::MutexLock lock(&commit_mu_);
      floor = &log_floor_[origin];  // a std::map element: its address stays valid
    }
    MERGEDB_RETURN_IF_ERROR(DeleteThrough(
        floor, upto, [origin = origin](uint64_t seq) { return keys::Log(origin, seq); },
        keys::LogFloor(origin), "log truncation"));
  }
  return absl::OkStatus();
}

absl::Status Store::DeleteThrough(uint64_t* floor, uint64_t upto,
                                  absl::FunctionRef<std::string(uint64_t)> key,
                                  const std::string& floor_key, absl::string_view what) {
  // In chunks of kDeletionChunk. The floor record moves with each chunk and LevelDB replays a
  // prefix of its log after a crash, so a crash anywhere leaves a floor consistent with the
  // keys present; no sync is needed (the next synced commit covers it).
  while (true) {
    absl::ReleasableMutexLock floors(&floor_mu_);
    uint64_t from = 0;
    {
      absl::MutexLock lock(&commit_mu_);
      from = *floor;
    }
    if (from >= upto) return absl::OkStatus();
    const uint64_t end = std::min(upto, from + kDeletionChunk);
    leveldb::WriteBatch batch;
    for (uint64_t seq = from + 1; seq <= end; ++seq) batch.Delete(key(seq));
    batch.Put(floor_key, keys::EncodeBe64(end));
    {
      // Raised before the keys go, so that a reader that finds one missing also finds the
      // floor past it (ReadLog, ReadChanges): truncation, never an unexplained gap.
      absl::MutexLock lock(&commit_mu_);
      *floor = end;
    }
    leveldb::Status s = db_->Write(leveldb::WriteOptions(), &batch);
    if (!s.ok()) {
      absl::MutexLock lock(&commit_mu_);
      return FailStore(FromLevelDb(s, what));
    }
    if (end < upto && options_.testonly_between_truncation_chunks) {
      floors.Release();
      options_.testonly_between_truncation_chunks();
    }
  }
}

absl::Status Store::SetPeerAcked(absl::string_view peer, const VersionVector& acked) {
  MERGEDB_RETURN_IF_ERROR(health());
  leveldb::WriteBatch batch;
  for (const auto& [origin, seq] : acked) batch.Put(keys::PeerAck(peer, origin), keys::EncodeBe64(seq));
  leveldb::Status s = db_->Write(leveldb::WriteOptions(), &batch);
  if (!s.ok()) {
    absl::MutexLock lock(&commit_mu_);
    return FailStore(FromLevelDb(s, "peer acknowledgement"));
  }
  return absl::OkStatus();
}

absl::StatusOr<VersionVector> Store::PeerAcked(absl::string_view peer) {
  return ReadVector(keys::PeerAckPrefix(peer), nullptr);
}

bool Store::FeedPositionHolds(crdt::ReplicaId feed, uint64_t position) const {
  if (feed == replica_id_) return true;
  // Positions only grow along the history (each incarnation starts where the last kept one
  // ended), so the newest entry for `feed` bounds it, and no later rotation kept less.
  for (auto it = feed_history_.rbegin(); it != feed_history_.rend(); ++it) {
    if (it->feed == feed) return position <= it->last_kept;
  }
  return false;
}

uint64_t Store::last_change_seq() const {
  absl::MutexLock lock(&commit_mu_);
  return last_change_seq_;
}

std::string Store::state_digest() const {
  absl::MutexLock lock(&commit_mu_);
  return EncodeDigest(digest_);
}

absl::StatusOr<std::string> Store::ScanDigest() const {
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
  const std::string doc_tag(1, keys::kDocTag);
  const std::string end = keys::DocSpaceEnd();
  unsigned __int128 digest = 0;
  for (it->Seek(doc_tag); it->Valid() && HasPrefix(it->key(), doc_tag); it->Next()) {
    if (View(it->key()) == end) continue;  // the fence, not a document record
    digest += RecordHash(View(it->key()), View(it->value()));
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), absl::StrCat("scanning ", options_.path)));
  return EncodeDigest(digest);
}

std::pair<VersionVector, std::string> Store::AppliedAndDigest() const {
  absl::MutexLock lock(&commit_mu_);
  return {applied_, EncodeDigest(digest_)};
}

uint64_t Store::WaitForChange(uint64_t after_seq, const ChangeFilter& filter,
                              absl::Duration timeout, uint64_t* unmatched_through) {
  // Runs under commit_mu_ each time it is released, so it remembers how far it has looked.
  struct Matched {
    const Store* store;
    const ChangeFilter* filter;
    mutable uint64_t checked;  // changes through this sequence did not match
    bool operator()() const {
      const auto& recent = store->recent_changes_;
      if (store->last_change_seq_ <= checked) return false;
      // Forgotten changes past `checked`: the caller must read the feed to know.
      if (recent.empty() || recent.front().seq > checked + 1 ||
          recent.back().seq != store->last_change_seq_) {
        return true;
      }
      // Sequences in the deque are consecutive, so the first unchecked one is found by offset.
      for (size_t i = static_cast<size_t>(checked + 1 - recent.front().seq); i < recent.size(); ++i) {
        const RecentChange& change = recent[i];
        if (change.collection == filter->collection &&
            (filter->id.empty() || change.id == filter->id)) {
          return true;
        }
        checked = change.seq;
      }
      return false;
    }
  } matched{this, &filter, after_seq};
  absl::MutexLock lock(&commit_mu_);
  if (!commit_mu_.AwaitWithTimeout(absl::Condition(&matched), timeout)) {
    matched();  // a timeout: take in what was committed since the last evaluation
  }
  if (unmatched_through != nullptr) *unmatched_through = matched.checked;
  return last_change_seq_;
}

uint64_t Store::commit_count() const {
  absl::MutexLock lock(&commit_mu_);
  return commit_count_;
}

uint64_t Store::AddAppliedListener(std::function<void(const VersionVector&)> listener) {
  absl::MutexLock lock(&commit_mu_);
  applied_listeners_.emplace(++next_listener_, std::move(listener));
  return next_listener_;
}

void Store::RemoveAppliedListener(uint64_t handle) {
  absl::MutexLock lock(&commit_mu_);
  applied_listeners_.erase(handle);
}

int64_t Store::document_count() const {
  absl::MutexLock lock(&commit_mu_);
  return doc_count_;
}

uint64_t Store::change_feed_entries() const {
  absl::MutexLock lock(&commit_mu_);
  return last_change_seq_ - change_floor_;
}

uint64_t Store::change_floor() const {
  absl::MutexLock lock(&commit_mu_);
  return change_floor_;
}

absl::Status Store::TruncateChanges(uint64_t keep) {
  MERGEDB_RETURN_IF_ERROR(health());
  uint64_t floor, last;
  {
    absl::MutexLock lock(&commit_mu_);
    floor = change_floor_;
    last = last_change_seq_;
  }
  if (last <= keep || last - keep <= floor) return absl::OkStatus();
  return DeleteThrough(
      &change_floor_, last - keep, [](uint64_t seq) { return keys::Change(seq); },
      keys::Meta(keys::kMetaChangeFloor), "change feed truncation");
}

absl::StatusOr<std::vector<std::pair<uint64_t, mergedb::v1::ChangeRecord>>> Store::ReadChanges(
    uint64_t after_seq, size_t max) {
  auto truncated = [&](uint64_t floor) {
    return absl::OutOfRangeError(absl::StrCat(
        "the change feed no longer holds changes after position ", after_seq,
        " (the oldest retained follows ", floor, "): read the documents again and watch from now"));
  };
  if (const uint64_t floor = change_floor(); after_seq < floor) return truncated(floor);
  if (options_.testonly_before_reading_changes) options_.testonly_before_reading_changes();
  std::vector<std::pair<uint64_t, mergedb::v1::ChangeRecord>> out;
  const uint64_t last = last_change_seq();
  if (after_seq >= last || max == 0) return out;
  const std::string prefix(1, keys::kChangeTag);
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
  // Like ReadLog, never steps past the last change: deleted request records may follow.
  for (it->Seek(keys::Change(after_seq + 1)); it->Valid() && HasPrefix(it->key(), prefix);
       it->Next()) {
    mergedb::v1::ChangeRecord record;
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("data dir ", options_.path, ": corrupt change record"));
    }
    const uint64_t seq = keys::DecodeBe64(View(it->key()).substr(1));
    // Positions are contiguous. A gap is a truncation that ran since the check above (its
    // floor rises before its keys go), or a damaged block the iterator stepped over: never
    // a reason to deliver what follows as if nothing were missing.
    if (const uint64_t expected = after_seq + 1 + out.size(); seq != expected) {
      MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), "reading the change feed"));
      if (const uint64_t floor = change_floor(); floor >= expected) return truncated(floor);
      return absl::DataLossError(
          absl::StrCat("data dir ", options_.path, ": the change feed misses position ", expected));
    }
    out.emplace_back(seq, std::move(record));
    if (seq >= last || out.size() >= max) break;
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), "reading the change feed"));
  return out;
}

absl::StatusOr<std::optional<mergedb::v1::RequestRecord>> Store::LookupRequest(
    absl::string_view request_id) {
  std::string value;
  leveldb::Status s = db_->Get(VerifiedReads(), keys::Request(request_id), &value);
  if (s.IsNotFound()) return std::optional<mergedb::v1::RequestRecord>();
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(s, "reading a request record"));
  mergedb::v1::RequestRecord record;
  if (!record.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("data dir ", options_.path, ": corrupt request record"));
  }
  return std::optional<mergedb::v1::RequestRecord>(std::move(record));
}

absl::StatusOr<size_t> Store::ExpireRequests(int64_t before_unix_millis) {
  MERGEDB_RETURN_IF_ERROR(health());
  const std::string prefix(1, keys::kRequestTag);
  std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(VerifiedReads()));
  leveldb::WriteBatch batch;
  size_t expired = 0;
  for (it->Seek(prefix); it->Valid() && HasPrefix(it->key(), prefix); it->Next()) {
    mergedb::v1::RequestRecord record;
    if (record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) &&
        record.unix_millis() >= before_unix_millis) {
      continue;
    }
    batch.Delete(it->key());
    ++expired;
  }
  MERGEDB_RETURN_IF_ERROR(FromLevelDb(it->status(), "scanning request records"));
  if (expired == 0) return expired;
  leveldb::Status s = db_->Write(leveldb::WriteOptions(), &batch);
  if (!s.ok()) {
    absl::MutexLock lock(&commit_mu_);
    return FailStore(FromLevelDb(s, "expiring request records"));
  }
  return expired;
}

class Store::LevelDbSnapshotCursor : public SnapshotCursor {
 public:
  LevelDbSnapshotCursor(Store* store) : store_(store), snapshot_(store->db_->GetSnapshot()) {}
  ~LevelDbSnapshotCursor() override {
    it_.reset();
    requests_it_.reset();
    store_->db_->ReleaseSnapshot(snapshot_);
  }

  absl::Status Init() {
    MERGEDB_ASSIGN_OR_RETURN(applied_,
                             store_->ReadVector(std::string(1, keys::kAppliedTag), snapshot_));
    it_.reset(store_->db_->NewIterator(VerifiedReads(snapshot_)));
    it_->Seek(std::string(1, keys::kDocTag));
    return absl::OkStatus();
  }

  const VersionVector& applied() const override { return applied_; }

  absl::StatusOr<bool> Next(SnapshotDoc* doc) override {
    // The iterator starts at the first document key; the fence (or any key after it) ends them.
    if (!it_->Valid() || View(it_->key()) >= doc_space_end_) {
      MERGEDB_RETURN_IF_ERROR(FromLevelDb(it_->status(), "reading a snapshot"));
      return false;
    }
    absl::string_view rest = View(it_->key()).substr(1);
    if (!crdt::ConsumeName(&rest, &doc->collection) || !crdt::ConsumeName(&rest, &doc->id)) {
      return absl::DataLossError(
          absl::StrCat("data dir ", store_->options_.path, ": malformed document key"));
    }
    const std::string prefix = keys::DocPrefix(doc->collection, doc->id);
    MERGEDB_ASSIGN_OR_RETURN(doc->state, store_->LoadFromDb(prefix, snapshot_));
    it_->Seek(prefix + "\x02");
    return true;
  }

  absl::StatusOr<bool> NextRequest(SnapshotRequest* request) override {
    const std::string prefix(1, keys::kRequestTag);
    while (true) {
      if (requests_it_ == nullptr) {
        requests_it_.reset(store_->db_->NewIterator(VerifiedReads(snapshot_)));
        requests_it_->Seek(prefix);
      } else {
        requests_it_->Next();
      }
      if (!requests_it_->Valid() || !HasPrefix(requests_it_->key(), prefix)) {
        MERGEDB_RETURN_IF_ERROR(FromLevelDb(requests_it_->status(), "reading a snapshot"));
        return false;
      }
      request->request_id = std::string(View(requests_it_->key()).substr(1));
      const leveldb::Slice value = requests_it_->value();
      if (!request->record.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
        return absl::DataLossError(
            absl::StrCat("data dir ", store_->options_.path, ": corrupt request record"));
      }
      // A record from before log_origin names no incarnation (this data dir's at the time,
      // which may have changed since): another node could not tell which entry a retry must
      // wait for. Such records expire with the window.
      if (request->record.log_origin() == 0 && request->record.log_seq() != 0) continue;
      return true;
    }
  }

 private:
  Store* const store_;
  const leveldb::Snapshot* const snapshot_;
  const std::string doc_space_end_ = keys::DocSpaceEnd();
  std::unique_ptr<leveldb::Iterator> it_;
  std::unique_ptr<leveldb::Iterator> requests_it_;
  VersionVector applied_;
};

absl::StatusOr<std::unique_ptr<SnapshotCursor>> Store::OpenSnapshot() {
  auto cursor = std::make_unique<LevelDbSnapshotCursor>(this);
  MERGEDB_RETURN_IF_ERROR(cursor->Init());
  return std::unique_ptr<SnapshotCursor>(std::move(cursor));
}

}  // namespace mergedb::storage

// The LevelDB keyspace of a mergedb data directory. All of a node's state lives in one LevelDB;
// every key starts with a one-byte tag, so each kind of record is one contiguous, ordered range.
//
//   tag  key suffix                              value
//   0x01 meta name                               meta (see kMeta*)
//   0x02 esc(coll) esc(id) 0x00                  document context: mergedb.v1.CausalContext
//   0x02 esc(coll) esc(id) 0x01 leaf_key         one leaf's entries: mergedb.v1.Leaf (no key)
//   0x03 be64(origin) be64(seq)                  replication log entry: mergedb.v1.LogEntry
//   0x04 be64(origin)                            applied vector: be64(highest contiguous seq)
//   0x05 esc(peer name) be64(origin)             a peer's acknowledged vector: be64(seq)
//   0x06 be64(change seq)                        local change feed: mergedb.v1.ChangeRecord
//   0x07 request id                              recent client request: mergedb.v1.RequestRecord
//   0x08 be64(origin)                            log floor: be64(highest truncated seq)
//
// esc() is the escaping of crdt/leaf_key.h (0x00 -> 0x00 0xFF, then 0x00 0x01): prefix-free
// and order-preserving, so one document's keys are one range and a collection's documents sort
// by id. be64 is big-endian, so the log scans in sequence order.
//
// Documents are stored per leaf, not as one blob: a write rewrites only the leaves it changed
// and the (small) context record, so its cost follows the change, not the document size. A
// document whose context record exists but that has no leaves is a tombstone (deleted; its
// context stops late deltas from resurrecting it).
#ifndef MERGEDB_STORAGE_KEYS_H_
#define MERGEDB_STORAGE_KEYS_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "crdt/dot.h"

namespace mergedb::storage::keys {

inline constexpr char kMetaTag = 0x01;
inline constexpr char kDocTag = 0x02;
inline constexpr char kLogTag = 0x03;
inline constexpr char kAppliedTag = 0x04;
inline constexpr char kPeerAckTag = 0x05;
inline constexpr char kChangeTag = 0x06;
inline constexpr char kRequestTag = 0x07;
inline constexpr char kLogFloorTag = 0x08;

// Meta names. Frozen.
inline constexpr absl::string_view kMetaSchema = "schema";        // decimal schema version
inline constexpr absl::string_view kMetaCluster = "cluster";      // cluster id
inline constexpr absl::string_view kMetaNode = "node";            // node name
inline constexpr absl::string_view kMetaReplica = "replica";      // be64 replica id
inline constexpr absl::string_view kMetaChangeSeq = "change_seq"; // be64 last change sequence
inline constexpr absl::string_view kMetaDocCount = "doc_count";   // be64 live documents
inline constexpr absl::string_view kMetaDigest = "digest";        // 16-byte state digest
inline constexpr absl::string_view kMetaChangeFloor = "change_floor";  // be64 oldest dropped
// Present while the store is closed cleanly; removed while it is open.
inline constexpr absl::string_view kMetaCleanShutdown = "clean_shutdown";
// "1" when the run that last opened the store synced every commit, "0" (or absent) when not.
inline constexpr absl::string_view kMetaSyncedRun = "synced_run";
// Present in a copy written by Store::Backup until its first open, which then draws a new
// replica id: the node the copy came from may have issued sequence numbers since.
inline constexpr absl::string_view kMetaFromBackup = "from_backup";
// Written by mergedb-repair before it marked a repaired dir with the file MERGEDB-REPAIRED
// (storage/store.h) instead; still honoured at open, like the file, until an open has drawn a
// new replica id and cleared the documents (Store::AfterRepair).
inline constexpr absl::string_view kMetaRepaired = "repaired";
// The data dir's earlier incarnations, oldest first, as 16-byte entries (be64 replica id, be64
// the last change-feed position that survived into the next incarnation): a change-feed position
// given out by an earlier incarnation names the same change here only up to that point.
// Absent: no earlier incarnation is known.
inline constexpr absl::string_view kMetaFeedHistory = "feed_history";
// Log entries a full-state transfer superseded and that are still to be deleted, as 24-byte
// entries (be64 origin, be64 first, be64 last sequence): written in the transfer's final commit,
// removed with the last deletion, and finished by the next open if a crash came in between.
inline constexpr absl::string_view kMetaSupersededLog = "superseded_log";
// Its values: written first, and replaced by the copy's last write.
inline constexpr absl::string_view kBackupIncomplete = "incomplete";
inline constexpr absl::string_view kBackupComplete = "complete";

inline constexpr int kSchemaVersion = 1;

std::string Meta(absl::string_view name);
// The prefix of every key of one document.
std::string DocPrefix(absl::string_view collection, absl::string_view id);
// The prefix of every document of a collection.
std::string CollectionPrefix(absl::string_view collection);
// A live key after every document key (tag, 0xFF: no collection name starts with 0xFF, which
// is not UTF-8). A seek past the last document stops here instead of walking the deletion
// markers of truncated log entries that follow, which LevelDB skips one by one until
// compaction drops them.
std::string DocSpaceEnd();
std::string DocContext(absl::string_view doc_prefix);
std::string DocLeaf(absl::string_view doc_prefix, absl::string_view leaf_key);
std::string Log(crdt::ReplicaId origin, uint64_t seq);
std::string LogOrigin(crdt::ReplicaId origin);
std::string Applied(crdt::ReplicaId origin);
std::string PeerAck(absl::string_view peer, crdt::ReplicaId origin);
std::string PeerAckPrefix(absl::string_view peer);
std::string Change(uint64_t seq);
std::string Request(absl::string_view request_id);
std::string LogFloor(crdt::ReplicaId origin);

std::string EncodeBe64(uint64_t v);
// REQUIRES: bytes.size() >= 8.
uint64_t DecodeBe64(absl::string_view bytes);

}  // namespace mergedb::storage::keys

#endif  // MERGEDB_STORAGE_KEYS_H_

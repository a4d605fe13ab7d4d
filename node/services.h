// The gRPC services of a node. Most calls use the synchronous gRPC API (each call runs on one
// server thread, which may block on the store's group commit; the server grows its thread pool
// as needed); the write RPCs, where the per-message cost matters most, run on the asynchronous
// API (node/async_writes.h) over ExecuteUpdate and ExecuteUpdates.
#ifndef MERGEDB_NODE_SERVICES_H_
#define MERGEDB_NODE_SERVICES_H_

#include <atomic>
#include <chrono>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "crdt/causal_context.h"
#include "crdt/document.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/clock.h"
#include "node/validation.h"
#include "storage/store.h"

namespace mergedb::node {

// A Get's answer for the field at `path` (empty: the whole document) of `doc`: found, the JSON
// and typed views, the conflicts and the version token. ExecuteGet adds the waits and the size
// limit; the fuzzers read documents back through this, as a client would.
mergedb::v1::GetResponse RenderGetResponse(const crdt::Document& doc, const crdt::Path& path);

// The storage write of a validated update, made as `replica` with timestamps from `clock` at
// `unix_millis` (recorded with its request id). `update` and `clock` must outlive the write. The
// fuzzers write through this too, as the node does.
storage::LocalWrite MakeLocalWrite(const mergedb::v1::UpdateRequest& request,
                                   const PreparedUpdate& update, crdt::ReplicaId replica,
                                   HybridClock* clock, int64_t unix_millis);

// When the node stops waiting for a call: a little before the client's deadline, so that the
// node's own answer (saying what happened) reaches the client before its deadline does; calls
// without a deadline wait at most a default.
absl::Time CallDeadline(const grpc::ServerContext* context);

class Node;

// Whether a write with this concern waits for the peers (QUORUM, ALL).
bool ConcernWaits(mergedb::v1::WriteConcern concern);

// A local write's entry in its origin's log: what a QUORUM or ALL answer waits for the members
// to have applied. The origin is the incarnation that committed it, which for a retried
// request may be an earlier one than the node's current. seq 0: nothing to wait for.
struct LogPoint {
  crdt::ReplicaId origin = 0;
  uint64_t seq = 0;
  // When the commit was done: the wait for the peers is measured from here (latency
  // histograms), whatever queue the confirmation then waits in.
  std::chrono::steady_clock::time_point committed;
};

// Update, UpdateStream and UpdateBatchStream are asynchronous methods: ServeWrites serves them.
// They take raw messages and parse them themselves, to answer one that does not parse with
// INVALID_ARGUMENT (node/async_writes.cc, Unparsable).
using DocumentServiceBase = mergedb::v1::DocumentService::WithRawMethod_Update<
    mergedb::v1::DocumentService::WithRawMethod_UpdateStream<
        mergedb::v1::DocumentService::WithRawMethod_UpdateBatchStream<
            mergedb::v1::DocumentService::Service>>>;

// Thread safety: thread-safe; `node` is borrowed and outlives the service.
class DocumentServiceImpl final : public DocumentServiceBase {
 public:
  explicit DocumentServiceImpl(Node* node) : node_(node) {}

  Node* node() const { return node_; }

  grpc::Status Get(grpc::ServerContext* context, const mergedb::v1::GetRequest* request,
                   mergedb::v1::GetResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* context, const mergedb::v1::DeleteRequest* request,
                      mergedb::v1::UpdateResponse* response) override;
  grpc::Status List(grpc::ServerContext* context, const mergedb::v1::ListRequest* request,
                    mergedb::v1::ListResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context, const mergedb::v1::WatchRequest* request,
                     grpc::ServerWriter<mergedb::v1::WatchEvent>* writer) override;

  // The transport-independent core of Update: validates, waits for a base version if one is
  // given, applies and commits. `deadline` bounds the waits.
  // With `await`, does not wait for the write concern (see FinishUpdate).
  absl::StatusOr<mergedb::v1::UpdateResponse> ExecuteUpdate(
      const mergedb::v1::UpdateRequest& request, absl::Time deadline, grpc::ServerContext* context,
      LogPoint* await = nullptr);
  // One validated update on a writable node: waits for its base version, commits it alone,
  // then finishes it as FinishUpdate does (`await` likewise).
  absl::StatusOr<mergedb::v1::UpdateResponse> ApplyUpdate(const mergedb::v1::UpdateRequest& request,
                                                          const PreparedUpdate& update,
                                                          absl::Time deadline,
                                                          grpc::ServerContext* context,
                                                          LogPoint* await = nullptr);
  // Several updates, in order, committed together where possible; one result each.
  // With `awaits` null, each result is final: its write concern was waited for. Otherwise a
  // result is as if the concern were met, and (*awaits)[i] is the log entry that request i
  // must see confirmed (AwaitConcern) before its answer holds; seq 0 when there is nothing to
  // wait for. A caller can so commit the next updates while earlier ones wait for the peers.
  std::vector<absl::StatusOr<mergedb::v1::UpdateResponse>> ExecuteUpdates(
      absl::Span<const mergedb::v1::UpdateRequest> requests, absl::Time deadline,
      grpc::ServerContext* context, std::vector<LogPoint>* awaits = nullptr);
  // Waits until enough members (QUORUM: a majority, ALL: every one, this node included) have
  // applied the log entry `entry`, or `deadline` passes: then DEADLINE_EXCEEDED, saying that
  // the write is durable here and will still replicate (UNAVAILABLE, saying the same, when the
  // node stops first). LOCAL: OK at once.
  absl::Status AwaitConcern(mergedb::v1::WriteConcern concern, LogPoint entry, absl::Time deadline);
  // OK on a writable node; otherwise why not (a read-only replica names the primaries).
  absl::Status CheckWritable();
  // The storage write of a validated update on this node; `update` must outlive it.
  storage::LocalWrite LocalWriteOf(const mergedb::v1::UpdateRequest& request,
                                   const PreparedUpdate& update);
  // After the local commit: waits for the write concern, then builds the answer. With
  // `await`, does not wait: sets it to the log entry the caller must see confirmed
  // (AwaitConcern) before the answer holds, or leaves its seq 0 when there is nothing to wait
  // for.
  absl::StatusOr<mergedb::v1::UpdateResponse> FinishUpdate(
      const mergedb::v1::UpdateRequest& request, const storage::WriteResult& result,
      absl::Time deadline, LogPoint* await = nullptr);
  absl::StatusOr<mergedb::v1::GetResponse> ExecuteGet(const mergedb::v1::GetRequest& request,
                                                      absl::Time deadline,
                                                      grpc::ServerContext* context);

 private:
  // Waits until this node's copy of the document includes `token`.
  absl::Status WaitForVersion(const std::string& collection, const std::string& id,
                              const crdt::CausalContext& token, absl::Time deadline,
                              grpc::ServerContext* context);

  Node* const node_;
  std::atomic<int> watches_{0};  // Watch streams being served
};

// What ClusterService.Status answers for `node` (the metrics endpoint shows the same).
void FillStatus(Node* node, mergedb::v1::StatusResponse* response);

class ClusterServiceImpl final : public mergedb::v1::ClusterService::Service {
 public:
  explicit ClusterServiceImpl(Node* node) : node_(node) {}
  grpc::Status Status(grpc::ServerContext* context, const mergedb::v1::StatusRequest* request,
                      mergedb::v1::StatusResponse* response) override;
  grpc::Status Backup(grpc::ServerContext* context, const mergedb::v1::BackupRequest* request,
                      mergedb::v1::BackupResponse* response) override;
  grpc::Status StreamBackup(grpc::ServerContext* context,
                            const mergedb::v1::StreamBackupRequest* request,
                            grpc::ServerWriter<mergedb::v1::BackupChunk>* writer) override;

 private:
  Node* const node_;
  // One backup at a time: each holds a LevelDB snapshot (old versions cannot be compacted away
  // meanwhile) and writes a whole copy of the store.
  std::atomic<bool> backup_running_{false};
  // A backup stops when its caller cancels or the node begins to stop.
  bool Abandoned(grpc::ServerContext* context) const;
  // Whether a backup that failed with `failed` was stopped by the node's shutdown, and what it
  // answers then.
  bool StoppedByShutdown(const absl::Status& failed) const;
  absl::Status ShutdownRefusal() const;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_SERVICES_H_

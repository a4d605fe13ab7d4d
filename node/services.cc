#include "node/services.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "crdt/scalar.h"
#include "crdt/status_macros.h"
#include "grpcpp/server_context.h"
#include "node/grpc_status.h"
#include "node/log.h"
#include "node/node.h"

namespace mergedb::node {

namespace {

using mergedb::v1::GetRequest;
using mergedb::v1::GetResponse;
using mergedb::v1::UpdateRequest;
using mergedb::v1::UpdateResponse;

// Waits without a client deadline are bounded by this.
constexpr absl::Duration kDefaultWait = absl::Seconds(10);
// Long waits wake up this often to notice cancellation and shutdown.
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

void AddConflicts(const std::vector<crdt::FieldConflict>& conflicts, GetResponse* response) {
  for (const auto& c : conflicts) {
    auto* out = response->add_conflicts();
    for (const auto& name : c.path) out->add_path(name);
    for (crdt::FieldKind kind : c.kinds) {
      out->add_kinds(static_cast<mergedb::v1::FieldKind>(kind));
    }
    for (const auto& sibling : c.siblings) *out->add_siblings() = sibling;
  }
}

// List page tokens: "L" + the last id returned, web-safe base64, so malformed tokens are caught.
std::string EncodePageToken(absl::string_view last_id) {
  std::string out;
  absl::WebSafeBase64Escape(absl::StrCat("L", last_id), &out);
  return out;
}

absl::StatusOr<std::string> DecodePageToken(absl::string_view token) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw) || raw.empty() || raw[0] != 'L') {
    return absl::InvalidArgumentError("page_token: malformed (pass next_page_token unchanged)");
  }
  return raw.substr(1);
}

}  // namespace

// When the node stops waiting for a call: a little before the client's deadline, so that the
// node's own answer (saying what happened) reaches the client before its deadline does.
absl::Time CallDeadline(const grpc::ServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::Now() + kDefaultWait;
  const absl::Time client = std::min(absl::FromChrono(deadline), absl::Now() + absl::Hours(24));
  const absl::Duration margin = std::min(absl::Milliseconds(50), (client - absl::Now()) / 10);
  return client - margin;
}

GetResponse RenderGetResponse(const crdt::Document& doc, const crdt::Path& path) {
  GetResponse response;
  response.set_found(doc.exists());
  response.set_version(EncodeVersionToken(doc.context()));
  mergedb::v1::MapView view;
  if (path.empty()) {
    view = doc.ToTyped();
    *response.mutable_value() = crdt::Document::MapToJson(view);
  } else {
    for (auto& field : doc.ReadField(path)) *view.add_fields() = std::move(field);
    response.mutable_value()->set_null_value(google::protobuf::NULL_VALUE);
    for (const auto& field : view.fields()) {
      if (!field.shadowed()) *response.mutable_value() = crdt::Document::TypedToJson(field.value());
    }
  }
  crdt::Path prefix(path.begin(), path.empty() ? path.end() : path.end() - 1);
  AddConflicts(crdt::Document::ConflictsIn(view, prefix), &response);
  for (auto& field : *view.mutable_fields()) *response.add_fields() = std::move(field);
  return response;
}

absl::Status DocumentServiceImpl::WaitForVersion(const std::string& collection,
                                                 const std::string& id,
                                                 const crdt::CausalContext& token,
                                                 absl::Time deadline,
                                                 grpc::ServerContext* context) {
  storage::Store* store = node_->store();
  const storage::Store::ChangeFilter filter{collection, id};
  while (true) {
    const uint64_t seen = store->last_change_seq();
    bool covered = false;
    MERGEDB_RETURN_IF_ERROR(store->Read(
        collection, id, [&](const crdt::Document& doc) { covered = doc.context().Includes(token); }));
    if (covered) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "document ", collection, "/", id,
          ": this node has not yet applied every write the version token covers"));
    }
    if (context != nullptr && context->IsCancelled()) {
      return absl::CancelledError("the call was cancelled");
    }
    if (node_->stopping()) return absl::UnavailableError("the node is shutting down");
    store->WaitForChange(seen, filter, std::min(kPollInterval, deadline - now));
  }
}

absl::Status DocumentServiceImpl::CheckWritable() {
  if (node_->options().role == mergedb::v1::REPLICA) {
    // Name the writable nodes this replica has heard from, with their addresses when known.
    std::vector<std::string> primaries;
    for (const std::string& name : node_->replication()->view()->NodesWithRole(mergedb::v1::PRIMARY)) {
      std::string entry = name;
      for (const PeerConfig& peer : node_->options().peers) {
        if (peer.name == name) entry = absl::StrCat(name, " (", peer.address, ")");
      }
      primaries.push_back(std::move(entry));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "node ", node_->options().node_name, " is a read-only replica: send writes to ",
        primaries.empty() ? std::string("a primary node")
                          : absl::StrCat("a primary: ", absl::StrJoin(primaries, ", "))));
  }
  if (node_->stopping() || node_->draining()) {
    return absl::UnavailableError("the node is shutting down");
  }
  if (std::string why = node_->replication()->view()->rolled_back_reason(); !why.empty()) {
    return absl::FailedPreconditionError(why);
  }
  return absl::OkStatus();
}

storage::LocalWrite MakeLocalWrite(const UpdateRequest& request, const PreparedUpdate& update,
                                   crdt::ReplicaId replica, HybridClock* clock,
                                   int64_t unix_millis) {
  storage::LocalWrite write;
  write.collection = request.collection();
  write.id = request.id();
  write.request_id = request.request_id();
  if (!write.request_id.empty()) {
    // What a retry must repeat. The write concern is left out: a retry may ask for a stronger
    // one, and the write is the same.
    UpdateRequest content;
    *content.mutable_ops() = request.ops();
    content.set_base_version(request.base_version());
    write.request_fingerprint = storage::RequestFingerprint(crdt::SerializeDeterministic(content));
  }
  write.unix_millis = unix_millis;
  write.mutate = [&update, replica, clock](crdt::Document& doc) {
    return update.Apply(doc, replica, *clock);
  };
  return write;
}

storage::LocalWrite DocumentServiceImpl::LocalWriteOf(const UpdateRequest& request,
                                                      const PreparedUpdate& update) {
  return MakeLocalWrite(request, update, node_->store()->replica_id(), node_->hybrid_clock(),
                        absl::ToUnixMillis(absl::Now()));
}

namespace {
// Whether a write's result is a commit of its own (the commit latency counts those): not a
// retry answered from its request record, nor an update that changed nothing.
bool Committed(const storage::WriteResult& result) {
  return result.log_seq != 0 && !result.duplicate_request;
}
}  // namespace

bool ConcernWaits(mergedb::v1::WriteConcern concern) {
  return concern == mergedb::v1::QUORUM || concern == mergedb::v1::ALL;
}

absl::Status DocumentServiceImpl::AwaitConcern(mergedb::v1::WriteConcern concern, LogPoint entry,
                                               absl::Time deadline) {
  if (!ConcernWaits(concern) || entry.seq == 0) return absl::OkStatus();
  // Synchronous replication: wait until enough members (this one included) applied it.
  ClusterView* view = node_->replication()->view();
  const int members = view->member_count();
  const int needed = concern == mergedb::v1::ALL ? members : members / 2 + 1;
  const int confirmed = view->WaitForConfirmations(entry.origin, entry.seq, needed, deadline);
  node_->concern_wait(concern)->Observe(
      absl::FromChrono(std::chrono::steady_clock::now() - entry.committed));
  if (confirmed >= needed) return absl::OkStatus();
  const std::string so_far = absl::StrCat(
      "the write is durable on node ", node_->options().node_name,
      " and will still replicate, but only ", confirmed, " of ", members, " nodes confirmed it");
  const std::string rule =
      absl::StrCat(" (", mergedb::v1::WriteConcern_Name(concern), " needs ", needed, ")");
  // The wait ends before the deadline only when the node stops (stopping_ is set before
  // ClusterView::ReleaseWaiters): that is no missed deadline. The write stays applied here; a
  // retry belongs on this node, with the same request_id, once it is back (another node
  // recognizes it only once the write has reached it).
  if (node_->stopping()) {
    return absl::UnavailableError(
        absl::StrCat("node ", node_->options().node_name, " is shutting down: ", so_far, rule,
                     "; retry on this node with the same request_id once it is back"));
  }
  return absl::DeadlineExceededError(absl::StrCat(so_far, " before the deadline", rule));
}

absl::StatusOr<UpdateResponse> DocumentServiceImpl::FinishUpdate(const UpdateRequest& request,
                                                                 const storage::WriteResult& result,
                                                                 absl::Time deadline,
                                                                 LogPoint* await) {
  const LogPoint entry{result.origin, result.log_seq, std::chrono::steady_clock::now()};
  if (await == nullptr) {
    MERGEDB_RETURN_IF_ERROR(AwaitConcern(request.write_concern(), entry, deadline));
  } else if (ConcernWaits(request.write_concern())) {
    *await = entry;
  }
  UpdateResponse response;
  response.set_request_id(request.request_id());
  response.set_version(EncodeVersionToken(result.version));
  response.set_duplicate(result.duplicate_request);
  response.set_position(result.change_seq);
  // The incarnation that committed it (an earlier one for some retries): the pair names the
  // change for as long as that feed holds it.
  if (result.change_seq != 0) response.set_feed(result.origin);
  return response;
}

absl::StatusOr<UpdateResponse> DocumentServiceImpl::ExecuteUpdate(const UpdateRequest& request,
                                                                  absl::Time deadline,
                                                                  grpc::ServerContext* context,
                                                                  LogPoint* await) {
  MERGEDB_RETURN_IF_ERROR(CheckWritable());
  MERGEDB_ASSIGN_OR_RETURN(PreparedUpdate update,
                           PreparedUpdate::Prepare(request, node_->options().limits));
  return ApplyUpdate(request, update, deadline, context, await);
}

absl::StatusOr<UpdateResponse> DocumentServiceImpl::ApplyUpdate(const UpdateRequest& request,
                                                                const PreparedUpdate& update,
                                                                absl::Time deadline,
                                                                grpc::ServerContext* context,
                                                                LogPoint* await) {
  if (update.has_base_version()) {
    MERGEDB_RETURN_IF_ERROR(
        WaitForVersion(request.collection(), request.id(), update.base_version(), deadline, context));
  }
  const auto commit_start = std::chrono::steady_clock::now();
  MERGEDB_ASSIGN_OR_RETURN(storage::WriteResult result,
                           node_->store()->ApplyLocal(LocalWriteOf(request, update)));
  if (Committed(result)) {
    node_->commit_latency()->Observe(
        absl::FromChrono(std::chrono::steady_clock::now() - commit_start));
  }
  return FinishUpdate(request, result, deadline, await);
}

std::vector<absl::StatusOr<UpdateResponse>> DocumentServiceImpl::ExecuteUpdates(
    absl::Span<const UpdateRequest> requests, absl::Time deadline, grpc::ServerContext* context,
    std::vector<LogPoint>* awaits) {
  std::vector<absl::StatusOr<UpdateResponse>> responses(requests.size(), UpdateResponse{});
  if (awaits != nullptr) awaits->assign(requests.size(), LogPoint{});
  // Valid requests go to the store as one batch. A request with a base version waits for it
  // first, which may take a while: it runs alone, after the writes before it.
  std::deque<PreparedUpdate> updates;  // stable addresses: the writes' mutations refer to them
  std::vector<storage::LocalWrite> writes;
  std::vector<size_t> batched;  // request index of each write
  auto apply_batch = [&] {
    const auto commit_start = std::chrono::steady_clock::now();
    auto results = node_->store()->ApplyLocalBatch(writes);
    const uint64_t committed = static_cast<uint64_t>(std::count_if(
        results.begin(), results.end(),
        [](const absl::StatusOr<storage::WriteResult>& r) { return r.ok() && Committed(*r); }));
    if (committed > 0) {
      node_->commit_latency()->Observe(
          absl::FromChrono(std::chrono::steady_clock::now() - commit_start), committed);
    }
    for (size_t k = 0; k < results.size(); ++k) {
      const size_t i = batched[k];
      responses[i] = results[k].ok()
                         ? FinishUpdate(requests[i], *results[k], deadline,
                                        awaits == nullptr ? nullptr : &(*awaits)[i])
                         : absl::StatusOr<UpdateResponse>(results[k].status());
    }
    writes.clear();
    batched.clear();
    updates.clear();
  };
  for (size_t i = 0; i < requests.size(); ++i) {
    if (absl::Status writable = CheckWritable(); !writable.ok()) {
      responses[i] = writable;
      continue;
    }
    auto update = PreparedUpdate::Prepare(requests[i], node_->options().limits);
    if (!update.ok()) {
      responses[i] = update.status();
      continue;
    }
    if (update->has_base_version()) {
      apply_batch();
      responses[i] = ApplyUpdate(requests[i], *update, deadline, context,
                                 awaits == nullptr ? nullptr : &(*awaits)[i]);
      continue;
    }
    updates.push_back(*std::move(update));
    writes.push_back(LocalWriteOf(requests[i], updates.back()));
    batched.push_back(i);
  }
  apply_batch();
  return responses;
}

absl::StatusOr<GetResponse> DocumentServiceImpl::ExecuteGet(const GetRequest& request,
                                                            absl::Time deadline,
                                                            grpc::ServerContext* context) {
  const Limits& limits = node_->options().limits;
  MERGEDB_RETURN_IF_ERROR(ValidateName("collection", request.collection(), limits));
  MERGEDB_RETURN_IF_ERROR(ValidateName("id", request.id(), limits));
  MERGEDB_ASSIGN_OR_RETURN(crdt::Path path, ValidatePath("path", request.path(), limits));
  if (!request.after().empty()) {
    MERGEDB_ASSIGN_OR_RETURN(crdt::CausalContext after,
                             DecodeVersionToken("after", request.after()));
    MERGEDB_RETURN_IF_ERROR(
        WaitForVersion(request.collection(), request.id(), after, deadline, context));
  }
  GetResponse response;
  MERGEDB_RETURN_IF_ERROR(node_->store()->Read(
      request.collection(), request.id(),
      [&](const crdt::Document& doc) { response = RenderGetResponse(doc, path); }));
  const size_t size = response.ByteSizeLong();
  if (size > limits.max_response_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "document ", request.collection(), "/", request.id(), ": the answer is ", size,
        " bytes, over the ", limits.max_response_bytes,
        "-byte response limit; read one field at a time with GetRequest.path"));
  }
  return response;
}

grpc::Status DocumentServiceImpl::Get(grpc::ServerContext* context, const GetRequest* request,
                                      GetResponse* response) {
  auto result = ExecuteGet(*request, CallDeadline(context), context);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status DocumentServiceImpl::Delete(grpc::ServerContext* context,
                                         const mergedb::v1::DeleteRequest* request,
                                         UpdateResponse* response) {
  UpdateRequest update;
  update.set_collection(request->collection());
  update.set_id(request->id());
  update.set_request_id(request->request_id());
  update.set_base_version(request->base_version());
  update.set_write_concern(request->write_concern());
  update.add_ops()->mutable_delete_document();
  auto result = ExecuteUpdate(update, CallDeadline(context), context);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status DocumentServiceImpl::List(grpc::ServerContext*,
                                       const mergedb::v1::ListRequest* request,
                                       mergedb::v1::ListResponse* response) {
  const Limits& limits = node_->options().limits;
  absl::Status status = ValidateName("collection", request->collection(), limits);
  if (!status.ok()) return ToGrpcStatus(status);
  int page_size = request->page_size();
  if (page_size < 0 || page_size > kMaxPageSize) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("page_size: ", page_size, " is outside 0..", kMaxPageSize)));
  }
  if (page_size == 0) page_size = kDefaultPageSize;
  std::string after;
  if (!request->page_token().empty()) {
    auto decoded = DecodePageToken(request->page_token());
    if (!decoded.ok()) return ToGrpcStatus(decoded.status());
    after = *std::move(decoded);
  }
  auto page = node_->store()->Scan(request->collection(), static_cast<size_t>(page_size), after);
  if (!page.ok()) return ToGrpcStatus(page.status());
  size_t bytes = 0;
  std::string last;
  for (auto& [id, doc] : page->documents) {
    mergedb::v1::ListedDocument listed;
    listed.set_id(id);
    *listed.mutable_value() = doc.ToJson();
    listed.set_version(EncodeVersionToken(doc.context()));
    size_t size = listed.ByteSizeLong();
    if (size > limits.max_response_bytes) {
      // Listed without its value, so that the pages after it can still be read.
      listed.clear_value();
      listed.set_too_large(true);
      size = listed.ByteSizeLong();
    }
    // Keep the answer under the response limit: end the page early (at least one document).
    if (response->documents_size() > 0 && bytes + size > limits.max_response_bytes) {
      response->set_next_page_token(EncodePageToken(last));
      return grpc::Status::OK;
    }
    bytes += size;
    last = id;
    *response->add_documents() = std::move(listed);
  }
  if (!page->next_token.empty()) response->set_next_page_token(EncodePageToken(page->next_token));
  return grpc::Status::OK;
}

grpc::Status DocumentServiceImpl::Watch(grpc::ServerContext* context,
                                        const mergedb::v1::WatchRequest* request,
                                        grpc::ServerWriter<mergedb::v1::WatchEvent>* writer) {
  // Each stream holds a server thread for its life: a bound keeps one client from starving
  // every other call.
  const int max_watches = node_->options().max_watch_streams;
  if (watches_.fetch_add(1) >= max_watches) {
    watches_.fetch_sub(1);
    return ToGrpcStatus(absl::ResourceExhaustedError(absl::StrCat(
        "this node serves at most ", max_watches,
        " Watch streams at once (--max_watch_streams); close some, or watch a collection "
        "instead of many documents")));
  }
  absl::Cleanup release = [this] { watches_.fetch_sub(1); };
  const Limits& limits = node_->options().limits;
  absl::Status status = ValidateName("collection", request->collection(), limits);
  if (status.ok() && !request->id().empty()) status = ValidateName("id", request->id(), limits);
  if (!status.ok()) return ToGrpcStatus(status);
  storage::Store* store = node_->store();
  uint64_t position = request->from_now() ? store->last_change_seq() : request->after_position();
  // 0 means "from the oldest change still held".
  if (!request->from_now() && position == 0) position = store->change_floor();
  // Positions belong to one node's data dir. One past the newest change was never handed out
  // here: it comes from another node, or from before this data dir was restored from a backup
  // or rebuilt, and waiting for the feed to reach it would silently skip the changes before.
  if (const uint64_t newest = store->last_change_seq(); position > newest) {
    return ToGrpcStatus(absl::OutOfRangeError(absl::StrCat(
        "after_position ", position, " is past this node's newest change (", newest,
        "): positions belong to one node and data dir (this one may have been restored or "
        "rebuilt); resume from_now, or from a position this node gave")));
  }
  // With the feed the position came from, a resume from before the node's last restore or
  // new incarnation is refused even once the feed has passed that position again.
  if (!request->from_now() && request->after_position() > 0 && request->after_feed() != 0 &&
      !store->FeedPositionHolds(request->after_feed(), position)) {
    return ToGrpcStatus(absl::OutOfRangeError(absl::StrCat(
        "after_position ", position, " of change feed ", request->after_feed(),
        " does not name a change in this node's feed (", store->replica_id(),
        "): the node was restored from a backup, rebuilt or restarted as a new incarnation "
        "since it gave out that position, and the changes after the point it kept are gone or "
        "renumbered (or the position is another node's); read the documents again, then watch "
        "from_now")));
  }
  constexpr size_t kBatch = 256;
  const storage::Store::ChangeFilter filter{request->collection(), request->id()};
  while (!context->IsCancelled() && !node_->stopping()) {
    auto changes = store->ReadChanges(position, kBatch);
    if (!changes.ok()) return ToGrpcStatus(changes.status());
    for (const auto& [seq, change] : *changes) {
      position = seq;
      if (change.collection() != request->collection()) continue;
      if (!request->id().empty() && change.id() != request->id()) continue;
      mergedb::v1::WatchEvent event;
      event.set_position(seq);
      event.set_collection(change.collection());
      event.set_id(change.id());
      event.set_origin(change.origin());
      event.set_feed(store->replica_id());
      absl::Status read = store->Read(change.collection(), change.id(), [&](const crdt::Document& doc) {
        event.set_found(doc.exists());
        *event.mutable_value() = doc.ToJson();
        event.set_version(EncodeVersionToken(doc.context()));
      });
      if (!read.ok()) return ToGrpcStatus(read);
      if (event.ByteSizeLong() > limits.max_response_bytes) {
        event.clear_value();
        event.set_too_large(true);
      }
      if (!writer->Write(event)) return grpc::Status::OK;  // the client went away
    }
    // Changes the filter rules out need not be read again after a poll timeout.
    if (changes->size() < kBatch) store->WaitForChange(position, filter, kPollInterval, &position);
  }
  if (node_->stopping()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the node is shutting down");
  return grpc::Status::OK;
}

grpc::Status ClusterServiceImpl::Status(grpc::ServerContext*, const mergedb::v1::StatusRequest*,
                                        mergedb::v1::StatusResponse* response) {
  FillStatus(node_, response);
  return grpc::Status::OK;
}

void FillStatus(Node* node, mergedb::v1::StatusResponse* response) {
  storage::Store* store = node->store();
  response->set_node_name(node->options().node_name);
  response->set_cluster_id(node->options().cluster_id);
  response->set_replica_id(store->replica_id());
  response->set_role(node->options().role);
  EncodeVector(store->AppliedVector(), response->mutable_applied());
  for (auto& peer : node->replication()->PeerStatuses()) *response->add_peers() = std::move(peer);
  response->set_document_count(store->document_count());
  response->set_uptime_seconds(absl::ToDoubleSeconds(absl::Now() - node->start_time()));
  response->set_state_digest(store->state_digest());
  response->set_last_position(store->last_change_seq());
  response->set_log_entries(store->log_entries());
  {
    mergedb::v1::LatencyHistogram* commit = response->add_latencies();
    commit->set_what(mergedb::v1::LatencyHistogram::COMMIT);
    node->commit_latency()->FillTo(commit);
    for (mergedb::v1::WriteConcern concern : {mergedb::v1::QUORUM, mergedb::v1::ALL}) {
      mergedb::v1::LatencyHistogram* wait = response->add_latencies();
      wait->set_what(mergedb::v1::LatencyHistogram::WRITE_CONCERN_WAIT);
      wait->set_write_concern(concern);
      node->concern_wait(concern)->FillTo(wait);
    }
  }
  response->set_change_feed_entries(store->change_feed_entries());
  if (absl::Status health = store->health(); !health.ok()) {
    response->set_refusing_writes(std::string(health.message()));
  } else if (std::string why = node->replication()->view()->rolled_back_reason(); !why.empty()) {
    response->set_refusing_writes(why);
  }
  if (const LiveTls* live = node->live_tls(); live != nullptr) {
    const std::shared_ptr<const TlsConfig> in_use = live->current();
    const TlsConfig& tls = *in_use;
    mergedb::v1::TlsStatus* out = response->mutable_tls();
    out->set_loaded_unix_seconds(absl::ToUnixSeconds(live->loaded_at()));
    out->set_reload_error(live->reload_error());
    if (const CertificateExpiry* own = OwnChainExpiry(tls); own != nullptr) {
      out->set_expires_unix_seconds(own->unix_seconds);
      out->set_expiring_subject(own->subject);
    }
    out->set_client_certificates_required(!tls.client_ca_pem.empty());
    if (const CertificateExpiry* client_ca = ClientCaExpiry(tls); client_ca != nullptr) {
      out->set_client_ca_expires_unix_seconds(client_ca->unix_seconds);
      out->set_client_ca_expiring_subject(client_ca->subject);
    }
  }
}

namespace {

// The node's one backup slot (Backup and StreamBackup share it), held for a call's length.
class BackupSlot {
 public:
  // ABORTED while another backup holds it.
  static absl::StatusOr<BackupSlot> Take(std::atomic<bool>& running) {
    if (running.exchange(true)) {
      return absl::AbortedError(
          "another backup is running on this node; try again when it has finished");
    }
    return BackupSlot(running);
  }
  explicit BackupSlot(std::atomic<bool>& running) : running_(&running) {}
  BackupSlot(BackupSlot&& other) noexcept : running_(std::exchange(other.running_, nullptr)) {}
  BackupSlot& operator=(BackupSlot&&) = delete;
  ~BackupSlot() {
    if (running_ != nullptr) *running_ = false;
  }

 private:
  std::atomic<bool>* running_;
};

// A streamed backup's reader that stops reading (but keeps its connection) blocks the stream's
// Write on flow control, and with it the node's one backup slot and a LevelDB snapshot (which
// keeps compaction from freeing what the copy still sees). The watchdog cancels the call when
// one Write has been blocked for `timeout`; time spent reading the store does not count.
class StallWatchdog {
 public:
  StallWatchdog(grpc::ServerContext* context, absl::Duration timeout)
      : context_(context), timeout_(timeout), thread_([this] { Run(); }) {}
  StallWatchdog(const StallWatchdog&) = delete;
  StallWatchdog& operator=(const StallWatchdog&) = delete;
  ~StallWatchdog() {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    thread_.join();
  }

  void WriteStarted() {
    absl::MutexLock lock(&mu_);
    blocked_since_ = absl::Now();
  }
  // True when the watchdog cancelled the call (possibly just after the Write went through: the
  // call must then fail all the same).
  bool WriteEnded() {
    absl::MutexLock lock(&mu_);
    blocked_since_ = absl::InfiniteFuture();
    return fired_;
  }
  bool fired() {
    absl::MutexLock lock(&mu_);
    return fired_;
  }

 private:
  void Run() {
    absl::MutexLock lock(&mu_);
    while (!done_) {
      const absl::Time since = blocked_since_;
      if (absl::Now() >= since + timeout_) {
        fired_ = true;
        context_->TryCancel();
        return;
      }
      // Wakes at the blocked Write's deadline, when a Write starts or ends, or when the copy
      // is over.
      const auto changed = [this, since]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return done_ || blocked_since_ != since;
      };
      mu_.AwaitWithDeadline(absl::Condition(&changed), since + timeout_);
    }
  }

  grpc::ServerContext* const context_;
  const absl::Duration timeout_;
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool fired_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time blocked_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::thread thread_;
};

}  // namespace

bool ClusterServiceImpl::Abandoned(grpc::ServerContext* context) const {
  return context->IsCancelled() || node_->stopping();
}

bool ClusterServiceImpl::StoppedByShutdown(const absl::Status& failed) const {
  return absl::IsCancelled(failed) && node_->stopping();
}

absl::Status ClusterServiceImpl::ShutdownRefusal() const {
  // Cancelled by the node, not by the caller: as the other calls a stopping node ends.
  return absl::UnavailableError(absl::StrCat("node ", node_->options().node_name,
                                             " is shutting down; the backup was not made"));
}

grpc::Status ClusterServiceImpl::Backup(grpc::ServerContext* context,
                                        const mergedb::v1::BackupRequest* request,
                                        mergedb::v1::BackupResponse* response) {
  const std::string& root = node_->options().backup_dir;
  if (root.empty()) {
    return ToGrpcStatus(absl::FailedPreconditionError(
        "backups are off on this node: start it with --backup_dir=DIR"));
  }
  if (absl::Status valid = ValidateBackupName(request->name()); !valid.ok()) {
    return ToGrpcStatus(valid);
  }
  absl::StatusOr<BackupSlot> slot = BackupSlot::Take(backup_running_);
  if (!slot.ok()) return ToGrpcStatus(slot.status());
  const std::string path = absl::StrCat(root, "/", request->name());
  MERGEDB_LOG(INFO) << "backup to " << path << " started";
  const absl::Time start = absl::Now();
  absl::StatusOr<storage::BackupResult> result =
      node_->store()->Backup(path, [this, context] { return Abandoned(context); });
  if (!result.ok()) {
    absl::Status failed = result.status();
    if (absl::IsResourceExhausted(failed)) {
      failed = absl::ResourceExhaustedError(
          absl::StrCat(failed.message(),
                       " (--backup_min_free_mb): free some space there, or restart the node with "
                       "a lower --backup_min_free_mb or another --backup_dir"));
    } else if (absl::StrContains(failed.message(), "No space left on device")) {
      // The disk filled during the copy (the free-space check passed, or is off): a retry fails
      // the same way until space is freed, which UNAVAILABLE would not say.
      failed = absl::ResourceExhaustedError(
          absl::StrCat(failed.message(), ": the backup disk is full; free some space there"));
    } else if (StoppedByShutdown(failed)) {
      failed = ShutdownRefusal();
    }
    MERGEDB_LOG(WARNING) << "backup to " << path << " failed: " << failed;
    return ToGrpcStatus(failed);
  }
  response->set_path(path);
  EncodeVector(result->applied, response->mutable_applied());
  response->set_records(result->records);
  response->set_bytes(result->bytes);
  response->set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  MERGEDB_LOG(INFO) << "backup to " << path << " done: " << result->records << " records, "
                    << result->bytes << " bytes in " << response->seconds() << " s";
  return grpc::Status::OK;
}

grpc::Status ClusterServiceImpl::StreamBackup(
    grpc::ServerContext* context, const mergedb::v1::StreamBackupRequest* /*request*/,
    grpc::ServerWriter<mergedb::v1::BackupChunk>* writer) {
  absl::StatusOr<BackupSlot> slot = BackupSlot::Take(backup_running_);
  if (!slot.ok()) return ToGrpcStatus(slot.status());
  // Each batch leaves as one message; a slow reader slows the copy (the stream's flow control
  // blocks Write) while the store's snapshot holds still.
  struct ToStream : storage::BackupSink {
    grpc::ServerWriter<mergedb::v1::BackupChunk>* writer;
    uint64_t approximate_bytes;
    StallWatchdog* watchdog;
    ToStream(grpc::ServerWriter<mergedb::v1::BackupChunk>* w, uint64_t bytes, StallWatchdog* dog)
        : writer(w), approximate_bytes(bytes), watchdog(dog) {}
    absl::Status Send(const mergedb::v1::BackupChunk& chunk) {
      watchdog->WriteStarted();
      const bool sent = writer->Write(chunk);
      if (watchdog->WriteEnded() || !sent) {
        return absl::CancelledError("the backup's reader went away");
      }
      return absl::OkStatus();
    }
    absl::Status Begin(const storage::VersionVector& applied) override {
      mergedb::v1::BackupChunk first;
      EncodeVector(applied, first.mutable_applied());
      first.set_approximate_bytes(approximate_bytes);
      return Send(first);
    }
    absl::Status Append(const std::vector<std::pair<std::string, std::string>>& records) override {
      mergedb::v1::BackupChunk chunk;
      for (const auto& [key, value] : records) {
        mergedb::v1::BackupRecord* record = chunk.add_records();
        record->set_key(key);
        record->set_value(value);
      }
      return Send(chunk);
    }
  };
  const absl::Duration stall_timeout = node_->options().backup_stall_timeout;
  StallWatchdog watchdog(context, stall_timeout);
  ToStream sink(writer, node_->store()->ApproximateBytes(), &watchdog);
  const std::string peer = context->peer();
  MERGEDB_LOG(INFO) << "backup streamed to " << peer << " started";
  const absl::Time start = absl::Now();
  absl::StatusOr<storage::BackupResult> result =
      node_->store()->CopyOut(sink, [this, context] { return Abandoned(context); });
  if (result.ok()) {
    mergedb::v1::BackupChunk last;
    last.set_complete(true);
    last.set_total_records(result->records);
    last.set_total_bytes(result->bytes);
    if (absl::Status sent = sink.Send(last); !sent.ok()) result = sent;
  }
  if (!result.ok() && watchdog.fired()) {
    result = absl::DeadlineExceededError(
        absl::StrCat("the backup's reader took no data for ", absl::FormatDuration(stall_timeout),
                     " (--backup_stall_timeout_s); the copy was cancelled"));
  } else if (!result.ok() && StoppedByShutdown(result.status())) {
    result = ShutdownRefusal();
  }
  if (!result.ok()) {
    MERGEDB_LOG(WARNING) << "backup streamed to " << peer << " failed: " << result.status();
    return ToGrpcStatus(result.status());
  }
  MERGEDB_LOG(INFO) << "backup streamed to " << peer << " done: " << result->records << " records, "
                    << result->bytes << " bytes in " << absl::ToDoubleSeconds(absl::Now() - start)
                    << " s";
  return grpc::Status::OK;
}

}  // namespace mergedb::node

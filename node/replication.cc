#include "node/replication.h"

#include <algorithm>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "crdt/causal_context.h"
#include "crdt/status_macros.h"
#include "crdt/utf8.h"
#include "grpc/support/time.h"
#include "grpcpp/alarm.h"
#include "grpcpp/grpcpp.h"
#include "node/grpc_status.h"
#include "node/log.h"
#include "node/stream_codec.h"

namespace mergedb::node {

namespace {

using mergedb::v1::ReplicationRequest;
using mergedb::v1::ReplicationResponse;

// An entry no replica can have written: replica id 0, or a counter past the largest a replica
// reaches (crdt::CausalContext::kMaxCounter).
bool ImpossibleEntry(const mergedb::v1::VectorEntry& e) {
  return e.replica() == 0 || e.counter() > crdt::CausalContext::kMaxCounter;
}

// A peer's word on what it has applied (acks, what it knows of others). An impossible entry is
// left out: that claims less, which is always safe (the entries are resent, or wait longer).
storage::VersionVector DecodeVector(
    const google::protobuf::RepeatedPtrField<mergedb::v1::VectorEntry>& in) {
  storage::VersionVector v;
  for (const auto& e : in) {
    if (!ImpossibleEntry(e)) v[e.replica()] = std::max(v[e.replica()], e.counter());
  }
  return v;
}

// A vector this node will persist as its own (a full-state transfer's) or take as a peer's
// whole state (its hello answer): an impossible entry there is refused, or it would spread
// (the node's links would offer the other nodes entries of an origin that does not exist).
absl::StatusOr<storage::VersionVector> DecodeCheckedVector(
    const google::protobuf::RepeatedPtrField<mergedb::v1::VectorEntry>& in,
    absl::string_view what) {
  for (const auto& e : in) {
    if (ImpossibleEntry(e)) {
      return absl::InvalidArgumentError(absl::StrCat(what, " names replica ",
                                                     absl::Hex(e.replica()), " at ", e.counter(),
                                                     ", which no replica can have written"));
    }
  }
  return DecodeVector(in);
}

// The newest register timestamp in a delta (0: none).
uint64_t NewestTimestamp(const mergedb::v1::CausalState& delta) {
  uint64_t max = 0;
  for (const auto& leaf : delta.leaves()) {
    for (const auto& entry : leaf.entries()) {
      if (entry.has_register_()) max = std::max<uint64_t>(max, entry.register_().hlc());
    }
  }
  return max;
}

// The collection and id a peer sends go out again in protobuf strings (List, Watch), which must
// be UTF-8: a document named otherwise would break every answer that lists it.
bool IsUtf8Name(absl::string_view collection, absl::string_view id) {
  return crdt::InvalidUtf8At(collection) == absl::string_view::npos &&
         crdt::InvalidUtf8At(id) == absl::string_view::npos;
}

absl::Status NotUtf8Error(absl::string_view what, absl::string_view collection,
                          absl::string_view id) {
  return absl::InvalidArgumentError(absl::StrCat(what, " names document ",
                                                 absl::CHexEscape(collection), "/",
                                                 absl::CHexEscape(id), ", which is not UTF-8"));
}

}  // namespace

void EncodeVector(const storage::VersionVector& v,
                  google::protobuf::RepeatedPtrField<mergedb::v1::VectorEntry>* out) {
  for (const auto& [origin, seq] : v) {
    auto* e = out->Add();
    e->set_replica(origin);
    e->set_counter(seq);
  }
}

namespace {
// Whether links check that a member's certificate names it (--tls_bind_member_names; fixed at
// start-up, so any version of the TLS in use says).
bool BindsMemberNames(const ReplicationOptions& options) {
  return options.live_tls != nullptr && options.live_tls->current()->bind_member_names;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// ClusterView

ClusterView::ClusterView(std::string self, std::vector<std::string> peers, storage::Store* store)
    : self_(std::move(self)),
      peers_(std::move(peers)),
      store_(store),
      delays_(peers_, store->own_applied()) {}

void ClusterView::Update(const std::string& node, const storage::VersionVector& applied, Mode mode,
                         crdt::ReplicaId incarnation) {
  if (node == self_) return;
  if (std::find(peers_.begin(), peers_.end(), node) == peers_.end()) return;
  // This node numbers its own entries and, while its dir keeps its replica id, never loses one
  // (an unclean stop without fsync draws a new id). Its count only grows, so one read after the
  // report is never below what any member can have applied: a member ahead means the dir went
  // back in time.
  const crdt::ReplicaId me = store_->replica_id();
  if (auto reported = applied.find(me); reported != applied.end() && !rolled_back_.load() &&
                                        reported->second > store_->own_applied()) {
    // The lock-free count said so; the locked read (which orders after every commit) decides.
    const uint64_t held = store_->AppliedVector()[me];
    if (reported->second > held) {
      const std::string why = absl::StrCat(
          "this data dir holds ", held, " of its own writes (replica ", absl::Hex(me), ") but ",
          node, " has applied ", reported->second,
          ": the dir went back in time (restored from an older copy, or commits lost without a "
          "new incarnation). New writes here would reuse sequence numbers the cluster holds for "
          "other writes, so this node refuses writes. Restart it with --new_incarnation (keeps "
          "this data; the peers send back what it lacks) or with an empty data dir (rebuilt "
          "from the peers)");
      bool first = false;
      {
        absl::MutexLock lock(&mu_);
        if (rolled_back_reason_.empty()) {
          rolled_back_reason_ = why;
          rolled_back_ = true;
          first = true;
        }
      }
      if (first) {
        MERGEDB_LOG(ERROR) << why;
      }
    }
  }
  absl::MutexLock lock(&mu_);
  if (mode == Mode::kRelayed) {
    if (auto it = first_hand_.find(node); it != first_hand_.end() && it->second > 0) return;
    if (auto it = incarnation_.find(node);
        it != incarnation_.end() && incarnation != 0 && incarnation != it->second) {
      return;
    }
  } else if (incarnation != 0) {
    incarnation_[node] = incarnation;
  }
  storage::VersionVector& known = known_[node];
  if (mode == Mode::kReplace) {
    known = applied;
  } else {
    for (const auto& [origin, seq] : applied) known[origin] = std::max(known[origin], seq);
  }
  if (auto own = known.find(me); own != known.end()) {
    delays_.Confirmed(node, own->second, std::chrono::steady_clock::now());
  }
  // Waiters (WaitForConfirmations) use mutex conditions: releasing mu_ wakes only those whose
  // write has now reached its write concern, not every waiter on every acknowledgement.
}

void ClusterView::SetFirstHand(const std::string& peer, bool up) {
  absl::MutexLock lock(&mu_);
  first_hand_[peer] += up ? 1 : -1;
}

bool ClusterView::MayReconcile(const std::string& peer) {
  absl::MutexLock lock(&mu_);
  ReconcileBackoff& backoff = reconcile_[peer];
  if (backoff.skip > 0) {
    --backoff.skip;
    return false;
  }
  backoff.skip = backoff.next_skip;
  backoff.next_skip = std::min<uint64_t>(backoff.next_skip * 2, 4096);
  return true;
}

void ClusterView::ReconcileSettled(const std::string& peer) {
  absl::MutexLock lock(&mu_);
  reconcile_.erase(peer);
}

void ClusterView::SetReceivingTransfer(bool receiving) {
  receiving_transfers_.fetch_add(receiving ? 1 : -1);
  transfer_events_.fetch_add(1);
}

std::pair<storage::VersionVector, std::string> ClusterView::AppliedAndComparableDigest() const {
  // A transfer running when `events` is read shows in `receiving`; one that starts or ends
  // later, before the store is read, changes the count of events (SetReceivingTransfer counts
  // before the chunk it is called for is applied).
  const uint64_t events = transfer_events_.load();
  const bool receiving = receiving_transfer();
  auto [applied, digest] = store_->AppliedAndDigest();
  if (receiving || transfer_events_.load() != events) digest.clear();
  return {std::move(applied), std::move(digest)};
}

void ClusterView::ReleaseWaiters() {
  absl::MutexLock lock(&mu_);
  released_ = true;
}

int ClusterView::waiters() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

bool ClusterView::AwaitNoWaiters(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return waiting_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&none), deadline);
}

void ClusterView::SetInbound(const std::string& peer, crdt::ReplicaId replica, Link link) {
  absl::MutexLock lock(&mu_);
  // Counted: a peer's new stream can come up before its old one has gone down (a reconnect
  // after the watchdog gave up on a stalled stream), and the old one's end must not hide the new.
  if (link == Link::kUp) {
    inbound_.emplace(peer, replica);
    return;
  }
  auto [begin, end] = inbound_.equal_range(peer);
  for (auto it = begin; it != end; ++it) {
    if (it->second == replica) {
      inbound_.erase(it);
      return;
    }
  }
}

std::vector<crdt::ReplicaId> ClusterView::DirectOrigins() const {
  absl::MutexLock lock(&mu_);
  std::set<crdt::ReplicaId> ids;
  for (const auto& entry : inbound_) ids.insert(entry.second);
  return {ids.begin(), ids.end()};
}

void ClusterView::SetRole(const std::string& node, mergedb::v1::Role role) {
  absl::MutexLock lock(&mu_);
  roles_[node] = role;
}

std::string ClusterView::rolled_back_reason() const {
  if (!rolled_back_.load()) return std::string();
  absl::MutexLock lock(&mu_);
  return rolled_back_reason_;
}

std::vector<std::string> ClusterView::NodesWithRole(mergedb::v1::Role role) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [node, r] : roles_) {
    if (r == role) out.push_back(node);
  }
  return out;
}

crdt::ReplicaId ClusterView::Incarnation(const std::string& node) const {
  absl::MutexLock lock(&mu_);
  auto it = incarnation_.find(node);
  return it == incarnation_.end() ? 0 : it->second;
}

std::map<std::string, storage::VersionVector> ClusterView::Known() const {
  absl::MutexLock lock(&mu_);
  return known_;
}

int ClusterView::ConfirmationsLocked(crdt::ReplicaId origin, uint64_t seq,
                                     const storage::VersionVector& mine) const {
  auto covered = [&](const storage::VersionVector& v) {
    auto it = v.find(origin);
    return it != v.end() && it->second >= seq;
  };
  int count = covered(mine) ? 1 : 0;
  for (const std::string& peer : peers_) {
    auto it = known_.find(peer);
    if (it != known_.end() && covered(it->second)) ++count;
  }
  return count;
}

int ClusterView::Confirmations(crdt::ReplicaId origin, uint64_t seq) const {
  const storage::VersionVector mine = store_->AppliedVector();
  absl::MutexLock lock(&mu_);
  return ConfirmationsLocked(origin, seq, mine);
}

int ClusterView::WaitForConfirmations(crdt::ReplicaId origin, uint64_t seq, int needed,
                                      absl::Time deadline) {
  const storage::VersionVector mine = store_->AppliedVector();
  absl::MutexLock lock(&mu_);
  struct Enough {
    ClusterView* view;
    crdt::ReplicaId origin;
    uint64_t seq;
    int needed;
    const storage::VersionVector* mine;
    bool operator()() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return view->released_ || view->ConfirmationsLocked(origin, seq, *mine) >= needed;
    }
  } enough{this, origin, seq, needed, &mine};
  ++waiting_;
  mu_.AwaitWithDeadline(absl::Condition(&enough), deadline);
  --waiting_;
  return ConfirmationsLocked(origin, seq, mine);
}

ClusterView::Truncation ClusterView::TruncationPoint(uint64_t max_log_entries) const {
  const storage::VersionVector mine = store_->AppliedVector();
  const storage::VersionVector floors = store_->LogFloor();
  Truncation truncation;
  absl::MutexLock lock(&mu_);
  for (const auto& [origin, top] : mine) {
    // What `peer` has applied of this origin; a member that never reported, nothing.
    auto applied_by = [&, origin = origin](const std::string& peer) -> uint64_t {
      auto known = known_.find(peer);
      if (known == known_.end()) return 0;
      auto seq = known->second.find(origin);
      return seq == known->second.end() ? 0 : seq->second;
    };
    uint64_t everywhere = top;
    for (const std::string& peer : peers_) everywhere = std::min(everywhere, applied_by(peer));
    uint64_t upto = everywhere;
    // The bound drops more only when the floor is not there already (it is per origin, not per
    // pass).
    auto floor = floors.find(origin);
    const uint64_t floor_seq = floor == floors.end() ? 0 : floor->second;
    if (top > max_log_entries && top - max_log_entries > std::max(everywhere, floor_seq)) {
      upto = top - max_log_entries;
      for (const std::string& peer : peers_) {
        if (applied_by(peer) < upto) truncation.lacking.insert(peer);
      }
    }
    if (upto > 0) truncation.through[origin] = upto;
  }
  return truncation;
}

uint64_t ClusterView::EntriesBehind(const std::string& peer) const {
  const storage::VersionVector mine = store_->AppliedVector();
  absl::MutexLock lock(&mu_);
  auto it = known_.find(peer);
  uint64_t behind = 0;
  for (const auto& [origin, seq] : mine) {
    uint64_t theirs = 0;
    if (it != known_.end()) {
      auto t = it->second.find(origin);
      if (t != it->second.end()) theirs = t->second;
    }
    if (seq > theirs) behind += seq - theirs;
  }
  return behind;
}

// ---------------------------------------------------------------------------------------------
// LinkSender

LinkSender::LinkSender(const ReplicationOptions& options, storage::Store* store, ClusterView* view,
                       std::string peer)
    : options_(options), store_(store), view_(view), peer_(std::move(peer)) {}

LinkSender::~LinkSender() {
  if (first_hand_) view_->SetFirstHand(peer_, false);
}

ReplicationRequest LinkSender::Hello() {
  applied_at_hello_ = store_->AppliedVector();
  ReplicationRequest request;
  auto* hello = request.mutable_hello();
  hello->set_cluster_id(options_.cluster_id);
  hello->set_node_name(options_.node_name);
  hello->set_replica_id(store_->replica_id());
  hello->set_protocol_version(kReplicationProtocolVersion);
  hello->set_role(options_.role);
  return request;
}

absl::Status LinkSender::OnHelloAck(const mergedb::v1::HelloAck& ack) {
  if (ack.node_name() != peer_) {
    return absl::FailedPreconditionError(absl::StrCat("peer at this address is node '",
                                                      ack.node_name(), "', not '", peer_, "'"));
  }
  MERGEDB_ASSIGN_OR_RETURN(sent_, DecodeCheckedVector(ack.applied(), "the peer's hello answer"));
  // First-hand before the replace: a relay merged in between would stay for the stream.
  if (!first_hand_) {
    first_hand_ = true;
    view_->SetFirstHand(peer_, true);
  }
  // The peer's vector is authoritative for its current incarnation; Update also checks it for
  // more of this node's own writes than this dir holds. Then this side refuses the link too,
  // so that the reason shows in this node's Status.
  view_->Update(peer_, sent_, ClusterView::Mode::kReplace, ack.replica_id());
  if (std::string why = view_->rolled_back_reason(); !why.empty()) {
    return absl::FailedPreconditionError(why);
  }
  peer_applied_ = sent_;
  peer_replica_ = ack.replica_id();
  // The same check from the other side, so that this node's log names the node that went back:
  // the peer's answer covers at least what this node had of the peer's log when it said hello.
  if (const uint64_t here = applied_at_hello_[peer_replica_];
      here > (sent_.count(peer_replica_) > 0 ? sent_.at(peer_replica_) : 0)) {
    MERGEDB_LOG(ERROR) << "peer " << peer_ << " holds fewer of its own writes (replica "
                       << absl::StrCat(absl::Hex(peer_replica_)) << ") than the " << here
                       << " this node has from it: its data dir went back in time, and it "
                          "refuses writes until restarted with --new_incarnation or an empty "
                          "data dir";
  }
  peer_direct_ = {ack.direct().replicas().begin(), ack.direct().replicas().end()};
  in_flight_ = 0;
  snapshot_.reset();
  pending_parts_.clear();
  // A peer with an empty data dir gets a full-state transfer rather than the whole history.
  need_snapshot_ = sent_.empty() && !store_->AppliedVector().empty();
  CheckDivergence(ack.applied(), ack.state_digest());
  return absl::OkStatus();
}

void LinkSender::CheckDivergence(
    const google::protobuf::RepeatedPtrField<mergedb::v1::VectorEntry>& applied,
    const std::string& digest) {
  if (digest.empty() || in_snapshot()) return;
  // Mid-transfer into this node, its own digest is as incomparable as a peer's would be.
  const auto [mine, my_digest] = view_->AppliedAndComparableDigest();
  if (my_digest.empty()) return;
  if (DecodeVector(applied) != mine) return;
  if (digest == my_digest) {
    view_->ReconcileSettled(peer_);
    return;
  }
  // Transfers back off per peer (ClusterView::MayReconcile): one that leaves the peer
  // different means it holds writes this node lacks, and repeating it would not help.
  if (!view_->MayReconcile(peer_)) return;
  MERGEDB_LOG(WARNING) << "peer " << peer_ << " has applied what this node has but holds another "
                       << "state: sending a full-state transfer to reconcile (if it still differs "
                       << "after it, it holds writes this node lacks, which reach this node "
                       << "when it streams here)";
  need_snapshot_ = true;
}

bool LinkSender::OnResponse(const ReplicationResponse& response) {
  if (!response.has_ack()) return false;
  if (!response.ack().for_heartbeat()) {
    in_flight_ = std::max(0, in_flight_ - 1);
    holding_partial_ = false;
  }
  if (response.ack().for_heartbeat() && in_flight_ == 0) {
    CheckDivergence(response.ack().applied(), response.ack().state_digest());
  }
  const storage::VersionVector applied = DecodeVector(response.ack().applied());
  for (const auto& [origin, seq] : applied) {
    peer_applied_[origin] = std::max(peer_applied_[origin], seq);
  }
  bool widened = false;
  if (response.ack().has_direct()) {
    std::set<crdt::ReplicaId> direct(response.ack().direct().replicas().begin(),
                                     response.ack().direct().replicas().end());
    for (crdt::ReplicaId origin : peer_direct_) {
      // A first-hand stream to the peer broke: forward that origin from what the peer has.
      if (direct.count(origin) == 0) {
        auto it = applied.find(origin);
        sent_[origin] = it == applied.end() ? 0 : it->second;
        widened = true;
      }
    }
    peer_direct_ = std::move(direct);
  }
  view_->Update(peer_, applied, ClusterView::Mode::kMerge, peer_replica_);
  for (const auto& known : response.ack().known()) {
    view_->Update(known.node_name(), DecodeVector(known.applied()), ClusterView::Mode::kRelayed,
                  known.replica_id());
  }
  return widened;
}

uint64_t LogInterest::Pending(const storage::VersionVector& applied) const {
  uint64_t pending = 0;
  for (const auto& [origin, top] : applied) {
    if (excluded.count(origin) > 0) continue;
    auto it = from.find(origin);
    const uint64_t have = it == from.end() ? 0 : it->second;
    if (top > have) pending += top - have;
  }
  return pending;
}

LogInterest LinkSender::Interest() const {
  // Never send the peer its own writes, nor the origins it gets first-hand; and start past what
  // the peer itself reported having (entries it got from other nodes meanwhile).
  LogInterest interest;
  interest.from = sent_;
  interest.excluded.insert(peer_replica_);
  for (crdt::ReplicaId origin : peer_direct_) {
    if (origin != store_->replica_id()) interest.excluded.insert(origin);
  }
  for (const auto& [origin, seq] : peer_applied_) {
    interest.from[origin] = std::max(interest.from[origin], seq);
  }
  return interest;
}

absl::StatusOr<std::optional<ReplicationRequest>> LinkSender::Next() {
  if (in_flight_ >= options_.window) return std::nullopt;
  if (in_snapshot()) return NextSnapshotChunk();
  const storage::VersionVector mine = store_->AppliedVector();
  const LogInterest interest = Interest();
  // Nagle's rule for frames: every message costs each side a wake-up, a syscall and an ack
  // (tens of microseconds, more than applying an entry), so while a frame is in flight a
  // partial one waits for its ack and then leaves with whatever accumulated. Under live load
  // that turns one frame per commit into one per round trip, for at most max_hold of extra lag
  // (the driver calls StopHolding when the ack is slower). With two frames in flight the peer
  // is behind — one it applies, one waits — and a third would only queue behind them (under
  // fsync per commit, each at the cost of a sync: eight queued frames made a 50 ms lag), so a
  // partial frame then waits for an ack however slow; the watchdog bounds a dead peer.
  const uint64_t pending = interest.Pending(mine);
  if (in_flight_ > 0 && (!hold_released_ || in_flight_ >= 2) &&
      pending < options_.min_pipelined_entries) {
    holding_partial_ = true;
    return std::nullopt;
  }
  // Caught up (the common case after an ack): no log read, which would open a LevelDB iterator
  // over the memtables and every level only to find nothing.
  if (pending == 0) return std::nullopt;
  // The origins the peer gets first-hand are not read at all: their floors and their newest
  // entries are no concern of this link.
  auto records = store_->ReadLog(interest.from, options_.max_frame_records, interest.excluded,
                                 storage::LogForm::kEncoded);
  const bool truncated = absl::IsFailedPrecondition(records.status());
  if (truncated || absl::IsDataLoss(records.status())) {
    if (truncated) {
      MERGEDB_LOG(INFO) << "peer " << peer_
                        << " needs a full-state transfer: " << records.status().message();
    } else {
      // A log block failed its checksum. Its entries cannot be sent, and every reconnect would
      // fail on them again, but the documents hold everything the log did: the peer gets them
      // whole, and the damaged entries, below the transfer's vector, are not read again on
      // this link. (Log truncation deletes them once every peer is past them.)
      damage_report_ = absl::StrCat(
          "this node's log is damaged (run mergedb-repair on its data "
          "dir when convenient); sent a full-state transfer instead: ",
          records.status().message());
      MERGEDB_LOG(ERROR) << "peer " << peer_ << ": " << damage_report_;
    }
    need_snapshot_ = true;
    return NextSnapshotChunk();
  }
  if (!records.ok()) return records.status();
  if (records->empty()) return std::nullopt;
  ReplicationRequest request;
  auto* frame = request.mutable_frame();
  size_t bytes = 0;
  for (storage::LogRecord& record : *records) {
    const size_t size = record.encoded.size() + 24;
    if (frame->records_size() > 0 && bytes + size > options_.max_message_bytes) break;
    bytes += size;
    auto* out = frame->add_records();
    out->set_origin(record.origin);
    out->set_seq(record.seq);
    out->set_entry(std::move(record.encoded));
    sent_[record.origin] = record.seq;
  }
  ++in_flight_;
  hold_released_ = false;
  return request;
}

absl::StatusOr<std::optional<ReplicationRequest>> LinkSender::NextSnapshotChunk() {
  if (snapshot_ == nullptr) {
    MERGEDB_ASSIGN_OR_RETURN(snapshot_, store_->OpenSnapshot());
    need_snapshot_ = false;
    pending_parts_.clear();
    snapshot_requests_done_ = false;
    pending_request_.reset();
  }
  ReplicationRequest request;
  auto* chunk = request.mutable_snapshot();
  const size_t max_bytes = options_.max_message_bytes - 1024;
  size_t bytes = 0;
  auto full = [&](size_t more) {
    return (chunk->documents_size() > 0 || chunk->requests_size() > 0) && bytes + more > max_bytes;
  };
  // First the request ids the snapshot remembers, so that a retry on the receiver is recognized
  // while the documents still arrive. They are a convenience, not the state: a record that cannot
  // be read ends them, and the transfer goes on (otherwise it would fail at the same record on
  // every attempt and never end). At most kMaxRequestsPerChunk per chunk: the receiver looks
  // each one up holding its document's lock stripe and the peers' frames.
  constexpr int kMaxRequestsPerChunk = 256;
  while (!snapshot_requests_done_) {
    if (!pending_request_.has_value()) {
      storage::SnapshotRequest read;
      absl::StatusOr<bool> more = snapshot_->NextRequest(&read);
      if (!more.ok()) {
        MERGEDB_LOG(WARNING) << "full-state transfer to " << peer_
                             << ": the rest of the request ids are not sent (" << more.status()
                             << "); a retry there of those requests would be applied again";
      }
      if (!more.ok() || !*more) {
        snapshot_requests_done_ = true;
        break;
      }
      pending_request_.emplace();
      pending_request_->set_request_id(std::move(read.request_id));
      *pending_request_->mutable_record() = std::move(read.record);
    }
    if (full(pending_request_->ByteSizeLong()) || chunk->requests_size() >= kMaxRequestsPerChunk) {
      ++in_flight_;
      return request;  // full; the rest follows in later chunks
    }
    bytes += pending_request_->ByteSizeLong();
    *chunk->add_requests() = *std::move(pending_request_);
    pending_request_.reset();
  }
  while (true) {
    if (pending_parts_.empty()) {
      storage::SnapshotDoc doc;
      MERGEDB_ASSIGN_OR_RETURN(bool more, snapshot_->Next(&doc));
      if (!more) break;
      std::vector<crdt::Document> parts =
          SplitForTransfer(doc.state, options_.max_message_bytes / 2);
      for (size_t i = 0; i < parts.size(); ++i) {
        pending_parts_.push_back(
            {{doc.collection, doc.id, std::move(parts[i])}, i + 1 < parts.size()});
      }
    }
    Part& part = pending_parts_.front();
    mergedb::v1::SnapshotDocument encoded;
    encoded.set_collection(part.doc.collection);
    encoded.set_id(part.doc.id);
    encoded.set_partial(part.partial);
    part.doc.state.EncodeTo(encoded.mutable_state());
    const size_t size = encoded.ByteSizeLong();
    if (full(size)) {
      ++in_flight_;
      return request;  // full; the rest follows in later chunks
    }
    bytes += size;
    *chunk->add_documents() = std::move(encoded);
    pending_parts_.pop_front();
  }
  // The snapshot is exhausted: the last chunk carries its applied vector, and the log resumes
  // from there.
  chunk->set_last(true);
  EncodeVector(snapshot_->applied(), chunk->mutable_applied());
  for (const auto& [origin, seq] : snapshot_->applied()) sent_[origin] = std::max(sent_[origin], seq);
  snapshot_.reset();
  ++in_flight_;
  return request;
}

std::vector<crdt::Document> SplitForTransfer(const crdt::Document& doc, size_t max_bytes) {
  std::vector<crdt::Document> parts;
  if (doc.Encode().size() <= max_bytes) {
    parts.push_back(doc);
    return parts;
  }
  // Every part but the last carries its leaves with only their own dots as context; the last
  // carries the whole context, so that joining all parts in order gives exactly `doc`.
  crdt::LeafMap group;
  crdt::CausalContext group_context;
  size_t group_bytes = 0;
  auto flush = [&](bool last) {
    crdt::CausalContext context = last ? doc.context() : group_context;
    auto kernel = crdt::DotKernel::FromParts(std::move(context), std::move(group));
    parts.push_back(*crdt::Document::FromKernel(*std::move(kernel)));
    group = crdt::LeafMap();
    group_context = crdt::CausalContext();
    group_bytes = 0;
  };
  for (const auto& [key, leaf] : doc.kernel().leaves()) {
    mergedb::v1::Leaf encoded;
    crdt::DotKernel::EncodeLeaf(key, leaf, &encoded);
    const size_t size = encoded.ByteSizeLong();
    if (!group.empty() && group_bytes + size > max_bytes) flush(false);
    group.emplace(key, leaf);
    for (const auto& entry : leaf) group_context.Add(entry.first);
    group_bytes += size;
  }
  flush(true);
  return parts;
}

// ---------------------------------------------------------------------------------------------
// LinkReceiver

absl::StatusOr<ReplicationResponse> LinkReceiver::OnHello(const mergedb::v1::Hello& hello) {
  if (hello.cluster_id() != options_.cluster_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("node '", hello.node_name(), "' belongs to cluster '", hello.cluster_id(),
                     "', this node to cluster '", options_.cluster_id, "'"));
  }
  if (hello.protocol_version() != kReplicationProtocolVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("node '", hello.node_name(), "' speaks replication protocol ",
                     hello.protocol_version(), "; this node speaks ", kReplicationProtocolVersion));
  }
  const bool member = std::find(options_.members.begin(), options_.members.end(),
                                hello.node_name()) != options_.members.end();
  if (!member || hello.node_name() == options_.node_name) {
    return absl::FailedPreconditionError(absl::StrCat(
        "node '", hello.node_name(), "' is not a member of cluster '", options_.cluster_id,
        "' as node '", options_.node_name, "' knows it"));
  }
  if (hello.replica_id() == 0) return absl::InvalidArgumentError("hello: zero replica id");
  peer_ = hello.node_name();
  peer_replica_ = hello.replica_id();
  view_->SetRole(peer_, hello.role());
  ReplicationResponse response;
  auto* ack = response.mutable_hello_ack();
  ack->set_node_name(options_.node_name);
  ack->set_replica_id(store_->replica_id());
  auto [applied, digest] = view_->AppliedAndComparableDigest();
  acked_applied_ = applied;
  EncodeVector(acked_applied_, ack->mutable_applied());
  ack->set_state_digest(digest);
  acked_direct_ = view_->DirectOrigins();
  for (crdt::ReplicaId id : acked_direct_) ack->mutable_direct()->add_replicas(id);
  return response;
}

ReplicationResponse LinkReceiver::MakeAck() {
  ReplicationResponse response;
  auto* ack = response.mutable_ack();
  // Only what changed since the previous ack, and everything every 64th ack: the sender merges
  // (per origin, the max), so an entry left out means "unchanged". (Counted, not timed, so the
  // protocol logic never reads a clock.)
  constexpr int kFullAckEvery = 64;
  const bool full = ++acks_since_full_ >= kFullAckEvery;
  if (full) {
    acks_since_full_ = 0;
    acked_known_.clear();
    acked_applied_.clear();
  }
  storage::VersionVector changed;
  for (const auto& [origin, seq] : store_->AppliedVector()) {
    uint64_t& acked = acked_applied_[origin];
    if (seq != acked) changed[origin] = acked = seq;
  }
  EncodeVector(changed, ack->mutable_applied());
  for (const auto& [node, vector] : view_->Known()) {
    if (node == peer_) continue;  // the sender knows its own vector best
    auto previous = acked_known_.find(node);
    if (previous != acked_known_.end() && previous->second == vector) continue;
    acked_known_[node] = vector;
    auto* known = ack->add_known();
    known->set_node_name(node);
    known->set_replica_id(view_->Incarnation(node));
    EncodeVector(vector, known->mutable_applied());
  }
  std::vector<crdt::ReplicaId> direct = view_->DirectOrigins();
  if (full || direct != acked_direct_) {
    // Present even when empty: "no first-hand streams any more" is news the sender must act
    // on (it forwards those origins again).
    auto* out = ack->mutable_direct();
    for (crdt::ReplicaId id : direct) out->add_replicas(id);
    acked_direct_ = std::move(direct);
  }
  return response;
}

void LinkReceiver::ObserveTimestamp(uint64_t packed) {
  if (packed == 0 || clock_->Observe(crdt::Hlc::FromPacked(packed))) return;
  // The peer's clock (or this one) is wrong, or the timestamp is forged. The write applies as
  // it is (every node must merge the same data); only this node's clock refuses to follow.
  const absl::Time now = absl::Now();
  if (now - last_clock_warning_ < absl::Seconds(10)) return;
  last_clock_warning_ = now;
  MERGEDB_LOG(WARNING) << "node '" << peer_ << "' sent a register write timestamped "
                       << crdt::Hlc::FromPacked(packed).DebugString()
                       << " (ms since the epoch), more than --max_clock_ahead_ms="
                       << clock_->max_ahead_millis()
                       << " ahead of this node's clock: one of the two clocks is wrong; this "
                          "node's clock follows it only that far";
}

absl::StatusOr<std::optional<ReplicationResponse>> LinkReceiver::OnRequest(
    const ReplicationRequest& request) {
  switch (request.kind_case()) {
    case ReplicationRequest::kFrame: {
      std::vector<storage::LogRecord> records;
      records.reserve(static_cast<size_t>(request.frame().records_size()));
      for (const auto& in : request.frame().records()) {
        storage::LogRecord record;
        record.origin = in.origin();
        record.seq = in.seq();
        if (!record.entry.ParseFromString(in.entry())) {
          return absl::InvalidArgumentError(absl::StrCat("log record ", absl::Hex(in.origin()), ":",
                                                         in.seq(), " is not a log entry"));
        }
        if (!IsUtf8Name(record.entry.collection(), record.entry.id())) {
          return NotUtf8Error(absl::StrCat("log record ", absl::Hex(in.origin()), ":", in.seq()),
                              record.entry.collection(), record.entry.id());
        }
        record.encoded = in.entry();  // logged as it came: it parses, so it is what was checked
        records.push_back(std::move(record));
      }
      MERGEDB_ASSIGN_OR_RETURN(storage::RemoteApplyResult result, store_->ApplyRemote(records));
      if (result.gap) {
        return absl::AbortedError(absl::StrCat(
            "frame from node '", peer_, "' skips log entries this node lacks; resynchronizing"));
      }
      uint64_t newest = 0;
      for (const auto& record : records) {
        newest = std::max(newest, NewestTimestamp(record.entry.delta()));
      }
      ObserveTimestamp(newest);
      return std::optional<ReplicationResponse>(MakeAck());
    }
    case ReplicationRequest::kSnapshot: {
      MarkReceivingTransfer(true);
      std::vector<storage::SnapshotDoc> docs;
      for (const auto& in : request.snapshot().documents()) {
        if (!IsUtf8Name(in.collection(), in.id())) {
          return NotUtf8Error("snapshot document", in.collection(), in.id());
        }
        auto state = crdt::Document::Decode(in.state());
        if (!state.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("snapshot document ", in.collection(),
                                                         "/", in.id(), ": ",
                                                         state.status().message()));
        }
        ObserveTimestamp(NewestTimestamp(in.state()));
        const auto key = std::make_pair(in.collection(), in.id());
        if (in.partial()) {
          // A sender splits one document at a time and finishes it before the next: without
          // this, parts of documents never finished would be held without bound.
          if (!split_documents_.empty() && split_documents_.begin()->first != key) {
            return absl::InvalidArgumentError(absl::StrCat(
                "a full-state transfer sent a part of document ", in.collection(), "/", in.id(),
                " before the last part of split document ", split_documents_.begin()->first.first,
                "/", split_documents_.begin()->first.second));
          }
          SplitDocument& split = split_documents_[key];
          for (const auto& [leaf, store] : state->kernel().leaves()) {
            for (const auto& entry : store) split.delivered.insert(entry.first);
          }
          split.state.Join(*state);
          continue;  // applied whole with its last part
        }
        storage::SnapshotDoc doc{in.collection(), in.id(), *std::move(state)};
        if (auto it = split_documents_.find(key); it != split_documents_.end()) {
          it->second.state.Join(doc.state, nullptr, &it->second.delivered);
          doc.state = std::move(it->second.state);
          split_documents_.erase(it);
        }
        docs.push_back(std::move(doc));
      }
      if (request.snapshot().last() && !split_documents_.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a full-state transfer ended inside split document ",
            split_documents_.begin()->first.first, "/", split_documents_.begin()->first.second));
      }
      // Checked before anything of the chunk is applied: a refused request changes nothing.
      storage::VersionVector applied;
      if (request.snapshot().last()) {
        MERGEDB_ASSIGN_OR_RETURN(applied, DecodeCheckedVector(request.snapshot().applied(),
                                                              "a full-state transfer's vector"));
      }
      // Request ids are a convenience beside the state: a malformed record is dropped, not a
      // reason to refuse the chunk (the sender would send it again on every attempt).
      std::vector<storage::SnapshotRequest> requests;
      requests.reserve(request.snapshot().requests_size());
      for (const auto& in : request.snapshot().requests()) {
        if (in.request_id().empty() || !IsUtf8Name(in.record().collection(), in.record().id())) {
          MERGEDB_LOG(WARNING) << "a full-state transfer from " << peer_
                               << " carried a malformed record of request id '"
                               << absl::CHexEscape(in.request_id()) << "': dropped";
          continue;
        }
        requests.push_back({in.request_id(), in.record()});
      }
      MERGEDB_RETURN_IF_ERROR(store_->ApplySnapshot(docs, requests));
      if (request.snapshot().last()) {
        MERGEDB_RETURN_IF_ERROR(store_->FinishSnapshot(applied));
        MarkReceivingTransfer(false);
        MERGEDB_LOG(INFO) << "full-state transfer from " << peer_ << " complete";
      }
      return std::optional<ReplicationResponse>(MakeAck());
    }
    case ReplicationRequest::kHeartbeat: {
      ReplicationResponse response = MakeAck();
      // A heartbeat answer carries the whole vector and the digest, read at one point.
      auto [applied, digest] = view_->AppliedAndComparableDigest();
      response.mutable_ack()->clear_applied();
      EncodeVector(applied, response.mutable_ack()->mutable_applied());
      acked_applied_ = std::move(applied);
      response.mutable_ack()->set_state_digest(digest);
      response.mutable_ack()->set_for_heartbeat(true);
      return std::optional<ReplicationResponse>(std::move(response));
    }
    case ReplicationRequest::kHello:
      return absl::InvalidArgumentError("a second hello on one replication stream");
    case ReplicationRequest::kCompressed:
      // The transport unwraps compressed messages on streams that negotiated compression.
      return absl::InvalidArgumentError(
          "a compressed message on a replication stream that did not negotiate compression");
    case ReplicationRequest::kFragment:
      // The transport reassembles fragments (FragmentAssembler) before they get here.
      return absl::InvalidArgumentError("a fragment where a whole replication request belongs");
    case ReplicationRequest::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("replication request with no kind set");
}

// ---------------------------------------------------------------------------------------------
// Replication: the gRPC transport

std::optional<StreamCodec> StreamCodecOf(int compression) {
  switch (compression) {
    case mergedb::v1::STREAM_COMPRESSION_DEFLATE:
      return StreamCodec::kDeflate;
    case mergedb::v1::STREAM_COMPRESSION_ZSTD:
      return StreamCodec::kZstd;
    default:
      return std::nullopt;
  }
}

ReplicationRequest FragmentSplitter::Next() {
  started_ = true;
  ReplicationRequest piece;
  piece.mutable_fragment()->set_data(
      std::string(absl::string_view(serialized_).substr(offset_, piece_bytes_)));
  offset_ += piece_bytes_;
  piece.mutable_fragment()->set_last(offset_ >= serialized_.size());
  return piece;
}

bool WriteFragments(absl::string_view serialized, size_t piece_bytes,
                    const std::function<bool(ReplicationRequest&)>& write) {
  FragmentSplitter splitter{std::string(serialized), piece_bytes};
  while (!splitter.done()) {
    ReplicationRequest piece = splitter.Next();
    if (!write(piece)) return false;
  }
  return true;
}

absl::StatusOr<std::optional<ReplicationRequest>> FragmentAssembler::Add(
    ReplicationRequest request) {
  if (!request.has_fragment()) {
    if (inside_) {
      return absl::InvalidArgumentError(
          "a replication request arrived between the fragments of another one");
    }
    return std::optional<ReplicationRequest>(std::move(request));
  }
  const std::string& data = request.fragment().data();
  if (data.size() > kMaxRequestBytes - pending_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a fragmented replication request over ", kMaxRequestBytes, " bytes"));
  }
  pending_.append(data);
  inside_ = true;
  if (!request.fragment().last()) return std::optional<ReplicationRequest>();
  ReplicationRequest whole;
  const bool parsed = whole.ParseFromString(pending_);
  // Release the buffer now: it may be as large as the request.
  std::string().swap(pending_);
  inside_ = false;
  if (!parsed || whole.has_fragment() || whole.has_compressed()) {
    return absl::InvalidArgumentError("fragments of a replication request do not parse as one");
  }
  return std::optional<ReplicationRequest>(std::move(whole));
}

namespace {

// The largest replication message, set on the channels and bounding decompression.
constexpr int kMaxMessageBytes = 64 << 20;
// The largest fragment a sender makes or a receiver asks for: with its envelope and any
// compression overhead, well inside kMaxMessageBytes.
constexpr size_t kMaxFragmentBytes = 32 << 20;
// While a peer takes in and applies a request that came in fragments it sends nothing, for as
// long as the request's size demands: the sender's watchdog allows it a second per this many
// bytes beyond dead_after. (A peer that died meanwhile is still noticed by the transport's
// keepalive pings, which its gRPC threads answer.)
constexpr size_t kFragmentedBytesPerSecond = 4 << 20;

const char* CompressionName(mergedb::v1::StreamCompression compression) {
  switch (compression) {
    case mergedb::v1::STREAM_COMPRESSION_DEFLATE:
      return "deflate";
    case mergedb::v1::STREAM_COMPRESSION_ZSTD:
      return "zstd";
    default:
      return "none";
  }
}

// A sender's offer: DEFLATE in `compression` for nodes of earlier versions, which know only
// that field, and every codec best first in `compression_offers`.
void OfferCompression(mergedb::v1::Hello* hello) {
  hello->set_compression(mergedb::v1::STREAM_COMPRESSION_DEFLATE);
  hello->add_compression_offers(mergedb::v1::STREAM_COMPRESSION_ZSTD);
  hello->add_compression_offers(mergedb::v1::STREAM_COMPRESSION_DEFLATE);
}

// A receiver's choice: the first offer it supports, else the older field's, else none.
mergedb::v1::StreamCompression ChooseCompression(const mergedb::v1::Hello& hello) {
  for (int offer : hello.compression_offers()) {
    if (StreamCodecOf(offer).has_value()) return static_cast<mergedb::v1::StreamCompression>(offer);
  }
  return StreamCodecOf(hello.compression()).has_value() ? hello.compression()
                                                        : mergedb::v1::STREAM_COMPRESSION_NONE;
}

// Stream compression (negotiated in the hello exchange): a message travels as the compressed
// bytes of its serialization, in the `compressed` case of the same message type.
template <typename Message>
void Wrap(StreamCompressor* compressor, Message* message) {
  std::string compressed = compressor->Compress(message->SerializeAsString());
  message->Clear();
  message->set_compressed(std::move(compressed));
}

template <typename Message>
absl::Status Unwrap(StreamDecompressor* decompressor, Message* message) {
  if (!message->has_compressed()) {
    return absl::InvalidArgumentError("uncompressed message on a compressed replication stream");
  }
  MERGEDB_ASSIGN_OR_RETURN(std::string plain,
                           decompressor->Decompress(message->compressed(), size_t{kMaxMessageBytes}));
  if (!message->ParseFromString(plain) || message->has_compressed()) {
    return absl::InvalidArgumentError("compressed replication message does not parse");
  }
  return absl::OkStatus();
}

}  // namespace

// One outbound link: a thread that connects, says hello, streams frames and heartbeats, and
// reconnects with exponential backoff and jitter; each stream is driven by that thread alone.
class Replication::Session {
 public:
  Session(Replication* owner, PeerConfig peer) : owner_(owner), peer_(std::move(peer)) {
    grpc::ChannelArguments args;
    // Failure detection: keepalive pings (KeepaliveChannelArgs), plus heartbeats on the stream
    // and the watchdog of RunStream for a peer whose transport still answers.
    for (const auto& [name, value] : KeepaliveChannelArgs()) args.SetInt(name, value);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, kMaxMessageBytes);
    args.SetInt(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, kMaxMessageBytes);
    channel_ = grpc::CreateCustomChannel(peer_.address,
                                         owner->options_.live_tls != nullptr
                                             ? owner->options_.live_tls->ChannelCredentials()
                                             : grpc::InsecureChannelCredentials(),
                                         args);
    stub_ = mergedb::v1::ReplicationService::NewStub(channel_);
    thread_ = std::thread([this] { Run(); });
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      if (context_ != nullptr) context_->TryCancel();
    }
    if (thread_.joinable()) thread_.join();
  }

  // Ends the current stream (test hook, shutdown).
  void Interrupt() {
    absl::MutexLock lock(&mu_);
    if (context_ != nullptr) context_->TryCancel();
  }

  const std::string& peer_name() const { return peer_.name; }

  // The peer is up: its own link to this node just said hello. A link waiting to reconnect
  // tries now instead of at the end of its backoff (and of the channel's), which grows to
  // seconds while the peer is down: a restarted node would otherwise wait that long for what
  // it missed.
  void Kick() {
    grpc::experimental::ChannelResetConnectionBackoff(channel_.get());
    absl::MutexLock lock(&mu_);
    if (context_ == nullptr) kicked_ = true;  // a running stream needs no kick
  }

 private:
  bool stopping() {
    absl::MutexLock lock(&mu_);
    return stop_ || owner_->stopping_;
  }
  bool StopOrKicked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || kicked_; }

  void Run() {
    std::mt19937_64 rng(std::random_device{}());
    absl::Duration backoff = owner_->options_.backoff_min;
    while (!stopping()) {
      const absl::Time started = absl::Now();
      if (!owner_->Blocked(peer_.name)) {
        const absl::Status status = RunStream();
        owner_->StateOf(peer_.name)->connected = false;
        if (!status.ok() && !stopping()) {
          owner_->SetError(peer_.name, std::string(status.message()));
          MERGEDB_LOG(DEBUG) << "link to " << peer_.name << ": " << status.message();
        }
        // A stream that lasted resets the backoff.
        if (absl::Now() - started > absl::Seconds(5)) backoff = owner_->options_.backoff_min;
      }
      // Exponential backoff with jitter; interruptible by Stop(), and cut short by Kick().
      const double jitter = std::uniform_real_distribution<double>(0.5, 1.0)(rng);
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(this, &Session::StopOrKicked), backoff * jitter);
      if (kicked_) {
        kicked_ = false;
        backoff = owner_->options_.backoff_min;
      } else {
        backoff = std::min(backoff * 2, owner_->options_.backoff_max);
      }
    }
  }

  absl::Status RunStream() {
    const ReplicationOptions& options = owner_->options_;
    storage::Store* store = owner_->store_;
    PeerState* state = owner_->StateOf(peer_.name);
    grpc::ClientContext context;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return absl::OkStatus();
      context_ = &context;
      kicked_ = false;
    }
    absl::Cleanup forget_context = [this] {
      absl::MutexLock lock(&mu_);
      context_ = nullptr;
    };

    // Connect first, bounded: a stream started on a channel in backoff fails at once, and one
    // started with wait-for-ready blocks its thread in the constructor.
    const absl::Time connect_deadline = absl::Now() + owner_->options_.dead_after;
    while (!channel_->WaitForConnected(absl::ToChronoTime(
        std::min(connect_deadline, absl::Now() + absl::Milliseconds(100))))) {
      if (stopping()) return absl::OkStatus();
      if (absl::Now() >= connect_deadline) {
        // gRPC does not say why a connection failed; with TLS a refused handshake is as
        // likely as a peer that is down, so name what to check.
        return absl::UnavailableError(absl::StrCat(
            "cannot connect to ", peer_.address,
            owner_->options_.live_tls != nullptr
                ? " (down, or the TLS handshake failed: the certificates of both nodes must be "
                  "signed by the CA of --tls_ca, and the peer's must name this address)"
                : ""));
      }
    }
    // One thread drives the stream through a completion queue of its own: the hello exchange,
    // acks, heartbeats, frames, the hold timer and the watchdog are all events of one loop. An
    // ack that opens the window sends the next frame from the thread that read it, where a
    // reader thread used to wake a sender thread for it (a hand-off per frame and link: a
    // quarter of the machine's context switches under load). Commits reach the loop through
    // an alarm that only commits of entries this link sends set (Store::AddAppliedListener).
    grpc::CompletionQueue cq;
    auto stream = stub_->PrepareAsyncReplicate(&context, &cq);
    LinkSender sender(options, store, &owner_->view_, peer_.name);

    enum Tag : intptr_t { kStarted = 1, kRead, kWrite, kWake, kFinished };
    auto tag = [](Tag t) { return reinterpret_cast<void*>(t); };
    bool start_pending = true;
    bool read_pending = false;
    bool write_pending = false;
    stream->StartCall(tag(kStarted));

    // The commit alarm: armed at most once at a time, and only while the loop is idle with
    // nothing to send (`listening`, with what it would send). Lock order: the store's commit
    // lock (the listener runs under it), then wake_mu; the loop never calls the store holding
    // wake_mu.
    grpc::Alarm wake_alarm;
    absl::Mutex wake_mu;
    bool wake_listening = false;
    bool wake_armed = false;
    LogInterest wake_interest;
    // Setting an alarm that is due completes it on the committing thread, under the store's
    // commit lock: a queue lock and a wake-up, once per idle-to-busy change of the link.
    const uint64_t listener = store->AddAppliedListener([&](const storage::VersionVector& applied) {
      absl::MutexLock lock(&wake_mu);
      if (!wake_listening || wake_armed || wake_interest.Pending(applied) == 0) return;
      wake_listening = false;
      wake_armed = true;
      wake_alarm.Set(&cq, gpr_inf_past(GPR_CLOCK_MONOTONIC), tag(kWake));
    });
    // The listener refers to this frame: however the function leaves, it goes first.
    absl::Cleanup remove_listener = [&] { store->RemoveAppliedListener(listener); };

    absl::Status link_status;
    bool broken = false;      // the stream ended or failed: no more reads or writes
    bool peer_ended = false;  // a read or the start failed: Finish() has the status
    bool hello_done = false;
    bool logged_connected = false;
    absl::Time last_heard = absl::Now();
    absl::Time last_sent = absl::Now();
    // When a held partial frame leaves without its ack (one frame in flight: LinkSender::Next).
    absl::Time hold_until = absl::InfiniteFuture();
    // Set once with hello_done, before anything but the hello is written.
    std::unique_ptr<StreamCompressor> compressor;
    std::unique_ptr<StreamDecompressor> decompressor;
    mergedb::v1::StreamCompression negotiated = mergedb::v1::STREAM_COMPRESSION_NONE;
    // Requests over this many bytes go in fragments (0: the peer takes none).
    size_t fragment_bytes = 0;
    ReplicationResponse response;  // the read in flight
    ReplicationRequest writing;    // the write in flight
    // The pieces of a fragmented request still to write; nothing else leaves before them.
    std::optional<FragmentSplitter> fragments;
    // The size of the fragmented request whose last piece is in flight (0: none).
    size_t last_piece_of = 0;
    // While a peer takes in and applies a request that came in fragments it sends nothing:
    // the watchdog allows it time for the request's size, from its first piece (writing them
    // may wait for the peer's flow control) and again from its last.
    auto allow_for_fragmented = [&](size_t bytes) {
      last_heard = std::max(last_heard, absl::Now() + absl::Seconds(static_cast<double>(bytes) /
                                                                    kFragmentedBytesPerSecond));
    };

    auto fail = [&](absl::Status status) {
      if (link_status.ok()) link_status = std::move(status);
      context.TryCancel();
      broken = true;
    };
    auto start_read = [&] {
      read_pending = true;
      stream->Read(&response, tag(kRead));
    };
    auto start_write = [&](ReplicationRequest request) {
      if (compressor != nullptr) Wrap(compressor.get(), &request);
      state->bytes_sent += request.ByteSizeLong();
      writing = std::move(request);
      write_pending = true;
      stream->Write(writing, tag(kWrite));
      last_sent = absl::Now();
    };
    auto write_piece = [&] {
      start_write(fragments->Next());
      if (fragments->done()) {
        last_piece_of = fragments->size();
        fragments.reset();
      }
    };
    // A request over what the peer takes in one message (a frame with one large record, a
    // chunk with one large leaf) goes in fragments.
    auto send = [&](ReplicationRequest request) {
      if (fragment_bytes == 0 || request.ByteSizeLong() <= fragment_bytes) {
        start_write(std::move(request));
        return;
      }
      fragments.emplace(request.SerializeAsString(), fragment_bytes);
      request.Clear();
      allow_for_fragmented(fragments->size());
      write_piece();
    };
    // Takes in one message from the peer: the hello's answer, then acks and heartbeats.
    auto on_response = [&] {
      state->bytes_received += response.ByteSizeLong();
      last_heard = std::max(last_heard, absl::Now());
      if (hello_done) {
        if (decompressor != nullptr) {
          if (absl::Status s = Unwrap(decompressor.get(), &response); !s.ok()) {
            fail(s);  // the stream cannot continue past a message it lost
            return;
          }
        }
        sender.OnResponse(response);
        return;
      }
      // With bound names, the peer's certificate must name the member this node meant to reach
      // before its answer changes anything (OnHelloAck takes the vector it claims).
      absl::Status hello_status = absl::OkStatus();
      if (BindsMemberNames(options)) {
        hello_status = CheckPeerMemberName(*context.auth_context(), peer_.name);
        if (!hello_status.ok()) {
          MERGEDB_LOG(WARNING) << "link to " << peer_.name << " at " << peer_.address
                               << " refused: " << hello_status.message();
        }
      }
      if (hello_status.ok()) {
        hello_status = response.has_hello_ack()
                           ? sender.OnHelloAck(response.hello_ack())
                           : absl::InternalError("peer did not answer the hello");
      }
      if (!hello_status.ok()) {
        fail(hello_status);  // this side refuses the peer: end the stream it would keep open
        return;
      }
      if (const int chosen = response.hello_ack().compression();
          chosen != mergedb::v1::STREAM_COMPRESSION_NONE) {
        const std::optional<StreamCodec> codec = StreamCodecOf(chosen);
        if (!options.compress_streams || !codec.has_value()) {
          fail(absl::FailedPreconditionError(absl::StrCat(peer_.name, " chose stream compression ",
                                                          chosen,
                                                          ", which this node did not offer")));
          return;
        }
        compressor = StreamCompressor::Create(*codec);
        decompressor = StreamDecompressor::Create(*codec);
        negotiated = static_cast<mergedb::v1::StreamCompression>(chosen);
      }
      fragment_bytes = std::min<size_t>(response.hello_ack().fragment_bytes(), kMaxFragmentBytes);
      hello_done = true;
    };
    // Writes what is due now, if the stream can take a write; otherwise returns when the loop
    // must wake at the latest.
    auto step = [&]() -> absl::Time {
      const absl::Time now = absl::Now();
      absl::Time wake = now + options.idle_check;  // stop, block and watchdog checks
      if (!hello_done || write_pending) return wake;
      if (!logged_connected) {
        logged_connected = true;
        state->compression = negotiated;
        state->connected = true;
        owner_->SetError(peer_.name, "");
        MERGEDB_LOG(INFO) << "replicating to " << peer_.name << " at " << peer_.address
                          << " (stream compression: " << CompressionName(negotiated) << ")";
      }
      if (fragments.has_value()) {
        write_piece();
        return wake;
      }
      // A partial frame held behind one frame in flight leaves once its hold ran out; behind
      // two it waits for an ack however long (LinkSender::Next).
      const auto held_behind_one = [&] {
        return sender.holding_partial() && sender.in_flight() == 1;
      };
      if (held_behind_one() && now >= hold_until) sender.StopHolding();
      auto produced = sender.Next();
      if (!produced.ok()) {
        fail(produced.status());
        return wake;
      }
      if (std::string damage = sender.TakeDamageReport(); !damage.empty()) {
        ++state->log_damage_events;
        owner_->SetError(peer_.name, damage);
      }
      if (produced->has_value()) {
        hold_until = absl::InfiniteFuture();
        ReplicationRequest& next = **produced;
        if (next.has_frame()) {
          ++state->frames_sent;
          state->entries_sent += static_cast<uint64_t>(next.frame().records_size());
        } else if (next.has_snapshot() && next.snapshot().last()) {
          ++state->full_state_transfers_sent;
        }
        send(std::move(next));
        return wake;
      }
      if (now - last_sent >= options.heartbeat) {
        ReplicationRequest heartbeat;
        heartbeat.mutable_heartbeat();
        send(std::move(heartbeat));
        return wake;
      }
      wake = std::min(wake, last_sent + options.heartbeat);
      if (!held_behind_one()) {
        hold_until = absl::InfiniteFuture();
      } else if (hold_until == absl::InfiniteFuture()) {
        hold_until = now + options.max_hold;
      }
      if (sender.waiting_for_ack()) {
        return std::min(wake, hold_until);  // an ack, or the hold running out, moves it on
      }
      // Caught up: sleep until a commit of entries this link sends (checked once more after
      // listening begins: a commit between Next() and here would otherwise go unnoticed).
      {
        absl::MutexLock lock(&wake_mu);
        wake_interest = sender.Interest();
        wake_listening = !wake_armed;
      }
      if (wake_interest.Pending(store->AppliedVector()) > 0) {
        absl::MutexLock lock(&wake_mu);
        wake_listening = false;  // looking again at once: no alarm needed
        return now;
      }
      return wake;
    };

    ReplicationRequest hello = sender.Hello();
    if (options.compress_streams) OfferCompression(hello.mutable_hello());
    bool started = false;
    while (!broken) {
      if (stopping() || owner_->Blocked(peer_.name)) {
        fail(absl::OkStatus());
        break;
      }
      const absl::Time now = absl::Now();
      if (now - last_heard > options.dead_after) {
        fail(absl::UnavailableError(absl::StrCat("no word from ", peer_.name, " for ",
                                                 absl::FormatDuration(options.dead_after))));
        break;
      }
      absl::Time wake = now + options.idle_check;
      if (started) wake = step();
      if (broken) break;
      void* got = nullptr;
      bool ok = false;
      const auto next = cq.AsyncNext(&got, &ok, absl::ToChronoTime(std::max(wake, now)));
      {
        absl::MutexLock lock(&wake_mu);
        wake_listening = false;  // whatever woke the loop, step() decides anew
      }
      if (next == grpc::CompletionQueue::TIMEOUT) continue;
      if (next == grpc::CompletionQueue::SHUTDOWN) break;
      switch (static_cast<Tag>(reinterpret_cast<intptr_t>(got))) {
        case kStarted:
          start_pending = false;
          if (!ok) {
            broken = peer_ended = true;  // Finish says why
            break;
          }
          started = true;
          state->bytes_sent += hello.ByteSizeLong();
          write_pending = true;
          stream->Write(hello, tag(kWrite));
          last_sent = absl::Now();
          start_read();
          break;
        case kRead:
          read_pending = false;
          if (!ok) {
            broken = peer_ended = true;  // the peer ended the stream: Finish has its status
            break;
          }
          on_response();
          if (!broken) start_read();
          break;
        case kWrite:
          write_pending = false;
          if (!ok) {
            // A write fails only on a call that is over: Finish has its status.
            broken = peer_ended = true;
            break;
          }
          if (last_piece_of > 0) {
            allow_for_fragmented(last_piece_of);
            last_piece_of = 0;
          }
          break;
        case kWake: {
          absl::MutexLock lock(&wake_mu);
          wake_armed = false;
          break;
        }
        case kFinished:
          break;
      }
    }

    // Ends the stream and takes back every operation still in flight before the queue goes.
    std::move(remove_listener).Invoke();  // no alarm is set after this
    bool wake_outstanding;
    {
      absl::MutexLock lock(&wake_mu);
      wake_outstanding = wake_armed;
      if (wake_armed) wake_alarm.Cancel();
    }
    // Cancel only a stream still open: once the peer ended it, its status (a refusal, say)
    // must reach Finish() intact.
    if (!peer_ended) context.TryCancel();
    // A cancelled call completes everything at once. A peer that ended the stream leaves a write
    // of ours waiting for flow control only until the transport fails it; should that not come,
    // the link cancels after `dead_after` (the peer's status is then lost, but the link must not
    // hang short of reconnecting).
    absl::Time drain_deadline =
        peer_ended ? absl::Now() + options.dead_after : absl::InfiniteFuture();
    auto drain = [&](bool* pending_finish) {
      while (start_pending || read_pending || write_pending || wake_outstanding ||
             *pending_finish) {
        void* got = nullptr;
        bool ok = false;
        const auto next = cq.AsyncNext(&got, &ok, absl::ToChronoTime(drain_deadline));
        if (next == grpc::CompletionQueue::SHUTDOWN) return;
        if (next == grpc::CompletionQueue::TIMEOUT) {
          context.TryCancel();
          drain_deadline = absl::InfiniteFuture();
          continue;
        }
        switch (static_cast<Tag>(reinterpret_cast<intptr_t>(got))) {
          case kStarted:
            start_pending = false;
            break;
          case kRead:
            read_pending = false;
            break;
          case kWrite:
            write_pending = false;
            break;
          case kWake:
            wake_outstanding = false;
            break;
          case kFinished:
            *pending_finish = false;
            break;
        }
      }
    };
    bool finish_pending = false;
    drain(&finish_pending);  // Finish() only once no read or write is in flight
    grpc::Status finish;
    finish_pending = true;  // valid whether the call started or not: it says why not
    stream->Finish(&finish, tag(kFinished));
    drain(&finish_pending);
    cq.Shutdown();
    void* ignored_tag;
    bool ignored_ok;
    while (cq.Next(&ignored_tag, &ignored_ok)) {
    }
    absl::Status result = link_status;
    if (result.ok() && !finish.ok() && finish.error_code() != grpc::StatusCode::CANCELLED) {
      result = FromGrpcStatus(finish);
      if (finish.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        MERGEDB_LOG(WARNING) << "peer " << peer_.name << " refused replication: "
                             << finish.error_message();
      }
    }
    return result;
  }

  Replication* const owner_;
  const PeerConfig peer_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<mergedb::v1::ReplicationService::Stub> stub_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;  // see Kick
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::thread thread_;
};

namespace {
ReplicationOptions WithMembers(ReplicationOptions options) {
  if (options.members.empty()) {
    for (const auto& p : options.peers) options.members.push_back(p.name);
  }
  return options;
}
}  // namespace

Replication::Replication(ReplicationOptions options, storage::Store* store, HybridClock* clock)
    : options_(WithMembers(std::move(options))),
      store_(store),
      clock_(clock),
      view_(options_.node_name, options_.members, store) {
  for (const auto& member : options_.members) {
    peer_states_.emplace(member, std::make_unique<PeerState>());
  }
  for (const auto& peer : options_.peers) {
    peer_states_.emplace(peer.name, std::make_unique<PeerState>());
  }
  // Times the commits of this node's own entries, for the peers' replication delays. The
  // replica id is fixed for the store's life (a new incarnation is drawn at its open).
  const crdt::ReplicaId me = store_->replica_id();
  delay_listener_ = store_->AddAppliedListener([this, me](const storage::VersionVector& applied) {
    if (auto own = applied.find(me); own != applied.end()) {
      view_.OwnCommitted(own->second, std::chrono::steady_clock::now());
    }
  });
}

Replication::~Replication() { Stop(); }

void Replication::Start() {
  absl::MutexLock lock(&mu_);
  for (const auto& peer : options_.peers) {
    sessions_.push_back(std::make_unique<Session>(this, peer));
  }
}

void Replication::Stop() {
  stopping_ = true;
  std::vector<std::unique_ptr<Session>> sessions;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [peer, context] : inbound_) context->TryCancel();
    for (auto& [context, handshake] : handshaking_) context->TryCancel();
    sessions.swap(sessions_);
  }
  // Outside mu_: a session's thread takes it (Blocked, SetError) on its way out.
  for (auto& session : sessions) session->Stop();
  view_.ReleaseWaiters();
  // Here, not in the destructor: the node closes its store before it drops this object.
  if (const uint64_t listener = delay_listener_.exchange(0); listener != 0) {
    store_->RemoveAppliedListener(listener);
  }
}

void Replication::CancelSilentHandshakes() {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (auto& [context, handshake] : handshaking_) {
    if (handshake.give_up > now) continue;
    MERGEDB_LOG(WARNING) << "cancelled a replication stream from " << handshake.from
                         << " that sent no hello within " << options_.dead_after;
    context->TryCancel();
    handshake.give_up = absl::InfiniteFuture();  // once
  }
}

Replication::PeerState* Replication::StateOf(const std::string& peer) const {
  auto it = peer_states_.find(peer);
  return it == peer_states_.end() ? nullptr : it->second.get();
}

bool Replication::Blocked(const std::string& peer) const {
  absl::MutexLock lock(&mu_);
  return blocked_.count(peer) > 0;
}

void Replication::SetError(const std::string& peer, const std::string& error) {
  if (PeerState* state = StateOf(peer)) {
    absl::MutexLock lock(&state->mu);
    state->last_error = error;
  }
}

void Replication::SetLinkBlocked(const std::string& peer, bool blocked) {
  absl::MutexLock lock(&mu_);
  if (blocked) {
    blocked_.insert(peer);
    auto [begin, end] = inbound_.equal_range(peer);
    for (auto it = begin; it != end; ++it) it->second->TryCancel();
  } else {
    blocked_.erase(peer);
  }
  // Outbound sessions notice the block at their next step and end their stream.
}

std::vector<mergedb::v1::PeerStatus> Replication::PeerStatuses() const {
  std::vector<mergedb::v1::PeerStatus> out;
  for (const auto& peer : options_.peers) {
    PeerState* state = StateOf(peer.name);
    mergedb::v1::PeerStatus status;
    status.set_name(peer.name);
    status.set_address(peer.address);
    status.set_connected(state->connected);
    if (status.connected()) status.set_compression(CompressionName(state->compression));
    status.set_entries_behind(view_.EntriesBehind(peer.name));
    status.set_bytes_sent(state->bytes_sent);
    status.set_bytes_received(state->bytes_received);
    status.set_frames_sent(state->frames_sent);
    status.set_entries_sent(state->entries_sent);
    status.set_full_state_transfers_sent(state->full_state_transfers_sent);
    status.set_log_damage_events(state->log_damage_events);
    view_.FillReplicationDelay(peer.name, status.mutable_replication_delay());
    absl::MutexLock lock(&state->mu);
    status.set_last_error(state->last_error);
    out.push_back(std::move(status));
  }
  return out;
}

absl::Status Replication::TruncateLog() {
  ClusterView::Truncation truncation = view_.TruncationPoint(options_.max_log_entries);
  if (!truncation.lacking.empty() && absl::Now() - last_log_bound_warning_ >= absl::Minutes(1)) {
    last_log_bound_warning_ = absl::Now();
    MERGEDB_LOG(WARNING) << "the log keeps at most " << options_.max_log_entries
                         << " entries per origin (--max_log_entries): dropping entries not yet "
                         << "applied by " << absl::StrJoin(truncation.lacking, ", ")
                         << " (a full-state transfer will bring such a member up to date)";
  }
  if (truncation.through.empty()) return absl::OkStatus();
  return store_->TruncateLog(truncation.through);
}

grpc::Status Replication::Replicate(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<ReplicationResponse, ReplicationRequest>* stream) {
  if (options_.live_tls != nullptr) {
    // The CAs and lists in use now: a reload may have changed them since the start.
    if (absl::Status member =
            CheckMemberCertificate(*context->auth_context(), *options_.live_tls->current());
        !member.ok()) {
      MERGEDB_LOG(WARNING) << "refused replication from " << context->peer() << ": "
                           << member.message();
      return ToGrpcStatus(member);
    }
  }
  ReplicationRequest request;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the node is stopping");
    handshaking_[context] = Handshake{absl::Now() + options_.dead_after, context->peer()};
  }
  const bool said_something = stream->Read(&request);
  {
    absl::MutexLock lock(&mu_);
    handshaking_.erase(context);
  }
  if (!said_something) return grpc::Status::OK;
  if (!request.has_hello()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first message must be a hello");
  }
  // With bound names, the certificate is checked against the name the hello gives before the
  // hello changes anything (OnHello records the member's role, for one).
  if (BindsMemberNames(options_)) {
    if (absl::Status named =
            CheckPeerMemberName(*context->auth_context(), request.hello().node_name());
        !named.ok()) {
      MERGEDB_LOG(WARNING) << "refused replication from " << context->peer()
                           << ", which says it is " << absl::CHexEscape(request.hello().node_name())
                           << ": " << named.message();
      return ToGrpcStatus(named);
    }
  }
  LinkReceiver receiver(options_, store_, &view_, clock_);
  auto hello = receiver.OnHello(request.hello());
  if (!hello.ok()) {
    MERGEDB_LOG(WARNING) << "refused replication from " << context->peer() << ": "
                         << hello.status().message();
    return ToGrpcStatus(hello.status());
  }
  const std::string peer = receiver.peer();
  {
    absl::MutexLock lock(&mu_);
    if (blocked_.count(peer) > 0 || stopping_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "link cut");
    }
    // A peer runs one stream to this node at a time, so its older streams are over on its side;
    // one is kept (it may not have noticed yet that its connection died), the rest cancelled, so
    // that streams (and what each buffers) cannot pile up.
    constexpr size_t kKeptPerPeer = 1;
    if (inbound_.count(peer) > kKeptPerPeer) {
      auto [begin, end] = inbound_.equal_range(peer);
      for (size_t excess = inbound_.count(peer) - kKeptPerPeer; excess > 0; --excess, ++begin) {
        MERGEDB_LOG(WARNING) << "peer " << peer << " opened another replication stream: "
                             << "cancelling its oldest";
        begin->second->TryCancel();
      }
    }
    inbound_.emplace(peer, context);
    for (auto& session : sessions_) {
      if (session->peer_name() == peer) session->Kick();
    }
  }
  struct Unregister {
    Replication* r;
    const std::string& peer;
    grpc::ServerContext* context;
    ~Unregister() {
      absl::MutexLock lock(&r->mu_);
      auto [begin, end] = r->inbound_.equal_range(peer);
      for (auto it = begin; it != end; ++it) {
        if (it->second == context) {
          r->inbound_.erase(it);
          break;
        }
      }
    }
  } unregister{this, peer, context};

  std::unique_ptr<StreamCompressor> compressor;
  std::unique_ptr<StreamDecompressor> decompressor;
  if (options_.compress_streams) {
    const mergedb::v1::StreamCompression chosen = ChooseCompression(request.hello());
    hello->mutable_hello_ack()->set_compression(chosen);
    if (const std::optional<StreamCodec> codec = StreamCodecOf(chosen); codec.has_value()) {
      compressor = StreamCompressor::Create(*codec);
      decompressor = StreamDecompressor::Create(*codec);
    }
  }
  // A piece of this size, with its envelope, fits the server's receive limit, which leaves
  // 1 MiB over max_message_bytes (ConfigureServerBuilder).
  hello->mutable_hello_ack()->set_fragment_bytes(
      static_cast<uint32_t>(std::min<size_t>(options_.max_message_bytes, kMaxFragmentBytes)));
  PeerState* state = StateOf(peer);
  state->bytes_received += request.ByteSizeLong();
  state->bytes_sent += hello->ByteSizeLong();
  view_.SetInbound(peer, receiver.peer_replica(), ClusterView::Link::kUp);
  struct Disconnect {
    ClusterView* view;
    const std::string& peer;
    crdt::ReplicaId replica;
    ~Disconnect() { view->SetInbound(peer, replica, ClusterView::Link::kDown); }
  } disconnect{&view_, peer, receiver.peer_replica()};
  if (!stream->Write(*hello)) return grpc::Status::OK;
  auto answer = [&](ReplicationResponse& response) {
    if (compressor != nullptr) Wrap(compressor.get(), &response);
    state->bytes_sent += response.ByteSizeLong();
    return stream->Write(response);
  };
  auto refuse = [&](const absl::Status& status) {
    MERGEDB_LOG(WARNING) << "replication from " << peer << ": " << status.message();
    return ToGrpcStatus(status);
  };
  FragmentAssembler assembler;
  while (stream->Read(&request)) {
    state->bytes_received += request.ByteSizeLong();
    if (decompressor != nullptr) {
      if (absl::Status s = Unwrap(decompressor.get(), &request); !s.ok()) return refuse(s);
    }
    auto whole = assembler.Add(std::move(request));
    if (!whole.ok()) return refuse(whole.status());
    if (!whole->has_value()) {
      // A piece held: answered so that the sender's watchdog hears this node while the rest
      // comes.
      ReplicationResponse held;
      held.mutable_heartbeat();
      if (!answer(held)) break;
      continue;
    }
    auto response = receiver.OnRequest(**whole);
    if (!response.ok()) {
      if (absl::IsAborted(response.status())) return ToGrpcStatus(response.status());
      return refuse(response.status());
    }
    if (response->has_value() && !answer(**response)) break;
  }
  return grpc::Status::OK;
}

std::vector<std::pair<const char*, int>> KeepaliveChannelArgs() {
  return {
      {GRPC_ARG_KEEPALIVE_TIME_MS, 1000},
      {GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000},
      {GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1},
      {GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0},
      {GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500},
      {GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0},
  };
}

absl::StatusOr<std::vector<PeerConfig>> ParsePeers(absl::string_view spec) {
  std::vector<PeerConfig> peers;
  if (spec.empty()) return peers;
  for (absl::string_view item : absl::StrSplit(spec, ',')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    // The port is what follows the last colon ([::1]:7001 is an IPv6 host).
    const size_t colon = kv.second.rfind(':');
    uint32_t port = 0;
    if (kv.first.empty() || colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(absl::string_view(kv.second).substr(colon + 1), &port) || port == 0 ||
        port > 65535 || !absl::ascii_isdigit(kv.second[colon + 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("--peers: '", item, "' is not name=host:port (a port from 1 to 65535)"));
    }
    for (const auto& p : peers) {
      if (p.name == kv.first) {
        return absl::InvalidArgumentError(absl::StrCat("--peers: '", kv.first, "' twice"));
      }
    }
    peers.push_back({kv.first, kv.second});
  }
  return peers;
}

}  // namespace mergedb::node

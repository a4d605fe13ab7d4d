// Replication: every node pushes to every configured peer the log entries that peer lacks (of
// every origin, so writes are forwarded along any path), then live deltas; peers acknowledge with
// their applied vector and every other node's vector they know.
//
// The protocol logic is transport-free and thread-free: LinkSender (one outbound link) and
// LinkReceiver (one inbound stream) turn messages into messages, reading and writing only the
// store and the ClusterView. Replication drives them over gRPC streams with threads; a simulator
// can drive the same classes over a seeded in-memory network.
#ifndef MERGEDB_NODE_REPLICATION_H_
#define MERGEDB_NODE_REPLICATION_H_

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mergedb/v1/api.pb.h"
#include "mergedb/v1/replication.grpc.pb.h"
#include "node/clock.h"
#include "node/replication_delay.h"
#include "node/stream_codec.h"
#include "node/tls.h"
#include "storage/store.h"

namespace mergedb::node {

// Appends `v` to a repeated VectorEntry field (the wire form of a version vector).
void EncodeVector(const storage::VersionVector& v,
                  google::protobuf::RepeatedPtrField<mergedb::v1::VectorEntry>* out);

inline constexpr uint32_t kReplicationProtocolVersion = 1;

// The codec of a wire StreamCompression value; nullopt for none, or for a value this node does
// not know (a later version's offer).
std::optional<StreamCodec> StreamCodecOf(int compression);

// Requests too large for one message travel as Fragments (replication.proto). The transport
// splits and reassembles them; the protocol logic above sees whole requests only.
//
// Hands `write` the pieces of `serialized` (a ReplicationRequest's bytes) in order, one at a
// time, with at most `piece_bytes` data bytes each (`piece_bytes` > 0), the last one marked.
// Stops when `write` returns false, and returns whether every piece was written.
bool WriteFragments(absl::string_view serialized, size_t piece_bytes,
                    const std::function<bool(mergedb::v1::ReplicationRequest&)>& write);

// The same pieces one at a time, for a sender that writes each when the previous one left:
// it holds the serialization once, not beside a copy cut in pieces.
class FragmentSplitter {
 public:
  FragmentSplitter(std::string serialized, size_t piece_bytes)
      : serialized_(std::move(serialized)), piece_bytes_(std::max<size_t>(piece_bytes, 1)) {}
  size_t size() const { return serialized_.size(); }
  bool done() const { return started_ && offset_ >= serialized_.size(); }
  // REQUIRES: !done().
  mergedb::v1::ReplicationRequest Next();

 private:
  std::string serialized_;
  size_t piece_bytes_;
  size_t offset_ = 0;
  bool started_ = false;  // an empty request is still one (empty, last) piece
};

// Reassembles one inbound stream's fragments.
class FragmentAssembler {
 public:
  // The largest request it reassembles: protobuf parses at most 2 GiB. An update is at most
  // 1 GiB, but its delta can be larger (a dot per added set element), so no lower bound is
  // safe.
  static constexpr size_t kMaxRequestBytes = (size_t{1} << 31) - 1;

  // Takes the next request read from the stream (decompressed). Returns the whole request
  // once there is one: a request that is not a fragment, outside a fragmented one, is whole by
  // itself; a fragment returns nullopt until its message's last piece. Errors (the stream must
  // end): a whole request between pieces, pieces over kMaxRequestBytes, or pieces that do not
  // parse as a request or make a fragment or a compressed request.
  absl::StatusOr<std::optional<mergedb::v1::ReplicationRequest>> Add(
      mergedb::v1::ReplicationRequest request);

  // Bytes held for an incomplete request.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  std::string pending_;
  bool inside_ = false;  // a first piece arrived, its last not yet
};

struct PeerConfig {
  std::string name;
  std::string address;  // host:port
};

struct ReplicationOptions {
  std::string cluster_id;
  std::string node_name;
  mergedb::v1::Role role = mergedb::v1::PRIMARY;
  // The nodes this one streams to (its links).
  std::vector<PeerConfig> peers;
  // Every other member of the cluster, by name: who may connect, and who counts for QUORUM,
  // ALL and log truncation. Empty: the peers' names (a full mesh).
  std::vector<std::string> members;
  // Frames and snapshot chunks stay under this (a single record larger than it goes alone).
  size_t max_message_bytes = size_t{1} << 20;
  size_t max_frame_records = 1024;
  // Frames or chunks sent but not yet acknowledged, per link.
  int window = 8;
  // With a frame in flight, the next one leaves only once this many entries wait (or at the
  // ack): live writes then share frames instead of costing a message and an ack each, and a
  // catch-up still pipelines full frames. See LinkSender::Next.
  size_t min_pipelined_entries = 256;
  // ...but with one frame in flight, a partial frame waits for that ack at most this long:
  // when acks are slow (a busy peer), waiting would add their delay to the replication lag.
  // With two in flight it waits for an ack (the peer has a frame queued already).
  absl::Duration max_hold = absl::Milliseconds(2);
  // A link with no message from the peer for `dead_after` is declared dead and reconnected;
  // each side sends a heartbeat after `heartbeat` of silence.
  absl::Duration heartbeat = absl::Milliseconds(300);
  absl::Duration dead_after = absl::Seconds(3);
  // How often an outbound link's loop wakes when nothing else wakes it, to check for a stop, a
  // cut link (the test hook) and a silent peer. Commits do not wait for it: they wake the link
  // at once (Store::AddAppliedListener). Tests raise it to show that.
  absl::Duration idle_check = absl::Milliseconds(100);
  absl::Duration backoff_min = absl::Milliseconds(50);
  absl::Duration backoff_max = absl::Seconds(2);
  // TLS (borrowed; outlives the replication): outbound links present its certificates, and
  // inbound links then need a certificate its CA signed. Null: plaintext.
  LiveTls* live_tls = nullptr;
  // Offer (outbound) and accept (inbound) DEFLATE stream compression; see node/stream_codec.h.
  bool compress_streams = true;
  // The log keeps at most this many entries per origin for members that have not applied
  // them (a member that is down, or configured but never started). Past it the oldest go and
  // such a member, when it returns, gets a full-state transfer instead: a node that stays away
  // costs the others bounded disk, not all they accept meanwhile. Keep it well above the
  // writes per origin a full-state transfer takes to stream: entries past the snapshot that
  // go before it ends send the member into another transfer.
  uint64_t max_log_entries = 10'000'000;
};

// What this node knows of every member's applied vector, by node name (a peer is known by name;
// its replica id changes with each incarnation). This node's own vector is read from the store.
// Thread-safe.
class ClusterView {
 public:
  // `peers` are the other members' names. `store` is borrowed and outlives the view.
  ClusterView(std::string self, std::vector<std::string> peers, storage::Store* store);

  // Merges (per origin, the max) or, with kReplace, replaces what is known of `node`. kRelayed
  // merges what a third node reports of `node`, unless this node hears from `node` first-hand
  // (SetFirstHand): a relay can be older than the node's own word, and after the node lost data
  // (a new incarnation, a restore) it would raise the node's vector again past what it holds,
  // and the log would drop entries the node needs. Every mode checks for a rolled-back dir.
  //
  // `incarnation` is the replica id of `node` the vector belongs to (0: not known). First-hand
  // (kMerge, kReplace), it is recorded. A relay naming another incarnation than the one this
  // node last heard first-hand is ignored even while no first-hand link is up: it is what a
  // node that has not heard of the rebuild still holds of the old incarnation, and merged in
  // it would count the new one for QUORUM and ALL and truncation as holding what it lost.
  enum class Mode { kMerge, kReplace, kRelayed };
  void Update(const std::string& node, const storage::VersionVector& applied, Mode mode,
              crdt::ReplicaId incarnation = 0);
  // The replica id of `node` last heard first-hand (0: none), which relays of its vector carry.
  crdt::ReplicaId Incarnation(const std::string& node) const;
  // Links on which `peer` itself reports its applied vector (an outbound stream past its hello
  // exchange). Counted, like SetInbound.
  void SetFirstHand(const std::string& peer, bool up);

  // Full-state transfers that reconcile `peer` when its state differs at an equal applied
  // vector (LinkSender::CheckDivergence): true when one may start at this divergent heartbeat.
  // After each, the next waits for twice as many divergent heartbeats (1, 2, 4, ... at most
  // 4,096: about 20 minutes at one per 300 ms): a peer still different after a transfer holds
  // writes this node lacks, which only its own stream to this node brings, and sending the
  // whole state again would not change that. Kept per peer across reconnects; states seen
  // equal (ReconcileSettled) reset it.
  bool MayReconcile(const std::string& peer);
  void ReconcileSettled(const std::string& peer);
  // Full-state transfers this node is receiving (counted: a receiver adds one at its first
  // chunk and takes it back at the last, or when its stream ends). While one runs, the
  // documents already hold transferred state that the applied vector will only name at the
  // end, so the state digest says nothing a peer could compare: acks leave it out, and a
  // peer at an equal vector does not take the difference for a divergence to reconcile.
  void SetReceivingTransfer(bool receiving);
  bool receiving_transfer() const { return receiving_transfers_.load() > 0; }
  // The store's applied vector and state digest read at one point, the digest left empty when
  // a transfer into this node ran at any moment of the read (one may end between a check and
  // the read, and its last chunk change the digest without the vector read with it).
  std::pair<storage::VersionVector, std::string> AppliedAndComparableDigest() const;
  std::map<std::string, storage::VersionVector> Known() const;

  int member_count() const { return static_cast<int>(peers_.size()) + 1; }
  // How many members (this node included) have applied (origin, seq).
  int Confirmations(crdt::ReplicaId origin, uint64_t seq) const;
  // Waits until `needed` members have applied (origin, seq) or `deadline` passes; returns the
  // confirmations reached.
  int WaitForConfirmations(crdt::ReplicaId origin, uint64_t seq, int needed, absl::Time deadline);
  // What the log drops: per origin, what every member has applied (nothing while some member
  // has never reported), and past it whatever is older than the origin's newest
  // `max_log_entries` (so a member that is away costs bounded disk; it gets a full-state
  // transfer on return). `lacking` names the members the bound drops entries for (a member
  // that never reported counts as lacking everything).
  struct Truncation {
    storage::VersionVector through;
    std::set<std::string> lacking;
  };
  Truncation TruncationPoint(uint64_t max_log_entries) const;
  // Log entries this node holds that `peer` is not known to have.
  uint64_t EntriesBehind(const std::string& peer) const;
  // Shutdown: every current and later WaitForConfirmations returns at once.
  void ReleaseWaiters();
  // Shutdown's drain: waits until no WaitForConfirmations is waiting, or `deadline`; true when
  // none is.
  bool AwaitNoWaiters(absl::Time deadline);
  // Calls in WaitForConfirmations now.
  int waiters() const;

  // Inbound streams this node currently has, by peer name: their replica ids are the
  // "direct origins" acks announce.
  enum class Link { kUp, kDown };
  void SetInbound(const std::string& peer, crdt::ReplicaId replica, Link link);
  std::vector<crdt::ReplicaId> DirectOrigins() const;

  // Roles of the members that introduced themselves (inbound streams' hellos).
  void SetRole(const std::string& node, mergedb::v1::Role role);
  std::vector<std::string> NodesWithRole(mergedb::v1::Role role) const;

  // Set when some member is known to have applied more of this node's own log than this data
  // dir holds (Update checks every vector it is given): the dir went back in time (restored
  // from an older copy, say), and a new local write would reuse a sequence number the cluster
  // already holds for another write. It sticks, is logged once, and the node refuses writes.
  // Empty: none. Cheap when empty (every write asks).
  std::string rolled_back_reason() const;

  // Replication delays (node/replication_delay.h): commits of this node's own entries are
  // timed through OwnCommitted (the node's store listener; the simulator times none), and
  // Update counts what each peer is now known to hold.
  void OwnCommitted(uint64_t through, ReplicationDelays::TimePoint when) {
    delays_.Committed(through, when);
  }
  void FillReplicationDelay(const std::string& peer, mergedb::v1::LatencyHistogram* out) const {
    delays_.FillTo(peer, out);
  }

 private:
  int ConfirmationsLocked(crdt::ReplicaId origin, uint64_t seq,
                          const storage::VersionVector& mine) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const std::string self_;
  const std::vector<std::string> peers_;
  storage::Store* const store_;
  mutable absl::Mutex mu_;
  std::map<std::string, storage::VersionVector> known_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string, crdt::ReplicaId> inbound_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> first_hand_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, crdt::ReplicaId> incarnation_ ABSL_GUARDED_BY(mu_);  // see Update
  struct ReconcileBackoff {
    uint64_t skip = 0;  // divergent heartbeats to let pass before the next transfer
    uint64_t next_skip = 1;
  };
  std::map<std::string, ReconcileBackoff> reconcile_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, mergedb::v1::Role> roles_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> receiving_transfers_{0};
  std::atomic<uint64_t> transfer_events_{0};  // starts and ends of receiving_transfers_
  std::atomic<bool> rolled_back_{false};  // set after rolled_back_reason_
  std::string rolled_back_reason_ ABSL_GUARDED_BY(mu_);
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;  // calls in WaitForConfirmations
  ReplicationDelays delays_;
};

// Which log entries a link sends: per origin, those past `from`, except the excluded origins
// (the peer's own and those it receives first-hand). A value, so it can be read while the link
// changes.
struct LogInterest {
  storage::VersionVector from;
  std::set<crdt::ReplicaId> excluded;
  // Entries of `applied` this link would send.
  uint64_t Pending(const storage::VersionVector& applied) const;
};

// The sending side of one link. Not thread-safe: one driver calls it.
class LinkSender {
 public:
  // `store` and `view` are borrowed and outlive the sender.
  LinkSender(const ReplicationOptions& options, storage::Store* store, ClusterView* view,
             std::string peer);
  ~LinkSender();
  LinkSender(const LinkSender&) = delete;
  LinkSender& operator=(const LinkSender&) = delete;

  // Also notes this node's applied vector at that moment (see OnHelloAck).
  mergedb::v1::ReplicationRequest Hello();
  absl::Status OnHelloAck(const mergedb::v1::HelloAck& ack);
  // The next frame or snapshot chunk to send now; nullopt when caught up or the window is full.
  absl::StatusOr<std::optional<mergedb::v1::ReplicationRequest>> Next();
  // Returns true when the ack widened what this link must send (the peer lost a first-hand
  // stream).
  bool OnResponse(const mergedb::v1::ReplicationResponse& response);
  bool in_snapshot() const { return snapshot_ != nullptr || need_snapshot_; }
  // True while Next() waits for an ack: the window is full, or it holds back a partial frame.
  bool waiting_for_ack() const { return in_flight_ >= options_.window || holding_partial_; }
  bool holding_partial() const { return holding_partial_; }
  int in_flight() const { return in_flight_; }
  // The driver waited `max_hold` for an ack in vain: the next Next() sends the partial frame.
  void StopHolding() {
    holding_partial_ = false;
    hold_released_ = true;
  }
  // Set by Next() when this node's log proved damaged and the peer gets a full-state transfer
  // instead (empty otherwise); the driver shows it as the link's last error.
  std::string TakeDamageReport() { return std::exchange(damage_report_, std::string()); }
  // What the link sends. Once Next() returned nothing with the window open, the link has
  // nothing to send until Interest().Pending(applied) > 0 or an ack changes what the peer
  // receives first-hand (OnResponse returns true).
  LogInterest Interest() const;

 private:
  absl::StatusOr<std::optional<mergedb::v1::ReplicationRequest>> NextSnapshotChunk();
  // Starts a full-state transfer when the peer reports the same applied vector as ours but a
  // different state digest.
  void CheckDivergence(const google::protobuf::RepeatedPtrField<mergedb::v1::VectorEntry>& applied,
                       const std::string& digest);

  const ReplicationOptions& options_;
  storage::Store* const store_;
  ClusterView* const view_;
  const std::string peer_;
  storage::VersionVector sent_;
  // What the peer itself has reported on this stream (hello ack, then acks): authoritative,
  // unlike what third parties relay, which can be stale after the peer lost data in a crash.
  storage::VersionVector peer_applied_;
  // This node's applied vector when it sent the hello: the peer's answer, built later, covers
  // at least as much of the peer's own log.
  storage::VersionVector applied_at_hello_;
  // Origins the peer receives first-hand (not forwarded from here).
  std::set<crdt::ReplicaId> peer_direct_;
  crdt::ReplicaId peer_replica_ = 0;
  bool first_hand_ = false;  // registered with the view (SetFirstHand) since the hello ack
  int in_flight_ = 0;
  bool holding_partial_ = false;
  bool hold_released_ = false;
  bool need_snapshot_ = false;
  std::string damage_report_;
  std::unique_ptr<storage::SnapshotCursor> snapshot_;
  struct Part {
    storage::SnapshotDoc doc;
    bool partial = false;
  };
  std::deque<Part> pending_parts_;
  bool snapshot_requests_done_ = false;  // the snapshot's request ids are sent; documents follow
  // A request id read from the snapshot that did not fit in the last chunk.
  std::optional<mergedb::v1::SnapshotRequestRecord> pending_request_;
};

// The receiving side of one inbound stream. Not thread-safe.
class LinkReceiver {
 public:
  LinkReceiver(const ReplicationOptions& options, storage::Store* store, ClusterView* view,
               HybridClock* clock)
      : options_(options), store_(store), view_(view), clock_(clock) {}
  ~LinkReceiver() { MarkReceivingTransfer(false); }
  LinkReceiver(const LinkReceiver&) = delete;
  LinkReceiver& operator=(const LinkReceiver&) = delete;

  // Checks the sender belongs to this cluster and membership, and speaks this protocol.
  absl::StatusOr<mergedb::v1::ReplicationResponse> OnHello(const mergedb::v1::Hello& hello);
  // The answer to one request, if any.
  absl::StatusOr<std::optional<mergedb::v1::ReplicationResponse>> OnRequest(
      const mergedb::v1::ReplicationRequest& request);
  const std::string& peer() const { return peer_; }
  crdt::ReplicaId peer_replica() const { return peer_replica_; }

 private:
  mergedb::v1::ReplicationResponse MakeAck();
  // Advances the hybrid clock past a packed timestamp the peer sent (0: none); warns, at most
  // every 10 s, when it lies beyond the clock's bound.
  void ObserveTimestamp(uint64_t packed);

  const ReplicationOptions& options_;
  storage::Store* const store_;
  ClusterView* const view_;
  HybridClock* const clock_;
  absl::Time last_clock_warning_ = absl::InfinitePast();
  std::string peer_;
  crdt::ReplicaId peer_replica_ = 0;
  // What the previous acks on this stream said, so the next ack carries only changes.
  std::map<std::string, storage::VersionVector> acked_known_;
  storage::VersionVector acked_applied_;
  std::vector<crdt::ReplicaId> acked_direct_;
  int acks_since_full_ = 0;
  // The parts of split documents received so far (a full-state transfer sends a document over
  // the message bound in parts, SplitForTransfer), joined here and applied whole with the last
  // part: applied one by one, each part's partial context would leave the document's older
  // dots beside the new ones (a counter counted twice, a register with two values) until the
  // last part, and for good if the stream broke before it. Held: one document's state.
  struct SplitDocument {
    crdt::Document state;
    std::set<crdt::Dot> delivered;  // the parts' live dots, which the last part must not remove
  };
  std::map<std::pair<std::string, std::string>, SplitDocument> split_documents_;
  // Between this stream's first chunk of a full-state transfer and its last (counted in the
  // view, ClusterView::SetReceivingTransfer, by MarkReceivingTransfer on each change).
  bool receiving_transfer_ = false;
  void MarkReceivingTransfer(bool receiving) {
    if (receiving_transfer_ == receiving) return;
    receiving_transfer_ = receiving;
    view_->SetReceivingTransfer(receiving);
  }
};

// Splits a document into parts whose encodings stay under `max_bytes` (see SnapshotDocument):
// every part but the last is partial.
std::vector<crdt::Document> SplitForTransfer(const crdt::Document& doc, size_t max_bytes);

// The gRPC transport: one sender thread per peer, the ReplicationService for inbound streams,
// counters for Status, and a test hook that cuts links. Thread-safe.
class Replication final : public mergedb::v1::ReplicationService::Service {
 public:
  // `store` and `clock` are borrowed and outlive this object.
  Replication(ReplicationOptions options, storage::Store* store, HybridClock* clock);
  ~Replication() override;

  void Start();
  void Stop();

  ClusterView* view() { return &view_; }
  const ReplicationOptions& options() const { return options_; }
  std::vector<mergedb::v1::PeerStatus> PeerStatuses() const;
  // Drops from the log what every member has applied, and the oldest entries of an origin
  // past options().max_log_entries. Called from one thread at a time.
  absl::Status TruncateLog();
  // Cancels the inbound streams that said no hello within options().dead_after: each holds a
  // server thread, and a connection that never speaks would hold it for good. Called
  // periodically (the node's janitor).
  void CancelSilentHandshakes();

  // Test hook: while blocked, no stream to or from `peer` is kept or accepted on this node.
  void SetLinkBlocked(const std::string& peer, bool blocked);

  grpc::Status Replicate(grpc::ServerContext* context,
                         grpc::ServerReaderWriter<mergedb::v1::ReplicationResponse,
                                                  mergedb::v1::ReplicationRequest>* stream) override;

 private:
  struct PeerState {
    std::atomic<bool> connected{false};
    std::atomic<uint64_t> bytes_sent{0};
    std::atomic<uint64_t> bytes_received{0};
    std::atomic<uint64_t> frames_sent{0};
    std::atomic<uint64_t> entries_sent{0};
    std::atomic<uint64_t> full_state_transfers_sent{0};
    std::atomic<uint64_t> log_damage_events{0};
    // What the current (or last) outbound stream negotiated.
    std::atomic<mergedb::v1::StreamCompression> compression{mergedb::v1::STREAM_COMPRESSION_NONE};
    absl::Mutex mu;
    std::string last_error ABSL_GUARDED_BY(mu);
  };
  class Session;

  PeerState* StateOf(const std::string& peer) const;
  bool Blocked(const std::string& peer) const;
  void SetError(const std::string& peer, const std::string& error);

  const ReplicationOptions options_;
  storage::Store* const store_;
  HybridClock* const clock_;
  ClusterView view_;
  // The store listener that feeds view_'s replication delays (0: removed, by Stop).
  std::atomic<uint64_t> delay_listener_{0};
  std::map<std::string, std::unique_ptr<PeerState>> peer_states_;
  std::atomic<bool> stopping_{false};

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> blocked_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string, grpc::ServerContext*> inbound_ ABSL_GUARDED_BY(mu_);
  // Inbound streams waiting for their hello, with when to give up on them and who they are.
  struct Handshake {
    absl::Time give_up;
    std::string from;
  };
  std::map<grpc::ServerContext*, Handshake> handshaking_ ABSL_GUARDED_BY(mu_);
  // TruncateLog's: when it last warned that max_log_entries dropped entries a member lacks.
  absl::Time last_log_bound_warning_ = absl::InfinitePast();
};

// gRPC channel arguments for failure detection, set alike on the server (Node::Start) and on
// the replication channels. gRPC's defaults defeat client-only keepalive: an idle stream stops
// pinging after two pings, and a server answers pings more frequent than every 5 minutes with
// GOAWAY. Here both sides ping every second, expect an answer within 2 s, and accept pings
// without data or calls.
std::vector<std::pair<const char*, int>> KeepaliveChannelArgs();

// Parses --peers: "name=host:port,name=host:port".
absl::StatusOr<std::vector<PeerConfig>> ParsePeers(absl::string_view spec);

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_REPLICATION_H_

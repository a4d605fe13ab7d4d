// Node: one mergedb server process's worth of state and services — the store, the clocks, the
// gRPC server with DocumentService, ClusterService, grpc.health.v1.Health and server reflection.
// mergedb-node (main.cc) parses flags into NodeOptions and runs one; tests run several in one
// process.
//
// Thread safety: Start, Shutdown and the accessors may be called from any thread.
#ifndef MERGEDB_NODE_NODE_H_
#define MERGEDB_NODE_NODE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mergedb/v1/api.pb.h"
#include "node/clock.h"
#include "node/latency_histogram.h"
#include "node/replication.h"
#include "node/validation.h"
#include "storage/store.h"

namespace grpc {
class Server;
class ServerBuilder;
}

namespace mergedb::node {

// The server settings of a node, for `builder` and anything that must be served like a node
// (the benchmarks' echo baseline): the reflection service, no port sharing, a receive limit
// that admits an update of `max_update_bytes` and a replication message of
// `max_replication_bytes` (ReplicationOptions::max_message_bytes), and keepalive.
void ConfigureServerBuilder(size_t max_update_bytes, size_t max_replication_bytes,
                            grpc::ServerBuilder* builder);

// The directory in a data dir where a node with TLS keeps the private copies of its
// certificates that gRPC reads (LiveTls).
inline constexpr char kTlsInUseDir[] = "tls-in-use";

struct NodeOptions {
  std::string node_name;
  std::string cluster_id;
  std::string data_dir;
  // host:port; port 0 picks a free one (see Node::port()).
  std::string listen = "127.0.0.1:0";
  mergedb::v1::Role role = mergedb::v1::PRIMARY;
  storage::Durability durability = storage::Durability::kNoSync;
  size_t cache_bytes = size_t{64} << 20;
  Limits limits;
  // How long a client request id is remembered for retry detection.
  absl::Duration request_id_window = absl::Hours(24);
  // Test-only: shifts this node's wall clock (and so its hybrid clock).
  int64_t clock_offset_millis = 0;
  // The hybrid clock follows peers' timestamps at most this far past the wall clock.
  int64_t max_clock_ahead_millis = HybridClock::kDefaultMaxAheadMillis;
  // LevelDB environment for the store (nullptr: the real file system).
  leveldb::Env* env = nullptr;
  // The nodes this one streams to. Membership is the cluster id plus the member names.
  std::vector<PeerConfig> peers;
  // Every other member's name; empty means the peers' names (a full mesh).
  std::vector<std::string> members;
  // Replication tuning; cluster id, node name, peers and TLS are filled in from the fields
  // here.
  ReplicationOptions replication;
  // TLS for every call and every link (node/tls.h); disabled: plaintext.
  TlsConfig tls;
  // The node warns while a certificate it depends on (TlsConfig::expiries) expires within this
  // long or has expired: at start-up, as soon as one enters the window or expires, then daily.
  absl::Duration tls_expiry_warning = absl::Hours(24 * 30);
  // How often the node reads its TLS files again (LiveTls::Reload), so renewed certificates
  // are taken without a restart; zero: only at start-up and on ReloadTls (SIGHUP).
  absl::Duration tls_reload_interval = absl::Minutes(1);
  // Every client and peer connection is closed this long after it opened (gRPC's GOAWAY, with
  // up to 10 % jitter, then at most min(this, 30 s) for the calls in flight), and the client
  // reconnects, with a new TLS handshake: what bounds how long a connection made before a
  // revocation or a change of CA keeps working. Zero: connections last until they break.
  absl::Duration max_connection_age = absl::ZeroDuration();
  // Where to serve Prometheus metrics over HTTP (HOST:PORT, port 0 picks one; node/metrics.h);
  // empty: not served.
  std::string metrics_listen;
  // A file holding USER:PASSWORD (one line, readable by its owner only): scrapes must then give
  // them with HTTP basic authentication (MetricsServer::Listen). Empty: no authentication.
  std::string metrics_auth_file;
  // How many change-feed records the node keeps for Watch resumption.
  uint64_t change_feed_retention = 1000000;
  // How often fully replicated log entries are truncated.
  absl::Duration truncate_interval = absl::Seconds(1);
  // Continue under a new replica id even after a clean stop (a data dir restored from a copy).
  bool new_incarnation = false;
  // Where ClusterService.Backup writes copies (on this node's machine, through `env`); empty:
  // backups are refused.
  std::string backup_dir;
  // Space a backup leaves free on its file system (storage::StoreOptions::backup_min_free_bytes).
  uint64_t backup_min_free_bytes = uint64_t{256} << 20;
  // A streamed backup (ClusterService.StreamBackup) whose reader takes nothing for this long is
  // cancelled, so that a stalled reader cannot hold the node's backup slot and snapshot.
  absl::Duration backup_stall_timeout = absl::Seconds(60);
  // Watch streams (DocumentService.Watch, and separately grpc.health.v1.Health.Watch) served at
  // once; more are RESOURCE_EXHAUSTED. Each holds a server thread for its whole life, so without
  // a bound one client opening thousands of streams could starve every other call of threads.
  int max_watch_streams = 1000;
  // Test-only: reports the free space of a path instead of the file system
  // (storage::StoreOptions::free_space).
  std::function<absl::StatusOr<uint64_t>(const std::string& path)> free_space;
};

class DocumentServiceImpl;
class ClusterServiceImpl;
class HealthService;
class AsyncServer;
class MetricsServer;

class Node {
 public:
  // Opens the store and starts serving. Errors name the problem: a data dir that cannot be
  // opened (storage::Store::Open), an address that cannot be listened on.
  static absl::StatusOr<std::unique_ptr<Node>> Start(const NodeOptions& options);

  ~Node();

  // Stops taking writes, lets synchronous writes already waiting for their peers' confirmations
  // get them (the links still run) and in-flight calls finish, all within `grace` (then
  // cancels them, and ends Watch streams), stops background work and closes the store.
  // Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  int port() const { return port_; }
  // The metrics endpoint's port; 0 without NodeOptions::metrics_listen.
  int metrics_port() const;
  // Reads the TLS files again and takes them if they pass the start-up checks (LiveTls::Reload),
  // logging the outcome; the janitor calls it every tls_reload_interval, the binary on SIGHUP.
  // FAILED_PRECONDITION for a plaintext node.
  absl::StatusOr<bool> ReloadTls();
  // The TLS in use; nullptr for a plaintext node.
  const LiveTls* live_tls() const { return live_tls_.get(); }
  std::string address() const;
  const NodeOptions& options() const { return options_; }
  storage::Store* store() { return store_.get(); }
  HybridClock* hybrid_clock() { return &hlc_; }
  Replication* replication() { return replication_.get(); }
  // Test hook: cuts (or heals) this node's side of the link to `peer`.
  void SetLinkBlocked(const std::string& peer, bool blocked) {
    replication_->SetLinkBlocked(peer, blocked);
  }
  bool stopping() const { return stopping_; }
  // From the start of a shutdown: new writes are refused while waiting ones drain.
  bool draining() const { return draining_; }
  absl::Time start_time() const { return start_time_; }
  // Server-side latencies (StatusResponse.latencies): the local commit of client writes, and
  // the wait for the peers of QUORUM and ALL writes.
  LatencyHistogram* commit_latency() { return &commit_latency_; }
  LatencyHistogram* concern_wait(mergedb::v1::WriteConcern concern) {
    return concern == mergedb::v1::ALL ? &all_wait_ : &quorum_wait_;
  }

 private:
  explicit Node(const NodeOptions& options);
  void RunJanitor();
  // Logs ReportExpiries' warnings (node/tls.h) when its stage differs from `*stage` or
  // `*next_repeat` has passed, and updates both.
  void WarnIfCertificateExpires(std::string* stage, absl::Time* next_repeat) const;

  const NodeOptions options_;
  SystemClock clock_;
  HybridClock hlc_;
  // Outlives every server and channel that uses its credentials (destroyed last).
  std::unique_ptr<LiveTls> live_tls_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<Replication> replication_;
  std::unique_ptr<DocumentServiceImpl> documents_;
  std::unique_ptr<ClusterServiceImpl> cluster_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<AsyncServer> async_server_;
  std::unique_ptr<MetricsServer> metrics_;
  int port_ = 0;
  absl::Time start_time_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> draining_{false};
  LatencyHistogram commit_latency_;
  LatencyHistogram quorum_wait_;
  LatencyHistogram all_wait_;

  absl::Mutex janitor_mu_;
  bool janitor_stop_ ABSL_GUARDED_BY(janitor_mu_) = false;
  std::thread janitor_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_NODE_H_

#include "node/node.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "crdt/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "leveldb/env.h"
#include "node/async_server.h"
#include "node/async_writes.h"
#include "node/health.h"
#include "node/log.h"
#include "node/metrics.h"
#include "node/parsed_requests.h"
#include "node/services.h"

namespace mergedb::node {

namespace {
// Request-id expiry runs this often.
constexpr absl::Duration kJanitorInterval = absl::Minutes(1);
// How often the node repeats a warning that its certificate is about to expire.
constexpr absl::Duration kTlsWarningInterval = absl::Hours(24);
}  // namespace

void ConfigureServerBuilder(size_t max_update_bytes, size_t max_replication_bytes,
                            grpc::ServerBuilder* builder) {
  // The node serves grpc.health.v1.Health itself (node/health.h says why not gRPC's own).
  grpc::EnableDefaultHealthCheckService(false);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // gRPC enables SO_REUSEPORT by default, which would let a second node bind a port already in
  // use and silently share it.
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // gRPC's receive limit is per server, and this one takes both client updates and the peers'
  // replication messages: it admits the larger of the two, plus room for a message's envelope
  // (compressing incompressible bytes adds a little). Below this limit validation refuses an
  // oversized update with a precise message; above it gRPC does (RESOURCE_EXHAUSTED). Peers
  // send any replication request larger than max_replication_bytes in fragments of that size
  // (the hello ack's fragment_bytes), so a peer's larger update reaches this node too; only
  // nodes of earlier versions send it whole. A limit of the update size alone refused peers'
  // catch-up frames and transfer chunks whenever --max_update_bytes was under 1 MiB, and the
  // link retried the same frame forever.
  const size_t limit = std::max(max_update_bytes, max_replication_bytes) + (size_t{1} << 20);
  builder->SetMaxReceiveMessageSize(
      static_cast<int>(std::min<size_t>(limit, std::numeric_limits<int>::max())));
  // Accept the replication streams' keepalive pings and ping idle clients too, so a dead peer
  // is noticed within seconds on both sides.
  for (const auto& [name, value] : KeepaliveChannelArgs()) builder->AddChannelArgument(name, value);
}

namespace {
// The methods whose requests gRPC parses: the synchronous unary and server-streaming ones of the
// API and of the health service. Update is asynchronous and parses its raw request itself
// (node/async_writes.cc).
std::vector<const google::protobuf::MethodDescriptor*> MethodsGrpcParses() {
  std::vector<const google::protobuf::MethodDescriptor*> methods;
  for (const char* name : {mergedb::v1::DocumentService::service_full_name(),
                           mergedb::v1::ClusterService::service_full_name(),
                           grpc::health::v1::Health::service_full_name()}) {
    const google::protobuf::ServiceDescriptor* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
    for (int i = 0; i < service->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* method = service->method(i);
      if (method->client_streaming() || method->name() == "Update") continue;
      methods.push_back(method);
    }
  }
  return methods;
}
}  // namespace

Node::Node(const NodeOptions& options)
    : options_(options), clock_(options.clock_offset_millis), hlc_(&clock_, options.max_clock_ahead_millis) {}

namespace {
// The other members' names from --members and --peers. Listing the whole cluster in --members,
// this node included, is natural and means the same (this node always counts itself). A name
// counted twice, or this node counted as a member it never hears from, would make QUORUM
// stricter than a majority, ALL impossible and the log untruncatable: such lists are cleaned
// or refused, before the data dir is touched.
absl::StatusOr<std::vector<std::string>> OtherMembers(const NodeOptions& options) {
  std::vector<std::string> members;
  for (const std::string& member : options.members) {
    if (member.empty()) return absl::InvalidArgumentError("--members has an empty name");
    if (member == options.node_name) continue;
    if (absl::c_linear_search(members, member)) {
      return absl::InvalidArgumentError(absl::StrCat("--members lists '", member, "' twice"));
    }
    members.push_back(member);
  }
  for (const PeerConfig& peer : options.peers) {
    if (peer.name == options.node_name) {
      return absl::InvalidArgumentError(
          absl::StrCat("--peers lists this node's own name '", peer.name, "'"));
    }
    if (!options.members.empty() && !absl::c_linear_search(members, peer.name)) {
      return absl::InvalidArgumentError(absl::StrCat("--peers names '", peer.name,
                                                     "', which --members does not list (every "
                                                     "node this one streams to is a member)"));
    }
  }
  return members;
}
}  // namespace

absl::StatusOr<std::unique_ptr<Node>> Node::Start(const NodeOptions& options) {
  if (options.node_name.empty()) return absl::InvalidArgumentError("node name is required");
  if (options.cluster_id.empty()) return absl::InvalidArgumentError("cluster id is required");
  if (options.data_dir.empty()) return absl::InvalidArgumentError("data dir is required");
  MERGEDB_ASSIGN_OR_RETURN(std::vector<std::string> members, OtherMembers(options));
  if (options.tls.bind_member_names) {
    if (!options.tls.enabled()) {
      return absl::InvalidArgumentError(
          "--tls_bind_member_names needs TLS (--tls_cert, --tls_key and --tls_ca)");
    }
    // Its peers would refuse it on every link: better said once, at start-up.
    if (absl::Status named = CheckOwnMemberName(options.tls, options.node_name); !named.ok()) {
      return absl::InvalidArgumentError(named.message());
    }
  }
  std::unique_ptr<Node> node(new Node(options));
  node->start_time_ = absl::Now();
  if (!options.metrics_auth_file.empty() && options.metrics_listen.empty()) {
    return absl::InvalidArgumentError("--metrics_auth_file needs --metrics_listen");
  }
  if (!options.metrics_listen.empty()) {
    // First: an address the endpoint cannot take stops the node before it touches its data dir
    // or accepts a write, not after it served for a moment.
    MERGEDB_ASSIGN_OR_RETURN(
        node->metrics_, MetricsServer::Listen(options.metrics_listen, options.metrics_auth_file));
  }

  storage::StoreOptions store_options;
  store_options.path = options.data_dir;
  store_options.cluster_id = options.cluster_id;
  store_options.node_name = options.node_name;
  store_options.durability = options.durability;
  store_options.cache_bytes = options.cache_bytes;
  store_options.env = options.env;
  store_options.new_incarnation = options.new_incarnation;
  store_options.has_peers = !members.empty();
  store_options.backup_min_free_bytes = options.backup_min_free_bytes;
  store_options.free_space = options.free_space;
  MERGEDB_ASSIGN_OR_RETURN(node->store_, storage::Store::Open(store_options));
  if (options.new_incarnation) {
    MERGEDB_LOG(INFO) << "continuing as a new incarnation (replica "
                      << absl::StrCat(absl::Hex(node->store_->replica_id()))
                      << ") as asked: the peers send back what this data dir lacks";
  } else if (node->store_->opened_backup()) {
    MERGEDB_LOG(INFO) << "first start of a backup: continuing as a new incarnation (replica "
                      << absl::StrCat(absl::Hex(node->store_->replica_id()))
                      << "); the peers send back everything written since the backup";
  } else if (node->store_->opened_repaired()) {
    MERGEDB_LOG(WARNING) << "first start after mergedb-repair: continuing as a new incarnation "
                            "(replica "
                         << absl::StrCat(absl::Hex(node->store_->replica_id()))
                         << "); the documents come back from the log and the peers";
    if (!node->store_->rebuilt_meta().empty()) {
      MERGEDB_LOG(WARNING) << "the repair had lost the meta records "
                           << absl::StrJoin(node->store_->rebuilt_meta(), ", ")
                           << ": rebuilt from the data dir's " << storage::kIdentityFile
                           << " file (or, without one, this node's flags) and its data";
    }
  } else if (node->store_->rotated_incarnation()) {
    MERGEDB_LOG(WARNING) << "the previous stop was not clean and not every commit was fsynced: "
                            "continuing as a new incarnation (replica "
                         << absl::StrCat(absl::Hex(node->store_->replica_id()))
                         << ") so that no dot or log sequence is ever reused";
  }

  // The copies gRPC watches live in the data dir (private, kept across restarts, which replace
  // them); a data dir in another Env (tests' memory) gets a temporary directory. A node started
  // without TLS removes the copies, a private key among them, an earlier run left.
  const bool real_files = options.env == nullptr || options.env == leveldb::Env::Default();
  if (!options.tls.enabled() && real_files) {
    std::error_code ignored;
    std::filesystem::remove_all(absl::StrCat(options.data_dir, "/", kTlsInUseDir), ignored);
  }
  if (options.tls.enabled()) {
    MERGEDB_ASSIGN_OR_RETURN(
        node->live_tls_,
        LiveTls::Start(options.tls, options.node_name,
                       real_files ? absl::StrCat(options.data_dir, "/", kTlsInUseDir) : ""));
  }

  ReplicationOptions replication = options.replication;
  replication.cluster_id = options.cluster_id;
  replication.node_name = options.node_name;
  replication.role = options.role;
  replication.peers = options.peers;
  replication.live_tls = node->live_tls_.get();
  replication.members = std::move(members);
  node->replication_ =
      std::make_unique<Replication>(std::move(replication), node->store_.get(), &node->hlc_);

  node->documents_ = std::make_unique<DocumentServiceImpl>(node.get());
  node->cluster_ = std::make_unique<ClusterServiceImpl>(node.get());
  node->health_ = std::make_unique<HealthService>(
      std::vector<std::string>{mergedb::v1::DocumentService::service_full_name(),
                               mergedb::v1::ClusterService::service_full_name(),
                               mergedb::v1::ReplicationService::service_full_name()},
      options.max_watch_streams);
  grpc::ServerBuilder builder;
  ConfigureServerBuilder(options.limits.max_update_bytes, options.replication.max_message_bytes,
                         &builder);
  if (options.max_connection_age > absl::ZeroDuration()) {
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_MS,
        static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(options.max_connection_age),
                                           std::numeric_limits<int>::max())));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               static_cast<int>(absl::ToInt64Milliseconds(
                                   std::min(options.max_connection_age, absl::Seconds(30)))));
  }
  builder.AddListeningPort(options.listen,
                           node->live_tls_ != nullptr ? node->live_tls_->ServerCredentials()
                                                      : grpc::InsecureServerCredentials(),
                           &node->port_);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(NewUnparsableRequestInterceptors(MethodsGrpcParses()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.RegisterService(node->replication_.get());
  builder.RegisterService(node->documents_.get());
  builder.RegisterService(node->cluster_.get());
  builder.RegisterService(node->health_.get());
  std::unique_ptr<grpc::ServerCompletionQueue> async_queue = builder.AddCompletionQueue();
  node->server_ = builder.BuildAndStart();
  if (node->server_ == nullptr || node->port_ == 0) {
    node->server_.reset();
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot listen on ", options.listen, ": the address is in use or invalid"));
  }
  // One completion-queue thread per core: a message's work is done on the thread that read it,
  // so more threads than cores would only take turns.
  node->async_server_ = std::make_unique<AsyncServer>(
      std::move(async_queue), std::max(2, static_cast<int>(std::thread::hardware_concurrency())));
  ServeWrites(node->documents_.get(), node->async_server_.get());
  node->async_server_->Start();
  node->health_->SetServing(true);
  node->replication_->Start();
  if (node->metrics_ != nullptr) {
    Node* n = node.get();
    node->metrics_->Serve([n] {
      mergedb::v1::StatusResponse status;
      FillStatus(n, &status);
      return status;
    });
    MERGEDB_LOG(INFO) << "metrics on http://"
                      << options.metrics_listen.substr(0, options.metrics_listen.rfind(':')) << ":"
                      << node->metrics_->port() << "/metrics";
  }
  MERGEDB_LOG(INFO) << "node " << options.node_name << " (replica "
                    << absl::StrCat(absl::Hex(node->store_->replica_id())) << ", cluster "
                    << options.cluster_id << ") serving "
                    << (options.tls.enabled() ? "TLS" : "plaintext") << " on " << node->address()
                    << ", data in " << options.data_dir;
  // After the line above: the janitor's first act is to warn of expiring certificates.
  node->janitor_ = std::thread([n = node.get()] { n->RunJanitor(); });
  return node;
}

std::string Node::address() const {
  const std::string& listen = options_.listen;
  const size_t colon = listen.rfind(':');
  return absl::StrCat(colon == std::string::npos ? listen : listen.substr(0, colon), ":", port_);
}

void Node::WarnIfCertificateExpires(std::string* stage, absl::Time* next_repeat) const {
  if (live_tls_ == nullptr) return;
  const absl::Time now = absl::Now();
  const ExpiryReport report =
      ReportExpiries(*live_tls_->current(), now, options_.tls_expiry_warning);
  // At once when a certificate enters the window or expires; otherwise once a day.
  if (report.stage == *stage && now < *next_repeat) return;
  *stage = report.stage;
  *next_repeat = now + kTlsWarningInterval;
  for (const std::string& warning : report.warnings) MERGEDB_LOG(WARNING) << warning;
}

void Node::RunJanitor() {
  absl::MutexLock lock(&janitor_mu_);
  absl::Time next_expiry = absl::Now() + kJanitorInterval;
  // The start-up check logs whatever is due; later ones what changed, or daily.
  std::string tls_stage = "start";
  absl::Time next_tls_warning = absl::InfinitePast();
  absl::Time next_tls_reload = absl::Now() + options_.tls_reload_interval;
  WarnIfCertificateExpires(&tls_stage, &next_tls_warning);
  bool store_failed = false;
  while (!janitor_stop_) {
    janitor_mu_.AwaitWithTimeout(absl::Condition(&janitor_stop_), options_.truncate_interval);
    if (janitor_stop_) break;
    // A failed commit leaves the store refusing every write and every replicated change until
    // a restart: the node serves ever staler reads, and must leave load balancers' rotation.
    if (absl::Status health = store_->health(); !health.ok() && !store_failed) {
      store_failed = true;
      health_->SetServing(false);
      MERGEDB_LOG(ERROR) << "the store refuses writes until this node restarts ("
                         << health.message() << "): health is now NOT_SERVING";
    }
    replication_->CancelSilentHandshakes();
    if (absl::Status truncated = replication_->TruncateLog(); !truncated.ok()) {
      MERGEDB_LOG(WARNING) << "log truncation: " << truncated.message();
    }
    if (absl::Status trimmed = store_->TruncateChanges(options_.change_feed_retention);
        !trimmed.ok()) {
      MERGEDB_LOG(WARNING) << "change feed truncation: " << trimmed.message();
    }
    if (live_tls_ != nullptr && options_.tls_reload_interval > absl::ZeroDuration() &&
        absl::Now() >= next_tls_reload) {
      next_tls_reload = absl::Now() + options_.tls_reload_interval;
      ReloadTls().IgnoreError();  // it logs what it took or refused
    }
    WarnIfCertificateExpires(&tls_stage, &next_tls_warning);
    if (absl::Now() < next_expiry) continue;
    next_expiry = absl::Now() + kJanitorInterval;
    const int64_t before = absl::ToUnixMillis(absl::Now() - options_.request_id_window);
    auto expired = store_->ExpireRequests(before);
    if (!expired.ok()) {
      MERGEDB_LOG(WARNING) << "request id expiry: " << expired.status().message();
    } else if (*expired > 0) {
      MERGEDB_LOG(DEBUG) << "forgot " << *expired << " request ids";
    }
  }
}

absl::StatusOr<bool> Node::ReloadTls() {
  if (live_tls_ == nullptr) return absl::FailedPreconditionError("this node serves plaintext");
  const std::string error_before = live_tls_->reload_error();
  absl::StatusOr<bool> reloaded = live_tls_->Reload();
  const std::shared_ptr<const TlsConfig> tls = live_tls_->current();
  if (!reloaded.ok()) {
    // Once per new error: a bad file stays bad until someone fixes it.
    if (std::string(reloaded.status().message()) != error_before) {
      MERGEDB_LOG(ERROR) << "the TLS files changed but were not taken, so this node keeps the "
                            "certificates it read at "
                         << absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", live_tls_->loaded_at(),
                                             absl::UTCTimeZone())
                         << ": " << reloaded.status().message();
    }
  } else if (*reloaded) {
    const CertificateExpiry* own = OwnChainExpiry(*tls);
    MERGEDB_LOG(INFO) << "reloaded the TLS files: new connections use them"
                      << (own != nullptr
                              ? absl::StrCat(
                                    " (", own->subject, "'s chain valid until ",
                                    absl::FormatTime("%Y-%m-%d %H:%M:%S UTC",
                                                     absl::FromUnixSeconds(own->unix_seconds),
                                                     absl::UTCTimeZone()),
                                    ")")
                              : std::string());
  } else if (!error_before.empty()) {
    MERGEDB_LOG(INFO) << "the TLS files hold again the certificates in use: nothing refused";
  }
  return reloaded;
}

int Node::metrics_port() const { return metrics_ != nullptr ? metrics_->port() : 0; }

void Node::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  MERGEDB_LOG(INFO) << "node " << options_.node_name << " shutting down";
  // First: a scrape reads the store and the links, which go below.
  metrics_.reset();
  if (server_ != nullptr) {
    // Health watchers learn at once that the node is going, but their streams stay open until
    // the server refuses new calls: a client's health checker re-opens an ended Watch at once,
    // so ending them earlier would make it spin for as long as replication takes to stop.
    health_->SetServing(false);
    const absl::Time deadline = absl::Now() + grace;
    // Synchronous writes waiting for their peers' confirmations get them while the links still
    // run (a rolling restart must not fail every QUORUM write in flight), up to `grace`; new
    // writes are refused meanwhile, so the wait ends.
    draining_ = true;
    // A write that passed its checks before draining_ may still be committing, or queued in a
    // stream behind another's wait, and enters the wait only then: the drain ends once no write
    // has waited for a settling moment, not at the first instant none does.
    constexpr absl::Duration kSettle = absl::Milliseconds(100);
    bool drained = false;
    while (!drained && replication_->view()->AwaitNoWaiters(deadline)) {
      const absl::Time now = absl::Now();
      if (now >= deadline) {
        drained = true;
        break;
      }
      absl::SleepFor(std::min(kSettle, deadline - now));
      drained = replication_->view()->waiters() == 0;
    }
    if (!drained) {
      MERGEDB_LOG(WARNING) << "synchronous writes still unconfirmed after the shutdown's grace "
                              "period: they are answered UNAVAILABLE (durable here, and will "
                              "replicate)";
    }
    // New calls are refused at once; in-flight unary calls finish (their writes are
    // acknowledged only once durable); long waits and Watch streams notice stopping_.
    stopping_ = true;
    replication_->Stop();
    health_->Shutdown();
    // The released writes (and any other call) still get a moment to send their answers,
    // even when the drain took the whole grace period.
    server_->Shutdown(
        absl::ToChronoTime(std::max(deadline, absl::Now() + std::min(grace, absl::Seconds(1)))));
    server_->Wait();
  }
  if (async_server_ != nullptr) async_server_->Shutdown();
  stopping_ = true;
  {
    absl::MutexLock janitor_lock(&janitor_mu_);
    janitor_stop_ = true;
  }
  if (janitor_.joinable()) janitor_.join();
  // Replication holds a listener on the store (stopping twice is harmless).
  if (replication_ != nullptr) replication_->Stop();
  store_.reset();  // closes LevelDB cleanly
  MERGEDB_LOG(INFO) << "node " << options_.node_name << " stopped";
}

Node::~Node() { Shutdown(absl::Seconds(1)); }

}  // namespace mergedb::node

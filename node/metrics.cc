#include "node/metrics.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "prometheus/client_metric.h"
#include "prometheus/exposer.h"
#include "prometheus/metric_type.h"

namespace mergedb::node {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(const std::string& name, const std::string& help, MetricType type) {
  MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void Add(MetricFamily* family, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (family->type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family->metric.push_back(std::move(metric));
}

MetricFamily One(const std::string& name, const std::string& help, MetricType type, double value) {
  MetricFamily family = Family(name, help, type);
  Add(&family, value);
  return family;
}

std::string Hex(uint64_t id) { return absl::StrCat(absl::Hex(id, absl::kZeroPad16)); }

void AddHistogram(MetricFamily* family, const mergedb::v1::LatencyHistogram& histogram,
                  std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.histogram.sample_count = histogram.count();
  metric.histogram.sample_sum = histogram.sum_seconds();
  const int bounds =
      std::min(histogram.upper_bounds_seconds_size(), histogram.cumulative_counts_size());
  for (int i = 0; i < bounds; ++i) {
    ClientMetric::Bucket bucket;
    bucket.upper_bound = histogram.upper_bounds_seconds(i);
    bucket.cumulative_count = histogram.cumulative_counts(i);
    metric.histogram.bucket.push_back(bucket);
  }
  ClientMetric::Bucket all;  // +Inf
  all.upper_bound = std::numeric_limits<double>::infinity();
  all.cumulative_count = histogram.count();
  metric.histogram.bucket.push_back(all);
  family->metric.push_back(std::move(metric));
}

}  // namespace

std::vector<MetricFamily> MetricFamilies(const mergedb::v1::StatusResponse& status) {
  std::vector<MetricFamily> families;
  MetricFamily info = Family("mergedb_node_info",
                             "This node: its name, cluster, role and replica id (the incarnation "
                             "of its data directory); always 1.",
                             MetricType::Gauge);
  Add(&info, 1,
      {{"node", status.node_name()},
       {"cluster", status.cluster_id()},
       {"role", mergedb::v1::Role_Name(status.role())},
       {"replica_id", Hex(status.replica_id())}});
  families.push_back(std::move(info));
  families.push_back(One("mergedb_uptime_seconds", "Seconds since the node started.",
                         MetricType::Gauge, status.uptime_seconds()));
  families.push_back(One("mergedb_documents", "Documents held.", MetricType::Gauge,
                         static_cast<double>(status.document_count())));
  families.push_back(One("mergedb_refusing_writes",
                         "1 while the node refuses every write until an operator acts (a failed "
                         "commit, a data dir that went back in time: see Status.refusing_writes).",
                         MetricType::Gauge, status.refusing_writes().empty() ? 0.0 : 1.0));
  // A gauge, not a counter: it is a stored high-water mark, not a count since the process
  // started, and a node restored from a backup comes back with lower, non-zero values, which
  // Prometheus would read as a counter reset and count again in full.
  MetricFamily applied = Family(
      "mergedb_applied_position",
      "Per origin replica, the highest contiguous log sequence applied here: the writes of that "
      "origin this node holds. The node's own origin (mergedb_node_info's replica_id) counts "
      "the writes it accepted. Lower after a restore from a backup.",
      MetricType::Gauge);
  for (const auto& entry : status.applied()) {
    Add(&applied, static_cast<double>(entry.counter()), {{"origin", Hex(entry.replica())}});
  }
  families.push_back(std::move(applied));
  families.push_back(One("mergedb_log_entries",
                         "Replication log entries held (what some member has not applied yet).",
                         MetricType::Gauge, static_cast<double>(status.log_entries())));
  families.push_back(One("mergedb_change_feed_entries",
                         "Change-feed records held (Watch can resume from any of them).",
                         MetricType::Gauge, static_cast<double>(status.change_feed_entries())));
  families.push_back(One("mergedb_change_feed_last_position", "The newest change-feed position.",
                         MetricType::Gauge, static_cast<double>(status.last_position())));

  MetricFamily up =
      Family("mergedb_peer_up", "1 while this node's replication stream to the peer is connected.",
             MetricType::Gauge);
  MetricFamily behind =
      Family("mergedb_peer_entries_behind",
             "Log entries this node holds that the peer has not acknowledged.", MetricType::Gauge);
  MetricFamily sent = Family("mergedb_peer_sent_bytes_total",
                             "Replication payload bytes sent to the peer, on both streams with it.",
                             MetricType::Counter);
  MetricFamily received =
      Family("mergedb_peer_received_bytes_total",
             "Replication payload bytes received from the peer, on both streams with it.",
             MetricType::Counter);
  MetricFamily frames = Family("mergedb_peer_frames_sent_total",
                               "Frames of log entries sent to the peer.", MetricType::Counter);
  MetricFamily entries = Family("mergedb_peer_entries_sent_total", "Log entries sent to the peer.",
                                MetricType::Counter);
  MetricFamily transfers =
      Family("mergedb_peer_full_state_transfers_total",
             "Full-state transfers this node sent the peer, to their last chunk.", MetricType::Counter);
  MetricFamily damage =
      Family("mergedb_peer_log_damage_total",
             "Times this node's log proved damaged while read for the peer (each answered with a "
             "full-state transfer): run mergedb-repair on this node's data dir.",
             MetricType::Counter);
  MetricFamily delay =
      Family("mergedb_replication_delay_seconds",
             "From this node's commit of one of its own writes until it learned the peer had "
             "applied it (the peer's acknowledgement, or a third node's relay of it).",
             MetricType::Histogram);
  for (const auto& peer : status.peers()) {
    const std::vector<ClientMetric::Label> labels = {{"peer", peer.name()}};
    Add(&up, peer.connected() ? 1 : 0, labels);
    Add(&behind, static_cast<double>(peer.entries_behind()), labels);
    Add(&sent, static_cast<double>(peer.bytes_sent()), labels);
    Add(&received, static_cast<double>(peer.bytes_received()), labels);
    Add(&frames, static_cast<double>(peer.frames_sent()), labels);
    Add(&entries, static_cast<double>(peer.entries_sent()), labels);
    Add(&transfers, static_cast<double>(peer.full_state_transfers_sent()), labels);
    Add(&damage, static_cast<double>(peer.log_damage_events()), labels);
    // A node of an earlier version reports none.
    if (peer.has_replication_delay()) AddHistogram(&delay, peer.replication_delay(), labels);
  }
  for (MetricFamily* family :
       {&up, &behind, &sent, &received, &frames, &entries, &transfers, &damage, &delay}) {
    families.push_back(std::move(*family));
  }

  if (status.has_tls() && !status.tls().expiring_subject().empty()) {
    families.push_back(One("mergedb_tls_certificate_expiry_timestamp_seconds",
                           "When peers and clients start refusing this node's certificate: the "
                           "earliest end of validity along its chain to the CA (Unix time).",
                           MetricType::Gauge,
                           static_cast<double>(status.tls().expires_unix_seconds())));
    families.push_back(One("mergedb_tls_files_refused",
                           "1 while the TLS files changed since they were read fail the start-up "
                           "checks (the node keeps the certificates it has): see mergedb status.",
                           MetricType::Gauge, status.tls().reload_error().empty() ? 0 : 1));
    if (!status.tls().client_ca_expiring_subject().empty()) {
      families.push_back(One("mergedb_tls_client_ca_expiry_timestamp_seconds",
                             "When the first certificate of --tls_client_ca expires (Unix time).",
                             MetricType::Gauge,
                             static_cast<double>(status.tls().client_ca_expires_unix_seconds())));
    }
  }
  MetricFamily commit = Family("mergedb_commit_duration_seconds",
                               "Local commit of a client write (alone or in its batch), until "
                               "durable on this node.",
                               MetricType::Histogram);
  MetricFamily wait = Family("mergedb_write_concern_wait_seconds",
                             "After the commit, the wait until enough members applied a QUORUM "
                             "or ALL write (timed-out waits included).",
                             MetricType::Histogram);
  for (const auto& histogram : status.latencies()) {
    if (histogram.what() == mergedb::v1::LatencyHistogram::COMMIT) {
      AddHistogram(&commit, histogram);
    } else if (histogram.what() == mergedb::v1::LatencyHistogram::WRITE_CONCERN_WAIT) {
      AddHistogram(
          &wait, histogram,
          {{"write_concern",
            absl::AsciiStrToLower(mergedb::v1::WriteConcern_Name(histogram.write_concern()))}});
    }
  }
  families.push_back(std::move(commit));
  families.push_back(std::move(wait));
  return families;
}

class MetricsServer::Collector final : public prometheus::Collectable {
 public:
  explicit Collector(std::function<mergedb::v1::StatusResponse()> status)
      : status_(std::move(status)) {}
  std::vector<MetricFamily> Collect() const override { return MetricFamilies(status_()); }

 private:
  const std::function<mergedb::v1::StatusResponse()> status_;
};

namespace {

struct Credentials {
  std::string user;
  std::string password;
};

// --metrics_auth_file's USER:PASSWORD, refused when others may read it (as ssh refuses a key).
absl::StatusOr<Credentials> ReadCredentials(const std::string& path) {
  const std::string flag = absl::StrCat("--metrics_auth_file=", path);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", std::strerror(errno)));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": readable or writable by other users (mode ",
                     absl::StrFormat("%04o", st.st_mode & 07777), "): chmod 600 it"));
  }
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read a line from it"));
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const size_t colon = line.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == line.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": expected USER:PASSWORD on its first line"));
  }
  return Credentials{line.substr(0, colon), line.substr(colon + 1)};
}

// Compares without stopping at the first difference, so the time taken says nothing of where
// a guess went wrong (only whether its length was right).
bool SameSecret(const std::string& given, const std::string& expected) {
  if (given.size() != expected.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < given.size(); ++i) {
    difference |= static_cast<unsigned char>(given[i] ^ expected[i]);
  }
  return difference == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Listen(const std::string& listen,
                                                                     const std::string& auth_file) {
  std::optional<Credentials> credentials;
  if (!auth_file.empty()) {
    absl::StatusOr<Credentials> read = ReadCredentials(auth_file);
    if (!read.ok()) return read.status();
    credentials = *std::move(read);
  }
  const size_t colon = listen.rfind(':');
  // civetweb would also take its own list syntax ("a:1,b:2", a trailing "s" for TLS or "r" for
  // a redirect); one plain HOST:PORT is what the flag promises.
  const bool digits_after = colon != std::string::npos && colon + 1 < listen.size() &&
                            listen.find_first_not_of("0123456789", colon + 1) == std::string::npos;
  if (colon == 0 || !digits_after || listen.find(',') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_listen=", listen, ": expected HOST:PORT, e.g. 127.0.0.1:9464"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    // Two threads and a request timeout: a scrape is one Status answer and monitoring scrapes
    // every few seconds, but one idle connection must not hold the only thread and make the
    // target look down.
    server->exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", listen, "num_threads", "2", "request_timeout_ms", "5000"});
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_listen=", listen, ": cannot listen there: ", e.what()));
  }
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_listen=", listen, ": cannot listen there"));
  }
  server->port_ = ports.front();
  if (credentials) {
    server->exposer_->RegisterAuth(
        [credentials = *credentials](const std::string& user, const std::string& password) {
          // Both compared, whatever the first gives.
          const bool user_matches = SameSecret(user, credentials.user);
          const bool password_matches = SameSecret(password, credentials.password);
          return user_matches && password_matches;
        },
        "mergedb metrics");
  }
  return server;
}

void MetricsServer::Serve(std::function<mergedb::v1::StatusResponse()> status) {
  collector_ = std::make_shared<Collector>(std::move(status));
  exposer_->RegisterCollectable(collector_);
}

MetricsServer::~MetricsServer() {
  // The exposer's threads call the collector, which reads the node: unregister it (this waits
  // for a collection in progress), then stop the threads.
  if (exposer_ != nullptr && collector_ != nullptr) exposer_->RemoveCollectable(collector_);
  exposer_.reset();
}

}  // namespace mergedb::node

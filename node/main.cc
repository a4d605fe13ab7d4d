// mergedb-node: one mergedb server. Flags are parsed here, and only here, into NodeOptions.
//
// Prints "mergedb-node NAME listening on HOST:PORT" on stdout once serving (scripts and tests
// read the port from it when --listen asks for port 0). SIGTERM or SIGINT drains in-flight
// requests and closes the data directory cleanly; exit status 0. Any start-up problem (a bad
// flag, a port in use, a data directory that cannot be opened) prints one clear line on stderr
// and exits with status 1 (2 for usage errors).
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "node/log.h"
#include "node/node.h"

ABSL_FLAG(std::string, data_dir, "", "Data directory (created if missing). Required.");
ABSL_FLAG(std::string, listen, "127.0.0.1:7700", "Address to serve on, host:port (port 0: any).");
ABSL_FLAG(std::string, node_name, "", "This node's name, unique in the cluster. Required.");
ABSL_FLAG(std::string, cluster, "", "Cluster id; a data dir belongs to one cluster. Required.");
ABSL_FLAG(std::string, peers, "",
          "The other cluster members: name=host:port,name=host:port (empty: a single node).");
ABSL_FLAG(std::string, members, "",
          "The cluster's members by name, comma-separated (this node's own name may be listed "
          "or not), when the links (--peers) are not a full mesh; members count for QUORUM, "
          "ALL and log truncation, and must include every peer. Default: the peers.");
ABSL_FLAG(std::string, role, "primary",
          "primary (accepts writes) or replica (read-only: refuses client writes).");
ABSL_FLAG(bool, fsync, false,
          "fsync every commit before acknowledging it (survives power loss). Default: "
          "acknowledged writes survive a process kill, not a power loss.");
ABSL_FLAG(bool, compress_replication, true,
          "Compress replication streams (zstd over each stream, or DEFLATE with nodes of "
          "earlier versions; negotiated per link).");
ABSL_FLAG(int64_t, cache_mb, 64, "Memory for decoded hot documents, MiB (estimated).");
ABSL_FLAG(int64_t, max_name_bytes, 512, "Longest collection, id or field name, bytes.");
ABSL_FLAG(int32_t, max_path_depth, 24,
          "How deep a field may sit: the names of its path plus the levels of a JSON value "
          "written there, 1..24 (protobuf parses no message nested deeper than 100 levels).");
ABSL_FLAG(int64_t, max_value_bytes, 1 << 20, "Largest register value or set element, bytes.");
ABSL_FLAG(int64_t, max_update_bytes, 4 << 20,
          "Largest update request, bytes (at most 1 GiB). Nodes may differ: a replication "
          "message over 1 MiB travels to a peer in fragments, so an update that a node with a "
          "higher limit accepted still reaches every node. Nodes of versions before fragments "
          "get such a message whole and refuse it above max(their limit, 1 MiB) + 1 MiB: raise "
          "the limit only once every node runs this version.");
ABSL_FLAG(int32_t, max_ops_per_update, 1000, "Most operations in one update.");
ABSL_FLAG(int32_t, max_batch_updates, 1000, "Most updates in one UpdateBatchStream message.");
ABSL_FLAG(int64_t, max_clock_ahead_ms, 60000,
          "How far past this node's wall clock its hybrid clock follows a peer's timestamps (a "
          "peer's wrong clock, or a forged timestamp, cannot drag it further; such writes still "
          "apply, and a warning names the peer).");
ABSL_FLAG(int64_t, max_response_bytes, 4 << 20,
          "Largest Get or List answer, or Watch event, bytes. A Get over it is "
          "RESOURCE_EXHAUSTED (read a field at a time with GetRequest.path); List and Watch send "
          "such a document without its value, marked too_large.");
ABSL_FLAG(int32_t, max_watch_streams, 1000,
          "Watch streams served at once (DocumentService.Watch, and separately health Watch); "
          "more are RESOURCE_EXHAUSTED. Each holds a server thread while it lasts.");
ABSL_FLAG(int64_t, request_id_window_s, 24 * 3600,
          "How long client request ids are remembered for retry detection, seconds.");
ABSL_FLAG(int64_t, change_feed_retention, 1000000,
          "Change-feed records kept for Watch to resume from (older positions: OUT_OF_RANGE).");
ABSL_FLAG(int64_t, max_log_entries, 10000000,
          "Replication log entries kept per origin for a member that lacks them (down, or never "
          "started); past it the oldest go and that member gets a full-state transfer on return.");
ABSL_FLAG(bool, new_incarnation, false,
          "Continue under a new replica id even after a clean stop: for the first start of a "
          "data dir restored from a copy (the peers send back what it lacks). Use it once: each "
          "new id adds an entry to version vectors.");
ABSL_FLAG(std::string, backup_dir, "",
          "Where `mergedb backup NAME` (ClusterService.Backup) writes consistent copies of this "
          "node's data, as DIR/NAME on this machine. Empty: backups are refused.");
ABSL_FLAG(int64_t, backup_min_free_mb, 256,
          "MiB a backup leaves free on the file system it writes to, whether or not --data_dir "
          "is there too (when it is, this is the room kept for the node's own writes): a backup "
          "that would leave less is refused, and one that comes near it while copying stops and "
          "is removed. 0: no check.");
ABSL_FLAG(int64_t, backup_stall_timeout_s, 60,
          "Seconds a streamed backup (`mergedb fetch-backup`) may wait for its reader to take the "
          "next message before the node cancels it: a stalled reader holds the node's one backup "
          "slot and a snapshot of its data.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (leaf first) of this node: with --tls_key and --tls_ca, every "
          "call and every replication link uses TLS. The certificate must name the address "
          "peers reach this node at (subjectAltName), and serves as its client certificate "
          "towards its peers.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM certificates of the CA that signed every member's certificate: peers must "
          "present one it signed; application clients need to trust it.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM certificates of the CA that signs application clients' certificates (with the "
          "other --tls_ flags): every connection must then present a certificate this CA or "
          "--tls_ca signed. This CA's certificates open the client API only, never replication; "
          "it must be a CA of its own (neither --tls_ca's nor signed by it). "
          "Without it, clients present no certificate and are not authenticated.");
ABSL_FLAG(std::string, tls_crl_dir, "",
          "A directory of PEM certificate revocation lists (X509 CRLs, any file names) from "
          "--tls_ca's CA, --tls_client_ca's or an intermediate of this node's chain: a "
          "certificate one of them revokes opens no connection to this node, and this node "
          "opens none to a peer presenting one. Read with the other --tls_ files (a new list is "
          "taken on reload); a list past its next update is refused. Empty: no revocation.");
ABSL_FLAG(bool, tls_bind_member_names, false,
          "With TLS: every member's certificate names its member (its common name, or a DNS "
          "subjectAltName, is the node's --node_name), and replication is accepted from, and "
          "sent to, only the member a certificate names. Off: any certificate --tls_ca signed "
          "may speak for any member name.");
ABSL_FLAG(int64_t, tls_expiry_warning_days, 30,
          "Log a warning (at start-up, when it becomes due, then once a day) while this "
          "node's certificate or any certificate on its chain, a CA certificate of --tls_ca "
          "or one of --tls_client_ca expires within this many days (0: only once it has "
          "expired), or a list of --tls_crl_dir nears its next update (within this many days "
          "and the last quarter of its life).");
ABSL_FLAG(int64_t, tls_reload_interval_s, 60,
          "Seconds between reads of the --tls_ files while the node runs: renewed certificates "
          "(and a changed CA file) are taken without a restart once they pass the start-up "
          "checks; files that do not are logged and left, and the node keeps its certificates. "
          "SIGHUP reads them at once. 0: only at start-up and on SIGHUP.");
ABSL_FLAG(int64_t, max_connection_age_s, 0,
          "Close every client and peer connection this many seconds after it opened (with up "
          "to 10 % jitter, then at most min(this, 30 s) for calls in flight); gRPC clients "
          "reconnect by themselves, with a new TLS handshake. It bounds how long a connection "
          "made before a revocation (--tls_crl_dir) or a change of CA keeps working; long "
          "streams (Watch, StreamBackup) end then, and a Watch resumes from its position. "
          "0: connections last until they break.");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT to serve Prometheus metrics on (GET /metrics, plain HTTP, without "
          "authentication unless --metrics_auth_file: what Status reports, no document data); "
          "e.g. 127.0.0.1:9464. "
          "Empty: no metrics endpoint.");
ABSL_FLAG(std::string, metrics_auth_file, "",
          "With --metrics_listen: a file holding USER:PASSWORD on one line, readable by its "
          "owner only (chmod 600); scrapes must then give them with HTTP basic authentication "
          "(Prometheus: basic_auth in the scrape config), others get 401. Plain HTTP still: "
          "the password crosses the network in the clear, so keep the endpoint on a trusted "
          "network. Read at start-up. Empty: no authentication.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");
ABSL_FLAG(int64_t, testonly_clock_offset_ms, 0,
          "Testing only: shift this node's wall clock (for clock-skew fault injection).");

namespace {

// True if one of the two paths is the other or lies inside it (compared after resolving ".",
// "..", symlinks and trailing slashes as far as the paths exist).
bool Nested(const std::string& a, const std::string& b) {
  auto resolve = [](const std::string& path) {
    std::error_code error;
    std::filesystem::path absolute = std::filesystem::absolute(path, error);
    if (error) absolute = path;
    std::filesystem::path resolved = std::filesystem::weakly_canonical(absolute, error);
    // Unreadable on the way (a permission): compare the spelled paths, normalized.
    return error ? absolute.lexically_normal() : resolved;
  };
  const std::filesystem::path x = resolve(a);
  const std::filesystem::path y = resolve(b);
  auto inside = [](const std::filesystem::path& inner, const std::filesystem::path& outer) {
    const auto [outer_end, inner_at] =
        std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
    // Every component of `outer` matched (a trailing empty component, from a trailing slash,
    // counts as matched).
    return outer_end == outer.end() || (std::next(outer_end) == outer.end() && outer_end->empty());
  };
  return inside(x, y) || inside(y, x);
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "mergedb-node: %s (see --help)\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "mergedb-node --data_dir=DIR --node_name=NAME --cluster=ID [--listen=HOST:PORT] [...]");
  // Abseil's --help lists the flags of files named like the program, and this program's flags
  // live in main.cc.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "node/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  // Abseil's debug-build deadlock detection costs a graph update on every lock.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  using mergedb::node::NodeOptions;
  NodeOptions options;
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.node_name = absl::GetFlag(FLAGS_node_name);
  options.cluster_id = absl::GetFlag(FLAGS_cluster);
  options.listen = absl::GetFlag(FLAGS_listen);
  if (options.data_dir.empty()) return UsageError("--data_dir is required");
  if (options.node_name.empty()) return UsageError("--node_name is required");
  if (options.cluster_id.empty()) return UsageError("--cluster is required");
  auto peers = mergedb::node::ParsePeers(absl::GetFlag(FLAGS_peers));
  if (!peers.ok()) return UsageError(std::string(peers.status().message()));
  options.peers = *std::move(peers);
  if (!absl::GetFlag(FLAGS_members).empty()) {
    options.members = absl::StrSplit(absl::GetFlag(FLAGS_members), ',', absl::SkipEmpty());
  }
  const std::string role = absl::GetFlag(FLAGS_role);
  if (role == "primary") {
    options.role = mergedb::v1::PRIMARY;
  } else if (role == "replica") {
    options.role = mergedb::v1::REPLICA;
  } else {
    return UsageError(absl::StrCat("--role must be primary or replica, not '", role, "'"));
  }
  options.durability = absl::GetFlag(FLAGS_fsync) ? mergedb::storage::Durability::kSyncEachCommit
                                                  : mergedb::storage::Durability::kNoSync;
  auto positive = [](int64_t v) { return v > 0; };
  if (!positive(absl::GetFlag(FLAGS_cache_mb)) || !positive(absl::GetFlag(FLAGS_max_name_bytes)) ||
      absl::GetFlag(FLAGS_max_path_depth) <= 0 || !positive(absl::GetFlag(FLAGS_max_value_bytes)) ||
      !positive(absl::GetFlag(FLAGS_max_update_bytes)) ||
      absl::GetFlag(FLAGS_max_ops_per_update) <= 0 || absl::GetFlag(FLAGS_max_batch_updates) <= 0 ||
      !positive(absl::GetFlag(FLAGS_max_response_bytes)) ||
      !positive(absl::GetFlag(FLAGS_request_id_window_s)) ||
      !positive(absl::GetFlag(FLAGS_max_clock_ahead_ms))) {
    return UsageError("sizes, limits and windows must be positive");
  }
  if (absl::GetFlag(FLAGS_max_watch_streams) <= 0 ||
      absl::GetFlag(FLAGS_max_watch_streams) > 100000) {
    return UsageError("--max_watch_streams must be between 1 and 100000");
  }
  options.max_watch_streams = absl::GetFlag(FLAGS_max_watch_streams);
  if (absl::GetFlag(FLAGS_max_path_depth) > mergedb::node::Limits::kMaxDepth) {
    return UsageError(absl::StrCat("--max_path_depth must be at most ",
                                   mergedb::node::Limits::kMaxDepth,
                                   " (deeper fields would not fit in a protobuf message)"));
  }
  if (absl::GetFlag(FLAGS_max_update_bytes) > (int64_t{1} << 30)) {
    return UsageError("--max_update_bytes is at most 1 GiB");
  }
  if (absl::GetFlag(FLAGS_cache_mb) > (int64_t{1} << 20)) {
    return UsageError("--cache_mb is at most 1048576 (1 TiB)");
  }
  options.cache_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_cache_mb)) << 20;
  options.limits.max_name_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_name_bytes));
  options.limits.max_path_depth = absl::GetFlag(FLAGS_max_path_depth);
  options.limits.max_value_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_value_bytes));
  options.limits.max_update_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_update_bytes));
  options.limits.max_ops_per_update = absl::GetFlag(FLAGS_max_ops_per_update);
  options.limits.max_batch_updates = absl::GetFlag(FLAGS_max_batch_updates);
  options.limits.max_response_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_response_bytes));
  options.request_id_window = absl::Seconds(absl::GetFlag(FLAGS_request_id_window_s));
  options.clock_offset_millis = absl::GetFlag(FLAGS_testonly_clock_offset_ms);
  options.max_clock_ahead_millis = absl::GetFlag(FLAGS_max_clock_ahead_ms);
  options.replication.compress_streams = absl::GetFlag(FLAGS_compress_replication);
  if (absl::GetFlag(FLAGS_change_feed_retention) <= 0) {
    return UsageError("--change_feed_retention must be positive");
  }
  options.change_feed_retention = static_cast<uint64_t>(absl::GetFlag(FLAGS_change_feed_retention));
  if (absl::GetFlag(FLAGS_max_log_entries) <= 0) {
    return UsageError("--max_log_entries must be positive");
  }
  options.replication.max_log_entries = static_cast<uint64_t>(absl::GetFlag(FLAGS_max_log_entries));
  options.new_incarnation = absl::GetFlag(FLAGS_new_incarnation);
  options.backup_dir = absl::GetFlag(FLAGS_backup_dir);
  if (!options.backup_dir.empty() && Nested(options.backup_dir, options.data_dir)) {
    return UsageError("--backup_dir must be outside --data_dir, and --data_dir outside it");
  }
  const int64_t backup_min_free_mb = absl::GetFlag(FLAGS_backup_min_free_mb);
  if (backup_min_free_mb < 0 || backup_min_free_mb > (int64_t{1} << 40)) {
    return UsageError("--backup_min_free_mb must be between 0 and 2^40");
  }
  options.backup_min_free_bytes = static_cast<uint64_t>(backup_min_free_mb) << 20;
  const int64_t backup_stall_timeout_s = absl::GetFlag(FLAGS_backup_stall_timeout_s);
  if (backup_stall_timeout_s <= 0 || backup_stall_timeout_s > 7 * 24 * 3600) {
    return UsageError("--backup_stall_timeout_s must be between 1 and 604800 (a week)");
  }
  options.backup_stall_timeout = absl::Seconds(backup_stall_timeout_s);
  auto tls =
      mergedb::node::LoadNodeTls({absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                                  absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_crl_dir)},
                                 "--tls_", absl::GetFlag(FLAGS_tls_client_ca));
  if (!tls.ok()) return UsageError(std::string(tls.status().message()));
  options.tls = *std::move(tls);
  options.tls.bind_member_names = absl::GetFlag(FLAGS_tls_bind_member_names);
  const int64_t tls_expiry_warning_days = absl::GetFlag(FLAGS_tls_expiry_warning_days);
  if (tls_expiry_warning_days < 0 || tls_expiry_warning_days > 3650) {
    return UsageError("--tls_expiry_warning_days must be between 0 and 3650");
  }
  options.tls_expiry_warning = absl::Hours(24 * tls_expiry_warning_days);
  const int64_t tls_reload_interval_s = absl::GetFlag(FLAGS_tls_reload_interval_s);
  if (tls_reload_interval_s < 0 || tls_reload_interval_s > 86400) {
    return UsageError("--tls_reload_interval_s must be between 0 and 86400");
  }
  options.tls_reload_interval = absl::Seconds(tls_reload_interval_s);
  const int64_t max_connection_age_s = absl::GetFlag(FLAGS_max_connection_age_s);
  if (max_connection_age_s < 0 || max_connection_age_s > 2000000) {
    return UsageError("--max_connection_age_s must be between 0 (no limit) and 2000000");
  }
  options.max_connection_age = absl::Seconds(max_connection_age_s);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.metrics_auth_file = absl::GetFlag(FLAGS_metrics_auth_file);
  const std::string level = absl::GetFlag(FLAGS_log_level);
  if (level == "debug") {
    mergedb::node::SetMinLogLevel(mergedb::node::LogLevel::kDebug);
  } else if (level == "info") {
    mergedb::node::SetMinLogLevel(mergedb::node::LogLevel::kInfo);
  } else if (level == "warning") {
    mergedb::node::SetMinLogLevel(mergedb::node::LogLevel::kWarning);
  } else if (level == "error") {
    mergedb::node::SetMinLogLevel(mergedb::node::LogLevel::kError);
  } else {
    return UsageError(absl::StrCat("--log_level must be debug, info, warning or error"));
  }
  mergedb::node::SetLogTag(options.node_name);

  // Block the signals the node acts on in every thread; the main thread takes them with
  // sigwait: SIGTERM and SIGINT stop it, SIGHUP reloads its TLS files.
  sigset_t handled_signals;
  sigemptyset(&handled_signals);
  sigaddset(&handled_signals, SIGTERM);
  sigaddset(&handled_signals, SIGINT);
  sigaddset(&handled_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &handled_signals, nullptr);

  auto node = mergedb::node::Node::Start(options);
  if (!node.ok()) {
    std::fprintf(stderr, "mergedb-node: %s\n", std::string(node.status().message()).c_str());
    return 1;
  }
  std::printf("mergedb-node %s listening on %s\n", options.node_name.c_str(),
              (*node)->address().c_str());
  std::fflush(stdout);

  int signal = 0;
  while (sigwait(&handled_signals, &signal) == 0 && signal == SIGHUP) {
    if ((*node)->live_tls() == nullptr) {
      MERGEDB_LOG(INFO) << "received SIGHUP: nothing to reload (this node serves plaintext)";
      continue;
    }
    MERGEDB_LOG(INFO) << "received SIGHUP: reading the TLS files again";
    absl::StatusOr<bool> reloaded = (*node)->ReloadTls();  // logs what it took or refused
    if (reloaded.ok() && !*reloaded) MERGEDB_LOG(INFO) << "the TLS files are unchanged";
  }
  MERGEDB_LOG(INFO) << "received " << (signal == SIGTERM ? "SIGTERM" : "SIGINT") << ", draining";
  (*node)->Shutdown(absl::Seconds(5));
  return 0;
}

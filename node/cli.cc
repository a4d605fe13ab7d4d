// mergedb: the command-line client. JSON output by default; `status` prints a table.
//
//   mergedb [--node=HOST:PORT] get COLLECTION ID [PATH]
//   mergedb update COLLECTION ID OP [OP...]      (one atomic update)
//       set PATH VALUE      VALUE in JSON scalar syntax: 42 (int), 4.5 (double), "text",
//                           true, false, null; anything else (02134, +5, hi) is a string
//       setjson PATH JSON   any JSON value, stored opaque in a register
//       incr PATH N         add N (negative to subtract) to a counter
//       add PATH VALUE      add one element to a set (repeat the op for more)
//       remove PATH VALUE   remove one element from a set
//       enable PATH | disable PATH | rm PATH
//   mergedb delete COLLECTION ID
//   mergedb list COLLECTION [--page_size=N] [--page_token=T]
//   mergedb watch COLLECTION [ID] [--from=POSITION [--from_feed=FEED] | --from_now]
//   mergedb status [--json]
//   mergedb backup NAME     a consistent copy of the node's data, written on the node's
//                           machine to <its --backup_dir>/NAME (see README, Backups)
//   mergedb fetch-backup DIR  the same copy, streamed from the node and written here, on the
//                           machine running this command, as the data dir DIR
// PATH is dotted: address.city. Global flags: --timeout_ms, --write_concern=local|quorum|all,
// --request_id, --base_version (a version token, base64, from a previous get).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "crdt/scalar.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/tls.h"
#include "storage/store.h"

ABSL_FLAG(std::string, node, "127.0.0.1:7701", "Address of the node to talk to.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM certificates of the CA of a cluster serving TLS: the connection is then TLS, "
          "and the node's certificate must verify against them. Empty: plaintext.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (leaf first) to present to nodes started with --tls_client_ca "
          "(with --tls_key and --tls_ca).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert.");
ABSL_FLAG(int64_t, timeout_ms, 5000, "Deadline of each call, milliseconds (backup: see --backup_timeout_s).");
ABSL_FLAG(int64_t, backup_timeout_s, 3600,
          "Deadline of a backup, seconds: past it the node stops copying and removes the copy.");
ABSL_FLAG(
    int64_t, backup_min_free_mb, 256,
    "fetch-backup: MiB to leave free on this machine's file system holding DIR (0: no "
    "check); a copy that would leave less is refused or, while copying, stopped and removed.");
ABSL_FLAG(std::string, write_concern, "local", "local, quorum or all.");
ABSL_FLAG(std::string, request_id, "", "Request id for retry-safe updates.");
ABSL_FLAG(std::string, base_version, "", "Version token (base64) the update is based on.");
ABSL_FLAG(std::string, after, "", "get: version token (base64) to wait for (read your writes).");
ABSL_FLAG(int32_t, page_size, 0, "list: page size.");
ABSL_FLAG(std::string, page_token, "", "list: token of the page to read.");
ABSL_FLAG(uint64_t, from, 0, "watch: deliver changes after this position.");
ABSL_FLAG(uint64_t, from_feed, 0,
          "watch: the `feed` of the event whose position --from gives; the node then refuses a "
          "position that its change feed no longer holds (after a restore or a new incarnation) "
          "instead of skipping changes.");
ABSL_FLAG(bool, from_now, false, "watch: only changes from now on.");
ABSL_FLAG(bool, json, false, "status: JSON instead of a table.");

namespace {

using mergedb::v1::ClusterService;
using mergedb::v1::DocumentService;

int Fail(const std::string& message) {
  std::fprintf(stderr, "mergedb: %s\n", message.c_str());
  return 2;
}

int FailStatus(const grpc::Status& status) {
  // A plaintext client of a TLS node, or a client without a certificate of a node that requires
  // one, sees only a failed connection: say what may be missing.
  const char* hint = "";
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    if (absl::GetFlag(FLAGS_tls_ca).empty()) {
      if (absl::StrContains(status.error_message(), "Socket closed")) {
        hint = " (if the node serves TLS, give --tls_ca)";
      }
    } else if (absl::GetFlag(FLAGS_tls_cert).empty() &&
               absl::StrContains(status.error_message(), "Socket closed")) {
      hint = " (if the node requires client certificates, give --tls_cert and --tls_key)";
    }
  }
  std::fprintf(stderr, "mergedb: error %d: %s%s\n", static_cast<int>(status.error_code()),
               status.error_message().c_str(), hint);
  return 1;
}

void PrintJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

std::vector<std::string> SplitPath(const std::string& path) {
  return absl::StrSplit(path, '.');
}

void SetPath(const std::string& path, mergedb::v1::Operation* op) {
  for (const std::string& name : SplitPath(path)) op->add_path(name);
}

mergedb::v1::Scalar ParseScalar(const std::string& text) {
  mergedb::v1::Scalar s;
  mergedb::crdt::Scalar::ParseText(text).EncodeTo(&s);
  return s;
}

std::string DecodeToken(const std::string& base64) {
  std::string raw;
  if (!base64.empty() && !absl::Base64Unescape(base64, &raw)) {
    std::fprintf(stderr, "mergedb: version token is not base64\n");
    std::exit(2);
  }
  return raw;
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
}

int ParseOps(const std::vector<char*>& args, size_t i, mergedb::v1::UpdateRequest* request) {
  while (i < args.size()) {
    const std::string op = args[i++];
    auto need = [&](size_t n) -> bool {
      if (i + n > args.size()) {
        Fail(absl::StrCat("'", op, "' needs ", n, " argument(s)"));
        return false;
      }
      return true;
    };
    auto* out = request->add_ops();
    if (op == "set" || op == "setjson") {
      if (!need(2)) return 2;
      SetPath(args[i], out);
      if (op == "set") {
        *out->mutable_set()->mutable_value()->mutable_scalar() = ParseScalar(args[i + 1]);
      } else {
        auto status = google::protobuf::util::JsonStringToMessage(
            args[i + 1], out->mutable_set()->mutable_value()->mutable_json());
        if (!status.ok()) return Fail(absl::StrCat("setjson: not JSON: ", status.ToString()));
      }
      i += 2;
    } else if (op == "incr") {
      if (!need(2)) return 2;
      SetPath(args[i], out);
      int64_t by;
      if (!absl::SimpleAtoi(args[i + 1], &by)) return Fail("incr: N must be an integer");
      out->mutable_increment()->set_by(by);
      i += 2;
    } else if (op == "add" || op == "remove") {
      if (!need(2)) return 2;
      SetPath(args[i], out);
      auto* elements = op == "add" ? out->mutable_add()->add_elements()
                                   : out->mutable_remove()->add_elements();
      *elements = ParseScalar(args[i + 1]);
      i += 2;
    } else if (op == "enable" || op == "disable" || op == "rm") {
      if (!need(1)) return 2;
      SetPath(args[i], out);
      if (op == "enable") out->mutable_enable();
      if (op == "disable") out->mutable_disable();
      if (op == "rm") out->mutable_remove_field();
      i += 1;
    } else {
      return Fail(absl::StrCat("unknown update operation '", op,
                               "' (set, setjson, incr, add, remove, enable, disable, rm)"));
    }
  }
  if (request->ops().empty()) return Fail("update: no operations");
  return 0;
}

mergedb::v1::WriteConcern ParseWriteConcern() {
  const std::string wc = absl::GetFlag(FLAGS_write_concern);
  if (wc == "quorum") return mergedb::v1::QUORUM;
  if (wc == "all") return mergedb::v1::ALL;
  if (wc != "local") {
    std::fprintf(stderr, "mergedb: --write_concern must be local, quorum or all\n");
    std::exit(2);
  }
  return mergedb::v1::LOCAL;
}

// "p50 <= 1 ms, p99 <= 2.5 ms, mean 0.8 ms (1234)": the bounds of the buckets that hold the
// median and the 99th percentile of `h`, its mean and count, or "none yet".
std::string LatencySummary(const mergedb::v1::LatencyHistogram& h) {
  if (h.count() == 0) return "none yet";
  auto quantile = [&](double q) -> std::string {
    const double rank = q * static_cast<double>(h.count());
    for (int i = 0; i < h.upper_bounds_seconds_size() && i < h.cumulative_counts_size(); ++i) {
      if (static_cast<double>(h.cumulative_counts(i)) >= rank) {
        return absl::StrFormat("<= %g ms", h.upper_bounds_seconds(i) * 1000);
      }
    }
    return h.upper_bounds_seconds_size() > 0
               ? absl::StrFormat("> %g ms",
                                 h.upper_bounds_seconds(h.upper_bounds_seconds_size() - 1) * 1000)
               : std::string("?");
  };
  return absl::StrFormat("p50 %s, p99 %s, mean %.3g ms (%llu)", quantile(0.5), quantile(0.99),
                         h.sum_seconds() * 1000 / static_cast<double>(h.count()),
                         static_cast<unsigned long long>(h.count()));
}

// `used_tls`: whether this call went over TLS.
int PrintStatusTable(const mergedb::v1::StatusResponse& s, bool used_tls) {
  std::string digest;
  for (unsigned char c : s.state_digest()) absl::StrAppend(&digest, absl::Hex(c, absl::kZeroPad2));
  std::printf("%-16s %s\n", "node", s.node_name().c_str());
  std::printf("%-16s %s\n", "cluster", s.cluster_id().c_str());
  std::printf("%-16s %016llx\n", "replica id", static_cast<unsigned long long>(s.replica_id()));
  std::printf("%-16s %s\n", "role", mergedb::v1::Role_Name(s.role()).c_str());
  if (!s.refusing_writes().empty()) {
    std::printf("%-16s REFUSED: %s\n", "writes", s.refusing_writes().c_str());
  }
  std::printf("%-16s %lld\n", "documents", static_cast<long long>(s.document_count()));
  std::printf("%-16s %.0f s\n", "uptime", s.uptime_seconds());
  std::printf("%-16s %llu\n", "last position", static_cast<unsigned long long>(s.last_position()));
  std::printf("%-16s %llu\n", "log entries", static_cast<unsigned long long>(s.log_entries()));
  std::printf("%-16s %llu\n", "change feed", static_cast<unsigned long long>(s.change_feed_entries()));
  std::printf("%-16s %s\n", "state digest", digest.c_str());
  for (const auto& h : s.latencies()) {
    const std::string what =
        h.what() == mergedb::v1::LatencyHistogram::WRITE_CONCERN_WAIT
            ? absl::StrCat(mergedb::v1::WriteConcern_Name(h.write_concern()), " wait")
            : absl::AsciiStrToLower(mergedb::v1::LatencyHistogram::What_Name(h.what()));
    std::printf("%-16s %s\n", what.c_str(), LatencySummary(h).c_str());
  }
  const absl::Time now = absl::Now();
  // "until DATE (SUBJECT, N days left)", or "EXPIRED at DATE (SUBJECT)".
  auto validity = [&](int64_t unix_seconds, const std::string& subject) -> std::string {
    // A node of an earlier version fills in fewer fields.
    if (subject.empty()) return "not reported by this node";
    const absl::Time expires = absl::FromUnixSeconds(unix_seconds);
    const std::string when =
        absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", expires, absl::UTCTimeZone());
    if (expires <= now) return absl::StrCat("EXPIRED at ", when, " (", subject, ")");
    return absl::StrFormat("valid until %s (%s, %.1f days left)", when, subject,
                           absl::ToDoubleHours(expires - now) / 24);
  };
  if (s.has_tls()) {
    std::printf("%-16s certificate %s\n", "tls",
                validity(s.tls().expires_unix_seconds(), s.tls().expiring_subject()).c_str());
    if (s.tls().client_certificates_required()) {
      std::printf(
          "%-16s client certificates required; client CA %s\n", "",
          validity(s.tls().client_ca_expires_unix_seconds(), s.tls().client_ca_expiring_subject())
              .c_str());
    } else {
      std::printf("%-16s clients not authenticated\n", "");
    }
    if (s.tls().loaded_unix_seconds() > 0) {
      std::printf("%-16s certificates read %s\n", "",
                  absl::FormatTime("%Y-%m-%d %H:%M:%S UTC",
                                   absl::FromUnixSeconds(s.tls().loaded_unix_seconds()),
                                   absl::UTCTimeZone())
                      .c_str());
    }
    if (!s.tls().reload_error().empty()) {
      std::printf("%-16s CHANGED FILES REFUSED (still using the above): %s\n", "",
                  s.tls().reload_error().c_str());
    }
  } else if (used_tls) {
    // A node of a version before TlsStatus: it serves TLS, since this call used it.
    std::printf("%-16s on (the node does not report its certificates)\n", "tls");
  } else {
    std::printf("%-16s %s\n", "tls", "off (plaintext)");
  }
  std::printf("applied\n");
  for (const auto& e : s.applied()) {
    std::printf("  %016llx  %llu\n", static_cast<unsigned long long>(e.replica()),
                static_cast<unsigned long long>(e.counter()));
  }
  if (s.peers_size() > 0) {
    std::printf("%-12s %-22s %-10s %10s %12s %12s %10s %-8s %9s %6s  %s\n", "peer", "address",
                "connected", "behind", "bytes out", "bytes in", "per frame", "codec", "transfers",
                "damage", "last error");
    for (const auto& p : s.peers()) {
      // Log entries per frame sent: how well the link amortizes its messages.
      const double per_frame = p.frames_sent() > 0
                                   ? static_cast<double>(p.entries_sent()) / p.frames_sent()
                                   : 0.0;
      // Transfers: full-state transfers sent to the peer; damage: times this node's log proved
      // damaged while read for it (run mergedb-repair on this node's data dir).
      std::printf("%-12s %-22s %-10s %10llu %12llu %12llu %10.1f %-8s %9llu %6llu  %s\n",
                  p.name().c_str(), p.address().c_str(), p.connected() ? "yes" : "no",
                  static_cast<unsigned long long>(p.entries_behind()),
                  static_cast<unsigned long long>(p.bytes_sent()),
                  static_cast<unsigned long long>(p.bytes_received()), per_frame,
                  p.compression().empty() ? "-" : p.compression().c_str(),
                  static_cast<unsigned long long>(p.full_state_transfers_sent()),
                  static_cast<unsigned long long>(p.log_damage_events()), p.last_error().c_str());
    }
    // From this node's commit of its own writes until it knew the peer had them.
    std::printf("replication delay\n");
    for (const auto& p : s.peers()) {
      if (!p.has_replication_delay()) continue;  // a node of an earlier version
      std::printf("  %-12s %s\n", p.name().c_str(), LatencySummary(p.replication_delay()).c_str());
    }
  }
  return 0;
}

}  // namespace

// The signals that stop `fetch-backup` cleanly.
sigset_t StopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  return signals;
}

// A failure that is not a usage error: exit status 1, like a failed call.
int FailRun(const std::string& message) {
  std::fprintf(stderr, "mergedb: %s\n", message.c_str());
  return 1;
}

namespace {
// Set by main from --tls_ca before any call.
std::shared_ptr<grpc::ChannelCredentials> g_credentials;
}  // namespace

// Streams a consistent copy of the node's data (ClusterService.StreamBackup) into a new data
// dir `dir` on this machine. Nothing is kept unless the node sent the whole copy: a stream that
// fails or ends early, whose totals do not match what arrived, or that is interrupted (SIGINT,
// SIGTERM, SIGHUP: the copy is cancelled and removed before exiting) removes what was written.
// Only SIGKILL or a crash can leave a partial copy, which its sentinel file and marker make a
// node refuse.
int FetchBackup(const std::string& dir) {
  const int64_t min_free_mb = absl::GetFlag(FLAGS_backup_min_free_mb);
  if (min_free_mb < 0 || min_free_mb > (int64_t{1} << 40)) {
    return Fail("--backup_min_free_mb must be between 0 and 2^40");
  }
  // main() blocked the stop signals before any gRPC thread existed (threads inherit the mask),
  // so they reach only this thread, which cancels the copy: it is then removed, not left behind.
  const sigset_t stop_signals = StopSignals();
  grpc::ClientContext context;
  std::atomic<bool> done{false};
  std::atomic<int> interrupted{0};
  std::thread watcher([&] {
    const timespec tick{0, 100 * 1000 * 1000};
    while (!done) {
      const int signal = sigtimedwait(&stop_signals, nullptr, &tick);
      if (signal > 0) {
        interrupted = signal;
        context.TryCancel();
        return;
      }
    }
  });
  struct StopWatcher {
    std::atomic<bool>& done;
    std::thread& watcher;
    ~StopWatcher() {
      done = true;
      watcher.join();
    }
  } stop_watcher{done, watcher};

  // A message is about 1 MiB of records, or one record when a record is larger.
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(-1);
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_node), g_credentials, channel_args);
  auto cluster = mergedb::v1::ClusterService::NewStub(channel);
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(absl::GetFlag(FLAGS_backup_timeout_s)));
  const auto start = std::chrono::steady_clock::now();
  auto reader = cluster->StreamBackup(&context, mergedb::v1::StreamBackupRequest());
  // What a failed stream means, in words.
  auto stream_failure = [&](const grpc::Status& status) {
    std::string why = absl::StrCat("the backup stream failed: error ",
                                   static_cast<int>(status.error_code()), ": ",
                                   status.error_message());
    if (interrupted != 0) why = absl::StrCat("interrupted by signal ", interrupted.load());
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && interrupted == 0) {
      absl::StrAppend(&why, " (past --backup_timeout_s)");
    }
    return why;
  };
  mergedb::v1::BackupChunk chunk;
  if (!reader->Read(&chunk)) {
    const grpc::Status status = reader->Finish();
    return FailRun(status.ok() ? "the node ended the backup stream before sending anything"
                               : stream_failure(status));
  }
  if (chunk.records_size() > 0 || chunk.complete()) {
    context.TryCancel();
    (void)reader->Finish();
    return FailRun("the node's backup stream did not start with its header (is it a mergedb node "
                   "of this version?); nothing was written");
  }
  mergedb::v1::BackupResponse summary;
  *summary.mutable_applied() = chunk.applied();
  mergedb::storage::BackupWriter::Options options;
  options.min_free_bytes = static_cast<uint64_t>(min_free_mb) << 20;
  options.expected_bytes = chunk.approximate_bytes();
  absl::StatusOr<std::unique_ptr<mergedb::storage::BackupWriter>> created =
      mergedb::storage::BackupWriter::Create(dir, std::move(options));
  if (!created.ok()) {
    context.TryCancel();
    (void)reader->Finish();
    std::string why(created.status().message());
    if (absl::IsResourceExhausted(created.status())) {
      absl::StrAppend(&why, " (--backup_min_free_mb)");
    }
    return FailRun(why);
  }
  mergedb::storage::BackupWriter& writer = **created;
  // Removes what was written and reports why (with a note if the removal failed).
  auto discard = [&](const absl::Status& why) {
    std::string message(writer.Abandon(why).message());
    if (absl::IsResourceExhausted(why)) absl::StrAppend(&message, " (--backup_min_free_mb)");
    return FailRun(absl::StrCat(message, "; nothing was kept"));
  };
  bool complete = false;
  std::vector<std::pair<std::string, std::string>> records;
  while (reader->Read(&chunk)) {
    if (complete) {
      context.TryCancel();
      (void)reader->Finish();
      return discard(absl::DataLossError("the node sent records after the end of its backup"));
    }
    if (chunk.records_size() > 0) {
      records.clear();
      for (mergedb::v1::BackupRecord& record : *chunk.mutable_records()) {
        records.emplace_back(std::move(*record.mutable_key()), std::move(*record.mutable_value()));
      }
      if (absl::Status appended = writer.Append(records); !appended.ok()) {
        context.TryCancel();
        (void)reader->Finish();
        return discard(appended);
      }
    }
    if (chunk.complete()) {
      complete = true;
      summary.set_records(chunk.total_records());
      summary.set_bytes(chunk.total_bytes());
    }
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return discard(absl::UnavailableError(stream_failure(status)));
  if (!complete) {
    return discard(absl::DataLossError("the node's backup stream ended before the copy was whole"));
  }
  if (summary.records() != writer.records() || summary.bytes() != writer.bytes()) {
    return discard(absl::DataLossError(
        absl::StrCat("the node announced ", summary.records(), " records (", summary.bytes(),
                     " bytes) but ", writer.records(), " (", writer.bytes(), " bytes) arrived")));
  }
  if (absl::Status finished = writer.Finish(); !finished.ok()) return discard(finished);
  summary.set_path(dir);
  summary.set_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  PrintJson(summary);
  return 0;
}

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "mergedb [--node=HOST:PORT] get|update|delete|list|watch|status|backup|fetch-backup ... "
      "(see node/cli.cc)");
  // Abseil's --help lists the flags of files named like the program, and this program's flags
  // live in cli.cc.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "node/cli.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    return Fail("missing command: get, update, delete, list, watch, status, backup, fetch-backup");
  }
  // A week bounds both: beyond it a deadline is a typo (and past ~292 years it would overflow).
  if (const int64_t t = absl::GetFlag(FLAGS_timeout_ms); t <= 0 || t > int64_t{7} * 86400 * 1000) {
    return Fail(absl::StrCat("--timeout_ms must be from 1 to 604800000 (a week), not ", t));
  }
  if (const int64_t t = absl::GetFlag(FLAGS_backup_timeout_s); t <= 0 || t > int64_t{7} * 86400) {
    return Fail(absl::StrCat("--backup_timeout_s must be from 1 to 604800 (a week), not ", t));
  }
  const std::string command = args[1];
  if (command == "fetch-backup") {
    // Before the first gRPC call starts gRPC's threads: see FetchBackup.
    const sigset_t stop_signals = StopSignals();
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  }
  auto tls = mergedb::node::LoadClientTls(
      {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_ca)},
      "--tls_");
  if (!tls.ok()) return Fail(std::string(tls.status().message()));
  g_credentials = mergedb::node::MakeChannelCredentials(*tls);
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_node), g_credentials);
  auto documents = DocumentService::NewStub(channel);

  if (command == "get") {
    if (args.size() < 4 || args.size() > 5) return Fail("usage: get COLLECTION ID [PATH]");
    mergedb::v1::GetRequest request;
    request.set_collection(args[2]);
    request.set_id(args[3]);
    if (args.size() == 5) {
      for (const std::string& name : SplitPath(args[4])) request.add_path(name);
    }
    request.set_after(DecodeToken(absl::GetFlag(FLAGS_after)));
    mergedb::v1::GetResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status status = documents->Get(&context, request, &response);
    if (!status.ok()) return FailStatus(status);
    PrintJson(response);
    return 0;
  }
  if (command == "update" || command == "delete") {
    if (args.size() < 4) return Fail(absl::StrCat("usage: ", command, " COLLECTION ID ..."));
    mergedb::v1::UpdateRequest request;
    request.set_collection(args[2]);
    request.set_id(args[3]);
    request.set_request_id(absl::GetFlag(FLAGS_request_id));
    request.set_base_version(DecodeToken(absl::GetFlag(FLAGS_base_version)));
    request.set_write_concern(ParseWriteConcern());
    if (command == "delete") {
      if (args.size() != 4) return Fail("usage: delete COLLECTION ID");
      request.add_ops()->mutable_delete_document();
    } else if (int rc = ParseOps(args, 4, &request); rc != 0) {
      return rc;
    }
    mergedb::v1::UpdateResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status status = documents->Update(&context, request, &response);
    if (!status.ok()) return FailStatus(status);
    PrintJson(response);
    return 0;
  }
  if (command == "list") {
    if (args.size() != 3) return Fail("usage: list COLLECTION");
    mergedb::v1::ListRequest request;
    request.set_collection(args[2]);
    request.set_page_size(absl::GetFlag(FLAGS_page_size));
    request.set_page_token(absl::GetFlag(FLAGS_page_token));
    mergedb::v1::ListResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status status = documents->List(&context, request, &response);
    if (!status.ok()) return FailStatus(status);
    PrintJson(response);
    return 0;
  }
  if (command == "watch") {
    if (args.size() < 3 || args.size() > 4) return Fail("usage: watch COLLECTION [ID]");
    mergedb::v1::WatchRequest request;
    request.set_collection(args[2]);
    if (args.size() == 4) request.set_id(args[3]);
    request.set_after_position(absl::GetFlag(FLAGS_from));
    request.set_after_feed(absl::GetFlag(FLAGS_from_feed));
    request.set_from_now(absl::GetFlag(FLAGS_from_now));
    grpc::ClientContext context;  // no deadline: runs until interrupted
    auto reader = documents->Watch(&context, request);
    mergedb::v1::WatchEvent event;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    while (reader->Read(&event)) {
      std::string line;
      (void)google::protobuf::util::MessageToJsonString(event, &line, options);
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
    grpc::Status status = reader->Finish();
    return status.ok() ? 0 : FailStatus(status);
  }
  if (command == "status") {
    auto cluster = ClusterService::NewStub(channel);
    mergedb::v1::StatusResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status status = cluster->Status(&context, mergedb::v1::StatusRequest(), &response);
    if (!status.ok()) return FailStatus(status);
    if (absl::GetFlag(FLAGS_json)) {
      PrintJson(response);
      return 0;
    }
    return PrintStatusTable(response, tls->enabled());
  }
  if (command == "backup") {
    if (args.size() != 3) return Fail("usage: backup NAME");
    auto cluster = ClusterService::NewStub(channel);
    mergedb::v1::BackupRequest request;
    request.set_name(args[2]);
    mergedb::v1::BackupResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(absl::GetFlag(FLAGS_backup_timeout_s)));
    grpc::Status status = cluster->Backup(&context, request, &response);
    if (!status.ok()) return FailStatus(status);
    PrintJson(response);
    return 0;
  }
  if (command == "fetch-backup") {
    if (args.size() != 3) return Fail("usage: fetch-backup DIR");
    return FetchBackup(args[2]);
  }
  return Fail(absl::StrCat("unknown command '", command,
                           "' (get, update, delete, list, watch, status, backup, fetch-backup)"));
}

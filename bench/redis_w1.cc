// redis-w1: workload W1 against a Redis primary with replicas, the comparison for mergedb-bench.
//
//   build/bench/redis-w1 --port=PRIMARY_PORT [--mode=async|wait1|wait2] [--writes=N] ...
//   (--help lists every flag; bench/w1_compare.sh starts Redis and runs both tools)
//
// W1 as mergedb-bench runs it: --documents hashes doc:<i> (10,000); even writes
// `HSET doc:<i> name <--value_size random letters and digits>` (as mergedb's W1: values that do
// not compress, so that neither side's byte counts are flattered), odd writes `HINCRBY doc:<i>
// count 1`, documents chosen uniformly. --concurrency writes (16) are outstanding at all times.
// Modes:
//   async  replicas follow asynchronously (Redis's default); the writes are pipelined over
//          --connections connections (6 by default, as mergedb-bench's UpdateStream streams),
//          each write on the least loaded one;
//   wait1  every write is followed on its connection, in the same pipeline (no MULTI), by
//          `WAIT 1 0`; the write counts as acknowledged when the WAIT answers (1 replica has it);
//   wait2  the same with `WAIT 2 0` (both replicas).
// Redis stops reading a connection while its client is blocked in WAIT, so a connection has one
// write waiting for replicas at a time, and the commands pipelined behind it wait too. The wait
// modes therefore use one connection per outstanding write (16 writers, each writing and then
// waiting, as the issue's Redis figures were measured), so that as many writes wait for
// replicas at once as mergedb's QUORUM and ALL runs have waiting (every write of a stream waits
// on its own).
//
// Measured (after --warmup writes, not counted; FLUSHALL first unless --noflush):
// - acknowledged writes/s, latency p50/p99/p99.9 (from appending the write to its answer, the
//   WAIT's answer in wait modes);
// - bytes between nodes per write: master_repl_offset delta x replicas (the replication stream,
//   RESP payload), and what the primary actually wrote to and read from its replicas, the
//   reported figure: INFO stats total_net_repl_output_bytes (primary -> replicas) plus the
//   replicas' REPLCONF ACKs, which the primary counts with its clients' commands in
//   total_net_input_bytes (that delta less every command this tool sent it, counted exactly);
// - convergence: ms from the last acknowledgement until every replica's processed offset
//   (INFO replication slave_repl_offset, polled about every millisecond) reaches the primary's
//   master_repl_offset as it was at that acknowledgement;
// - CPU seconds and peak RSS of the primary and each replica (process_id from INFO; this machine
//   only), and the CPU that other processes on the machine took meanwhile.
// No replication lag sampling (Redis has no change feed to watch; convergence stands in).
//
// Output: a table on stdout, then ONE JSON line (--json_only: only it); a progress line on stderr.
// Exit status 0; 1 on any failure (an error reply included); 2 for usage errors.
// Threads: one. Redis client: hiredis (formatting and reply parsing; sockets driven by poll).
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "hiredis/hiredis.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "The Redis primary's address.");
ABSL_FLAG(int, port, 0, "The Redis primary's port. Required.");
ABSL_FLAG(std::string, mode, "async", "async, wait1 (WAIT 1 0 after each write) or wait2.");
ABSL_FLAG(int64_t, writes, 200000, "Writes to acknowledge (ignored with --duration).");
ABSL_FLAG(double, duration, 0, "Seconds to run (stop by time instead of count); 0: by count.");
ABSL_FLAG(int, concurrency, 16, "Writes outstanding at all times, across all connections.");
ABSL_FLAG(int, connections, 0,
          "Connections the writes are pipelined over. 0: 6 in async mode (as many as "
          "mergedb-bench's default UpdateStream streams on a 3-node cluster), --concurrency in "
          "the wait modes (one write and its WAIT per connection: a connection blocked in WAIT "
          "reads nothing else).");
ABSL_FLAG(int, documents, mergedb::bench::kW1Documents, "Hashes W1 writes to.");
ABSL_FLAG(int, value_size, 64, "Bytes of each HSET value.");
ABSL_FLAG(int64_t, warmup, 2000, "Writes before the measurement starts (not counted).");
ABSL_FLAG(bool, flush, true, "FLUSHALL before the run (and wait until the replicas have it).");
ABSL_FLAG(bool, json_only, false, "Print only the JSON line (no table, no progress line).");
ABSL_FLAG(std::string, label, "", "Free text copied into the JSON line (e.g. the fsync setting).");

namespace mergedb::bench {
namespace {

[[noreturn]] void Fatal(const std::string& message) {
  std::fprintf(stderr, "\nredis-w1: %s\n", message.c_str());
  std::exit(1);
}

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;
struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;

Context ConnectOrDie(const std::string& host, int port) {
  Context c(redisConnect(host.c_str(), port));
  if (c == nullptr || c->err) {
    Fatal(absl::StrCat("cannot connect to ", host, ":", port, ": ", c ? c->errstr : "out of memory"));
  }
  return c;
}

// A blocking command on a control connection; exits on an error reply.
Reply Command(redisContext* c, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  Reply r(static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data())));
  if (r == nullptr) Fatal(absl::StrCat(args[0], ": ", c->errstr));
  if (r->type == REDIS_REPLY_ERROR) Fatal(absl::StrCat(args[0], ": ", r->str));
  return r;
}

// INFO SECTION as name -> value; "slaveN" lines stay whole.
std::map<std::string, std::string> Info(redisContext* c, const std::string& section) {
  Reply r = Command(c, {"INFO", section});
  std::map<std::string, std::string> info;
  for (absl::string_view line : absl::StrSplit(absl::string_view(r->str, r->len), "\r\n")) {
    const size_t colon = line.find(':');
    if (line.empty() || line[0] == '#' || colon == absl::string_view::npos) continue;
    info[std::string(line.substr(0, colon))] = std::string(line.substr(colon + 1));
  }
  return info;
}

int64_t InfoInt(const std::map<std::string, std::string>& info, const std::string& key) {
  auto it = info.find(key);
  int64_t v = -1;
  if (it == info.end() || !absl::SimpleAtoi(it->second, &v)) return -1;
  return v;
}

// A replica as the primary lists it: "ip=127.0.0.1,port=7001,state=online,offset=..,lag=0".
struct ReplicaAddress {
  std::string host;
  int port = 0;
};
std::vector<ReplicaAddress> Replicas(redisContext* primary) {
  std::vector<ReplicaAddress> out;
  for (const auto& [key, value] : Info(primary, "replication")) {
    if (key.rfind("slave", 0) != 0 || key == "slave_read_repl_offset" ||
        key.find("_") != std::string::npos) {
      continue;
    }
    ReplicaAddress r;
    for (absl::string_view kv : absl::StrSplit(value, ',')) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      if (p.first == "ip") r.host = p.second;
      if (p.first == "port" && !absl::SimpleAtoi(p.second, &r.port)) r.port = 0;
    }
    if (r.port > 0) out.push_back(r);
  }
  return out;
}

// The offset up to which a replica has processed its primary's stream.
int64_t ReplicaOffset(redisContext* replica) {
  return InfoInt(Info(replica, "replication"), "slave_repl_offset");
}

// Polls the replicas until each processed the primary's stream up to `target`; returns the time
// that happened, or false after `timeout_s`.
bool WaitReplicas(const std::vector<Context>& replicas, int64_t target, double timeout_s,
                  Clock::time_point* at) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeout_s));
  while (Clock::now() < deadline) {
    bool all = true;
    for (const auto& r : replicas) all = all && ReplicaOffset(r.get()) >= target;
    if (all) {
      *at = Clock::now();
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// The bytes a command takes on the wire in RESP, as hiredis formats it: *<n> then $<len> <arg>
// per argument, each line ending in CRLF.
int64_t RespBytes(const std::vector<std::string>& args) {
  int64_t n = 1 + static_cast<int64_t>(std::to_string(args.size()).size()) + 2;
  for (const auto& a : args) {
    n += 1 + static_cast<int64_t>(std::to_string(a.size()).size()) + 2 +
         static_cast<int64_t>(a.size()) + 2;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// The load: non-blocking hiredis contexts, one poll() loop.

struct LoadOptions {
  int wait_replicas = 0;  // 0: async
  int concurrency = 16;
  int connections = 16;
  int64_t writes = 0;
  double duration_s = 0;
  W1Shape shape;
  bool progress = false;
  std::string label;
};

struct LoadResult {
  int64_t writes = 0;
  int64_t bytes_sent = 0;  // every command this load sent the primary, in RESP
  Clock::time_point start, last_ack;
  std::vector<double> latency_us;  // sorted
  double seconds() const { return SecondsBetween(start, last_ack); }
};

class Load {
 public:
  Load(const std::string& host, int port, const LoadOptions& options)
      : options_(options), rng_(42) {
    for (int i = 0; i < options.connections; ++i) {
      Connection c;
      c.context = ConnectOrDie(host, port);
      // From here on the socket is driven by poll(): hiredis only buffers and parses.
      const int flags = fcntl(c.context->fd, F_GETFL);
      fcntl(c.context->fd, F_SETFL, flags | O_NONBLOCK);
      c.context->flags &= ~REDIS_BLOCK;
      connections_.push_back(std::move(c));
    }
    wait_count_ = std::to_string(options.wait_replicas);
  }

  LoadResult Run();

 private:
  struct Pending {
    Clock::time_point sent;
    int replies_left;
  };
  struct Connection {
    Context context;
    std::deque<Pending> pending;
    bool has_output = false;
  };

  bool CanIssue(Clock::time_point now) const {
    if (options_.duration_s > 0) return now < end_;
    return issued_ < options_.writes;
  }
  void Append(Connection& c, const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lengths.push_back(a.size());
    }
    if (redisAppendCommandArgv(c.context.get(), static_cast<int>(argv.size()), argv.data(),
                               lengths.data()) != REDIS_OK) {
      Fatal(absl::StrCat("append: ", c.context->errstr));
    }
    result_.bytes_sent += RespBytes(args);
    c.has_output = true;
  }
  void Fill(Clock::time_point now) {
    while (outstanding_ < options_.concurrency && CanIssue(now)) {
      const int64_t w = issued_++;
      Connection* best = nullptr;
      for (auto& c : connections_) {
        if (best == nullptr || c.pending.size() < best->pending.size()) best = &c;
      }
      const std::string key =
          absl::StrCat("doc:", rng_() % static_cast<uint64_t>(options_.shape.documents));
      if (w % 2 == 0) {
        Append(*best, {"HSET", key, "name", RandomValue(rng_, options_.shape.value_size)});
      } else {
        Append(*best, {"HINCRBY", key, "count", "1"});
      }
      if (options_.wait_replicas > 0) Append(*best, {"WAIT", wait_count_, "0"});
      best->pending.push_back({now, options_.wait_replicas > 0 ? 2 : 1});
      ++outstanding_;
    }
  }
  void OnReply(Connection& c, Reply reply) {
    if (reply->type == REDIS_REPLY_ERROR) Fatal(absl::StrCat(options_.label, ": ", reply->str));
    if (c.pending.empty()) Fatal("an answer to no command");
    Pending& p = c.pending.front();
    if (--p.replies_left > 0) return;
    if (options_.wait_replicas > 0 &&
        (reply->type != REDIS_REPLY_INTEGER || reply->integer < options_.wait_replicas)) {
      Fatal(absl::StrCat("WAIT ", options_.wait_replicas, " answered ", reply->integer));
    }
    const Clock::time_point now = Clock::now();
    result_.latency_us.push_back(std::chrono::duration<double, std::micro>(now - p.sent).count());
    result_.last_ack = now;
    ++result_.writes;
    c.pending.pop_front();
    --outstanding_;
  }
  void Progress(Clock::time_point now, bool final_line) {
    const double window = SecondsBetween(last_progress_, now);
    std::fprintf(stderr, "\r%s: %5.1f s  %lld writes acknowledged  %.0f writes/s now  %d in flight   %s",
                 options_.label.c_str(), SecondsBetween(result_.start, now),
                 static_cast<long long>(result_.writes),
                 window > 0 ? (result_.writes - writes_at_progress_) / window : 0.0, outstanding_,
                 final_line ? "\n" : "");
    std::fflush(stderr);
    writes_at_progress_ = result_.writes;
    last_progress_ = now;
  }

  const LoadOptions options_;
  std::mt19937_64 rng_;
  std::vector<Connection> connections_;
  std::string wait_count_;
  int64_t issued_ = 0;
  int outstanding_ = 0;
  Clock::time_point end_, last_progress_;
  int64_t writes_at_progress_ = 0;
  LoadResult result_;
};

LoadResult Load::Run() {
  result_.start = Clock::now();
  result_.last_ack = result_.start;
  last_progress_ = result_.start;
  end_ = result_.start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(options_.duration_s));
  Clock::time_point next_progress = result_.start + std::chrono::seconds(1);
  Clock::time_point last_answer = result_.start;
  std::vector<pollfd> fds(connections_.size());
  Fill(Clock::now());
  while (outstanding_ > 0) {
    for (size_t i = 0; i < connections_.size(); ++i) {
      Connection& c = connections_[i];
      if (c.has_output) {
        int done = 0;
        if (redisBufferWrite(c.context.get(), &done) != REDIS_OK) {
          Fatal(absl::StrCat("write: ", c.context->errstr));
        }
        c.has_output = !done;
      }
      fds[i] = {c.context->fd, static_cast<short>(POLLIN | (c.has_output ? POLLOUT : 0)), 0};
    }
    const int ready = poll(fds.data(), fds.size(), 200);
    if (ready < 0 && errno != EINTR) Fatal(absl::StrCat("poll: ", std::strerror(errno)));
    Clock::time_point now = Clock::now();
    for (size_t i = 0; i < connections_.size() && ready > 0; ++i) {
      if ((fds[i].revents & (POLLIN | POLLERR | POLLHUP)) == 0) continue;
      Connection& c = connections_[i];
      if (redisBufferRead(c.context.get()) != REDIS_OK) {
        Fatal(absl::StrCat("read: ", c.context->errstr));
      }
      while (true) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(c.context.get(), &raw) != REDIS_OK) {
          Fatal(absl::StrCat("reply: ", c.context->errstr));
        }
        if (raw == nullptr) break;
        OnReply(c, Reply(static_cast<redisReply*>(raw)));
        last_answer = now;
      }
    }
    now = Clock::now();
    Fill(now);
    if (now - last_answer > std::chrono::seconds(90)) {
      Fatal(absl::StrCat("no answer for 90 s with ", outstanding_, " writes in flight"));
    }
    if (options_.progress && now >= next_progress) {
      Progress(now, false);
      next_progress = now + std::chrono::seconds(1);
    }
  }
  if (options_.progress) Progress(Clock::now(), true);
  std::sort(result_.latency_us.begin(), result_.latency_us.end());
  return std::move(result_);
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "redis-w1: %s (see --help)\n", message.c_str());
  return 2;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "W1 against a Redis primary with replicas (the comparison for mergedb-bench).\n"
      "  redis-w1 --port=PRIMARY_PORT [--mode=async|wait1|wait2] [--writes=N]");
  absl::ParseCommandLine(argc, argv);
  const std::string host = absl::GetFlag(FLAGS_host);
  const int port = absl::GetFlag(FLAGS_port);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const bool json_only = absl::GetFlag(FLAGS_json_only);
  LoadOptions load;
  if (mode == "async") {
    load.wait_replicas = 0;
  } else if (mode == "wait1") {
    load.wait_replicas = 1;
  } else if (mode == "wait2") {
    load.wait_replicas = 2;
  } else {
    return UsageError("--mode must be async, wait1 or wait2");
  }
  if (port <= 0) return UsageError("--port is required");
  load.concurrency = absl::GetFlag(FLAGS_concurrency);
  load.connections = absl::GetFlag(FLAGS_connections);
  load.writes = absl::GetFlag(FLAGS_writes);
  load.duration_s = absl::GetFlag(FLAGS_duration);
  load.shape.documents = absl::GetFlag(FLAGS_documents);
  load.shape.value_size = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_value_size)));
  if (load.concurrency < 1) return UsageError("--concurrency must be at least 1");
  if (load.connections == 0) load.connections = load.wait_replicas > 0 ? load.concurrency : 6;
  if (load.connections < 1) return UsageError("--connections must be at least 1");
  if (load.wait_replicas > 0 && load.connections < load.concurrency) {
    return UsageError(
        "in the wait modes --connections must be at least --concurrency: a connection blocked in "
        "WAIT holds back every write behind it, so fewer connections would wait for fewer writes "
        "at once than --concurrency says");
  }
  if (load.duration_s < 0) return UsageError("--duration must not be negative");
  if (load.duration_s == 0 && load.writes < 1) return UsageError("--writes must be at least 1");
  if (load.shape.documents < 1) return UsageError("--documents must be at least 1");

  Context primary = ConnectOrDie(host, port);
  std::vector<Context> replicas;
  for (const ReplicaAddress& r : Replicas(primary.get())) replicas.push_back(ConnectOrDie(r.host, r.port));
  if (static_cast<int>(replicas.size()) < load.wait_replicas) {
    Fatal(absl::StrCat("mode ", mode, " needs ", load.wait_replicas, " replicas; the primary has ",
                       replicas.size()));
  }
  auto pid_of = [](redisContext* c) { return static_cast<pid_t>(InfoInt(Info(c, "server"), "process_id")); };
  std::vector<std::pair<std::string, pid_t>> processes = {{"primary", pid_of(primary.get())}};
  for (size_t i = 0; i < replicas.size(); ++i) {
    processes.emplace_back(absl::StrCat("replica", i + 1), pid_of(replicas[i].get()));
  }
  const std::string fsync_policy = [&] {
    Reply r = Command(primary.get(), {"CONFIG", "GET", "appendfsync"});
    return r->elements == 2 ? std::string(r->element[1]->str) : std::string("?");
  }();
  const std::string describe = absl::StrCat(
      "W1 on Redis ", Info(primary.get(), "server")["redis_version"], ", primary ", host, ":",
      port, " + ", replicas.size(), " replicas, mode ", mode,
      load.wait_replicas > 0 ? absl::StrCat(" (WAIT ", load.wait_replicas, " 0 after each write)") : "",
      ", appendfsync ", fsync_policy, ", ", load.concurrency, " outstanding over ",
      load.connections, " connections, ", std::thread::hardware_concurrency(), " cores");
  if (!json_only) std::fprintf(stderr, "redis-w1: %s\n", describe.c_str());

  Clock::time_point at;
  if (absl::GetFlag(FLAGS_flush)) {
    Command(primary.get(), {"FLUSHALL"});
    const int64_t offset = InfoInt(Info(primary.get(), "replication"), "master_repl_offset");
    if (!WaitReplicas(replicas, offset, 60, &at)) Fatal("the replicas did not apply FLUSHALL");
  }
  if (absl::GetFlag(FLAGS_warmup) > 0) {
    LoadOptions warm = load;
    warm.writes = absl::GetFlag(FLAGS_warmup);
    warm.duration_s = 0;
    warm.label = "warm-up";
    (void)Load(host, port, warm).Run();
    const int64_t offset = InfoInt(Info(primary.get(), "replication"), "master_repl_offset");
    if (!WaitReplicas(replicas, offset, 60, &at)) Fatal("the replicas did not catch up after the warm-up");
  }

  std::set<pid_t> redis_pids;
  for (const auto& [name, pid] : processes) redis_pids.insert(pid);
  const std::optional<TcpSockets> sockets_before = ReadTcpSockets();
  const auto repl_before = Info(primary.get(), "replication");
  const auto stats_before = Info(primary.get(), "stats");
  std::vector<ProcessStats> proc_before;
  for (const auto& [name, pid] : processes) proc_before.push_back(ReadProcessStats(pid));
  const double client_before = CpuSecondsOfSelf();
  const double busy_before = UserProcessesBusySeconds();

  load.progress = !json_only;
  load.label = "redis-w1";
  Load runner(host, port, load);
  const LoadResult run = runner.Run();
  const int64_t target = InfoInt(Info(primary.get(), "replication"), "master_repl_offset");
  Clock::time_point converged_at;
  const bool converged = WaitReplicas(replicas, target, 120, &converged_at);
  const double convergence_ms =
      converged ? std::max(0.0, std::chrono::duration<double, std::milli>(converged_at - run.last_ack).count())
                : -1;
  const double client_cpu = CpuSecondsOfSelf() - client_before;
  const double machine_busy = UserProcessesBusySeconds() - busy_before;
  const auto stats_after = Info(primary.get(), "stats");
  const auto repl_after = Info(primary.get(), "replication");
  // A plain value, not an optional: GCC 12 warns that an optional's fields may be uninitialized.
  TcpTraffic tcp;
  if (sockets_before.has_value()) {
    if (auto sockets_after = ReadTcpSockets(); sockets_after.has_value()) {
      tcp = TcpTrafficBetween(*sockets_before, *sockets_after, redis_pids);
    }
  }

  struct ProcessLine {
    std::string name;
    double cpu_s = 0, peak_rss_mib = 0;
  };
  std::vector<ProcessLine> process_lines;
  double others_cpu = machine_busy - client_cpu;
  bool all_processes_known = true;
  for (size_t i = 0; i < processes.size(); ++i) {
    const ProcessStats after = ReadProcessStats(processes[i].second);
    if (!after.ok || !proc_before[i].ok) {
      all_processes_known = false;
      continue;
    }
    process_lines.push_back({processes[i].first, after.cpu_seconds - proc_before[i].cpu_seconds,
                             after.peak_rss_mib});
    others_cpu -= process_lines.back().cpu_s;
  }
  const double measured_s = SecondsBetween(run.start, converged ? converged_at : Clock::now());
  const double others_cores =
      all_processes_known && measured_s > 0 ? std::max(0.0, others_cpu) / measured_s : -1;

  auto delta = [](const std::map<std::string, std::string>& before,
                  const std::map<std::string, std::string>& after, const std::string& key) {
    const int64_t b = InfoInt(before, key), a = InfoInt(after, key);
    return a >= 0 && b >= 0 ? a - b : -1;
  };
  const int64_t stream_bytes = delta(repl_before, repl_after, "master_repl_offset");
  const int64_t net_out = delta(stats_before, stats_after, "total_net_repl_output_bytes");
  // A primary counts what it reads from its replicas (REPLCONF ACK, GETACK answers) with its
  // clients' commands in total_net_input_bytes (total_net_repl_input_bytes counts only what a
  // replica reads from its primary, and stays 0 here). So: the primary's input less every
  // command this tool sent it meanwhile (the load's, then INFO replication and INFO stats).
  const int64_t input = delta(stats_before, stats_after, "total_net_input_bytes");
  const int64_t own_commands =
      run.bytes_sent + RespBytes({"INFO", "replication"}) + RespBytes({"INFO", "stats"});
  const int64_t net_in = input >= own_commands ? input - own_commands : -1;
  const double writes = static_cast<double>(std::max<int64_t>(run.writes, 1));
  const double stream_per_write = static_cast<double>(stream_bytes) * replicas.size() / writes;
  const bool have_net = net_out >= 0 && net_in >= 0;
  const double bytes_per_write =
      have_net ? static_cast<double>(net_out + net_in) / writes : stream_per_write;
  const double seconds = run.seconds();
  const double writes_per_s = seconds > 0 ? run.writes / seconds : 0;
  auto p = [&run](double q) { return PercentileOfSorted(run.latency_us, q); };

  if (!json_only) {
    std::printf("redis-w1: %s\n", describe.c_str());
    std::printf("  %-40s %s\n", "measure", "value");
    std::printf("  %-40s %lld in %.2f s\n", "writes acknowledged", static_cast<long long>(run.writes), seconds);
    std::printf("  %-40s %.0f\n", "acknowledged writes/s", writes_per_s);
    std::printf("  %-40s %.0f / %.0f / %.0f\n", "write latency p50 / p99 / p99.9 (us)", p(0.5),
                p(0.99), p(0.999));
    if (converged) {
      std::printf("  %-40s %.1f\n", "convergence after the last ack (ms)", convergence_ms);
    } else {
      std::printf("  %-40s NOT CONVERGED within 120 s\n", "convergence after the last ack (ms)");
    }
    std::printf("  %-40s %.0f (primary -> replicas %.0f, replicas -> primary %.0f)\n",
                "bytes between nodes per write", bytes_per_write, have_net ? net_out / writes : -1.0,
                have_net ? net_in / writes : -1.0);
    if (tcp.known()) {
      std::printf("  %-40s %.0f (over %d connections%s)\n", "  the same, TCP payload (kernel)",
                  static_cast<double>(tcp.bytes) / writes, tcp.sockets,
                  tcp.vanished > 0 ? "; some closed meanwhile, not counted" : "");
    }
    std::printf("  %-40s %.0f (master_repl_offset delta x %zu replicas)\n",
                "  replication stream per write", stream_per_write, replicas.size());
    for (const ProcessLine& l : process_lines) {
      std::printf("  %-40s %.2f CPU s (%.1f us/write), peak RSS %.1f MiB\n",
                  absl::StrCat("redis ", l.name).c_str(), l.cpu_s, l.cpu_s * 1e6 / writes,
                  l.peak_rss_mib);
    }
    std::printf("  %-40s %.2f CPU s (%.1f us/write)\n", "client (this tool)", client_cpu,
                client_cpu * 1e6 / writes);
    if (others_cores >= 0) {
      std::printf("  %-40s %.2f of %u cores on average%s\n", "other processes on the machine",
                  others_cores, std::thread::hardware_concurrency(),
                  others_cores > 0.1 ? "  WARNING: the machine was not quiet; numbers are low" : "");
    }
    std::fflush(stdout);
  }
  JsonObject json;
  json.AddString("tool", "redis-w1");
  json.AddString("workload", "W1");
  json.AddString("mode", mode);
  json.AddString("appendfsync", fsync_policy);
  if (!absl::GetFlag(FLAGS_label).empty()) json.AddString("label", absl::GetFlag(FLAGS_label));
  json.Add("replicas", static_cast<int>(replicas.size()));
  json.Add("concurrency", load.concurrency);
  json.Add("connections", load.connections);
  json.Add("documents", load.shape.documents);
  json.Add("value_size", static_cast<int64_t>(load.shape.value_size));
  json.Add("cores", static_cast<int>(std::thread::hardware_concurrency()));
  json.Add("writes", run.writes);
  json.Add("seconds", seconds);
  json.Add("writes_per_s", writes_per_s);
  json.Add("latency_us", JsonObject().Add("p50", p(0.5)).Add("p99", p(0.99)).Add("p999", p(0.999)));
  json.Add("convergence_ms", convergence_ms);
  json.Add("bytes_between_nodes_per_write", bytes_per_write);
  json.AddString("bytes_counted", have_net
                                      ? "total_net_repl_output_bytes delta on the primary + its "
                                        "total_net_input_bytes delta less this tool's commands"
                                      : "master_repl_offset delta x replicas");
  if (tcp.known()) {
    json.Add("tcp_bytes_between_nodes_per_write", static_cast<double>(tcp.bytes) / writes);
    json.Add("tcp_sockets_closed_meanwhile", tcp.vanished);
  }
  json.Add("repl_output_bytes_per_write", have_net ? net_out / writes : -1.0);
  json.Add("repl_input_bytes_per_write", have_net ? net_in / writes : -1.0);
  json.Add("repl_stream_bytes_per_write", stream_per_write);
  std::vector<std::string> per_process;
  for (const ProcessLine& l : process_lines) {
    per_process.push_back(
        JsonObject().AddString("name", l.name).Add("cpu_s", l.cpu_s).Add("peak_rss_mib", l.peak_rss_mib).str());
  }
  json.AddRaw("node_stats", "[" + absl::StrJoin(per_process, ",") + "]");
  json.Add("client_cpu_s", client_cpu);
  if (others_cores >= 0) json.Add("other_processes_cores", others_cores);
  std::printf("%s\n", json.str().c_str());
  return converged ? 0 : 1;
}

}  // namespace
}  // namespace mergedb::bench

int main(int argc, char** argv) { return mergedb::bench::Main(argc, argv); }

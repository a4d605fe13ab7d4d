// mergedb-bench: the W1 load generator, run against real mergedb-node processes.
//
//   build/bench/mergedb-bench [--mode=unary|stream] [--write_concern=local|quorum|all]
//       [--writes=N | --duration=S] [--concurrency=C] [--targets=HOST:PORT,...] [--fsync] ...
//   (--help lists every flag)
//
// Without --targets it starts a 3-node full-mesh cluster of mergedb-node processes on 127.0.0.1
// (free ports, data in a fresh temporary directory), waits until every node is connected to
// every peer, and stops the nodes and removes the directory at exit: also after an error,
// SIGINT or SIGTERM; if the tool itself is killed, the nodes die with it (PR_SET_PDEATHSIG), but
// the directory stays.
//
// W1: --documents documents (10,000); --writes writes (200,000) or --duration seconds; even
// writes set the register "name" of a uniformly chosen document to a random --value_size-byte
// string (64 letters and digits: values that do not compress), odd writes increment its counter "count". Write w goes to writable node w % n, so the
// writes are spread evenly. --concurrency operations (16) are outstanding at all times across
// all connections: unary Update calls, or (--mode=stream) UpdateRequests pipelined over
// --streams UpdateStream streams (each write on the least loaded stream of its node; responses
// are matched in order, because a node answers a stream's requests in the order it sent them).
// --read_ratio of the operations are Get calls instead (outside the write count), spread over all
// nodes, read-only replicas included.
//
// Measured (after --warmup writes, which are not counted):
// - acknowledged writes/s and write latency p50/p99/p99.9 (send to acknowledgement);
// - replication lag p50/p99: one write in --sample_every (100) sets a register in a document of
//   its own in the collection "<collection>-lag"; every node runs a Watch on that collection,
//   and the lag is the time a node other than the writer shows the write minus the time the
//   writer's acknowledgement arrived (0 when it showed before the acknowledgement arrived).
//   The Watch streams and the tracking of samples cost the cluster some throughput (about
//   15 % measured with --lag=inline), so by default (--lag=separate) lag is measured in a
//   second phase of max(2000, writes/5) writes with the same mode, concurrency and write
//   concern, after the main figures were taken without Watch streams;
// - convergence: ms from the last acknowledgement until every node's Status shows the same
//   state_digest and the same applied vector (polled about every millisecond, starting at the
//   last acknowledgement, before the client closes its streams; the figure includes the one
//   polling round that finds them equal: three Status calls, 1-2 ms on a busy 2-core machine);
// - bytes between nodes per write: the sum over nodes of every peer's bytes_sent (replication
//   payload: frames, acknowledgements, heartbeats; not gRPC/HTTP2/TCP framing) after minus
//   before, over acknowledged writes;
// - per started node: CPU seconds (utime+stime) during the measurement and peak RSS (VmHWM);
//   the tool's own CPU seconds (to show the client is not the bottleneck).
// Baselines (--baselines; on by default when the tool starts the cluster), run after the
// cluster has stopped, on the same machine: (a) a bare gRPC unary echo server in a separate
// process, built like mergedb-node's server (bench/echo_server.h: asynchronous API, one
// completion-queue thread per core, same builder settings), driven at the same concurrency with
// W1 Update messages; (b) bare LevelDB (opened like the store), one
// Put of the same key and value sizes per write, --concurrency writer threads, fsync as the
// nodes. Ratios mergedb/echo and mergedb/leveldb are printed.
//
// Output: a table on stdout, then ONE JSON line (the last line; --json_only prints only it); a
// progress line on stderr once a second. Exit status 0, 1 on any failure (a failed write
// included: a benchmark with errors measures nothing), 2 for usage errors.
//
// Threads: the main thread drives writes and reads on one completion queue; a second thread
// reads the Watch streams; a third only waits for SIGINT/SIGTERM/SIGHUP to clean up.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "bench/echo_server.h"
#include "grpcpp/grpcpp.h"
#include "leveldb/db.h"
#include "mergedb/bench/echo.grpc.pb.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/replication.h"
#include "node/tls.h"
#include "node/validation.h"

ABSL_FLAG(std::string, targets, "",
          "Comma-separated host:port of running nodes to load. Empty: start a 3-node cluster.");
ABSL_FLAG(std::string, mode, "unary",
          "unary (Update calls), stream (UpdateStream pipelining, one update per message) or "
          "batch (UpdateBatchStream: the updates queued while a message is in flight leave as "
          "the next message).");
ABSL_FLAG(int, streams, 0,
          "stream and batch modes: streams in all, spread over the writable nodes (0: two per "
          "writable node in stream mode, one in batch mode). A node serves one stream's "
          "requests one at a time: fewer streams "
          "pipeline deeper (best for LOCAL), more let more QUORUM/ALL writes wait at once.");
ABSL_FLAG(std::string, write_concern, "local", "local, quorum or all.");
ABSL_FLAG(int64_t, writes, 200000, "Writes to acknowledge (ignored with --duration).");
ABSL_FLAG(double, duration, 0, "Seconds to run (stop by time instead of count); 0: by count.");
ABSL_FLAG(int, concurrency, 16, "Operations outstanding at all times, across all connections.");
ABSL_FLAG(double, rate, 0,
          "Operations per second to issue, paced evenly (an open loop, e.g. half of a run's peak "
          "to measure replication lag at half load), still with at most --concurrency "
          "outstanding; latency then counts from each operation's turn, so falling behind shows "
          "(the table counts the operations issued over 1 ms late). "
          "0: as fast as --concurrency allows.");
ABSL_FLAG(double, read_ratio, 0, "Fraction of operations that are Get calls, in [0, 1).");
ABSL_FLAG(int, documents, mergedb::bench::kW1Documents, "Documents W1 writes to.");
ABSL_FLAG(int, value_size, 64, "Bytes of each register value.");
ABSL_FLAG(bool, fsync, false, "Start the nodes with --fsync (and fsync the LevelDB baseline).");
ABSL_FLAG(int, sample_every, 100, "Measure replication lag on one write in N (0: no lag).");
ABSL_FLAG(std::string, lag, "separate",
          "separate: measure replication lag in a phase of its own after the main measurement "
          "(max(2000, writes/5) writes, Watch streams on every node), so that the Watch streams "
          "do not lower the main figures; inline: Watch streams during the main measurement; "
          "off.");
ABSL_FLAG(int64_t, warmup, 2000, "Writes before the measurement starts (not counted).");
ABSL_FLAG(bool, baselines, true,
          "Measure the echo and LevelDB baselines (default: on when the tool starts the cluster, "
          "off with --targets).");
ABSL_FLAG(int64_t, baseline_calls, 100000,
          "At most this many echo calls (and, with --fsync, LevelDB puts).");
ABSL_FLAG(int64_t, leveldb_baseline_puts, 1000000,
          "LevelDB puts of the bare-LevelDB baseline without --fsync: enough to fill the 16 MiB "
          "memtable several times over, so that it pays for flushes and compactions as the nodes "
          "do.");
ABSL_FLAG(bool, json_only, false, "Print only the JSON line (no table, no progress line).");
ABSL_FLAG(int, nodes, 3, "Nodes to start (without --targets).");
ABSL_FLAG(std::string, node_binary, "",
          "mergedb-node to start (default: ../node/mergedb-node next to this binary).");
ABSL_FLAG(std::string, node_flags, "",
          "Extra flags for the started nodes, space-separated (e.g. \"--cache_mb=128\").");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM certificates of the CA of a cluster serving TLS: the tool then talks to the "
          "nodes over TLS (nodes it starts need their --tls_ flags in --node_flags). Empty: "
          "plaintext.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (leaf first) to present to nodes started with --tls_client_ca "
          "(with --tls_key and --tls_ca).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert.");
ABSL_FLAG(std::string, dir, "",
          "Parent of the temporary directory for node data and the LevelDB baseline "
          "(default: $TMPDIR or /tmp).");
ABSL_FLAG(bool, keep_dir, false, "Keep the temporary directory (node data and logs).");
ABSL_FLAG(std::string, collection, "w1", "Collection the W1 writes go to.");
ABSL_FLAG(bool, internal_echo_server, false, "Internal: run the echo baseline server.");

namespace mergedb::bench {
namespace {

using mergedb::v1::ClusterService;
using mergedb::v1::DocumentService;
using mergedb::v1::GetRequest;
using mergedb::v1::GetResponse;
using mergedb::v1::StatusResponse;
using mergedb::v1::UpdateRequest;
using mergedb::v1::UpdateResponse;

// ---------------------------------------------------------------------------------------------
// Child processes and clean-up.

// Everything to undo at exit: child processes (SIGTERM, then SIGKILL after a grace period) and
// directories. Thread-safe; Run() is idempotent and may race with itself (the signal thread
// against an error path).
class Cleanup {
 public:
  static Cleanup& Get() {
    static Cleanup* cleanup = new Cleanup;  // never destroyed: used by atexit and signals
    return *cleanup;
  }

  void AddChild(pid_t pid) {
    absl::MutexLock lock(&mu_);
    children_.push_back(pid);
  }
  void AddDir(const std::string& dir) {
    absl::MutexLock lock(&mu_);
    dirs_.push_back(dir);
  }
  void KeepDirs() {
    absl::MutexLock lock(&mu_);
    dirs_.clear();
  }

  // Stops `pid` (SIGTERM, SIGKILL after `grace`), reaps it and forgets it.
  void Stop(pid_t pid, absl::Duration grace) {
    Terminate({pid}, grace);
    absl::MutexLock lock(&mu_);
    children_.erase(std::remove(children_.begin(), children_.end(), pid), children_.end());
  }

  void Run() {
    absl::MutexLock lock(&mu_);
    Terminate(children_, absl::Seconds(5));
    children_.clear();
    for (const std::string& dir : dirs_) {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
    dirs_.clear();
  }

 private:
  static void Terminate(const std::vector<pid_t>& pids, absl::Duration grace) {
    for (pid_t pid : pids) kill(pid, SIGTERM);
    const absl::Time deadline = absl::Now() + grace;
    std::vector<pid_t> left = pids;
    while (!left.empty()) {
      left.erase(std::remove_if(left.begin(), left.end(),
                                [](pid_t pid) {
                                  const pid_t r = waitpid(pid, nullptr, WNOHANG);
                                  return r == pid || (r < 0 && errno == ECHILD);
                                }),
                 left.end());
      if (left.empty()) break;
      if (absl::Now() >= deadline) {
        for (pid_t pid : left) {
          kill(pid, SIGKILL);
          waitpid(pid, nullptr, 0);
        }
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  absl::Mutex mu_;
  std::vector<pid_t> children_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> dirs_ ABSL_GUARDED_BY(mu_);
};

[[noreturn]] void Fatal(const std::string& message) {
  std::fprintf(stderr, "\nmergedb-bench: %s\n", message.c_str());
  std::fflush(stderr);
  Cleanup::Get().Run();
  _exit(1);
}

// Starts `args` (args[0] is the program) in its own process group, stdout and stderr to `out_fd`
// and `err_fd`. The child is killed if this process's main thread dies (PR_SET_PDEATHSIG: spawn
// only from the main thread).
pid_t Spawn(const std::vector<std::string>& args, int out_fd, int err_fd) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) Fatal(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    setpgid(0, 0);  // a Ctrl-C reaches the tool, which stops the nodes in order
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, nullptr);
    if (out_fd >= 0) dup2(out_fd, STDOUT_FILENO);
    if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  Cleanup::Get().AddChild(pid);
  return pid;
}

std::string SelfPath() {
  std::error_code error;
  const auto path = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::string() : path.string();
}

// `n` distinct ports free on 127.0.0.1 right now (held open together while they are chosen).
std::vector<int> PickFreePorts(int n) {
  std::vector<int> fds, ports;
  for (int i = 0; i < n; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      Fatal(absl::StrCat("cannot pick a free port: ", std::strerror(errno)));
    }
    fds.push_back(fd);
    ports.push_back(ntohs(addr.sin_port));
  }
  for (int fd : fds) close(fd);
  return ports;
}

std::string TailOf(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (tail.size() > lines) tail.pop_front();
  }
  return absl::StrJoin(tail, "\n");
}

// ---------------------------------------------------------------------------------------------
// Nodes.

struct Endpoint {
  std::string name;
  std::string address;
  bool writable = true;
  pid_t pid = -1;  // -1: not started by this tool
  std::string log_path;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<DocumentService::Stub> documents;
  std::unique_ptr<ClusterService::Stub> cluster;
};

absl::StatusOr<StatusResponse> GetStatus(Endpoint& e, absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  StatusResponse response;
  const grpc::Status status = e.cluster->Status(&context, {}, &response);
  if (!status.ok()) {
    return absl::UnavailableError(
        absl::StrCat("Status of ", e.address, ": ", status.error_message()));
  }
  return response;
}

// Plaintext, or TLS with --tls_ca (set by Main before any connection).
std::shared_ptr<grpc::ChannelCredentials> g_node_credentials;

void Connect(Endpoint& e) {
  e.channel = grpc::CreateChannel(e.address, g_node_credentials);
  e.documents = DocumentService::NewStub(e.channel);
  e.cluster = ClusterService::NewStub(e.channel);
}

struct ClusterConfig {
  int nodes = 3;
  std::string binary;
  std::string dir;
  bool fsync = false;
  std::vector<std::string> extra_flags;
};

// Starts the nodes and waits until each answers Status. A node that fails to start (a port
// taken between picking and binding, say) stops the others; the caller may retry.
absl::StatusOr<std::vector<Endpoint>> StartNodes(const ClusterConfig& config, int attempt) {
  const std::vector<int> ports = PickFreePorts(config.nodes);
  std::vector<Endpoint> nodes(static_cast<size_t>(config.nodes));
  for (int i = 0; i < config.nodes; ++i) {
    nodes[i].name = absl::StrCat("n", i + 1);
    nodes[i].address = absl::StrCat("127.0.0.1:", ports[i]);
  }
  for (int i = 0; i < config.nodes; ++i) {
    Endpoint& e = nodes[i];
    std::vector<std::string> peers;
    for (int j = 0; j < config.nodes; ++j) {
      if (j != i) peers.push_back(absl::StrCat(nodes[j].name, "=", nodes[j].address));
    }
    const std::string data = absl::StrCat(config.dir, "/", e.name, ".", attempt);
    e.log_path = absl::StrCat(config.dir, "/", e.name, ".", attempt, ".log");
    std::vector<std::string> args = {config.binary,
                                     "--data_dir=" + data,
                                     "--listen=" + e.address,
                                     "--node_name=" + e.name,
                                     "--cluster=bench",
                                     "--peers=" + absl::StrJoin(peers, ","),
                                     config.fsync ? "--fsync=true" : "--fsync=false",
                                     "--log_level=warning"};
    for (const std::string& f : config.extra_flags) args.push_back(f);
    const int log = open(e.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log < 0) Fatal(absl::StrCat("cannot create ", e.log_path, ": ", std::strerror(errno)));
    e.pid = Spawn(args, log, log);
    close(log);
    Connect(e);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (Endpoint& e : nodes) {
    while (true) {
      int wstatus = 0;
      if (waitpid(e.pid, &wstatus, WNOHANG) == e.pid) {
        for (Endpoint& other : nodes) {
          if (other.pid != e.pid) Cleanup::Get().Stop(other.pid, absl::Seconds(2));
        }
        return absl::UnavailableError(absl::StrCat("node ", e.name, " (", e.address,
                                                   ") exited at start; its log:\n",
                                                   TailOf(e.log_path, 5)));
      }
      // The first attempt often comes before the node listens. After that failure gRPC's
      // pick-first policy kept failing the fail-fast Status calls without a new attempt for
      // up to 15 s; WaitForConnected asks the channel to connect.
      e.channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
      if (GetStatus(e, absl::Milliseconds(200)).ok()) break;
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "node ", e.name, " does not answer after 30 s; its log:\n", TailOf(e.log_path, 5)));
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  return nodes;
}

// Waits until every node reports every peer connected.
absl::Status WaitForMesh(std::vector<Endpoint>& nodes, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string missing;
  while (absl::Now() < deadline) {
    missing.clear();
    for (Endpoint& e : nodes) {
      auto status = GetStatus(e, absl::Seconds(1));
      if (!status.ok()) {
        missing = std::string(status.status().message());
        break;
      }
      for (const auto& peer : status->peers()) {
        if (!peer.connected()) absl::StrAppend(&missing, " ", e.name, "->", peer.name());
      }
    }
    if (missing.empty()) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("peers not connected after ",
                                                  absl::FormatDuration(timeout), ":", missing));
}

using mergedb::bench::Traffic;

Traffic TrafficBetweenNodes(std::vector<Endpoint>& nodes) {
  Traffic traffic;
  for (Endpoint& e : nodes) {
    auto status = GetStatus(e, absl::Seconds(5));
    if (!status.ok()) Fatal(std::string(status.status().message()));
    for (const auto& peer : status->peers()) {
      traffic.bytes += peer.bytes_sent();
      traffic.frames += peer.frames_sent();
      traffic.entries += peer.entries_sent();
    }
  }
  return traffic;
}

// Polls Status on every node until all show the same state_digest and applied vector; returns
// the time that happened, or nullopt after `timeout`.
//
// The nodes are asked at the same time, and the time returned is when the last answer of the
// round that found them equal came back: an upper bound, since after the last acknowledgement
// each node's state only grows toward the final one, and three equal states are that final one.
// Asked one after another, a round took the sum of three calls, each of which can take 2-11 ms
// right after a run at full load (the machine is still busy with the replication backlog), and
// the figure counted that sum.
std::optional<Clock::time_point> WaitConverged(std::vector<Endpoint>& nodes, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<absl::StatusOr<StatusResponse>> statuses(nodes.size(),
                                                       absl::UnknownError("not asked"));
  while (absl::Now() < deadline) {
    std::vector<std::thread> askers;
    for (size_t i = 0; i < nodes.size(); ++i) {
      askers.emplace_back([&, i] { statuses[i] = GetStatus(nodes[i], absl::Seconds(5)); });
    }
    for (std::thread& asker : askers) asker.join();
    const Clock::time_point answered = Clock::now();
    bool same = true;
    std::string digest;
    std::vector<std::pair<uint64_t, uint64_t>> applied;
    for (size_t i = 0; i < nodes.size() && same; ++i) {
      const absl::StatusOr<StatusResponse>& status = statuses[i];
      if (!status.ok()) Fatal(std::string(status.status().message()));
      std::vector<std::pair<uint64_t, uint64_t>> vector;
      for (const auto& entry : status->applied()) vector.emplace_back(entry.replica(), entry.counter());
      std::sort(vector.begin(), vector.end());
      if (i == 0) {
        digest = status->state_digest();
        applied = std::move(vector);
      } else {
        same = status->state_digest() == digest && vector == applied;
      }
    }
    if (same) return answered;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// The echo baseline server (run as a child process: --internal_echo_server).

// Prints "echo listening on 127.0.0.1:PORT" and serves (bench/echo_server.h) until SIGTERM/SIGINT.
int RunEchoServer() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::unique_ptr<mergedb::bench::EchoServer> server = mergedb::bench::EchoServer::Start();
  if (server == nullptr) {
    std::fprintf(stderr, "echo server: cannot listen\n");
    return 1;
  }
  std::printf("echo listening on 127.0.0.1:%d\n", server->port());
  std::fflush(stdout);
  int signal = 0;
  sigwait(&stop, &signal);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Replication lag: acknowledgements (driver thread) meet Watch events (watch thread).

// Thread-safe.
class LagTracker {
 public:
  explicit LagTracker(int nodes) : nodes_(nodes) {}

  // Sample `sample` written on node `writer` was acknowledged at `at`.
  void OnAck(int64_t sample, int writer, Clock::time_point at) {
    absl::MutexLock lock(&mu_);
    Sample& s = samples_[sample];
    s.acked = true;
    s.writer = writer;
    s.ack = at;
    ++expected_;
    for (const auto& [node, seen] : s.early) {
      if (node != writer) Record(s.ack, seen);
    }
    s.early.clear();
  }

  // Node `node` showed sample `sample` at `at`.
  void OnEvent(int64_t sample, int node, Clock::time_point at) {
    absl::MutexLock lock(&mu_);
    Sample& s = samples_[sample];
    if (!s.acked) {
      s.early.emplace_back(node, at);
    } else if (node != s.writer) {
      Record(s.ack, at);
    }
  }

  // Waits (up to `timeout`) until every acknowledged sample was seen by every other node.
  void WaitComplete(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto complete = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return lags_ms_.size() >= static_cast<size_t>(expected_) * static_cast<size_t>(nodes_ - 1);
    };
    mu_.AwaitWithTimeout(absl::Condition(&complete), timeout);
  }

  struct Summary {
    std::vector<double> lags_ms;  // sorted
    int64_t expected = 0;         // acknowledged samples x (nodes - 1)
    int64_t before_ack = 0;       // shown by another node before the acknowledgement arrived
  };
  Summary Summarize() const {
    absl::MutexLock lock(&mu_);
    Summary summary;
    summary.lags_ms = lags_ms_;
    std::sort(summary.lags_ms.begin(), summary.lags_ms.end());
    summary.expected = expected_ * (nodes_ - 1);
    summary.before_ack = before_ack_;
    return summary;
  }

 private:
  struct Sample {
    bool acked = false;
    int writer = -1;
    Clock::time_point ack;
    std::vector<std::pair<int, Clock::time_point>> early;
  };
  void Record(Clock::time_point ack, Clock::time_point seen) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const double ms = std::chrono::duration<double, std::milli>(seen - ack).count();
    if (ms < 0) ++before_ack_;
    lags_ms_.push_back(std::max(0.0, ms));
  }

  const int nodes_;
  mutable absl::Mutex mu_;
  std::map<int64_t, Sample> samples_ ABSL_GUARDED_BY(mu_);
  std::vector<double> lags_ms_ ABSL_GUARDED_BY(mu_);
  int64_t expected_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t before_ack_ ABSL_GUARDED_BY(mu_) = 0;
};

// Lag probe documents: "s<sample>" for samples, "ready-<node>" to check the watches are live.
// The register gets `value` (a sample: a W1-sized random value, so it costs what a W1 set does).
UpdateRequest ProbeRequest(const std::string& collection, const std::string& id,
                           std::string value) {
  UpdateRequest request;
  request.set_collection(collection);
  request.set_id(id);
  auto* op = request.add_ops();
  op->add_path("probe");
  op->mutable_set()->mutable_value()->mutable_scalar()->set_string_value(std::move(value));
  return request;
}

// One Watch stream per node on the lag collection, read by one thread over a completion queue.
// Thread contract: construct, Start(), then Stop() from the same (main) thread; the tracker is
// borrowed and outlives this object.
class Watchers {
 public:
  Watchers(std::vector<Endpoint>* nodes, std::string collection, LagTracker* tracker)
      : nodes_(nodes), collection_(std::move(collection)), tracker_(tracker) {}
  ~Watchers() { Stop(); }

  void Start() {
    for (size_t i = 0; i < nodes_->size(); ++i) {
      auto w = std::make_unique<Watch>();
      w->node = static_cast<int>(i);
      mergedb::v1::WatchRequest request;
      request.set_collection(collection_);
      request.set_from_now(true);
      w->reader = (*nodes_)[i].documents->PrepareAsyncWatch(&w->context, request, &cq_);
      w->reader->StartCall(w.get());
      watches_.push_back(std::move(w));
    }
    thread_ = std::thread([this] { Run(); });
  }

  // Writes "ready-<i>" on every node and waits until every watch showed all of them: only then
  // are the watches known to be live (from_now was taken before the sampled writes).
  absl::Status WaitLive(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (size_t i = 0; i < nodes_->size(); ++i) {
      Endpoint& e = (*nodes_)[i];
      if (!e.writable) continue;
      ++ready_expected_;
      // A probe written before a watch was registered is not shown to it: write again until
      // every watch has shown one from every writable node.
    }
    while (absl::Now() < deadline) {
      for (size_t i = 0; i < nodes_->size(); ++i) {
        Endpoint& e = (*nodes_)[i];
        if (!e.writable) continue;
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
        UpdateResponse response;
        const grpc::Status status = e.documents->Update(
            &context, ProbeRequest(collection_, absl::StrCat("ready-", i), "ready"), &response);
        if (!status.ok()) {
          return absl::UnavailableError(absl::StrCat("probe write to ", e.address, ": ",
                                                     status.error_message()));
        }
      }
      absl::MutexLock lock(&mu_);
      auto live = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        for (const auto& w : watches_) {
          if (w->ready_seen.size() < static_cast<size_t>(ready_expected_)) return false;
        }
        return true;
      };
      if (mu_.AwaitWithTimeout(absl::Condition(&live), absl::Milliseconds(500))) {
        return absl::OkStatus();
      }
    }
    return absl::DeadlineExceededError("the Watch streams show no probe writes");
  }

  void Stop() {
    if (!thread_.joinable()) return;
    for (auto& w : watches_) w->context.TryCancel();
    thread_.join();
  }

 private:
  struct Watch {
    int node = 0;
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientAsyncReader<mergedb::v1::WatchEvent>> reader;
    mergedb::v1::WatchEvent event;
    grpc::Status status;
    bool finishing = false;
    std::set<std::string> ready_seen;  // guarded by Watchers::mu_
  };

  void Run() {
    void* tag = nullptr;
    bool ok = false;
    size_t open = watches_.size();
    while (open > 0 && cq_.Next(&tag, &ok)) {
      auto* w = static_cast<Watch*>(tag);
      if (w->finishing) {
        --open;
        continue;
      }
      if (!ok) {  // the stream ended (cancelled at Stop, or the node went away)
        w->finishing = true;
        w->reader->Finish(&w->status, w);
        continue;
      }
      if (!w->event.id().empty() && w->event.id()[0] == 's') {
        int64_t sample = 0;
        if (absl::SimpleAtoi(w->event.id().substr(1), &sample)) {
          tracker_->OnEvent(sample, w->node, Clock::now());
        }
      } else if (w->event.id().rfind("ready-", 0) == 0) {
        absl::MutexLock lock(&mu_);
        w->ready_seen.insert(w->event.id());
      }
      w->reader->Read(&w->event, w);
    }
    cq_.Shutdown();
    while (cq_.Next(&tag, &ok)) {
    }
  }

  std::vector<Endpoint>* const nodes_;
  const std::string collection_;
  LagTracker* const tracker_;
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Watch>> watches_;
  std::thread thread_;
  absl::Mutex mu_;
  int ready_expected_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The load: one completion queue, driven by the calling thread.

enum class Mode { kUnary, kStream, kBatch };

struct PhaseOptions {
  Mode mode = Mode::kUnary;
  int concurrency = 16;
  int streams = 16;
  int64_t writes = 0;        // stop after this many writes (when duration_s == 0)
  double duration_s = 0;     // or stop issuing after this long
  double read_ratio = 0;
  double rate = 0;  // operations per second, paced; 0: closed loop
  mergedb::v1::WriteConcern concern = mergedb::v1::LOCAL;
  W1Shape shape;
  int sample_every = 0;      // 0: no lag samples
  std::string lag_collection;
  int64_t first_write = 0;   // write indices (and sample ids) start here
  bool progress = false;
  std::string label;
  // Called once every write is acknowledged, before the streams are closed (closing them takes
  // a few round trips that are no part of replication).
  std::function<void()> on_drained;
};

struct PhaseResult {
  int64_t writes = 0;
  int64_t messages_sent = 0;  // batch mode: UpdateBatch messages
  int64_t reads = 0;
  // Paced (--rate): operations issued more than a millisecond after their turn (every
  // --concurrency slot was busy, or this tool's thread was behind).
  int64_t late = 0;
  Clock::time_point start, last_ack;
  std::vector<double> write_latency_us;  // sorted
  std::vector<double> read_latency_us;   // sorted
  double seconds() const { return SecondsBetween(start, last_ack); }
};

class Phase {
 public:
  // Writes go to `writable`, reads to `readable` (borrowed; they outlive the phase); `tracker`
  // may be null when options.sample_every is 0.
  Phase(std::vector<Endpoint*> writable, std::vector<Endpoint*> readable,
        const PhaseOptions& options, LagTracker* tracker)
      : nodes_(std::move(writable)),
        readers_(std::move(readable)),
        options_(options),
        tracker_(tracker),
        rng_(42 + options.first_write) {
    // The lag tracker and the Watch streams number nodes by their place among all nodes
    // (`readable`), writes by their place among the writable ones: with read-only replicas
    // listed first, the two differ.
    for (Endpoint* w : nodes_) {
      const auto at = std::find(readers_.begin(), readers_.end(), w);
      writer_in_all_.push_back(at == readers_.end() ? -1 : static_cast<int>(at - readers_.begin()));
    }
  }

  PhaseResult Run();

 private:
  struct Handler {
    virtual ~Handler() = default;
    virtual void Proceed(bool ok) = 0;
  };

  struct UnaryWrite final : Handler {
    Phase* phase = nullptr;
    grpc::ClientContext context;
    UpdateResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<UpdateResponse>> reader;
    Clock::time_point sent;
    int64_t sample = -1;
    int node = 0;
    void Proceed(bool) override {
      if (!status.ok()) {
        phase->Fail(absl::StrCat("Update on ", phase->nodes_[node]->address, " failed: ",
                                 status.error_message(), " (code ", status.error_code(), ")"));
      }
      phase->OnWriteAck(sent, sample, node);
      delete this;
    }
  };

  struct UnaryRead final : Handler {
    Phase* phase = nullptr;
    grpc::ClientContext context;
    GetResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<GetResponse>> reader;
    Clock::time_point sent;
    int node = 0;
    void Proceed(bool) override {
      if (!status.ok()) {
        phase->Fail(absl::StrCat("Get on ", phase->readers_[node]->address, " failed: ",
                                 status.error_message()));
      }
      phase->OnReadDone(sent);
      delete this;
    }
  };

  // One UpdateStream, or (batched) one UpdateBatchStream: at most one Write and one Read
  // outstanding (gRPC's rule), the other requests queued; responses matched to requests in
  // order. Batched, a Write carries everything queued since the previous one left (Nagle's
  // rule), and the writes a response message completes are queued before the next Write starts
  // (Flush, after each event), so they leave together.
  class Stream {
   public:
    Stream(Phase* phase, int node, bool batched)
        : phase_(phase), node_(node), batched_(batched) {
      start_tag_ = {this, &Stream::OnStart};
      write_tag_ = {this, &Stream::OnWrite};
      read_tag_ = {this, &Stream::OnRead};
      finish_tag_ = {this, &Stream::OnFinish};
    }
    int node() const { return node_; }
    size_t in_flight() const { return in_flight_.size(); }
    bool finished() const { return finished_; }

    void Start(grpc::CompletionQueue* cq) {
      auto* documents = phase_->nodes_[node_]->documents.get();
      if (batched_) {
        batch_stream_ = documents->PrepareAsyncUpdateBatchStream(&context_, cq);
        batch_stream_->StartCall(&start_tag_);
      } else {
        stream_ = documents->PrepareAsyncUpdateStream(&context_, cq);
        stream_->StartCall(&start_tag_);
      }
    }
    void Send(UpdateRequest request, Clock::time_point sent, int64_t sample) {
      in_flight_.push_back({sent, sample});
      unsent_.push_back(std::move(request));
      if (!batched_) MaybeWrite();
    }
    // Batched: starts a Write of what is queued, unless one is in flight.
    void Flush() { MaybeWrite(); }
    const char* rpc() const { return batched_ ? "UpdateBatchStream" : "UpdateStream"; }
    // No more requests: half-close once everything queued is written.
    void Close() {
      closing_ = true;
      MaybeWrite();
    }

   private:
    struct Tag final : Handler {
      Stream* stream = nullptr;
      void (Stream::*fn)(bool) = nullptr;
      Tag() = default;
      Tag(Stream* s, void (Stream::*f)(bool)) : stream(s), fn(f) {}
      void Proceed(bool ok) override { (stream->*fn)(ok); }
    };
    struct Pending {
      Clock::time_point sent;
      int64_t sample;
    };

    // A node's default --max_batch_updates and --max_update_bytes: a
    // message stays within both.
    static constexpr int kMaxBatchUpdates = mergedb::node::Limits{}.max_batch_updates;
    static constexpr size_t kMaxBatchBytes = mergedb::node::Limits{}.max_update_bytes;
    // Batched, a message waits while this many are unanswered (Nagle's rule, clocked by the
    // answers rather than by the transport, which takes a message at once).
    static constexpr int kMaxUnansweredMessages = 1;

    void MaybeWrite() {
      if (!started_ || writing_ || broken_) return;
      if (!unsent_.empty() && (!batched_ || unanswered_messages_ < kMaxUnansweredMessages)) {
        writing_ = true;
        if (batched_) {
          current_batch_.clear_updates();
          size_t bytes = 0;
          while (!unsent_.empty() && current_batch_.updates_size() < kMaxBatchUpdates) {
            const size_t size = unsent_.front().ByteSizeLong() + 8;
            if (current_batch_.updates_size() > 0 && bytes + size > kMaxBatchBytes) break;
            bytes += size;
            *current_batch_.add_updates() = std::move(unsent_.front());
            unsent_.pop_front();
          }
          batch_sizes_.push_back(current_batch_.updates_size());
          ++unanswered_messages_;
          ++phase_->result_.messages_sent;
          batch_stream_->Write(current_batch_, &write_tag_);
        } else {
          current_ = std::move(unsent_.front());
          unsent_.pop_front();
          stream_->Write(current_, &write_tag_);
        }
      } else if (closing_ && !half_closed_ && unsent_.empty()) {
        half_closed_ = true;
        writing_ = true;
        if (batched_) {
          batch_stream_->WritesDone(&write_tag_);
        } else {
          stream_->WritesDone(&write_tag_);
        }
      }
    }
    void MaybeFinish() {
      if (read_ended_ && !writing_ && !finishing_) {
        finishing_ = true;
        if (batched_) {
          batch_stream_->Finish(&status_, &finish_tag_);
        } else {
          stream_->Finish(&status_, &finish_tag_);
        }
      }
    }
    void StartRead() {
      if (batched_) {
        batch_stream_->Read(&batch_response_, &read_tag_);
      } else {
        stream_->Read(&response_, &read_tag_);
      }
    }
    void OnStart(bool ok) {
      if (!ok) phase_->Fail(absl::StrCat(rpc(), " to ", phase_->nodes_[node_]->address, " did not start"));
      started_ = true;
      StartRead();
      MaybeWrite();
    }
    void OnWrite(bool ok) {
      writing_ = false;
      if (!ok) broken_ = true;  // the Read fails too, and Finish says why
      MaybeWrite();
      MaybeFinish();
    }
    void OnRead(bool ok) {
      if (!ok) {
        read_ended_ = true;
        MaybeFinish();
        return;
      }
      if (!batched_) {
        OnAnswer(response_);
      } else {
        if (batch_sizes_.empty() ||
            batch_response_.responses_size() != batch_sizes_.front()) {
          phase_->Fail(absl::StrCat(rpc(), " on ", phase_->nodes_[node_]->address,
                                    " answered ", batch_response_.responses_size(),
                                    " updates for a message of ",
                                    batch_sizes_.empty() ? 0 : batch_sizes_.front()));
        }
        batch_sizes_.pop_front();
        --unanswered_messages_;
        for (const UpdateResponse& response : batch_response_.responses()) OnAnswer(response);
      }
      StartRead();
    }
    void OnAnswer(const UpdateResponse& response) {
      if (in_flight_.empty()) phase_->Fail(absl::StrCat(rpc(), " answered a request never sent"));
      const Pending pending = in_flight_.front();
      in_flight_.pop_front();
      if (response.code() != 0) {
        phase_->Fail(absl::StrCat(rpc(), " write on ", phase_->nodes_[node_]->address,
                                  " failed: ", response.message(), " (code ", response.code(), ")"));
      }
      phase_->OnWriteAck(pending.sent, pending.sample, node_);
    }
    void OnFinish(bool) {
      finished_ = true;
      if (!status_.ok() || !in_flight_.empty()) {
        phase_->Fail(absl::StrCat(rpc(), " to ", phase_->nodes_[node_]->address, " ended: ",
                                  status_.error_message(), " with ", in_flight_.size(),
                                  " writes unanswered"));
      }
      phase_->OnStreamFinished();
    }

    Phase* const phase_;
    const int node_;
    const bool batched_;
    grpc::ClientContext context_;
    std::unique_ptr<grpc::ClientAsyncReaderWriter<UpdateRequest, UpdateResponse>> stream_;
    std::unique_ptr<grpc::ClientAsyncReaderWriter<mergedb::v1::UpdateBatch,
                                                  mergedb::v1::UpdateBatchResponse>>
        batch_stream_;
    Tag start_tag_, write_tag_, read_tag_, finish_tag_;
    UpdateRequest current_;
    UpdateResponse response_;
    mergedb::v1::UpdateBatch current_batch_;
    mergedb::v1::UpdateBatchResponse batch_response_;
    std::deque<int> batch_sizes_;  // updates of each unanswered message, oldest first
    int unanswered_messages_ = 0;
    grpc::Status status_;
    std::deque<UpdateRequest> unsent_;
    std::deque<Pending> in_flight_;
    bool started_ = false, writing_ = false, closing_ = false, half_closed_ = false;
    bool read_ended_ = false, finishing_ = false, finished_ = false, broken_ = false;
  };

  [[noreturn]] void Fail(const std::string& message) {
    Fatal(absl::StrCat(options_.label, ": ", message));
  }
  bool CanIssue(Clock::time_point now) const {
    if (options_.duration_s > 0) return now < end_;
    return writes_issued_ < options_.writes;
  }
  void Fill();
  void IssueWrite(Clock::time_point now);
  void IssueRead(Clock::time_point now);
  void OnWriteAck(Clock::time_point sent, int64_t sample, int node);
  void OnReadDone(Clock::time_point sent);
  void OnStreamFinished() { ++streams_finished_; }
  void Progress(Clock::time_point now, bool final_line);

  const std::vector<Endpoint*> nodes_;
  const std::vector<Endpoint*> readers_;
  std::vector<int> writer_in_all_;  // nodes_[i] is readers_[writer_in_all_[i]]
  const PhaseOptions options_;
  LagTracker* const tracker_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> coin_{0.0, 1.0};
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Stream>> streams_;
  std::vector<std::vector<Stream*>> streams_of_node_;
  Clock::time_point end_;
  Clock::time_point next_turn_;  // paced: when the next operation goes
  Clock::duration pace_{};
  int64_t writes_issued_ = 0, reads_issued_ = 0;
  int outstanding_ = 0;
  bool closed_ = false;
  int streams_finished_ = 0;
  PhaseResult result_;
  Clock::time_point next_progress_;
  int64_t writes_at_last_progress_ = 0;
  Clock::time_point last_progress_;
};

void Phase::Fill() {
  const Clock::time_point now = Clock::now();
  while (outstanding_ < options_.concurrency && CanIssue(now)) {
    // Paced, an operation goes at its turn, and its latency counts from that turn: one that
    // waited for a free slot was slowed by the system as much as one that waited for an answer.
    Clock::time_point turn = now;
    if (options_.rate > 0) {
      if (next_turn_ > now) break;
      turn = next_turn_;
      if (now - turn > std::chrono::milliseconds(1)) ++result_.late;
      next_turn_ += pace_;
    }
    if (options_.read_ratio > 0 && coin_(rng_) < options_.read_ratio) {
      IssueRead(turn);
    } else {
      IssueWrite(turn);
    }
    ++outstanding_;
  }
  if (outstanding_ == 0 && !CanIssue(now) && !closed_) {
    closed_ = true;
    if (options_.on_drained) options_.on_drained();
    for (auto& s : streams_) s->Close();
  }
}

void Phase::IssueWrite(Clock::time_point now) {
  const int64_t w = options_.first_write + writes_issued_++;
  const int node = static_cast<int>(w % static_cast<int64_t>(nodes_.size()));
  const bool sampled = options_.sample_every > 0 && w % options_.sample_every == 0;
  UpdateRequest request =
      sampled ? ProbeRequest(options_.lag_collection, absl::StrCat("s", w),
                             RandomValue(rng_, options_.shape.value_size))
              : W1Request(rng_, static_cast<uint64_t>(w), options_.shape);
  request.set_write_concern(options_.concern);
  const int64_t sample = sampled ? w : -1;
  if (options_.mode == Mode::kUnary) {
    auto* call = new UnaryWrite;
    call->phase = this;
    call->sent = now;
    call->sample = sample;
    call->node = node;
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    call->reader = nodes_[node]->documents->PrepareAsyncUpdate(&call->context, request, &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
    return;
  }
  Stream* best = nullptr;
  for (Stream* s : streams_of_node_[node]) {
    if (best == nullptr || s->in_flight() < best->in_flight()) best = s;
  }
  best->Send(std::move(request), now, sample);
}

void Phase::IssueRead(Clock::time_point now) {
  const int node = static_cast<int>(reads_issued_++ % static_cast<int64_t>(readers_.size()));
  auto* call = new UnaryRead;
  call->phase = this;
  call->sent = now;
  call->node = node;
  call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  GetRequest request;
  request.set_collection(options_.shape.collection);
  request.set_id(absl::StrCat("doc", rng_() % static_cast<uint64_t>(options_.shape.documents)));
  call->reader = readers_[node]->documents->PrepareAsyncGet(&call->context, request, &cq_);
  call->reader->StartCall();
  call->reader->Finish(&call->response, &call->status, call);
}

void Phase::OnWriteAck(Clock::time_point sent, int64_t sample, int node) {
  const Clock::time_point now = Clock::now();
  result_.write_latency_us.push_back(std::chrono::duration<double, std::micro>(now - sent).count());
  ++result_.writes;
  result_.last_ack = now;
  if (sample >= 0 && tracker_ != nullptr) tracker_->OnAck(sample, writer_in_all_[node], now);
  --outstanding_;
  Fill();
}

void Phase::OnReadDone(Clock::time_point sent) {
  const Clock::time_point now = Clock::now();
  result_.read_latency_us.push_back(std::chrono::duration<double, std::micro>(now - sent).count());
  ++result_.reads;
  --outstanding_;
  Fill();
}

void Phase::Progress(Clock::time_point now, bool final_line) {
  const double elapsed = SecondsBetween(result_.start, now);
  const double window = SecondsBetween(last_progress_, now);
  const double recent = window > 0 ? (result_.writes - writes_at_last_progress_) / window : 0;
  std::string of = options_.duration_s > 0 ? absl::StrCat("/", options_.duration_s, " s")
                                           : absl::StrCat("/", options_.writes);
  std::fprintf(stderr, "\r%s: %5.1f s  %lld%s writes acknowledged  %.0f writes/s now  %d in flight   %s",
               options_.label.c_str(), elapsed, static_cast<long long>(result_.writes),
               options_.duration_s > 0 ? "" : of.c_str(), recent, outstanding_,
               final_line ? "\n" : "");
  std::fflush(stderr);
  writes_at_last_progress_ = result_.writes;
  last_progress_ = now;
}

PhaseResult Phase::Run() {
  result_.write_latency_us.reserve(static_cast<size_t>(std::max<int64_t>(options_.writes, 1000)));
  streams_of_node_.resize(nodes_.size());
  if (options_.mode != Mode::kUnary) {
    const int streams = std::max(options_.streams, static_cast<int>(nodes_.size()));
    for (int k = 0; k < streams; ++k) {
      const int node = k % static_cast<int>(nodes_.size());
      streams_.push_back(std::make_unique<Stream>(this, node, options_.mode == Mode::kBatch));
      streams_of_node_[node].push_back(streams_.back().get());
      streams_.back()->Start(&cq_);
    }
  }
  result_.start = Clock::now();
  result_.last_ack = result_.start;
  last_progress_ = result_.start;
  next_progress_ = result_.start + std::chrono::seconds(1);
  end_ = result_.start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(options_.duration_s));
  next_turn_ = result_.start;
  if (options_.rate > 0) {
    pace_ = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(1.0 / options_.rate));
  }
  Fill();
  Clock::time_point last_event = Clock::now();
  while (outstanding_ > 0 || streams_finished_ < static_cast<int>(streams_.size()) ||
         (options_.rate > 0 && !closed_)) {
    void* tag = nullptr;
    bool ok = false;
    auto wait = std::chrono::system_clock::now() + std::chrono::milliseconds(200);
    if (options_.rate > 0 && !closed_ && outstanding_ < options_.concurrency &&
        CanIssue(Clock::now())) {
      // Wake for the next turn (gRPC rounds the deadline to its timer's millisecond, so at
      // high rates the operations of one millisecond leave together).
      wait = std::min(wait, std::chrono::system_clock::now() +
                                std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                    std::max(Clock::duration::zero(), next_turn_ - Clock::now())));
    }
    const auto got = cq_.AsyncNext(&tag, &ok, wait);
    const Clock::time_point now = Clock::now();
    if (got == grpc::CompletionQueue::TIMEOUT && options_.rate > 0 && !closed_) {
      const int64_t issued = writes_issued_ + reads_issued_;
      Fill();
      for (auto& stream : streams_) stream->Flush();
      // Waiting for a turn is not waiting for an answer.
      if (writes_issued_ + reads_issued_ != issued || outstanding_ == 0) last_event = now;
    }
    if (got == grpc::CompletionQueue::GOT_EVENT) {
      last_event = now;
      static_cast<Handler*>(tag)->Proceed(ok);
      if (options_.mode == Mode::kBatch) {
        // Take every event that is already there before writing: answers that arrived
        // together then send their successors together.
        while (cq_.AsyncNext(&tag, &ok, std::chrono::system_clock::time_point()) ==
               grpc::CompletionQueue::GOT_EVENT) {
          static_cast<Handler*>(tag)->Proceed(ok);
        }
        for (auto& stream : streams_) stream->Flush();
      }
    } else if (got == grpc::CompletionQueue::SHUTDOWN) {
      Fail("completion queue shut down");
    } else if (now - last_event > std::chrono::seconds(90)) {
      Fail(absl::StrCat("no answer for 90 s with ", outstanding_, " operations in flight"));
    }
    if (options_.progress && now >= next_progress_) {
      Progress(now, false);
      next_progress_ = now + std::chrono::seconds(1);
    }
  }
  if (options_.progress) Progress(Clock::now(), true);
  cq_.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) {
  }
  std::sort(result_.write_latency_us.begin(), result_.write_latency_us.end());
  std::sort(result_.read_latency_us.begin(), result_.read_latency_us.end());
  return std::move(result_);
}

// ---------------------------------------------------------------------------------------------
// Baselines.

struct EchoResult {
  double calls_per_s = 0;
  double p50_us = 0, p99_us = 0, p999_us = 0;
  int64_t calls = 0;
};

EchoResult RunEchoBaseline(int concurrency, int64_t calls, const W1Shape& shape) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) Fatal("pipe");
  const pid_t pid = Spawn({SelfPath(), "--internal_echo_server"}, fds[1], -1);
  close(fds[1]);
  std::string line;
  pollfd p{fds[0], POLLIN, 0};
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (line.find('\n') == std::string::npos && absl::Now() < deadline) {
    if (poll(&p, 1, 100) <= 0) continue;
    char buffer[256];
    const ssize_t n = read(fds[0], buffer, sizeof buffer);
    if (n <= 0) break;
    line.append(buffer, static_cast<size_t>(n));
  }
  close(fds[0]);
  const size_t at = line.find("listening on ");
  if (at == std::string::npos) Fatal("the echo baseline server did not start");
  const std::string address = line.substr(at + 13, line.find('\n') - at - 13);
  // Three connections, as the load on three nodes has.
  std::vector<std::unique_ptr<Echo::Stub>> stubs;
  std::vector<Echo::Stub*> raw;
  for (int i = 0; i < 3; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stubs.push_back(Echo::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
    raw.push_back(stubs.back().get());
  }
  auto w1 = [&shape](std::mt19937_64& rng, uint64_t i) { return W1Request(rng, i, shape); };
  auto ignore = [](uint64_t, size_t) {};
  Drive(raw, &Echo::Stub::PrepareAsyncCall, concurrency, 2000, 0, w1, ignore);  // warm-up
  const DriveResult r = Drive(raw, &Echo::Stub::PrepareAsyncCall, concurrency,
                              static_cast<int>(calls), 0, w1, ignore);
  Cleanup::Get().Stop(pid, absl::Seconds(5));
  EchoResult result;
  result.calls_per_s = r.per_second;
  result.p50_us = r.Percentile(0.5);
  result.p99_us = r.Percentile(0.99);
  result.p999_us = r.Percentile(0.999);
  result.calls = calls;
  return result;
}

// One Put per write of W1's key and value sizes (key: collection, id and field name; value: a
// random register value, or 8 bytes for a counter), `writers` threads, sync as the nodes.
double RunLevelDbBaseline(const std::string& dir, int writers, int64_t puts, const W1Shape& shape,
                          bool sync) {
  BareLevelDb bare = BareLevelDb::Create(dir);
  leveldb::WriteOptions options;
  options.sync = sync;
  // Random values, as W1 writes them (LevelDB compresses blocks with snappy): drawn beforehand
  // so the writer threads share no generator.
  std::mt19937_64 rng(7);
  std::vector<std::string> values;
  for (int k = 0; k < 4096; ++k) values.push_back(RandomValue(rng, shape.value_size));
  const std::string counter(8, '\1');
  const double rate = RunWriters(
      writers, static_cast<int>(puts),
      [&](int i, int doc) {
        const bool set = i % 2 == 0;
        const std::string key = absl::StrCat(shape.collection, std::string(1, '\0'), "doc", doc,
                                             std::string(1, '\0'), set ? "name" : "count");
        const leveldb::Status s =
            bare.db->Put(options, key, set ? values[static_cast<size_t>(i) % values.size()] : counter);
        if (!s.ok()) Fatal(absl::StrCat("bare LevelDB: ", s.ToString()));
      },
      shape.documents);
  bare.db.reset();
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return rate;
}

// ---------------------------------------------------------------------------------------------

JsonObject Percentiles(const std::vector<double>& sorted, double scale, bool with_p999) {
  JsonObject o;
  o.Add("p50", PercentileOfSorted(sorted, 0.5) * scale);
  o.Add("p99", PercentileOfSorted(sorted, 0.99) * scale);
  if (with_p999) o.Add("p999", PercentileOfSorted(sorted, 0.999) * scale);
  return o;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "mergedb-bench: %s (see --help)\n", message.c_str());
  return 2;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "W1 load generator for mergedb: starts a 3-node cluster (or loads --targets), reports "
      "writes/s, latency, replication lag, convergence, bytes between nodes, and baselines.\n"
      "  mergedb-bench [--mode=unary|stream|batch] [--write_concern=local|quorum|all] [--writes=N]");
  // Abseil's --help lists the flags of files named like the program, and this program's name
  // has a dash where its source file has an underscore.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "mergedb_bench");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  // Whether --baselines was given (its default depends on --targets); Abseil 20220623 keeps
  // CommandLineFlag::IsSpecifiedOnCommandLine private.
  bool baselines_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    for (const char* name : {"--baselines", "-baselines", "--nobaselines", "-nobaselines"}) {
      if (arg == name || arg.rfind(std::string(name) + "=", 0) == 0) baselines_given = true;
    }
  }
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_internal_echo_server)) return RunEchoServer();

  // Block the stop signals in every thread (before gRPC starts any); one thread takes them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::thread([stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "\nmergedb-bench: interrupted (%s); stopping the nodes\n", strsignal(sig));
    Cleanup::Get().Run();
    _exit(128 + sig);
  }).detach();
  std::atexit([] { Cleanup::Get().Run(); });

  PhaseOptions phase;
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "unary") {
    phase.mode = Mode::kUnary;
  } else if (mode == "stream") {
    phase.mode = Mode::kStream;
  } else if (mode == "batch") {
    phase.mode = Mode::kBatch;
  } else {
    return UsageError("--mode must be unary, stream or batch");
  }
  auto tls = node::LoadClientTls(
      {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_ca)},
      "--tls_");
  if (!tls.ok()) return UsageError(std::string(tls.status().message()));
  g_node_credentials = node::MakeChannelCredentials(*tls);
  const std::string concern = absl::GetFlag(FLAGS_write_concern);
  if (concern == "local") {
    phase.concern = mergedb::v1::LOCAL;
  } else if (concern == "quorum") {
    phase.concern = mergedb::v1::QUORUM;
  } else if (concern == "all") {
    phase.concern = mergedb::v1::ALL;
  } else {
    return UsageError("--write_concern must be local, quorum or all");
  }
  phase.concurrency = absl::GetFlag(FLAGS_concurrency);
  phase.writes = absl::GetFlag(FLAGS_writes);
  phase.duration_s = absl::GetFlag(FLAGS_duration);
  phase.read_ratio = absl::GetFlag(FLAGS_read_ratio);
  phase.rate = absl::GetFlag(FLAGS_rate);
  phase.shape.collection = absl::GetFlag(FLAGS_collection);
  phase.shape.documents = absl::GetFlag(FLAGS_documents);
  phase.shape.value_size = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_value_size)));
  phase.lag_collection = phase.shape.collection + "-lag";
  const int sample_every = absl::GetFlag(FLAGS_sample_every);
  const bool json_only = absl::GetFlag(FLAGS_json_only);
  const bool fsync = absl::GetFlag(FLAGS_fsync);
  if (phase.concurrency < 1) return UsageError("--concurrency must be at least 1");
  if (phase.duration_s < 0) return UsageError("--duration must not be negative");
  if (phase.duration_s == 0 && phase.writes < 1) return UsageError("--writes must be at least 1");
  if (phase.read_ratio < 0 || phase.read_ratio >= 1) return UsageError("--read_ratio is in [0, 1)");
  if (!(phase.rate >= 0) || phase.rate > 1e7) return UsageError("--rate is in [0, 10000000]");
  if (phase.shape.documents < 1) return UsageError("--documents must be at least 1");
  if (absl::GetFlag(FLAGS_value_size) < 0) return UsageError("--value_size must not be negative");
  if (sample_every < 0) return UsageError("--sample_every must not be negative");
  if (absl::GetFlag(FLAGS_nodes) < 1) return UsageError("--nodes must be at least 1");
  const std::string lag_mode = absl::GetFlag(FLAGS_lag);
  if (lag_mode != "separate" && lag_mode != "inline" && lag_mode != "off") {
    return UsageError("--lag must be separate, inline or off");
  }

  const std::string targets = absl::GetFlag(FLAGS_targets);
  const bool start_cluster = targets.empty();
  bool baselines = absl::GetFlag(FLAGS_baselines);
  if (!start_cluster && !baselines_given) baselines = false;

  // The working directory: node data, logs, the LevelDB baseline.
  std::string parent = absl::GetFlag(FLAGS_dir);
  if (parent.empty()) parent = getenv("TMPDIR") != nullptr ? getenv("TMPDIR") : "/tmp";
  std::string work_dir;
  if (start_cluster || baselines) {
    std::string pattern = parent + "/mergedb-bench-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      Fatal(absl::StrCat("cannot create a directory in ", parent, ": ", std::strerror(errno)));
    }
    work_dir = pattern;
    if (!absl::GetFlag(FLAGS_keep_dir)) Cleanup::Get().AddDir(work_dir);
  }

  std::vector<Endpoint> nodes;
  if (start_cluster) {
    ClusterConfig config;
    config.nodes = absl::GetFlag(FLAGS_nodes);
    config.binary = absl::GetFlag(FLAGS_node_binary);
    if (config.binary.empty()) {
      config.binary = (std::filesystem::path(SelfPath()).parent_path() / "../node/mergedb-node")
                          .lexically_normal()
                          .string();
    }
    if (access(config.binary.c_str(), X_OK) != 0) {
      return UsageError(absl::StrCat("no mergedb-node at ", config.binary,
                                     " (build it, or pass --node_binary)"));
    }
    config.dir = work_dir;
    config.fsync = fsync;
    config.extra_flags = absl::StrSplit(absl::GetFlag(FLAGS_node_flags), ' ', absl::SkipEmpty());
    for (int attempt = 1;; ++attempt) {
      auto started = StartNodes(config, attempt);
      if (started.ok()) {
        nodes = *std::move(started);
        break;
      }
      if (attempt == 3) Fatal(std::string(started.status().message()));
      std::fprintf(stderr, "mergedb-bench: %s\nretrying with other ports\n",
                   std::string(started.status().message()).c_str());
    }
    if (absl::Status mesh = WaitForMesh(nodes, absl::Seconds(30)); !mesh.ok()) {
      Fatal(std::string(mesh.message()));
    }
  } else {
    for (absl::string_view address : absl::StrSplit(targets, ',', absl::SkipEmpty())) {
      Endpoint e;
      e.address = std::string(address);
      Connect(e);
      nodes.push_back(std::move(e));
    }
    for (Endpoint& e : nodes) {
      auto status = GetStatus(e, absl::Seconds(10));
      if (!status.ok()) Fatal(std::string(status.status().message()));
      e.name = status->node_name();
    }
    if (absl::Status mesh = WaitForMesh(nodes, absl::Seconds(10)); !mesh.ok()) {
      std::fprintf(stderr, "mergedb-bench: warning: %s\n", std::string(mesh.message()).c_str());
    }
  }
  std::vector<Endpoint*> writable, all_nodes;
  for (Endpoint& e : nodes) {
    all_nodes.push_back(&e);
    auto status = GetStatus(e, absl::Seconds(10));
    if (!status.ok()) Fatal(std::string(status.status().message()));
    e.writable = status->role() != mergedb::v1::REPLICA;
    if (e.writable) writable.push_back(&e);
  }
  if (writable.empty()) Fatal("no writable node among the targets");
  // Batched, one stream per node: its messages carry whatever accumulates, so a node's writes
  // are better on one stream than spread thinner over two.
  const int streams_per_node = phase.mode == Mode::kBatch ? 1 : 2;
  phase.streams = absl::GetFlag(FLAGS_streams) > 0
                      ? absl::GetFlag(FLAGS_streams)
                      : streams_per_node * static_cast<int>(writable.size());
  phase.streams = std::max(phase.streams, static_cast<int>(writable.size()));
  const bool sampling = sample_every > 0 && nodes.size() > 1 && lag_mode != "off";
  const bool lag_inline = sampling && lag_mode == "inline";

  std::vector<std::string> addresses;
  for (const Endpoint& e : nodes) addresses.push_back(absl::StrCat(e.name, "=", e.address));
  const std::string describe = absl::StrCat(
      "W1, ", nodes.size(), " nodes (", start_cluster ? "started by the tool" : "given", ": ",
      absl::StrJoin(addresses, " "), "), mode ", mode,
      phase.mode != Mode::kUnary ? absl::StrCat(" (", phase.streams, " streams)") : "",
      ", write concern ", absl::AsciiStrToUpper(concern), ", fsync ",
      start_cluster ? (fsync ? "on" : "off") : "as the targets run", ", ", phase.concurrency,
      " outstanding",
      phase.rate > 0 ? absl::StrCat(" at most, paced at ", phase.rate, " operations/s") : "", ", ",
      std::thread::hardware_concurrency(), " cores");
  if (!json_only) std::fprintf(stderr, "mergedb-bench: %s\n", describe.c_str());

  LagTracker tracker(static_cast<int>(nodes.size()));
  Watchers watchers(&nodes, phase.lag_collection, &tracker);
  if (lag_inline) watchers.Start();

  // Warm-up: connections, server threads, the first documents. Not measured.
  if (absl::GetFlag(FLAGS_warmup) > 0) {
    PhaseOptions warm = phase;
    warm.writes = absl::GetFlag(FLAGS_warmup);
    warm.duration_s = 0;
    warm.read_ratio = 0;
    warm.rate = 0;  // not measured: as fast as it goes
    warm.sample_every = 0;
    warm.first_write = 0;
    warm.label = "warm-up";
    (void)Phase(writable, all_nodes, warm, nullptr).Run();
  }
  if (lag_inline) {
    if (absl::Status live = watchers.WaitLive(absl::Seconds(20)); !live.ok()) {
      Fatal(std::string(live.message()));
    }
  }
  if (start_cluster) {
    // Start the measurement from a quiet cluster: the warm-up fully replicated.
    if (!WaitConverged(nodes, absl::Seconds(60)).has_value()) Fatal("the warm-up did not converge");
  }

  const Traffic traffic_before = TrafficBetweenNodes(nodes);
  // The same traffic as the kernel counts it, gRPC's and HTTP/2's framing included (as Redis's
  // counters include RESP's): only for nodes this tool started, whose processes it knows.
  std::set<pid_t> node_pids;
  for (const Endpoint& e : nodes) {
    if (e.pid > 0) node_pids.insert(e.pid);
  }
  const std::optional<mergedb::bench::TcpSockets> sockets_before =
      start_cluster ? mergedb::bench::ReadTcpSockets() : std::nullopt;
  std::vector<ProcessStats> stats_before;
  for (const Endpoint& e : nodes) {
    stats_before.push_back(e.pid > 0 ? ReadProcessStats(e.pid) : ProcessStats{});
  }
  const double client_cpu_before = CpuSecondsOfSelf();
  const double busy_before = UserProcessesBusySeconds();

  phase.first_write = 1000000000;  // sample ids never collide with the warm-up's writes
  phase.sample_every = lag_inline ? sample_every : 0;
  phase.progress = !json_only;
  phase.label = "mergedb-bench";
  std::optional<Clock::time_point> converged;
  phase.on_drained = [&] { converged = WaitConverged(nodes, absl::Seconds(120)); };
  const PhaseResult run = Phase(writable, all_nodes, phase, &tracker).Run();
  phase.on_drained = nullptr;

  const double convergence_ms =
      converged.has_value()
          ? std::max(0.0, std::chrono::duration<double, std::milli>(*converged - run.last_ack).count())
          : -1;
  const double client_cpu = CpuSecondsOfSelf() - client_cpu_before;
  const double machine_busy = UserProcessesBusySeconds() - busy_before;
  const Traffic traffic = TrafficBetweenNodes(nodes) - traffic_before;
  // A plain value, not an optional: GCC 12 warns that an optional's fields may be uninitialized.
  mergedb::bench::TcpTraffic tcp;
  if (sockets_before.has_value()) {
    if (auto sockets_after = mergedb::bench::ReadTcpSockets(); sockets_after.has_value()) {
      tcp = mergedb::bench::TcpTrafficBetween(*sockets_before, *sockets_after, node_pids);
    }
  }
  struct NodeStats {
    std::string name;
    double cpu_s = 0;
    double peak_rss_mib = 0;
  };
  std::vector<NodeStats> node_stats;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].pid <= 0) continue;
    const ProcessStats after = ReadProcessStats(nodes[i].pid);
    node_stats.push_back({nodes[i].name, after.cpu_seconds - stats_before[i].cpu_seconds,
                          after.peak_rss_mib});
  }
  // What the rest of the machine took meanwhile (known only when the tool started the nodes).
  double others_cpu = machine_busy - client_cpu;
  for (const NodeStats& n : node_stats) others_cpu -= n.cpu_s;
  const double measured_s = converged.has_value()
                                ? SecondsBetween(run.start, *converged)
                                : SecondsBetween(run.start, Clock::now());
  const double others_cores = start_cluster && measured_s > 0 ? std::max(0.0, others_cpu) / measured_s : -1;
  // Replication lag in a phase of its own (see --lag).
  std::optional<PhaseResult> lag_run;
  if (sampling && !lag_inline) {
    watchers.Start();
    if (absl::Status live = watchers.WaitLive(absl::Seconds(20)); !live.ok()) {
      Fatal(std::string(live.message()));
    }
    PhaseOptions lag_phase = phase;
    lag_phase.writes = std::max<int64_t>(2000, run.writes / 5);
    lag_phase.duration_s = 0;
    lag_phase.first_write = 2000000000;
    lag_phase.sample_every = sample_every;
    lag_phase.label = "lag phase";
    lag_run = Phase(writable, all_nodes, lag_phase, &tracker).Run();
  }
  if (sampling) tracker.WaitComplete(absl::Seconds(10));
  watchers.Stop();
  const LagTracker::Summary lag = tracker.Summarize();

  if (start_cluster) {
    for (const Endpoint& e : nodes) Cleanup::Get().Stop(e.pid, absl::Seconds(10));
  }

  std::optional<EchoResult> echo;
  std::optional<double> leveldb_rate;
  const int64_t baseline_n = std::min<int64_t>(
      absl::GetFlag(FLAGS_baseline_calls), std::max<int64_t>(run.writes, 1000));
  if (baselines) {
    // Without fsync, enough puts to fill the memtable several times over (about 70 bytes
    // each), so that the baseline pays for flushes and compactions as the nodes do, not only
    // the write-ahead log and the memtable. With fsync each put waits for the disk: the run's
    // own count.
    const int64_t leveldb_n =
        fsync ? baseline_n : std::max<int64_t>(1, absl::GetFlag(FLAGS_leveldb_baseline_puts));
    if (!json_only) {
      std::fprintf(stderr, "baselines: gRPC echo (%lld calls), bare LevelDB (%lld puts)...\n",
                   static_cast<long long>(baseline_n), static_cast<long long>(leveldb_n));
    }
    echo = RunEchoBaseline(phase.concurrency, baseline_n, phase.shape);
    leveldb_rate = RunLevelDbBaseline(work_dir + "/leveldb-baseline", phase.concurrency, leveldb_n,
                                      phase.shape, fsync);
  }

  const double seconds = run.seconds();
  const double writes_per_s = seconds > 0 ? run.writes / seconds : 0;
  const double reads_per_s = seconds > 0 ? run.reads / seconds : 0;
  const double bytes_per_write = run.writes > 0 ? static_cast<double>(traffic.bytes) / run.writes : 0;
  const double tcp_bytes_per_write =
      tcp.known() && run.writes > 0 ? static_cast<double>(tcp.bytes) / run.writes : -1;
  const double entries_per_frame =
      traffic.frames > 0 ? static_cast<double>(traffic.entries) / traffic.frames : 0;
  const double updates_per_message =
      run.messages_sent > 0 ? static_cast<double>(run.writes) / run.messages_sent : 0;
  auto p = [](const std::vector<double>& v, double q) { return PercentileOfSorted(v, q); };

  if (!json_only) {
    std::printf("mergedb-bench: %s\n", describe.c_str());
    std::printf("  %-40s %s\n", "measure", "value");
    std::printf("  %-40s %lld in %.2f s\n", "writes acknowledged", static_cast<long long>(run.writes), seconds);
    std::printf("  %-40s %.0f\n", "acknowledged writes/s", writes_per_s);
    if (phase.rate > 0) {
      std::printf("  %-40s %lld of %lld (%.0f operations/s asked)\n",
                  "issued over 1 ms after their turn", static_cast<long long>(run.late),
                  static_cast<long long>(run.writes + run.reads), phase.rate);
    }
    std::printf("  %-40s %.0f / %.0f / %.0f\n", "write latency p50 / p99 / p99.9 (us)",
                p(run.write_latency_us, 0.5), p(run.write_latency_us, 0.99),
                p(run.write_latency_us, 0.999));
    if (run.reads > 0) {
      std::printf("  %-40s %.0f (%lld)\n", "reads/s", reads_per_s, static_cast<long long>(run.reads));
      std::printf("  %-40s %.0f / %.0f / %.0f\n", "read latency p50 / p99 / p99.9 (us)",
                  p(run.read_latency_us, 0.5), p(run.read_latency_us, 0.99),
                  p(run.read_latency_us, 0.999));
    }
    if (sampling) {
      std::printf("  %-40s %.2f / %.2f  (%zu of %lld samples, 1 write in %d; %lld shown before the ack)\n",
                  "replication lag p50 / p99 (ms)", p(lag.lags_ms, 0.5), p(lag.lags_ms, 0.99),
                  lag.lags_ms.size(), static_cast<long long>(lag.expected), sample_every,
                  static_cast<long long>(lag.before_ack));
      if (lag_run.has_value()) {
        std::printf("  %-40s %lld writes at %.0f writes/s, latency p50 %.0f us, p99 %.0f us\n",
                    "  lag measured in a separate phase:", static_cast<long long>(lag_run->writes),
                    lag_run->writes / std::max(1e-9, lag_run->seconds()),
                    p(lag_run->write_latency_us, 0.5), p(lag_run->write_latency_us, 0.99));
      } else {
        std::printf("  %-40s during the main measurement (--lag=inline)\n", "  lag measured");
      }
    }
    if (convergence_ms >= 0) {
      std::printf("  %-40s %.1f\n", "convergence after the last ack (ms)", convergence_ms);
    } else {
      std::printf("  %-40s NOT CONVERGED within 120 s\n", "convergence after the last ack (ms)");
    }
    std::printf("  %-40s %.0f\n", "bytes between nodes per write", bytes_per_write);
    if (tcp.known()) {
      std::printf("  %-40s %.0f (over %d connections%s)\n", "  the same, TCP payload (all framing)",
                  tcp_bytes_per_write, tcp.sockets,
                  tcp.vanished > 0
                      ? absl::StrCat("; ", tcp.vanished, " closed meanwhile, not counted").c_str()
                      : "");
    }
    std::printf("  %-40s %.1f\n", "log entries per replication frame", entries_per_frame);
    if (phase.mode == Mode::kBatch) {
      std::printf("  %-40s %.1f\n", "updates per UpdateBatch message", updates_per_message);
    }
    for (const NodeStats& n : node_stats) {
      std::printf("  %-40s %.2f CPU s (%.1f us/write), peak RSS %.1f MiB\n",
                  absl::StrCat("node ", n.name).c_str(), n.cpu_s,
                  run.writes > 0 ? n.cpu_s * 1e6 / run.writes : 0, n.peak_rss_mib);
    }
    std::printf("  %-40s %.2f CPU s (%.1f us/operation)\n", "client (this tool)", client_cpu,
                client_cpu * 1e6 / std::max<int64_t>(1, run.writes + run.reads));
    if (others_cores >= 0) {
      std::printf("  %-40s %.2f of %u cores on average%s\n", "other processes on the machine",
                  others_cores, std::thread::hardware_concurrency(),
                  others_cores > 0.1 ? "  WARNING: the machine was not quiet; numbers are low"
                                     : "");
    }
    if (echo.has_value()) {
      std::printf("  %-40s %.0f calls/s, p50 %.0f us, p99 %.0f us  -> mergedb/echo %.2fx\n",
                  "baseline: gRPC unary echo (1 process)", echo->calls_per_s, echo->p50_us,
                  echo->p99_us, writes_per_s / echo->calls_per_s);
      std::printf("  %-40s %.0f puts/s (%d writers, sync %s)  -> mergedb/leveldb %.2fx\n",
                  "baseline: bare LevelDB Put", *leveldb_rate, phase.concurrency,
                  fsync ? "on" : "off", writes_per_s / *leveldb_rate);
    }
    std::fflush(stdout);
  }

  JsonObject json;
  json.AddString("tool", "mergedb-bench");
  json.AddString("workload", "W1");
  json.AddString("mode", mode);
  json.AddString("write_concern", concern);
  json.AddBool("started_cluster", start_cluster);
  json.Add("nodes", static_cast<int>(nodes.size()));
  if (start_cluster) {
    json.AddBool("fsync", fsync);
  } else {
    json.AddRaw("fsync", "null");  // as the targets run: unknown here
  }
  json.Add("concurrency", phase.concurrency);
  if (phase.rate > 0) {
    json.Add("rate", phase.rate);
    json.Add("late", run.late);
  }
  if (phase.mode != Mode::kUnary) json.Add("streams", phase.streams);
  json.Add("documents", phase.shape.documents);
  json.Add("value_size", static_cast<int64_t>(phase.shape.value_size));
  json.Add("cores", static_cast<int>(std::thread::hardware_concurrency()));
  json.Add("writes", run.writes);
  json.Add("reads", run.reads);
  json.Add("seconds", seconds);
  json.Add("writes_per_s", writes_per_s);
  json.Add("reads_per_s", reads_per_s);
  json.Add("latency_us", Percentiles(run.write_latency_us, 1, true));
  if (run.reads > 0) json.Add("read_latency_us", Percentiles(run.read_latency_us, 1, true));
  if (sampling) {
    JsonObject l = Percentiles(lag.lags_ms, 1, false);
    l.Add("samples", static_cast<int64_t>(lag.lags_ms.size()));
    l.Add("expected", lag.expected);
    l.Add("before_ack", lag.before_ack);
    l.Add("sample_every", sample_every);
    l.AddString("phase", lag_run.has_value() ? "separate" : "inline");
    if (lag_run.has_value()) {
      l.Add("phase_writes", lag_run->writes);
      l.Add("phase_writes_per_s", lag_run->writes / std::max(1e-9, lag_run->seconds()));
    }
    json.Add("lag_ms", l);
  }
  json.Add("convergence_ms", convergence_ms);
  json.Add("bytes_between_nodes_per_write", bytes_per_write);
  if (tcp.known()) {
    json.Add("tcp_bytes_between_nodes_per_write", tcp_bytes_per_write);
    json.Add("tcp_sockets_closed_meanwhile", tcp.vanished);
  }
  json.Add("entries_per_frame", entries_per_frame);
  if (phase.mode == Mode::kBatch) json.Add("updates_per_message", updates_per_message);
  std::vector<std::string> per_node;
  for (const NodeStats& n : node_stats) {
    per_node.push_back(JsonObject()
                           .AddString("name", n.name)
                           .Add("cpu_s", n.cpu_s)
                           .Add("peak_rss_mib", n.peak_rss_mib)
                           .str());
  }
  json.AddRaw("node_stats", "[" + absl::StrJoin(per_node, ",") + "]");
  json.Add("client_cpu_s", client_cpu);
  if (others_cores >= 0) json.Add("other_processes_cores", others_cores);
  if (echo.has_value()) {
    JsonObject b;
    b.Add("echo_calls_per_s", echo->calls_per_s);
    b.Add("echo_latency_us", JsonObject().Add("p50", echo->p50_us).Add("p99", echo->p99_us).Add("p999", echo->p999_us));
    b.Add("leveldb_puts_per_s", *leveldb_rate);
    b.Add("mergedb_over_echo", writes_per_s / echo->calls_per_s);
    b.Add("mergedb_over_leveldb", writes_per_s / *leveldb_rate);
    b.Add("calls", baseline_n);
    json.Add("baselines", b);
  }
  std::printf("%s\n", json.str().c_str());
  std::fflush(stdout);
  if (!converged.has_value()) Fatal("the nodes did not converge within 120 s");
  Cleanup::Get().Run();
  return 0;
}

}  // namespace
}  // namespace mergedb::bench

int main(int argc, char** argv) { return mergedb::bench::Main(argc, argv); }

// Shared by the benchmarks: the W1 write mix, an asynchronous unary client that keeps a fixed
// number of calls in flight (so the client is never the bottleneck of a one-write-per-RPC
// server), optionally paced to a rate; a bare-LevelDB writer loop (the storage baseline); and
// small helpers for percentiles, /proc process statistics and one-line JSON reports.
//
// Header-only. Thread safety: every function is safe to call from any thread; the classes are
// not thread-safe unless their comment says so.
#ifndef MERGEDB_BENCH_BENCH_UTIL_H_
#define MERGEDB_BENCH_BENCH_UTIL_H_

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
// Declares the std::default_delete specialization Drive's unique_ptr of a reader needs.
#include "grpcpp/support/async_unary_call.h"
#include "leveldb/db.h"
#include "leveldb/filter_policy.h"
#include "mergedb/v1/api.pb.h"

namespace mergedb::bench {

using Clock = std::chrono::steady_clock;
inline constexpr int kW1Documents = 10000;

inline double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// A printable string of random letters and digits: values no compressor can shrink much (about
// 6 bits of entropy per byte), so that bytes-on-the-wire figures are not flattered.
inline std::string RandomValue(std::mt19937_64& rng, size_t size) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string value(size, ' ');
  for (char& c : value) c = kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
  return value;
}

// The shape of a W1 write: which collection, how many documents, how long the set values are.
struct W1Shape {
  std::string collection = "w1";
  int documents = kW1Documents;
  size_t value_size = 64;
};

// W1: over `shape.documents` documents (chosen uniformly), even writes set the register "name"
// to a random `shape.value_size`-byte string (RandomValue), odd writes increment the counter
// "count" by 1.
inline mergedb::v1::UpdateRequest W1Request(std::mt19937_64& rng, uint64_t i,
                                            const W1Shape& shape) {
  mergedb::v1::UpdateRequest request;
  request.set_collection(shape.collection);
  request.set_id("doc" + std::to_string(rng() % static_cast<uint64_t>(shape.documents)));
  auto* op = request.add_ops();
  if (i % 2 == 0) {
    op->add_path("name");
    op->mutable_set()->mutable_value()->mutable_scalar()->set_string_value(
        RandomValue(rng, shape.value_size));
  } else {
    op->add_path("count");
    op->mutable_increment()->set_by(1);
  }
  return request;
}

inline mergedb::v1::UpdateRequest W1Request(std::mt19937_64& rng, uint64_t i,
                                            const std::string& collection = "w1") {
  W1Shape shape;
  shape.collection = collection;
  return W1Request(rng, i, shape);
}

// What the nodes sent each other (the PeerStatus counters summed over every node's peers):
// payload bytes, replication frames and the log entries in them.
struct Traffic {
  uint64_t bytes = 0;
  uint64_t frames = 0;
  uint64_t entries = 0;
  Traffic operator-(const Traffic& o) const {
    return {bytes - o.bytes, frames - o.frames, entries - o.entries};
  }
};

// The p-quantile (0..1) of an ascending vector; 0 when it is empty.
inline double PercentileOfSorted(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1,
                         static_cast<size_t>(p * static_cast<double>(sorted.size())))];
}

// User plus system CPU this process has used, in seconds.
inline double CpuSecondsOfSelf() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

struct DriveResult {
  double per_second = 0;
  std::vector<double> latencies_us;  // sorted
  double Percentile(double p) const { return PercentileOfSorted(latencies_us, p); }
};

template <typename Stub>
using PrepareUpdate = std::unique_ptr<grpc::ClientAsyncResponseReader<mergedb::v1::UpdateResponse>> (
    Stub::*)(grpc::ClientContext*, const mergedb::v1::UpdateRequest&, grpc::CompletionQueue*);

// Sends `total` calls, at most `concurrency` in flight, round-robin over `stubs`, paced to
// `rate` per second when rate > 0 (call i is due at i / rate; a call that finds `concurrency`
// in flight goes as soon as one completes). make(rng, i) builds call i; on_ack(i, stub index)
// runs as it completes. When paced, a thread of its own issues the calls (sleeping until each
// one's turn, to the microsecond) while this one takes answers as they arrive: a driver that
// slept between answers would see them late, and a benchmark that times acknowledgements
// (replication lag) would measure its own sleeping. (A completion-queue deadline cannot pace:
// gRPC rounds it up to the next millisecond.)
// Exits the process on a failed call: a benchmark with errors measures nothing.
template <typename Stub, typename Make, typename OnAck>
DriveResult Drive(const std::vector<Stub*>& stubs, PrepareUpdate<Stub> prepare, int concurrency,
                  int total, double rate, Make make, OnAck on_ack) {
  struct Call {
    grpc::ClientContext context;
    mergedb::v1::UpdateResponse response;
    grpc::Status status;
    uint64_t i = 0;
    size_t stub = 0;
    Clock::time_point started;
    std::unique_ptr<grpc::ClientAsyncResponseReader<mergedb::v1::UpdateResponse>> reader;
  };
  grpc::CompletionQueue cq;
  std::mt19937_64 rng(42);
  DriveResult result;
  result.latencies_us.reserve(static_cast<size_t>(total));
  int issued = 0;  // touched only by the issuing thread
  const auto start = Clock::now();
  auto issue = [&] {
    auto* call = new Call;
    call->i = static_cast<uint64_t>(issued);
    call->stub = static_cast<size_t>(issued) % stubs.size();
    call->started = Clock::now();
    call->reader = (stubs[call->stub]->*prepare)(&call->context, make(rng, call->i), &cq);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
    ++issued;
  };
  absl::Mutex mu;
  int in_flight = 0;  // paced runs only
  std::thread issuer;
  if (rate > 0) {
    issuer = std::thread([&] {
      while (issued < total) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(issued / rate)));
        {
          absl::MutexLock lock(&mu);
          auto room = [&] { return in_flight < concurrency; };
          mu.Await(absl::Condition(&room));
          ++in_flight;
        }
        issue();
      }
    });
  } else {
    for (int k = 0; k < concurrency && issued < total; ++k) issue();
  }
  void* tag;
  bool ok;
  for (int done = 0; done < total; ++done) {
    if (!cq.Next(&tag, &ok)) break;
    auto* call = static_cast<Call*>(tag);
    if (!call->status.ok()) {
      std::fprintf(stderr, "call failed: %s\n", call->status.error_message().c_str());
      std::exit(1);
    }
    result.latencies_us.push_back(
        std::chrono::duration<double, std::micro>(Clock::now() - call->started).count());
    on_ack(call->i, call->stub);
    delete call;
    if (rate > 0) {
      absl::MutexLock lock(&mu);
      --in_flight;
    } else if (issued < total) {
      issue();
    }
  }
  if (issuer.joinable()) issuer.join();
  result.per_second = total / std::chrono::duration<double>(Clock::now() - start).count();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::sort(result.latencies_us.begin(), result.latencies_us.end());
  return result;
}

// Runs fn(i, doc) for i in [0, updates) on `writers` threads (doc uniform in [0, documents));
// returns calls per second.
template <typename Fn>
double RunWriters(int writers, int updates, Fn fn, int documents = kW1Documents) {
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(w + 1));
      while (true) {
        const int i = next.fetch_add(1);
        if (i >= updates) break;
        fn(i, static_cast<int>(rng() % static_cast<unsigned>(documents)));
      }
    });
  }
  for (auto& t : threads) t.join();
  return updates / SecondsBetween(start, Clock::now());
}

// A LevelDB database opened the way the store opens its own (paranoid checks, 16 MiB write
// buffer, 10-bit bloom filter): the "bare LevelDB" baselines write through it.
struct BareLevelDb {
  std::unique_ptr<const leveldb::FilterPolicy> filter;
  std::unique_ptr<leveldb::DB> db;  // declared last: closed before the filter goes

  // Creates a fresh database in `dir` (which must not hold one). Exits the process on failure:
  // a benchmark without its baseline measures nothing.
  static BareLevelDb Create(const std::string& dir) {
    BareLevelDb bare;
    bare.filter.reset(leveldb::NewBloomFilterPolicy(10));
    leveldb::Options options;
    options.create_if_missing = true;
    options.error_if_exists = true;
    options.paranoid_checks = true;
    options.write_buffer_size = size_t{16} << 20;
    options.filter_policy = bare.filter.get();
    leveldb::DB* db = nullptr;
    const leveldb::Status status = leveldb::DB::Open(options, dir, &db);
    if (!status.ok()) {
      std::fprintf(stderr, "bare LevelDB in %s: %s\n", dir.c_str(), status.ToString().c_str());
      std::exit(1);
    }
    bare.db.reset(db);
    return bare;
  }
};

// CPU time and peak memory of a live process, from /proc (Linux).
struct ProcessStats {
  bool ok = false;
  double cpu_seconds = 0;     // utime + stime
  double peak_rss_mib = 0;    // VmHWM
};

// Parses a /proc/PID/stat line: the parent's pid and utime + stime in clock ticks.
inline bool ParseProcStat(const std::string& line, long* ppid, unsigned long long* ticks) {
  // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 > line.size()) return false;
  std::istringstream fields(line.substr(paren + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  int k = 3;
  for (; k <= 15 && fields >> field; ++k) {
    if (k == 4) *ppid = std::strtol(field.c_str(), nullptr, 10);
    if (k == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (k == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  *ticks = utime + stime;
  return k > 15;
}

inline ProcessStats ReadProcessStats(pid_t pid) {
  ProcessStats stats;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  long ppid = 0;
  unsigned long long ticks = 0;
  if (!std::getline(stat, line) || !ParseProcStat(line, &ppid, &ticks)) return stats;
  stats.cpu_seconds = static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      stats.peak_rss_mib = std::strtod(line.c_str() + 6, nullptr) / 1024.0;  // kB
      stats.ok = true;
    }
  }
  return stats;
}

// CPU seconds the machine's user-space processes have spent since boot: /proc/stat's busy time
// (user, nice, system, steal) less kernel threads (children of kthreadd: ext4's journal and
// writeback threads do much of a benchmark's own fsync work) and less interrupt time (irq and
// softirq, where loopback TCP's receive work lands), which no process is charged for. The
// difference of two readings, less the benchmark's own processes, is what *other* programs took
// during a run: on a shared machine, a figure measured while others were busy is low, and the
// report says so. (Steal, CPU the hypervisor gave other machines, counts as others too.)
inline double UserProcessesBusySeconds() {
  std::ifstream stat("/proc/stat");
  std::string cpu;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                     steal = 0;
  if (!(stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal)) {
    return 0;
  }
  unsigned long long kernel_threads = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string line;
    long ppid = 0;
    unsigned long long ticks = 0;
    if (!std::getline(in, line) || !ParseProcStat(line, &ppid, &ticks)) continue;
    if (ppid == 2 || name == "2") kernel_threads += ticks;
  }
  const unsigned long long busy = user + nice + system + steal;
  return static_cast<double>(busy > kernel_threads ? busy - kernel_threads : 0) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The established TCP sockets of the machine as `ss -tinpH state established` shows them (as root
// it names every socket's process): (local address, peer address) -> owner and the bytes the
// kernel counts the socket as having sent (tcpi_bytes_sent: what the application wrote, all its
// framing included, no TCP/IP headers). nullopt when ss is missing or fails.
struct TcpSocket {
  pid_t pid = 0;
  uint64_t bytes_sent = 0;
};
using TcpSockets = std::map<std::pair<std::string, std::string>, TcpSocket>;

inline std::optional<TcpSockets> ReadTcpSockets() {
  FILE* pipe = popen("ss -tinpH state established 2>/dev/null", "r");
  if (pipe == nullptr) return std::nullopt;
  std::string out;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  if (pclose(pipe) != 0) return std::nullopt;
  TcpSockets sockets;
  TcpSocket* last = nullptr;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    if (line[0] != ' ' && line[0] != '\t') {
      // Recv-Q Send-Q Local Peer Process
      std::istringstream fields(line);
      std::string recv_q, send_q, local, peer;
      last = nullptr;
      if (!(fields >> recv_q >> send_q >> local >> peer)) continue;
      TcpSocket& socket = sockets[{local, peer}];
      const size_t at = line.find("pid=");
      if (at != std::string::npos)
        socket.pid = static_cast<pid_t>(std::atol(line.c_str() + at + 4));
      last = &socket;
    } else if (last != nullptr) {
      // The details line; ss leaves out bytes_sent while it is 0.
      const size_t at = line.find("bytes_sent:");
      if (at != std::string::npos)
        last->bytes_sent = std::strtoull(line.c_str() + at + 11, nullptr, 10);
    }
  }
  return sockets;
}

// What the processes `pids` sent one another over TCP between two readings: the growth of
// bytes_sent of every socket whose both ends belong to them (each direction counted once, by
// its sender). A socket opened meanwhile counts from 0; one closed meanwhile is lost, and
// counted in `vanished` so that a report can say its figure is low.
struct TcpTraffic {
  uint64_t bytes = 0;
  int sockets = 0;
  int vanished = 0;
  // Without a socket between the processes seen (`ss` could not be read, or names other users'
  // processes only to root) the figure is unknown, not 0.
  bool known() const { return sockets > 0; }
};

inline TcpTraffic TcpTrafficBetween(const TcpSockets& before, const TcpSockets& after,
                                    const std::set<pid_t>& pids) {
  auto between = [&pids](const TcpSockets& table, const std::pair<std::string, std::string>& key,
                         const TcpSocket& socket) {
    if (pids.count(socket.pid) == 0) return false;
    auto other = table.find({key.second, key.first});
    return other != table.end() && pids.count(other->second.pid) > 0;
  };
  TcpTraffic traffic;
  for (const auto& [key, socket] : after) {
    if (!between(after, key, socket)) continue;
    auto old = before.find(key);
    const uint64_t base = old != before.end() && old->second.bytes_sent <= socket.bytes_sent
                              ? old->second.bytes_sent
                              : 0;
    traffic.bytes += socket.bytes_sent - base;
    ++traffic.sockets;
  }
  for (const auto& [key, socket] : before) {
    if (between(before, key, socket) && after.count(key) == 0) ++traffic.vanished;
  }
  return traffic;
}

// Builds one JSON object on one line, fields in insertion order. Non-finite numbers become null.
class JsonObject {
 public:
  JsonObject& Add(const std::string& key, double value) {
    char buffer[64];
    if (std::isfinite(value)) {
      std::snprintf(buffer, sizeof buffer, "%.6g", value);
    } else {
      std::snprintf(buffer, sizeof buffer, "null");
    }
    return AddRaw(key, buffer);
  }
  JsonObject& Add(const std::string& key, int64_t value) { return AddRaw(key, std::to_string(value)); }
  JsonObject& Add(const std::string& key, int value) { return Add(key, static_cast<int64_t>(value)); }
  JsonObject& AddBool(const std::string& key, bool value) { return AddRaw(key, value ? "true" : "false"); }
  JsonObject& AddString(const std::string& key, const std::string& value) {
    return AddRaw(key, Quote(value));
  }
  JsonObject& Add(const std::string& key, const JsonObject& value) { return AddRaw(key, value.str()); }
  // `json` must already be valid JSON (an array, say).
  JsonObject& AddRaw(const std::string& key, const std::string& json) {
    body_ += (body_.empty() ? "" : ",") + Quote(key) + ":" + json;
    return *this;
  }
  std::string str() const { return "{" + body_ + "}"; }

  static std::string Quote(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char buffer[8];
        std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
        out += buffer;
      } else {
        out += c;
      }
    }
    return out + "\"";
  }

 private:
  std::string body_;
};

}  // namespace mergedb::bench

#endif  // MERGEDB_BENCH_BENCH_UTIL_H_

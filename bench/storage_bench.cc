// storage_bench: small-document update throughput through the storage layer, beside bare LevelDB
// writing the same records with the same writer count (one WriteBatch per update), measured in
// the same run; and the cost of adding one element to a 10-element versus a 100,000-element set.
//
//   build/bench/storage_bench [--updates=N] [--dir=/tmp/...]
//
// Prints a table and the ratios. Not part of the test suite.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "crdt/document.h"
#include "leveldb/db.h"
#include "leveldb/write_batch.h"
#include "storage/fault_env.h"
#include "storage/keys.h"
#include "storage/store.h"

namespace mergedb::storage {
namespace {

using bench::Clock;
using bench::RunWriters;
constexpr crdt::ReplicaId kReplica = 0x5eed;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The records one counter increment of document `doc` commits, as the store lays them out:
// the counter leaf, the document context and the log entry.
struct Records {
  std::string leaf_key, leaf_value, context_key, context_value, log_value;
};

Records RecordsFor(int doc, uint64_t n) {
  crdt::Document d;
  crdt::Document delta;
  for (uint64_t i = 0; i < n; ++i) delta = *d.Increment({"n"}, 1, kReplica);
  Records r;
  const std::string prefix = keys::DocPrefix("bench", "doc" + std::to_string(doc));
  const std::string leaf = crdt::FieldKey({"n"}, crdt::FieldKind::kCounter);
  r.leaf_key = keys::DocLeaf(prefix, leaf);
  mergedb::v1::Leaf proto;
  crdt::DotKernel::EncodeLeaf("", *d.kernel().FindLeaf(leaf), &proto);
  r.leaf_value = proto.SerializeAsString();
  r.context_key = keys::DocContext(prefix);
  mergedb::v1::CausalContext context;
  d.context().EncodeTo(&context);
  r.context_value = context.SerializeAsString();
  mergedb::v1::LogEntry entry;
  entry.set_collection("bench");
  entry.set_id("doc" + std::to_string(doc));
  delta.EncodeTo(entry.mutable_delta());
  r.log_value = entry.SerializeAsString();
  return r;
}

double BareLevelDb(const std::string& dir, Durability durability, int writers, int updates) {
  std::filesystem::remove_all(dir);
  bench::BareLevelDb bare = bench::BareLevelDb::Create(dir);
  leveldb::DB* db = bare.db.get();
  const Records sample = RecordsFor(1, 5);
  leveldb::WriteOptions wo;
  wo.sync = durability == Durability::kSyncEachCommit;
  std::atomic<uint64_t> seq{0};
  const double rate = RunWriters(writers, updates, [&](int, int doc) {
    const std::string prefix = keys::DocPrefix("bench", "doc" + std::to_string(doc));
    leveldb::WriteBatch batch;
    batch.Put(keys::DocLeaf(prefix, "counter-leaf"), sample.leaf_value);
    batch.Put(keys::DocContext(prefix), sample.context_value);
    batch.Put(keys::Log(kReplica, ++seq), sample.log_value);
    if (!db->Write(wo, &batch).ok()) std::abort();
  });
  return rate;
}

double StoreUpdates(const std::string& dir, Durability durability, int writers, int updates) {
  std::filesystem::remove_all(dir);
  StoreOptions options;
  options.path = dir;
  options.cluster_id = "bench";
  options.node_name = "n1";
  options.durability = durability;
  auto store = Store::Open(options);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", std::string(store.status().message()).c_str());
    std::abort();
  }
  const crdt::ReplicaId me = (*store)->replica_id();
  return RunWriters(writers, updates, [&](int, int doc) {
    LocalWrite write;
    write.collection = "bench";
    write.id = "doc" + std::to_string(doc);
    write.mutate = [me](crdt::Document& d) { return d.Increment({"n"}, 1, me); };
    if (!(*store)->ApplyLocal(write).ok()) std::abort();
  });
}

// Adds one element to a set of `size` elements, `adds` times; returns (bytes, µs) per add.
std::pair<double, double> SetAddCost(const std::string& dir, int size, int adds) {
  std::filesystem::remove_all(dir);
  FaultInjectionEnv env(leveldb::Env::Default());
  StoreOptions options;
  options.path = dir;
  options.cluster_id = "bench";
  options.node_name = "n1";
  options.env = &env;
  auto store = *Store::Open(options);
  const crdt::ReplicaId me = store->replica_id();
  LocalWrite fill;
  fill.collection = "bench";
  fill.id = "set";
  fill.mutate = [&](crdt::Document& d) {
    std::vector<crdt::Scalar> elements;
    for (int i = 0; i < size; ++i) elements.push_back(crdt::Scalar::OfInt(i));
    return d.AddElements({"s"}, elements, me);
  };
  if (!store->ApplyLocal(fill).ok()) std::abort();
  const uint64_t bytes_before = env.bytes_written();
  const auto start = Clock::now();
  for (int i = 0; i < adds; ++i) {
    LocalWrite add;
    add.collection = "bench";
    add.id = "set";
    add.mutate = [&, i](crdt::Document& d) {
      return d.AddElements({"s"}, {crdt::Scalar::OfString("new" + std::to_string(i))}, me);
    };
    if (!store->ApplyLocal(add).ok()) std::abort();
  }
  const double micros = Seconds(Clock::now() - start) * 1e6 / adds;
  return {static_cast<double>(env.bytes_written() - bytes_before) / adds, micros};
}

}  // namespace
}  // namespace mergedb::storage

int main(int argc, char** argv) {
  using namespace mergedb::storage;
  int updates = 100000;
  std::string dir = "/tmp/mergedb-storage-bench-" + std::to_string(getpid());
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--updates=", 10) == 0 && absl::SimpleAtoi(argv[i] + 10, &updates)) continue;
    if (std::strncmp(argv[i], "--dir=", 6) == 0) {
      dir = argv[i] + 6;
      continue;
    }
    std::fprintf(stderr, "usage: %s [--updates=N] [--dir=PATH]\n", argv[0]);
    return 2;
  }
  std::printf("storage_bench: %d cores, small-document counter updates over %d documents\n",
              static_cast<int>(std::thread::hardware_concurrency()), 10000);
  std::printf("%-8s %-8s %14s %14s %8s\n", "fsync", "writers", "store upd/s", "leveldb upd/s",
              "ratio");
  for (Durability durability : {Durability::kNoSync, Durability::kSyncEachCommit}) {
    const bool sync = durability == Durability::kSyncEachCommit;
    for (int writers : {1, 4, 16}) {
      // fsync runs are bounded by the disk's flush latency: fewer updates keep them short.
      const int n = sync ? std::max(1000, updates / (writers == 1 ? 50 : 10)) : updates;
      const double bare = BareLevelDb(dir + "-bare", durability, writers, n);
      const double store = StoreUpdates(dir + "-store", durability, writers, n);
      std::printf("%-8s %-8d %14.0f %14.0f %7.2fx\n", sync ? "on" : "off", writers, store, bare,
                  store / bare);
    }
  }
  const auto small = SetAddCost(dir + "-set10", 10, 2000);
  const auto large = SetAddCost(dir + "-set100k", 100000, 2000);
  std::printf("\nadd one element to a set (no fsync):\n");
  std::printf("  %-18s %10.0f bytes/write %8.1f us/write\n", "10 elements", small.first, small.second);
  std::printf("  %-18s %10.0f bytes/write %8.1f us/write\n", "100,000 elements", large.first,
              large.second);
  std::printf("  ratio 100,000 / 10: %.2fx bytes, %.2fx time\n", large.first / small.first,
              large.second / small.second);
  for (const char* suffix : {"-bare", "-store", "-set10", "-set100k"}) {
    std::filesystem::remove_all(dir + suffix);
  }
  return 0;
}

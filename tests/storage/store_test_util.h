// Test fixtures for the storage layer: a store on LevelDB's in-memory Env behind the
// fault-injecting Env, and small document updates.
#ifndef MERGEDB_TESTS_STORAGE_STORE_TEST_UTIL_H_
#define MERGEDB_TESTS_STORAGE_STORE_TEST_UTIL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "leveldb/env.h"
#include "leveldb/helpers/memenv.h"
#include "leveldb/iterator.h"
#include "leveldb/options.h"
#include "leveldb/table.h"
#include "storage/fault_env.h"
#include "storage/store.h"

namespace mergedb::storage::testing {

class MemStoreTest : public ::testing::Test {
 protected:
  MemStoreTest()
      : mem_env_(leveldb::NewMemEnv(leveldb::Env::Default())), env_(mem_env_.get()) {}

  StoreOptions Options() {
    StoreOptions options;
    options.path = "/db";
    options.cluster_id = "test-cluster";
    options.node_name = "n1";
    options.env = &env_;
    return options;
  }

  // Another node's data dir in the same in-memory Env.
  StoreOptions SecondNode(std::string path) {
    StoreOptions options = Options();
    options.path = std::move(path);
    options.node_name = "n2";
    return options;
  }

  std::unique_ptr<Store> OpenOrDie(StoreOptions options) {
    auto store = Store::Open(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }
  std::unique_ptr<Store> OpenOrDie() { return OpenOrDie(Options()); }

  std::unique_ptr<leveldb::Env> mem_env_;
  FaultInjectionEnv env_;
};

inline LocalWrite Increment(std::string collection, std::string id, std::string field,
                            int64_t by, crdt::ReplicaId replica, std::string request_id = "") {
  LocalWrite write;
  write.collection = std::move(collection);
  write.id = std::move(id);
  write.request_id = std::move(request_id);
  write.unix_millis = 1000;
  write.mutate = [field = std::move(field), by, replica](crdt::Document& doc) {
    return doc.Increment({field}, by, replica);
  };
  return write;
}

inline LocalWrite SetString(std::string collection, std::string id, std::string field,
                            std::string value, crdt::ReplicaId replica) {
  LocalWrite write;
  write.collection = std::move(collection);
  write.id = std::move(id);
  write.mutate = [field = std::move(field), value = std::move(value),
                  replica](crdt::Document& doc) {
    return doc.SetRegister({field}, crdt::RegisterValue::OfScalar(crdt::Scalar::OfString(value)),
                           replica, crdt::Hlc::FromParts(1, 0));
  };
  return write;
}

// Increments counters a and b of a document in one update: readers and crash recovery must never
// see one without the other.
inline LocalWrite IncrementPair(std::string collection, std::string id, crdt::ReplicaId replica,
                                std::string request_id = "") {
  LocalWrite write;
  write.collection = std::move(collection);
  write.id = std::move(id);
  write.request_id = std::move(request_id);
  write.mutate = [replica](crdt::Document& doc) -> absl::StatusOr<crdt::Document> {
    auto a = doc.Increment({"a"}, 1, replica);
    if (!a.ok()) return a;
    auto b = doc.Increment({"b"}, 1, replica);
    if (!b.ok()) return b;
    a->Join(*b);
    return a;
  };
  return write;
}

inline int64_t CounterOf(const crdt::Document& doc, const std::string& field) {
  auto fields = doc.ReadField({field});
  return fields.empty() ? 0 : fields[0].value().counter();
}

// Breaks, on `env`, the checksum of the table block that holds `key_at(0)` in the closed data
// dir `dir`, as a bad disk sector would. The block's bytes still decode: only a reader that
// verifies checksums notices. `key_at(k)` for k > 0 are later keys, in order, reaching into the
// next data block (a block's checksum ends where the next block starts). Blocks are found
// through the table's index, whatever their compression.
inline void BreakBlockChecksum(leveldb::Env* env, const std::string& dir,
                               const std::function<std::string(int)>& key_at) {
  std::vector<std::string> children;
  ASSERT_TRUE(env->GetChildren(dir, &children).ok());
  int damaged = 0;
  for (const std::string& name : children) {
    if (name.size() < 4 || name.compare(name.size() - 4, 4, ".ldb") != 0) continue;
    const std::string path = dir + "/" + name;
    uint64_t size = 0;
    ASSERT_TRUE(env->GetFileSize(path, &size).ok());
    uint64_t next_block = 0;
    {
      leveldb::RandomAccessFile* raw = nullptr;
      ASSERT_TRUE(env->NewRandomAccessFile(path, &raw).ok());
      std::unique_ptr<leveldb::RandomAccessFile> file(raw);
      leveldb::Table* table = nullptr;
      ASSERT_TRUE(leveldb::Table::Open(leveldb::Options(), file.get(), size, &table).ok());
      std::unique_ptr<leveldb::Table> owned(table);
      // The table's internal keys are a user key and 8 bytes more, so the first index entry at
      // or after a bare user key names the block holding it. Past the last data block the
      // offset is the metaindex's.
      const uint64_t past_data = table->ApproximateOffsetOf(std::string(64, '\xff'));
      const std::string key = key_at(0);
      const uint64_t block = table->ApproximateOffsetOf(key);
      if (block >= past_data) continue;  // all of this file's keys come before the key
      std::unique_ptr<leveldb::Iterator> first(table->NewIterator(leveldb::ReadOptions()));
      first->SeekToFirst();
      ASSERT_TRUE(first->Valid());
      if (first->key().ToString().substr(0, first->key().size() - 8) > key) continue;  // or after
      for (int k = 1; k < 100000 && next_block == 0; ++k) {
        const uint64_t at = table->ApproximateOffsetOf(key_at(k));
        if (at != block) next_block = at;
      }
      ASSERT_GT(next_block, block);
      ASSERT_LT(next_block, past_data) << "the key's block is the table's last: pick another";
    }
    std::string contents;
    ASSERT_TRUE(leveldb::ReadFileToString(env, path, &contents).ok());
    for (uint64_t at = next_block - 4; at < next_block; ++at) contents[at] ^= 0x5a;
    ASSERT_TRUE(leveldb::WriteStringToFile(env, contents, path).ok());
    ++damaged;
  }
  ASSERT_GT(damaged, 0) << "no table file in " << dir << " holds the key";
}

}  // namespace mergedb::storage::testing

#endif  // MERGEDB_TESTS_STORAGE_STORE_TEST_UTIL_H_

// FaultInjectionEnv: a leveldb::Env wrapper for durability tests and the simulator.
//
// It can fail file writes or syncs on demand, and it models a power loss: DropUnsyncedData()
// truncates every file written through it back to its last synced length (files never synced
// become empty), as a machine that crashed before its page cache reached the disk would leave
// them. Modeled on LevelDB's own db/fault_injection_test.cc. Directory entries are not modeled:
// a created file survives a crash (empty if it was never synced).
//
// Thread safety: thread-safe.
#ifndef MERGEDB_STORAGE_FAULT_ENV_H_
#define MERGEDB_STORAGE_FAULT_ENV_H_

#include <atomic>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "leveldb/env.h"

namespace mergedb::storage {

class FaultInjectionEnv : public leveldb::EnvWrapper {
 public:
  // `base` is borrowed and must outlive this Env (typically leveldb::NewMemEnv(...)).
  explicit FaultInjectionEnv(leveldb::Env* base) : EnvWrapper(base) {}

  // While set, Append (respectively Sync) of any file fails with an I/O error.
  void set_fail_writes(bool fail) { fail_writes_ = fail; }
  void set_fail_syncs(bool fail) { fail_syncs_ = fail; }
  // The next `n` Appends fail, then writes work again: a transient error (an ENOSPC that clears).
  void fail_next_appends(int n) { fail_next_appends_ = n; }
  bool fail_writes() const { return fail_writes_; }
  // Whether this Append fails (counts down fail_next_appends).
  bool FailThisAppend();
  bool fail_syncs() const { return fail_syncs_; }
  // While not empty, appends to files whose names start with `prefix` fail as on a full disk
  // (ENOSPC's message): one directory's disk filling up, the others' not.
  void set_full_disk_under(std::string prefix) {
    absl::MutexLock lock(&mu_);
    full_prefix_ = std::move(prefix);
  }
  bool DiskFullFor(const std::string& fname) const {
    absl::MutexLock lock(&mu_);
    return !full_prefix_.empty() && fname.compare(0, full_prefix_.size(), full_prefix_) == 0;
  }

  // Bytes appended to files through this Env so far (what the store wrote, before compaction
  // rewrites): lets tests check that a write's cost follows the change.
  uint64_t bytes_written() const { return bytes_written_; }
  // Files created through this Env whose names end in `suffix` (".log": LevelDB's write-ahead
  // logs, one more at each memtable switch).
  int FilesCreated(const std::string& suffix) const {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& [name, state] : files_) {
      n += name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    }
    return n;
  }

  // The power goes now: syncs from here on persist nothing, so a store closed afterwards (whose
  // close would sync its log) loses exactly what a machine losing power at this point would.
  void CutPower();
  // Simulated crash: every file keeps only what was synced (before CutPower, if it was called),
  // and the power is back. REQUIRES: no DB is open on this Env.
  leveldb::Status DropUnsyncedData();

  leveldb::Status NewWritableFile(const std::string& fname, leveldb::WritableFile** result) override;
  leveldb::Status NewAppendableFile(const std::string& fname,
                                    leveldb::WritableFile** result) override;
  leveldb::Status RemoveFile(const std::string& fname) override;
  leveldb::Status RenameFile(const std::string& src, const std::string& target) override;

  // Called by the files it hands out.
  void RecordWrite(const std::string& fname, size_t bytes);
  void RecordSync(const std::string& fname);

 private:
  struct FileState {
    size_t size = 0;
    size_t synced = 0;
  };
  std::atomic<bool> fail_writes_{false};
  std::atomic<bool> fail_syncs_{false};
  std::atomic<int> fail_next_appends_{0};
  std::atomic<uint64_t> bytes_written_{0};
  mutable absl::Mutex mu_;
  std::map<std::string, FileState> files_ ABSL_GUARDED_BY(mu_);
  std::string full_prefix_ ABSL_GUARDED_BY(mu_);
  bool power_cut_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mergedb::storage

#endif  // MERGEDB_STORAGE_FAULT_ENV_H_

#include "storage/fault_env.h"

#include <memory>

namespace mergedb::storage {

namespace {

class FaultFile : public leveldb::WritableFile {
 public:
  FaultFile(FaultInjectionEnv* env, std::string fname, leveldb::WritableFile* base)
      : env_(env), fname_(std::move(fname)), base_(base) {}

  leveldb::Status Append(const leveldb::Slice& data) override {
    if (env_->FailThisAppend()) return leveldb::Status::IOError(fname_, "injected write failure");
    if (env_->DiskFullFor(fname_))
      return leveldb::Status::IOError(fname_, "No space left on device");
    leveldb::Status s = base_->Append(data);
    if (s.ok()) env_->RecordWrite(fname_, data.size());
    return s;
  }
  leveldb::Status Close() override { return base_->Close(); }
  leveldb::Status Flush() override {
    if (env_->fail_writes()) return leveldb::Status::IOError(fname_, "injected write failure");
    return base_->Flush();
  }
  leveldb::Status Sync() override {
    if (env_->fail_syncs()) return leveldb::Status::IOError(fname_, "injected sync failure");
    leveldb::Status s = base_->Sync();
    if (s.ok()) env_->RecordSync(fname_);
    return s;
  }

 private:
  FaultInjectionEnv* const env_;
  const std::string fname_;
  std::unique_ptr<leveldb::WritableFile> base_;
};

}  // namespace

bool FaultInjectionEnv::FailThisAppend() {
  if (fail_writes_) return true;
  int left = fail_next_appends_.load();
  while (left > 0) {
    if (fail_next_appends_.compare_exchange_weak(left, left - 1)) return true;
  }
  return false;
}

leveldb::Status FaultInjectionEnv::NewWritableFile(const std::string& fname,
                                                   leveldb::WritableFile** result) {
  leveldb::WritableFile* base = nullptr;
  leveldb::Status s = target()->NewWritableFile(fname, &base);
  if (!s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    files_[fname] = FileState{};
  }
  *result = new FaultFile(this, fname, base);
  return s;
}

leveldb::Status FaultInjectionEnv::NewAppendableFile(const std::string& fname,
                                                     leveldb::WritableFile** result) {
  uint64_t existing = 0;
  if (!target()->GetFileSize(fname, &existing).ok()) existing = 0;
  leveldb::WritableFile* base = nullptr;
  leveldb::Status s = target()->NewAppendableFile(fname, &base);
  if (!s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = files_.try_emplace(fname);
    // A file this Env has not seen was on "disk" before: all of it counts as synced.
    if (inserted) it->second = FileState{existing, existing};
  }
  *result = new FaultFile(this, fname, base);
  return s;
}

leveldb::Status FaultInjectionEnv::RemoveFile(const std::string& fname) {
  leveldb::Status s = target()->RemoveFile(fname);
  absl::MutexLock lock(&mu_);
  files_.erase(fname);
  return s;
}

leveldb::Status FaultInjectionEnv::RenameFile(const std::string& src, const std::string& target) {
  leveldb::Status s = EnvWrapper::RenameFile(src, target);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(src);
    if (it != files_.end()) {
      files_[target] = it->second;
      files_.erase(src);
    } else {
      files_.erase(target);
    }
  }
  return s;
}

void FaultInjectionEnv::RecordWrite(const std::string& fname, size_t bytes) {
  bytes_written_ += bytes;
  absl::MutexLock lock(&mu_);
  files_[fname].size += bytes;
}

void FaultInjectionEnv::RecordSync(const std::string& fname) {
  absl::MutexLock lock(&mu_);
  if (power_cut_) return;  // the disk is gone: nothing synced now persists
  FileState& state = files_[fname];
  state.synced = state.size;
}

void FaultInjectionEnv::CutPower() {
  absl::MutexLock lock(&mu_);
  power_cut_ = true;
}

leveldb::Status FaultInjectionEnv::DropUnsyncedData() {
  absl::MutexLock lock(&mu_);
  power_cut_ = false;
  for (auto& [fname, state] : files_) {
    if (state.synced >= state.size) continue;
    // Keep the synced prefix: read it, then rewrite the file with just that prefix.
    std::string kept;
    if (state.synced > 0) {
      leveldb::SequentialFile* in = nullptr;
      leveldb::Status s = target()->NewSequentialFile(fname, &in);
      if (!s.ok()) return s;
      std::unique_ptr<leveldb::SequentialFile> owned(in);
      kept.resize(state.synced);
      leveldb::Slice read;
      s = in->Read(state.synced, &read, kept.data());
      if (!s.ok()) return s;
      kept.assign(read.data(), read.size());
    }
    leveldb::WritableFile* out = nullptr;
    leveldb::Status s = target()->NewWritableFile(fname, &out);
    if (!s.ok()) return s;
    std::unique_ptr<leveldb::WritableFile> owned(out);
    s = out->Append(kept);
    if (s.ok()) s = out->Close();
    if (!s.ok()) return s;
    state.size = state.synced = kept.size();
  }
  return leveldb::Status::OK();
}

}  // namespace mergedb::storage

#include "node/async_server.h"

#include <algorithm>
#include <utility>

#include "absl/time/time.h"
#include "node/log.h"

namespace mergedb::node {

namespace {
// Blocking tasks: as many at once as calls wait at once, like the synchronous server's
// threads; past this they queue.
constexpr int kMaxBlockingThreads = 256;
// How often Shutdown complains while it waits for the calls' last events.
constexpr absl::Duration kShutdownComplaintInterval = absl::Seconds(10);
}  // namespace

void BlockingPool::Run(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
  if (static_cast<int>(tasks_.size()) > idle_ && static_cast<int>(threads_.size()) < max_threads_) {
    threads_.emplace_back([this] { Work(); });
  }
}

void BlockingPool::Work() {
  absl::MutexLock lock(&mu_);
  while (true) {
    ++idle_;
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !tasks_.empty() || stop_; };
    mu_.Await(absl::Condition(&ready));
    --idle_;
    if (tasks_.empty()) return;  // stopping, and nothing is left to run
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    mu_.Unlock();
    task();
    task = nullptr;
    mu_.Lock();
  }
}

BlockingPool::~BlockingPool() {
  // A task still running may queue another (an apply handing over to its confirmer), which may
  // start a thread: join until no thread is left.
  while (true) {
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      threads.swap(threads_);
    }
    if (threads.empty()) return;
    for (std::thread& thread : threads) thread.join();
  }
}

AsyncServer::AsyncServer(std::unique_ptr<grpc::ServerCompletionQueue> cq, int threads)
    : cq_(std::move(cq)),
      thread_count_(std::max(1, threads)),
      confirming_(kMaxBlockingThreads),
      blocking_(kMaxBlockingThreads),
      version_waits_(kMaxBlockingThreads) {}

AsyncServer::~AsyncServer() { Shutdown(); }

void AsyncServer::AddListener(std::function<void()> listen) {
  listeners_.push_back(std::move(listen));
}

void AsyncServer::Start() {
  {
    absl::MutexLock lock(&mu_);
    accepting_ = true;
  }
  for (int i = 0; i < thread_count_; ++i) {
    for (const auto& listen : listeners_) listen();
  }
  for (int i = 0; i < thread_count_; ++i) threads_.emplace_back([this] { Poll(); });
}

bool AsyncServer::CallStarting() {
  absl::MutexLock lock(&mu_);
  if (!accepting_) return false;
  ++live_calls_;
  return true;
}

void AsyncServer::CallEnded() {
  absl::MutexLock lock(&mu_);
  --live_calls_;
}

void AsyncServer::Poll() {
  void* tag = nullptr;
  bool ok = false;
  while (cq_->Next(&tag, &ok)) {
    auto* event = static_cast<AsyncTag*>(tag);
    event->call->OnEvent(event->event, ok);
  }
}

void AsyncServer::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    accepting_ = false;
  }
  // The server shut down first, so every call has ended or been cancelled; but their last
  // events may still wait in the queue, and an apply may still run, and either may start an
  // operation (which must not meet a queue that was shut down). Each call deletes itself once
  // all is over.
  {
    absl::MutexLock lock(&mu_);
    // No timeout: shutting the queue down under a live call, or closing the store under an
    // apply, would be a crash. Every wait a call can be in ends at shutdown (the replication's
    // confirmation waits are released, base-version waits watch the node stopping).
    auto over = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_calls_ == 0; };
    while (!mu_.AwaitWithTimeout(absl::Condition(&over), kShutdownComplaintInterval)) {
      MERGEDB_LOG(ERROR) << live_calls_ << " asynchronous calls have not ended "
                         << absl::FormatDuration(kShutdownComplaintInterval)
                         << " after the server's shutdown";
    }
  }
  cq_->Shutdown();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

}  // namespace mergedb::node

// The streaming write RPCs (UpdateStream, UpdateBatchStream) on gRPC's asynchronous
// completion-queue API.
//
// Why not the synchronous API like the other calls: there, a stream is a thread that blocks in
// Read, and every message costs a hand-off from gRPC's poller to that thread, another from the
// reader to the thread that applies, and a third for each answer's Write. On this kind of
// machine a wake-up across cores costs about 20 µs, more than applying the write. Here a few
// threads take every stream's events from one completion queue and apply a stream's updates on
// the thread that read them (run to completion). Batching still happens: while one thread
// applies a stream's messages, the others keep reading that stream and queue what arrives; the
// applying thread takes it all as its next batch, one storage commit.
//
// Work that waits — a QUORUM or ALL write waiting for peers, an update waiting for its base
// version, a commit that waits for fsync — must not hold a completion-queue thread: it runs on
// a pool of threads that grows with the number of streams waiting at once (BlockingPool).
//
// Invariants of one stream: updates are applied in the order they arrived, one batch at a time;
// answers are written in that order, one Write in flight; at most kMaxQueued updates wait (then
// the stream stops reading and gRPC's flow control holds the client back); a cancelled stream's
// queued updates are not applied.
#ifndef MERGEDB_NODE_WRITE_STREAMS_H_
#define MERGEDB_NODE_WRITE_STREAMS_H_

#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/completion_queue.h"

namespace mergedb::node {

class DocumentServiceImpl;

// Runs tasks that may block for long (up to a call's deadline) on threads of their own: a task
// never waits behind another one while there is room for a new thread. Threads are kept once
// started (as many as were ever busy at once, at most `max_threads`; past that, tasks queue).
// Thread-safe.
class BlockingPool {
 public:
  explicit BlockingPool(int max_threads) : max_threads_(max_threads) {}
  // Runs the queued tasks, then joins the threads.
  ~BlockingPool();
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  void Run(std::function<void()> task);

 private:
  void Work();

  const int max_threads_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

// Serves UpdateStream and UpdateBatchStream of `service` from `cq` (the server's completion
// queue, from ServerBuilder::AddCompletionQueue). Lifecycle: Start after the server started;
// Shutdown after grpc::Server::Shutdown returned (every call has ended by then).
class WriteStreams {
 public:
  // `service` is borrowed and outlives this. `threads`: completion-queue threads.
  WriteStreams(DocumentServiceImpl* service, std::unique_ptr<grpc::ServerCompletionQueue> cq,
               int threads);
  ~WriteStreams();
  WriteStreams(const WriteStreams&) = delete;
  WriteStreams& operator=(const WriteStreams&) = delete;

  void Start();
  // Idempotent.
  void Shutdown();

  // For the calls: where they run and block.
  DocumentServiceImpl* service() const { return service_; }
  grpc::ServerCompletionQueue* cq() const { return cq_.get(); }
  BlockingPool* blocking_pool() { return &blocking_; }
  // A call object is about to ask gRPC for a call: false once shutting down (an operation on a
  // completion queue that was shut down is an error). Each true is matched by one CallEnded,
  // after the call object is gone.
  bool CallStarting();
  void CallEnded();

 private:
  void Poll();

  DocumentServiceImpl* const service_;
  const std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  const int thread_count_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  bool accepting_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  int live_calls_ ABSL_GUARDED_BY(mu_) = 0;
  // Declared last: destroyed (joined) first, while the rest is still alive.
  BlockingPool blocking_;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_WRITE_STREAMS_H_

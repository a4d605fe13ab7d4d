// The calls where a node's per-message cost matters most — the write RPCs: Update, UpdateStream
// and UpdateBatchStream — run on gRPC's asynchronous completion-queue API.
//
// Why not the synchronous API like the other calls: there, a call is a thread that blocks in
// Read, and every message costs a hand-off from gRPC's poller to that thread, then often another
// to a thread that applies, and a third for each answer's Write. On this kind of machine a
// wake-up across cores costs about 20 µs, more than applying a write. Here a few threads (one
// per core) take every call's events from one completion queue and do the work of a message on
// the thread that received it (run to completion).
//
// The inbound replication streams stay synchronous: moved here they measured slower (their acks
// returned sooner, so the senders' frames, clocked by the acks, carried fewer entries, and the
// frames competed with the write streams for the same threads).
//
// Work that waits — a QUORUM or ALL write waiting for peers, an update waiting for its base
// version, a commit that waits for fsync — must not hold a completion-queue thread: it runs on a
// BlockingPool, whose threads grow with the number of calls waiting at once. Waits for the
// peers have a pool of their own: during a partition they last up to their deadlines, and must
// not take the threads that commits under fsync and base-version updates need.
#ifndef MERGEDB_NODE_ASYNC_SERVER_H_
#define MERGEDB_NODE_ASYNC_SERVER_H_

#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/completion_queue.h"

namespace mergedb::node {

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

// One asynchronous call's state machine. Every tag it hands to gRPC is an AsyncTag naming it
// and the operation; the server's threads call OnEvent with each completed one.
class AsyncCall {
 public:
  virtual ~AsyncCall() = default;
  virtual void OnEvent(int event, bool ok) = 0;
};

struct AsyncTag {
  AsyncCall* call;
  int event;
};

// Threads serving the asynchronous methods of a grpc::Server from `cq` (from
// ServerBuilder::AddCompletionQueue). Lifecycle: AddListener for each method, Start after the
// server started, Shutdown after grpc::Server::Shutdown returned (every call has ended by then).
// A call object is created by a listener (to ask gRPC for the next call of its method) and
// deletes itself once over; CallStarting/CallEnded count them, so that Shutdown can wait for
// their last events.
class AsyncServer {
 public:
  // `threads`: completion-queue threads.
  AsyncServer(std::unique_ptr<grpc::ServerCompletionQueue> cq, int threads);
  ~AsyncServer();
  AsyncServer(const AsyncServer&) = delete;
  AsyncServer& operator=(const AsyncServer&) = delete;

  // Before Start: `listen` asks gRPC for one call of a method (by creating its call object). It
  // runs once per thread at Start, so that a burst of new calls is not matched one at a time;
  // each call object asks for its successor when its call arrives.
  void AddListener(std::function<void()> listen);
  void Start();
  // Idempotent.
  void Shutdown();

  grpc::ServerCompletionQueue* cq() const { return cq_.get(); }
  // Applies that wait for the disk (fsync per commit).
  BlockingPool* blocking_pool() { return &blocking_; }
  // Applies that wait for their base version to arrive: up to their deadlines, as long as a
  // partition lasts. A pool of their own, so that commits under fsync per commit never queue
  // behind them when many wait at once.
  BlockingPool* version_pool() { return &version_waits_; }
  // Waits for the peers' confirmations (QUORUM, ALL) of writes already committed.
  BlockingPool* confirm_pool() { return &confirming_; }
  // A call object is about to ask gRPC for a call: false once shutting down (an operation on a
  // completion queue that was shut down is an error). Each true is matched by one CallEnded,
  // after the call object is gone.
  bool CallStarting();
  void CallEnded();

 private:
  void Poll();

  const std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  const int thread_count_;
  std::vector<std::function<void()>> listeners_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  bool accepting_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  int live_calls_ ABSL_GUARDED_BY(mu_) = 0;
  // Declared last: destroyed (joined) first, while the rest is still alive; the applies first,
  // since an apply may hand its answers to a confirmer.
  BlockingPool confirming_;
  BlockingPool blocking_;
  BlockingPool version_waits_;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_ASYNC_SERVER_H_

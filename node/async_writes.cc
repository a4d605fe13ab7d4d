// The write RPCs on the asynchronous server (node/async_server.h).
//
// Update: a call is applied on the thread that received it, or on a pool when its apply would
// wait (for its base version, or for fsync per commit; PoolFor); concurrent calls share commits
// through the store's group commit. A QUORUM or ALL call then waits for the peers on the
// confirmation pool.
//
// UpdateStream and UpdateBatchStream: a stream's messages are applied on the thread that read
// them. Batching still happens: while one thread applies a stream's messages, the others keep
// reading that stream and queue what arrives; the applying thread takes it all as its next batch,
// one storage commit. Messages whose apply would wait (a base version, or every commit under
// fsync per commit) go to a pool (PoolFor), which carries on with the stream from there.
//
// QUORUM and ALL updates are committed like the others and wait for the peers afterwards: their
// answers queue, and one task on the blocking pool per stream (the confirmer) releases them in
// order as the peers confirm (on the confirmation pool). So the next batch is committed — and
// replicated in the same frames — while an earlier one waits, instead of a stream carrying one
// batch per round trip.
//
// Invariants of one stream: updates are applied in the order they arrived, one batch at a time;
// answers are written in that order, one Write in flight, and none before every answer ahead
// of it; at most kMaxQueued updates wait to be applied, confirmed or written (then the stream
// stops reading and gRPC's flow control holds the client back); a cancelled stream's queued
// updates are not applied.
#include "node/async_writes.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/async_stream.h"
#include "grpcpp/support/async_unary_call.h"
#include "grpcpp/support/byte_buffer.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/grpc_status.h"
#include "node/node.h"
#include "node/parsed_requests.h"
#include "node/services.h"

namespace mergedb::node {

namespace {

using mergedb::v1::UpdateBatch;
using mergedb::v1::UpdateBatchResponse;
using mergedb::v1::UpdateRequest;
using mergedb::v1::UpdateResponse;

// Updates of one stream waiting to be applied, confirmed or written; past this the stream stops
// reading (one message may hold more: up to --max_batch_updates).
constexpr size_t kMaxQueued = 1024;
// Updates per commit, unless one message holds more.
constexpr size_t kMaxBatch = 256;

// The two streaming write RPCs differ only in how many updates a message carries and how the
// answers are packed; these overloads say it.
size_t UpdatesIn(const UpdateRequest&) { return 1; }
size_t UpdatesIn(const UpdateBatch& batch) { return static_cast<size_t>(batch.updates_size()); }
// Why a message cannot be taken (OK: it can). One update always can.
absl::Status CheckMessage(const UpdateRequest&, const Limits&) { return absl::OkStatus(); }
absl::Status CheckMessage(const UpdateBatch& batch, const Limits& limits) {
  constexpr absl::string_view kEnds =
      ": none of it was applied, and the stream ends here (the messages before it were "
      "answered)";
  if (batch.updates_size() > limits.max_batch_updates) {
    return absl::InvalidArgumentError(absl::StrCat(
        "an UpdateBatch holds at most ", limits.max_batch_updates,
        " updates (the node's --max_batch_updates); this one holds ", batch.updates_size(), kEnds));
  }
  // gRPC's receive limit also admits the peers' replication messages (ConfigureServerBuilder),
  // so the size of one update, the documented bound of a message, is checked here.
  if (const size_t size = batch.ByteSizeLong(); size > limits.max_update_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("an UpdateBatch of ", size, " bytes, over the node's ",
                     limits.max_update_bytes, "-byte --max_update_bytes", kEnds));
  }
  return absl::OkStatus();
}
void MoveUpdates(UpdateRequest& request, std::vector<UpdateRequest>* out) {
  out->push_back(std::move(request));
}
void MoveUpdates(UpdateBatch& batch, std::vector<UpdateRequest>* out) {
  for (UpdateRequest& request : *batch.mutable_updates()) out->push_back(std::move(request));
}
void AddAnswer(UpdateResponse response, UpdateResponse* answer) { *answer = std::move(response); }
void AddAnswer(UpdateResponse response, UpdateBatchResponse* answer) {
  *answer->add_responses() = std::move(response);
}
// An answer holds one response per update of the message it answers.
size_t UpdatesIn(const UpdateResponse&) { return 1; }
size_t UpdatesIn(const UpdateBatchResponse& answer) {
  return static_cast<size_t>(answer.responses_size());
}
// What a message or its answer counts against kMaxQueued: its updates, and an empty batch one,
// so that a client sending empty batches is bounded too. Counted up and down by this one rule.
template <typename Message>
size_t QueueWeight(const Message& message) {
  return std::max<size_t>(1, UpdatesIn(message));
}
UpdateResponse* ResponseAt(UpdateResponse* answer, size_t) { return answer; }
UpdateResponse* ResponseAt(UpdateBatchResponse* answer, size_t i) {
  return answer->mutable_responses(static_cast<int>(i));
}
// An update whose apply waits for something other than this node's CPU: its base version to
// arrive.
bool ApplyWaits(const UpdateRequest& request) { return !request.base_version().empty(); }
bool ApplyWaits(const UpdateBatch& batch) {
  return std::any_of(batch.updates().begin(), batch.updates().end(),
                     [](const UpdateRequest& update) { return ApplyWaits(update); });
}
// Where an apply that may block runs: one that waits for its base version on a pool of its
// own (AsyncServer::version_pool), one that waits only for the disk on the blocking pool.
BlockingPool* PoolFor(AsyncServer* server, bool waits_for_version) {
  return waits_for_version ? server->version_pool() : server->blocking_pool();
}

// Why a stream's message that does not parse is refused. A proto3 string that is not valid UTF-8
// is the usual cause (a C++ client sends one with only a logged error); gRPC's own parse would
// report it as the client closing its side, so the stream would end OK with that message and
// every later one silently unanswered.
template <typename Request>
absl::Status Unparsable() {
  return absl::InvalidArgumentError(absl::StrCat(
      "a message of this stream does not parse as ", Request::descriptor()->full_name(),
      " (collection, id, request_id and field names must be valid UTF-8): neither it nor any "
      "later message was applied, and the stream ends here (the messages before it were "
      "answered)"));
}

// A streamed update's answer: its result, or why it failed (the stream goes on).
UpdateResponse StreamedAnswer(absl::StatusOr<UpdateResponse> result, const std::string& request_id) {
  if (result.ok()) return *std::move(result);
  UpdateResponse response;
  response.set_request_id(request_id);
  response.set_code(static_cast<int>(result.status().code()));
  response.set_message(std::string(result.status().message()));
  return response;
}

// One UpdateStream or UpdateBatchStream call, from the request for it until it ended. It
// deletes itself once gRPC returned every tag it handed out and no apply runs for it.
template <typename Request, typename Answer>
class WriteStreamCall final : public AsyncCall {
 public:
  // Raw messages: the call parses them itself, to tell a message that does not parse from the
  // end of the stream (see Unparsable).
  using Stream = grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;
  using RequestMethod = void (DocumentServiceImpl::*)(grpc::ServerContext*, Stream*,
                                                     grpc::CompletionQueue*,
                                                     grpc::ServerCompletionQueue*, void*);

  // Asks gRPC for the next call of `method`.
  static void Listen(AsyncServer* server, DocumentServiceImpl* service, RequestMethod method) {
    if (server->CallStarting()) new WriteStreamCall(server, service, method);
  }

  void OnEvent(int event, bool ok) override {
    switch (event) {
      case kStarted:
        if (!ok) {  // the server is stopping; a call that never started gets no done tag
          Destroy();
          return;
        }
        Listen(server_, service_, method_);
        {
          absl::MutexLock lock(&mu_);
          started_ = true;
          StartReadLocked();
          // The done event may have come first (a client that cancelled at once; gRPC can hand
          // it to another thread before this one ran): then nothing else is left to end it.
          if (!DeletableLocked()) return;
        }
        Destroy();
        return;
      case kRead:
        OnRead(ok);
        return;
      case kWritten:
        OnWritten(ok);
        return;
      case kFinished: {
        absl::MutexLock lock(&mu_);
        finish_pending_ = false;
        if (!DeletableLocked()) return;
      }
        Destroy();
        return;
      case kDone: {
        absl::MutexLock lock(&mu_);
        done_ = true;
        if (context_.IsCancelled()) LeaveLocked();
        if (!DeletableLocked()) return;
      }
        Destroy();
        return;
    }
  }

 private:
  enum Event { kStarted, kRead, kWritten, kFinished, kDone };

  // An update of an answer that holds only once the peers confirm it.
  struct Await {
    size_t index;  // in the answer
    mergedb::v1::WriteConcern concern;
    LogPoint entry;
  };
  struct Unconfirmed {
    Answer answer;
    std::vector<Await> awaits;
    absl::Time deadline;
  };

  WriteStreamCall(AsyncServer* server, DocumentServiceImpl* service, RequestMethod method)
      : server_(server),
        service_(service),
        method_(method),
        limits_(service->node()->options().limits),
        // With fsync per commit a commit waits for the disk: it must not hold a poller.
        commits_wait_(service->node()->options().durability !=
                      storage::Durability::kNoSync),
        stream_(&context_) {
    context_.AsyncNotifyWhenDone(&done_tag_);
    (service->*method)(&context_, &stream_, server->cq(), server->cq(), &started_tag_);
  }

  void OnRead(bool ok) {
    bool apply = false;
    {
      absl::MutexLock lock(&mu_);
      read_pending_ = false;
      if (!ok) {
        reads_ended_ = true;  // the client closed its side, or the call is gone
      } else if (!client_gone_) {
        absl::Status taken =
            grpc::SerializationTraits<Request>::Deserialize(&read_buffer_, &request_).ok()
                ? CheckMessage(request_, limits_)
                : Unparsable<Request>();
        if (!taken.ok()) {
          // Ends the stream once the messages before it are answered: answering each of its
          // updates would let one message under the size limit (millions of empty updates)
          // make the node build an answer of hundreds of megabytes.
          refused_ = std::move(taken);
          reads_ended_ = true;
        } else {
          // At least one, so that an empty message (answered by an empty one) takes room.
          queued_updates_ += QueueWeight(request_);
          queue_.push_back(std::move(request_));
          request_.Clear();
          StartReadLocked();
        }
      }
      if (!applying_ && !queue_.empty() && !client_gone_) {
        applying_ = true;
        apply = true;
      }
      MaybeFinishLocked();
      if (!apply && !DeletableLocked()) return;
    }
    if (apply) {
      Apply(/*may_wait=*/false);
    } else {
      Destroy();
    }
  }

  void OnWritten(bool ok) {
    {
      absl::MutexLock lock(&mu_);
      write_pending_ = false;
      if (!ok) {
        LeaveLocked();
        // A failed write means the call is over; cancelling makes sure gRPC says so (done tag).
        context_.TryCancel();
      } else {
        // A client that left had its queue emptied, the one in flight included.
        if (!client_gone_) {
          held_updates_ -= QueueWeight(answers_.front());
          answers_.pop_front();
        }
        StartWriteLocked();
        StartReadLocked();  // reading may have stopped while answers piled up
        MaybeFinishLocked();
      }
      if (!DeletableLocked()) return;
    }
    Destroy();
  }

  // Applies what queued up, batch after batch, until nothing is left; called with applying_
  // set by this thread. On a completion-queue thread (!may_wait) it stops at the first message
  // that would wait and hands the rest to the blocking pool, which carries on from there.
  void Apply(bool may_wait) {
    std::vector<Request> messages;
    std::vector<UpdateRequest> updates;
    while (true) {
      messages.clear();
      {
        absl::MutexLock lock(&mu_);
        if (queue_.empty() || client_gone_) {
          if (!EndRunLocked(&applying_)) return;
          break;  // to delete this
        }
        // On a completion-queue thread, only what does not wait: the messages before the first
        // one that does are applied and answered here, without waiting behind it.
        size_t taken = 0;
        while (!queue_.empty() && (may_wait || !(commits_wait_ || ApplyWaits(queue_.front())))) {
          const size_t n = QueueWeight(queue_.front());
          if (!messages.empty() && taken + n > kMaxBatch) break;
          taken += n;
          queued_updates_ -= n;
          messages.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        if (messages.empty()) {  // the next message waits: a pool carries on from here
          PoolFor(server_, ApplyWaits(queue_.front()))->Run([this] { Apply(/*may_wait=*/true); });
          return;
        }
        // Reading stopped while the queue was full; there is room again.
        StartReadLocked();
      }
      updates.clear();
      for (Request& message : messages) MoveUpdates(message, &updates);
      // Per batch, not per stream: a stream without a deadline lives on, and each of its writes
      // gets the default wait from when it is applied.
      const absl::Time deadline = CallDeadline(&context_);
      std::vector<absl::StatusOr<UpdateResponse>> results;
      std::vector<LogPoint> awaits;
      if (!updates.empty()) {
        results = service_->ExecuteUpdates(updates, deadline, &context_, &awaits);
      }
      absl::MutexLock lock(&mu_);
      if (client_gone_) continue;
      // Results come back in order: message k's answers follow message k-1's.
      size_t next = 0;
      for (Request& message : messages) {
        held_updates_ += QueueWeight(message);
        Unconfirmed pending;
        pending.deadline = deadline;
        for (size_t i = 0; i < UpdatesIn(message); ++i, ++next) {
          if (awaits[next].seq > 0) {
            pending.awaits.push_back({i, updates[next].write_concern(), awaits[next]});
          }
          AddAnswer(StreamedAnswer(std::move(results[next]), updates[next].request_id()),
                    &pending.answer);
        }
        if (pending.awaits.empty() && unconfirmed_.empty()) {
          answers_.push_back(std::move(pending.answer));
          continue;
        }
        unconfirmed_.push_back(std::move(pending));
      }
      StartWriteLocked();
      if (!unconfirmed_.empty() && !confirming_) {
        confirming_ = true;
        server_->confirm_pool()->Run([this] { Confirm(); });
      }
    }
    Destroy();
  }

  // The confirmer: releases the unconfirmed answers in order, each once the peers confirmed
  // its updates or their deadline passed (then those updates' answers say so); runs on the
  // confirmation pool while answers are unconfirmed, with confirming_ set.
  void Confirm() {
    while (true) {
      std::vector<Await> awaits;
      absl::Time deadline;
      {
        absl::MutexLock lock(&mu_);
        if (unconfirmed_.empty() || client_gone_) {
          if (!EndRunLocked(&confirming_)) return;
          break;  // to delete this
        }
        awaits = unconfirmed_.front().awaits;
        deadline = unconfirmed_.front().deadline;
      }
      std::vector<std::pair<size_t, absl::Status>> failed;
      for (const Await& await : awaits) {
        absl::Status met = service_->AwaitConcern(await.concern, await.entry, deadline);
        if (!met.ok()) failed.emplace_back(await.index, std::move(met));
      }
      absl::MutexLock lock(&mu_);
      if (client_gone_) continue;  // LeaveLocked emptied unconfirmed_
      Unconfirmed& front = unconfirmed_.front();
      for (auto& [index, status] : failed) {
        UpdateResponse* response = ResponseAt(&front.answer, index);
        *response = StreamedAnswer(std::move(status), response->request_id());
      }
      answers_.push_back(std::move(front.answer));
      unconfirmed_.pop_front();
      StartWriteLocked();
      StartReadLocked();  // reading may have stopped while too many waited
    }
    Destroy();
  }

  void Destroy() {
    AsyncServer* server = server_;
    delete this;
    server->CallEnded();
  }

  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!started_ || read_pending_ || reads_ended_ || client_gone_) return;
    // Apply, Confirm or OnWritten resumes reading. Answers not yet written count too: a client
    // that sends without reading must not make the node hold its answers without bound.
    if (queued_updates_ + held_updates_ >= kMaxQueued) return;
    read_pending_ = true;
    stream_.Read(&read_buffer_, &read_tag_);
  }

  void StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (write_pending_ || answers_.empty() || client_gone_) return;
    write_pending_ = true;
    bool own_buffer;
    write_buffer_.Clear();  // the previous Write's, done with
    // An answer that does not serialize cannot be built here: every string in it is a copy of
    // a parsed request's (valid UTF-8) or a status message.
    (void)grpc::SerializationTraits<Answer>::Serialize(answers_.front(), &write_buffer_,
                                                       &own_buffer);
    stream_.Write(write_buffer_, &write_tag_);
  }

  // Ends the call once the client is done sending (or was refused) and everything it sent is
  // answered.
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_started_ || client_gone_ || !reads_ended_ || read_pending_ || applying_ ||
        !queue_.empty() || confirming_ || !unconfirmed_.empty() || write_pending_ ||
        !answers_.empty()) {
      return;
    }
    finish_started_ = true;
    finish_pending_ = true;
    stream_.Finish(ToGrpcStatus(refused_), &finish_tag_);
  }

  // The client cannot hear answers any more: what it sent and nobody will hear about is left
  // unapplied.
  void LeaveLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    client_gone_ = true;
    queue_.clear();
    queued_updates_ = 0;
    unconfirmed_.clear();
    answers_.clear();
    held_updates_ = 0;
  }

  // Ends a run of Apply or Confirm, whose flag is `running`: true when this is to be deleted.
  bool EndRunLocked(bool* running) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    *running = false;
    MaybeFinishLocked();
    return DeletableLocked();
  }

  bool DeletableLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // started_: the handler of the start event has run (the done event can come before it).
    return started_ && done_ && !read_pending_ && !write_pending_ && !finish_pending_ &&
           !applying_ && !confirming_;
  }

  AsyncServer* const server_;
  DocumentServiceImpl* const service_;
  const RequestMethod method_;
  const Limits& limits_;
  const bool commits_wait_;
  grpc::ServerContext context_;
  Stream stream_;
  AsyncTag started_tag_{this, kStarted};
  AsyncTag read_tag_{this, kRead};
  AsyncTag write_tag_{this, kWritten};
  AsyncTag finish_tag_{this, kFinished};
  AsyncTag done_tag_{this, kDone};

  absl::Mutex mu_;
  grpc::ByteBuffer read_buffer_ ABSL_GUARDED_BY(mu_);   // the Read in flight
  grpc::ByteBuffer write_buffer_ ABSL_GUARDED_BY(mu_);  // the Write in flight
  Request request_ ABSL_GUARDED_BY(mu_);                // the message read last, parsed
  std::deque<Request> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_updates_ ABSL_GUARDED_BY(mu_) = 0;
  // Answers to write, in order; the front one is being written.
  std::deque<Answer> answers_ ABSL_GUARDED_BY(mu_);
  // Answers committed but waiting for their write concern, in order; all go before any later
  // answer.
  std::deque<Unconfirmed> unconfirmed_ ABSL_GUARDED_BY(mu_);
  // Updates applied whose answers are not written yet (unconfirmed or in answers_).
  size_t held_updates_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status refused_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_ended_ ABSL_GUARDED_BY(mu_) = false;
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool applying_ ABSL_GUARDED_BY(mu_) = false;
  bool confirming_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_started_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// One Update call: request, apply, answer. Deletes itself once gRPC returned both its finish
// and its done tag (a cancelled call still gets both).
class UpdateCall final : public AsyncCall {
 public:
  static void Listen(AsyncServer* server, DocumentServiceImpl* service) {
    if (server->CallStarting()) new UpdateCall(server, service);
  }

  void OnEvent(int event, bool ok) override {
    if (event == kStarted) {
      if (!ok) {  // the server is stopping; a call that never started gets no done tag
        Destroy();
        return;
      }
      Listen(server_, service_);
      if (absl::Status parsed = ParseRequest(&raw_request_, &request_); !parsed.ok()) {
        Finish(std::move(parsed));
        return;
      }
      if (commits_wait_ || ApplyWaits(request_)) {
        PoolFor(server_, ApplyWaits(request_))->Run([this] { Execute(); });
      } else {
        Execute();
      }
      return;
    }
    // kFinished or kDone: the last of the two ends the call.
    if (tags_left_.fetch_sub(1, std::memory_order_acq_rel) == 1) Destroy();
  }

 private:
  enum Event { kStarted, kFinished, kDone };

  UpdateCall(AsyncServer* server, DocumentServiceImpl* service)
      : server_(server),
        service_(service),
        commits_wait_(service->node()->options().durability != storage::Durability::kNoSync),
        responder_(&context_) {
    context_.AsyncNotifyWhenDone(&done_tag_);
    service->RequestUpdate(&context_, &raw_request_, &responder_, server->cq(), server->cq(),
                           &started_tag_);
  }

  // Commits the update; a QUORUM or ALL one then waits for the peers on the confirmation pool.
  void Execute() {
    deadline_ = CallDeadline(&context_);
    LogPoint await;
    absl::StatusOr<UpdateResponse> result =
        service_->ExecuteUpdate(request_, deadline_, &context_, &await);
    if (result.ok() && await.seq > 0) {
      response_ = *std::move(result);
      // The call lives on: its finish tag is not handed out before Confirm ends.
      server_->confirm_pool()->Run([this, await] { Confirm(await); });
      return;
    }
    Finish(std::move(result));
  }

  void Confirm(LogPoint await) {
    absl::Status met = service_->AwaitConcern(request_.write_concern(), await, deadline_);
    Finish(met.ok() ? absl::StatusOr<UpdateResponse>(std::move(response_))
                    : absl::StatusOr<UpdateResponse>(std::move(met)));
  }

  void Finish(absl::StatusOr<UpdateResponse> result) {
    if (result.ok()) {
      bool own_buffer;
      (void)grpc::SerializationTraits<UpdateResponse>::Serialize(*result, &raw_response_,
                                                                 &own_buffer);
      responder_.Finish(raw_response_, grpc::Status::OK, &finish_tag_);
    } else {
      responder_.FinishWithError(ToGrpcStatus(result.status()), &finish_tag_);
    }
  }

  void Destroy() {
    AsyncServer* server = server_;
    delete this;
    server->CallEnded();
  }

  AsyncServer* const server_;
  DocumentServiceImpl* const service_;
  const bool commits_wait_;
  grpc::ServerContext context_;
  // Raw, like the streams' messages: gRPC's own parse would answer a request that does not
  // parse with INTERNAL, which says "the server failed", not "the request is wrong".
  grpc::ByteBuffer raw_request_;
  UpdateRequest request_;
  absl::Time deadline_;
  UpdateResponse response_;  // committed, waiting for the peers' confirmations
  grpc::ByteBuffer raw_response_;
  grpc::ServerAsyncResponseWriter<grpc::ByteBuffer> responder_;
  AsyncTag started_tag_{this, kStarted};
  AsyncTag finish_tag_{this, kFinished};
  AsyncTag done_tag_{this, kDone};
  std::atomic<int> tags_left_{2};
};

using UpdateStreamCall = WriteStreamCall<UpdateRequest, UpdateResponse>;
using UpdateBatchStreamCall = WriteStreamCall<UpdateBatch, UpdateBatchResponse>;

}  // namespace

void ServeWrites(DocumentServiceImpl* service, AsyncServer* server) {
  server->AddListener([server, service] { UpdateCall::Listen(server, service); });
  server->AddListener([server, service] {
    UpdateStreamCall::Listen(server, service, &DocumentServiceImpl::RequestUpdateStream);
  });
  server->AddListener([server, service] {
    UpdateBatchStreamCall::Listen(server, service, &DocumentServiceImpl::RequestUpdateBatchStream);
  });
}

}  // namespace mergedb::node

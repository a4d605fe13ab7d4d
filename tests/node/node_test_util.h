// In-process nodes for tests: storage on LevelDB's in-memory Env, served on 127.0.0.1 with a
// kernel-chosen port, driven through a real gRPC channel.
#ifndef MERGEDB_TESTS_NODE_NODE_TEST_UTIL_H_
#define MERGEDB_TESTS_NODE_NODE_TEST_UTIL_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "leveldb/env.h"
#include "leveldb/helpers/memenv.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/node.h"

namespace mergedb::node::testing {

class NodeTest : public ::testing::Test {
 protected:
  NodeTest() : env_(leveldb::NewMemEnv(leveldb::Env::Default())) {}
  ~NodeTest() override {
    if (node_ != nullptr) node_->Shutdown(absl::Seconds(1));
  }

  NodeOptions Options() {
    NodeOptions options;
    options.node_name = "n1";
    options.cluster_id = "test";
    options.data_dir = "/data";
    options.listen = "127.0.0.1:0";
    options.env = env_.get();
    return options;
  }

  void StartNode(const NodeOptions& options) {
    auto node = Node::Start(options);
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
    channel_ = grpc::CreateChannel(node_->address(), grpc::InsecureChannelCredentials());
    docs_ = mergedb::v1::DocumentService::NewStub(channel_);
    cluster_ = mergedb::v1::ClusterService::NewStub(channel_);
  }
  void StartNode() { StartNode(Options()); }
  void RestartNode(const NodeOptions& options) {
    docs_.reset();
    cluster_.reset();
    channel_.reset();
    node_->Shutdown(absl::Seconds(1));
    node_.reset();
    StartNode(options);
  }

  static void Deadline(grpc::ClientContext* context, int millis = 5000) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(millis));
  }

  grpc::Status Update(const mergedb::v1::UpdateRequest& request,
                      mergedb::v1::UpdateResponse* response = nullptr) {
    mergedb::v1::UpdateResponse ignored;
    grpc::ClientContext context;
    Deadline(&context);
    return docs_->Update(&context, request, response ? response : &ignored);
  }

  grpc::Status Get(const mergedb::v1::GetRequest& request, mergedb::v1::GetResponse* response,
                   int deadline_millis = 5000) {
    grpc::ClientContext context;
    Deadline(&context, deadline_millis);
    return docs_->Get(&context, request, response);
  }

  mergedb::v1::GetResponse GetOrDie(const std::string& collection, const std::string& id) {
    mergedb::v1::GetRequest request;
    request.set_collection(collection);
    request.set_id(id);
    mergedb::v1::GetResponse response;
    grpc::Status status = Get(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  std::unique_ptr<leveldb::Env> env_;
  std::unique_ptr<Node> node_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<mergedb::v1::DocumentService::Stub> docs_;
  std::unique_ptr<mergedb::v1::ClusterService::Stub> cluster_;
};

// Request builders.
inline mergedb::v1::UpdateRequest UpdateOf(const std::string& collection, const std::string& id) {
  mergedb::v1::UpdateRequest request;
  request.set_collection(collection);
  request.set_id(id);
  return request;
}

inline mergedb::v1::Operation* AddOp(mergedb::v1::UpdateRequest* request,
                                     std::initializer_list<std::string> path) {
  auto* op = request->add_ops();
  for (const auto& name : path) op->add_path(name);
  return op;
}

inline void Incr(mergedb::v1::UpdateRequest* request, std::initializer_list<std::string> path,
                 int64_t by) {
  AddOp(request, path)->mutable_increment()->set_by(by);
}

inline void SetStr(mergedb::v1::UpdateRequest* request, std::initializer_list<std::string> path,
                   const std::string& value) {
  AddOp(request, path)->mutable_set()->mutable_value()->mutable_scalar()->set_string_value(value);
}

inline int64_t CounterIn(const mergedb::v1::GetResponse& response, const std::string& name) {
  for (const auto& field : response.fields()) {
    if (field.name() == name && field.kind() == mergedb::v1::FIELD_KIND_COUNTER) {
      return field.value().counter();
    }
  }
  return 0;
}

// Updates sent at once and left outstanding (asynchronous calls on one completion queue): for
// tests that keep many calls waiting inside a node.
class PendingUpdates {
 public:
  PendingUpdates(mergedb::v1::DocumentService::Stub* stub,
                 const std::vector<mergedb::v1::UpdateRequest>& requests,
                 std::chrono::milliseconds deadline) {
    for (const auto& request : requests) {
      auto call = std::make_unique<Call>();
      call->context.set_deadline(std::chrono::system_clock::now() + deadline);
      call->reader = stub->AsyncUpdate(&call->context, request, &cq_);
      call->reader->Finish(&call->response, &call->status, call.get());
      calls_.push_back(std::move(call));
    }
  }
  PendingUpdates(const PendingUpdates&) = delete;
  PendingUpdates& operator=(const PendingUpdates&) = delete;
  ~PendingUpdates() { (void)CancelAndCollect(); }

  // Cancels the calls still outstanding, waits for every answer, and returns each call's status
  // in the order sent (empty once collected).
  std::vector<grpc::Status> CancelAndCollect() {
    if (calls_.empty()) return {};
    for (auto& call : calls_) call->context.TryCancel();
    for (size_t i = 0; i < calls_.size(); ++i) {
      void* tag = nullptr;
      bool ok = false;
      if (!cq_.Next(&tag, &ok)) break;
    }
    std::vector<grpc::Status> statuses;
    for (const auto& call : calls_) statuses.push_back(call->status);
    calls_.clear();
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
    return statuses;
  }

 private:
  struct Call {
    grpc::ClientContext context;
    mergedb::v1::UpdateResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<mergedb::v1::UpdateResponse>> reader;
  };
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Call>> calls_;
};

}  // namespace mergedb::node::testing

#endif  // MERGEDB_TESTS_NODE_NODE_TEST_UTIL_H_

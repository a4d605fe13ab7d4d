#include "bench/echo_server.h"

#include <algorithm>
#include <cstddef>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "node/node.h"

namespace mergedb::bench {
namespace {

// One call's life, as node/async_writes.cc's UpdateCall without the database.
class EchoCall final : public node::AsyncCall {
 public:
  static void Listen(node::AsyncServer* server, Echo::AsyncService* service) {
    if (server->CallStarting()) new EchoCall(server, service);
  }

  void OnEvent(int event, bool ok) override {
    if (event == kStarted) {
      if (!ok) {
        Destroy();
        return;
      }
      Listen(server_, service_);
      response_.set_request_id(request_.request_id());
      responder_.Finish(response_, grpc::Status::OK, &finished_tag_);
      return;
    }
    Destroy();
  }

 private:
  enum Event { kStarted, kFinished };

  EchoCall(node::AsyncServer* server, Echo::AsyncService* service)
      : server_(server), service_(service), responder_(&context_) {
    service->RequestCall(&context_, &request_, &responder_, server->cq(), server->cq(),
                         &started_tag_);
  }

  void Destroy() {
    node::AsyncServer* server = server_;
    delete this;
    server->CallEnded();
  }

  node::AsyncServer* const server_;
  Echo::AsyncService* const service_;
  grpc::ServerContext context_;
  mergedb::v1::UpdateRequest request_;
  mergedb::v1::UpdateResponse response_;
  grpc::ServerAsyncResponseWriter<mergedb::v1::UpdateResponse> responder_;
  node::AsyncTag started_tag_{this, kStarted};
  node::AsyncTag finished_tag_{this, kFinished};
};

}  // namespace

std::unique_ptr<EchoServer> EchoServer::Start() {
  std::unique_ptr<EchoServer> echo(new EchoServer());
  grpc::ServerBuilder builder;
  node::ConfigureServerBuilder(node::Limits().max_update_bytes,
                               node::ReplicationOptions().max_message_bytes, &builder);
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &echo->port_);
  builder.RegisterService(&echo->service_);
  std::unique_ptr<grpc::ServerCompletionQueue> queue = builder.AddCompletionQueue();
  echo->server_ = builder.BuildAndStart();
  if (echo->server_ == nullptr || echo->port_ == 0) return nullptr;
  echo->async_ = std::make_unique<node::AsyncServer>(
      std::move(queue), std::max(2, static_cast<int>(std::thread::hardware_concurrency())));
  node::AsyncServer* async = echo->async_.get();
  Echo::AsyncService* service = &echo->service_;
  async->AddListener([async, service] { EchoCall::Listen(async, service); });
  async->Start();
  return echo;
}

EchoServer::~EchoServer() {
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  if (async_ != nullptr) async_->Shutdown();
}

}  // namespace mergedb::bench

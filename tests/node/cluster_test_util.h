// In-process clusters for replication tests: N nodes on 127.0.0.1, each with its own in-memory
// LevelDB Env (so a node can be stopped, restarted on the same data, or wiped), real gRPC links,
// and the nodes' link-cutting hook for partitions.
#ifndef MERGEDB_TESTS_NODE_CLUSTER_TEST_UTIL_H_
#define MERGEDB_TESTS_NODE_CLUSTER_TEST_UTIL_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "leveldb/env.h"
#include "leveldb/helpers/memenv.h"
#include "mergedb/v1/api.grpc.pb.h"
#include "node/log.h"
#include "node/node.h"
#include "storage/fault_env.h"

namespace mergedb::node::testing {

// A Cluster's id unless its constructor is given another.
inline constexpr char kTestClusterId[] = "test-cluster";

// A port the kernel just handed out and released (the node binds it right after).
inline int PickPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

class Cluster {
 public:
  // `links[i]` lists the nodes node i peers with; empty means a full mesh.
  explicit Cluster(int n, std::vector<std::vector<int>> links = {},
                   std::string cluster_id = kTestClusterId)
      : n_(n), links_(std::move(links)), cluster_id_(std::move(cluster_id)) {
    SetMinLogLevel(LogLevel::kWarning);
    for (int i = 0; i < n; ++i) {
      ports_.push_back(PickPort());
      envs_.push_back(std::unique_ptr<leveldb::Env>(leveldb::NewMemEnv(leveldb::Env::Default())));
      nodes_.emplace_back();
    }
    // Every port is known before any node's peer list is written.
    for (int i = 0; i < n; ++i) options_.push_back(MakeOptions(i));
  }
  ~Cluster() {
    for (auto& node : nodes_) {
      if (node != nullptr) node->Shutdown(absl::Milliseconds(200));
    }
  }

  static std::string Name(int i) { return absl::StrCat("n", i + 1); }
  NodeOptions& options(int i) { return options_[static_cast<size_t>(i)]; }
  // Node i's in-memory file system (its data dir is options(i).data_dir).
  leveldb::Env* env(int i) { return envs_[static_cast<size_t>(i)].get(); }
  Node* node(int i) { return nodes_[static_cast<size_t>(i)].get(); }
  std::string Address(int i) const { return absl::StrCat("127.0.0.1:", ports_[static_cast<size_t>(i)]); }
  int Port(int i) const { return ports_[static_cast<size_t>(i)]; }

  void StartAll() {
    for (int i = 0; i < n_; ++i) Start(i);
  }
  void Start(int i) {
    // The port was free when picked, but until the node binds it any socket may get it as its
    // ephemeral port: another node's connection attempt to a peer not yet listening, or a test
    // running beside this one. Such a holder lets go within moments; wait for it (bounded).
    auto node = Node::Start(options_[static_cast<size_t>(i)]);
    for (int attempt = 0; attempt < 50 && !node.ok() &&
                          absl::StrContains(node.status().message(), "address is in use");
         ++attempt) {
      absl::SleepFor(absl::Milliseconds(100));
      node = Node::Start(options_[static_cast<size_t>(i)]);
    }
    ASSERT_TRUE(node.ok()) << node.status();
    nodes_[static_cast<size_t>(i)] = *std::move(node);
    stubs_.erase(i);
  }
  void Stop(int i) {
    nodes_[static_cast<size_t>(i)]->Shutdown(absl::Milliseconds(200));
    nodes_[static_cast<size_t>(i)].reset();
  }
  // Loses node i's data directory: it comes back under a new replica id.
  void Wipe(int i) {
    envs_[static_cast<size_t>(i)].reset(leveldb::NewMemEnv(leveldb::Env::Default()));
    options_[static_cast<size_t>(i)].env = envs_[static_cast<size_t>(i)].get();
  }
  // A copy of node i's data directory as it is now (take it while the node is stopped), or of
  // another directory of its file system (`source`, e.g. a backup), as a file system that holds
  // it as node i's data directory.
  std::unique_ptr<leveldb::Env> CopyData(int i, std::string source = "") {
    leveldb::Env* from = envs_[static_cast<size_t>(i)].get();
    std::unique_ptr<leveldb::Env> to(leveldb::NewMemEnv(leveldb::Env::Default()));
    const std::string dir = options_[static_cast<size_t>(i)].data_dir;
    if (source.empty()) source = dir;
    std::vector<std::string> files;
    EXPECT_TRUE(from->GetChildren(source, &files).ok()) << source;
    EXPECT_FALSE(files.empty()) << source;
    EXPECT_TRUE(to->CreateDir(dir).ok());
    for (const std::string& name : files) {
      std::string contents;
      EXPECT_TRUE(leveldb::ReadFileToString(from, source + "/" + name, &contents).ok()) << name;
      EXPECT_TRUE(leveldb::WriteStringToFile(to.get(), contents, dir + "/" + name).ok()) << name;
    }
    return to;
  }
  // Puts back a copy taken by CopyData as node i's data directory (the node must be stopped).
  void RestoreData(int i, std::unique_ptr<leveldb::Env> copy) {
    envs_[static_cast<size_t>(i)] = std::move(copy);
    options_[static_cast<size_t>(i)].env = envs_[static_cast<size_t>(i)].get();
  }
  // Wraps node i's file system in one that injects faults (call before the node starts; Wipe
  // and RestoreData end it). The Cluster owns it, so that it outlives the node whose store uses
  // it.
  storage::FaultInjectionEnv* InjectFaults(int i) {
    faulty_.push_back(std::make_unique<storage::FaultInjectionEnv>(env(i)));
    options(i).env = faulty_.back().get();
    return faulty_.back().get();
  }

  // Cuts (or heals) the link between nodes a and b, both directions.
  void SetLink(int a, int b, bool up) {
    if (node(a) != nullptr) node(a)->SetLinkBlocked(Name(b), !up);
    if (node(b) != nullptr) node(b)->SetLinkBlocked(Name(a), !up);
  }

  mergedb::v1::DocumentService::Stub* Docs(int i) {
    auto it = stubs_.find(i);
    if (it == stubs_.end()) {
      auto channel = grpc::CreateChannel(Address(i), grpc::InsecureChannelCredentials());
      it = stubs_.emplace(i, Stubs{mergedb::v1::DocumentService::NewStub(channel),
                                   mergedb::v1::ClusterService::NewStub(channel)})
               .first;
    }
    return it->second.docs.get();
  }

  grpc::Status Update(int i, const mergedb::v1::UpdateRequest& request,
                      mergedb::v1::UpdateResponse* response = nullptr, int deadline_ms = 5000) {
    mergedb::v1::UpdateResponse ignored;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    return Docs(i)->Update(&context, request, response ? response : &ignored);
  }

  mergedb::v1::GetResponse Get(int i, const std::string& collection, const std::string& id) {
    mergedb::v1::GetRequest request;
    request.set_collection(collection);
    request.set_id(id);
    mergedb::v1::GetResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status status = Docs(i)->Get(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  mergedb::v1::StatusResponse Status(int i) {
    Docs(i);
    mergedb::v1::StatusResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status status = stubs_[i].cluster->Status(&context, mergedb::v1::StatusRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status Backup(int i, const std::string& name, mergedb::v1::BackupResponse* response) {
    Docs(i);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    mergedb::v1::BackupRequest request;
    request.set_name(name);
    return stubs_[i].cluster->Backup(&context, request, response);
  }

  // True once every running node listed in `which` (all if empty) reports the same digest and
  // applied vector. Bounded: gives up after `timeout`.
  bool WaitConverged(std::vector<int> which = {}, std::chrono::milliseconds timeout =
                                                      std::chrono::seconds(20)) {
    if (which.empty()) {
      for (int i = 0; i < n_; ++i) which.push_back(i);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      bool same = true;
      std::string digest, applied;
      for (size_t k = 0; k < which.size(); ++k) {
        storage::Store* store = node(which[k])->store();
        std::string d = store->state_digest();
        std::string a;
        for (const auto& [origin, seq] : store->AppliedVector()) absl::StrAppend(&a, origin, ":", seq, ",");
        if (k == 0) {
          digest = d;
          applied = a;
        } else if (d != digest || a != applied) {
          same = false;
        }
      }
      if (same) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

 private:
  NodeOptions MakeOptions(int i) {
    NodeOptions options;
    options.node_name = Name(i);
    options.cluster_id = cluster_id_;
    options.data_dir = "/data";
    options.listen = Address(i);
    options.env = envs_[static_cast<size_t>(i)].get();
    options.truncate_interval = absl::Milliseconds(200);
    std::vector<int> peers;
    if (links_.empty()) {
      for (int j = 0; j < n_; ++j) {
        if (j != i) peers.push_back(j);
      }
    } else {
      peers = links_[static_cast<size_t>(i)];
    }
    for (int j : peers) options.peers.push_back({Name(j), Address(j)});
    for (int j = 0; j < n_; ++j) {
      if (j != i) options.members.push_back(Name(j));
    }
    return options;
  }

  struct Stubs {
    std::unique_ptr<mergedb::v1::DocumentService::Stub> docs;
    std::unique_ptr<mergedb::v1::ClusterService::Stub> cluster;
  };
  const int n_;
  const std::vector<std::vector<int>> links_;
  const std::string cluster_id_;
  std::vector<int> ports_;
  std::vector<std::unique_ptr<leveldb::Env>> envs_;
  // Declared before nodes_: destroyed after them.
  std::vector<std::unique_ptr<storage::FaultInjectionEnv>> faulty_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<NodeOptions> options_;
  std::map<int, Stubs> stubs_;
};

// The hello a test sends to a Cluster's node when it speaks for another member (a node it
// does not start) on a raw replication stream.
inline mergedb::v1::ReplicationRequest HelloAs(const std::string& node_name) {
  mergedb::v1::ReplicationRequest hello;
  hello.mutable_hello()->set_cluster_id(kTestClusterId);
  hello.mutable_hello()->set_node_name(node_name);
  hello.mutable_hello()->set_replica_id(42);
  hello.mutable_hello()->set_protocol_version(kReplicationProtocolVersion);
  return hello;
}

}  // namespace mergedb::node::testing

#endif  // MERGEDB_TESTS_NODE_CLUSTER_TEST_UTIL_H_

// The mergedb-node binary as an operator and a generic gRPC tool see it: the standard health
// service and server reflection (through stubs generated from Debian's grpc-proto package, not
// from mergedb's protos), clean shutdown on SIGTERM, and clear refusals at start-up.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace {

// A child process with its stdout and stderr captured. Always reaped by the destructor.
class Process {
 public:
  explicit Process(const std::vector<std::string>& args) {
    int out[2], err[2];
    if (pipe(out) != 0 || pipe(err) != 0) std::abort();
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      dup2(err[1], STDERR_FILENO);
      close(out[0]);
      close(err[0]);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
    close(err_);
  }

  // Reads stdout until a line containing `needle` arrives or `timeout` passes; returns the line.
  std::string WaitForLine(absl::string_view needle, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string buffer;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      char c;
      if (read(out_, &c, 1) != 1) break;
      if (c != '\n') {
        buffer.push_back(c);
        continue;
      }
      if (absl::StrContains(buffer, needle)) return buffer;
      buffer.clear();
    }
    return "";
  }

  // Waits for the exit (bounded); returns the exit status, or -1 on a signal or time-out.
  int Wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  std::string Stderr() {
    std::string all;
    char buf[4096];
    fcntl(err_, F_SETFL, O_NONBLOCK);
    ssize_t n;
    while ((n = read(err_, buf, sizeof buf)) > 0) all.append(buf, static_cast<size_t>(n));
    return all;
  }

  void Signal(int signal) { kill(pid_, signal); }

 private:
  pid_t pid_ = -1;
  int out_ = -1, err_ = -1;
  bool exited_ = false;
};

class NodeBinaryTest : public ::testing::Test {
 protected:
  NodeBinaryTest() {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("mergedb-bin-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  ~NodeBinaryTest() override { std::filesystem::remove_all(dir_); }

  std::vector<std::string> Args(const std::string& listen = "127.0.0.1:0") {
    return {MERGEDB_NODE_BINARY, "--data_dir=" + dir_.string(), "--node_name=n1",
            "--cluster=bin-test", "--listen=" + listen};
  }

  // Starts a node and returns its address ("" on failure).
  std::string Start(Process& p) {
    const std::string line = p.WaitForLine("listening on", std::chrono::seconds(20));
    const size_t at = line.rfind(' ');
    return at == std::string::npos ? "" : line.substr(at + 1);
  }

  std::filesystem::path dir_;
};

TEST_F(NodeBinaryTest, HealthAndReflectionWorkForGenericGrpcTools) {
  Process node(Args());
  const std::string address = Start(node);
  ASSERT_FALSE(address.empty()) << node.Stderr();
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());

  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest check;
  grpc::health::v1::HealthCheckResponse answer;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(health->Check(&context, check, &answer).ok());
  EXPECT_EQ(answer.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  for (const char* service : {"mergedb.v1.DocumentService", "mergedb.v1.ClusterService",
                              "mergedb.v1.ReplicationService"}) {
    grpc::ClientContext service_context;
    service_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    check.set_service(service);
    ASSERT_TRUE(health->Check(&service_context, check, &answer).ok()) << service;
    EXPECT_EQ(answer.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  {
    grpc::ClientContext unknown_context;
    unknown_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    check.set_service("no.such.Service");
    const grpc::Status unknown = health->Check(&unknown_context, check, &answer);
    EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_NE(unknown.error_message().find("no.such.Service"), std::string::npos);
  }
  // Watch: the current status at once, for a known service and (as SERVICE_UNKNOWN, the
  // protocol's rule) for an unknown one; the shutdown below must reach the known watcher.
  grpc::ClientContext watch_context, unknown_watch_context;
  watch_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  unknown_watch_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  check.set_service("mergedb.v1.DocumentService");
  auto watch = health->Watch(&watch_context, check);
  check.set_service("no.such.Service");
  auto unknown_watch = health->Watch(&unknown_watch_context, check);
  grpc::health::v1::HealthCheckResponse watched;
  ASSERT_TRUE(watch->Read(&watched));
  EXPECT_EQ(watched.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  ASSERT_TRUE(unknown_watch->Read(&watched));
  EXPECT_EQ(watched.status(), grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN);
  unknown_watch_context.TryCancel();
  EXPECT_EQ(unknown_watch->Finish().error_code(), grpc::StatusCode::CANCELLED);

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext reflect_context;
  reflect_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stream = reflection->ServerReflectionInfo(&reflect_context);
  grpc::reflection::v1alpha::ServerReflectionRequest list;
  list.set_list_services("");
  ASSERT_TRUE(stream->Write(list));
  grpc::reflection::v1alpha::ServerReflectionResponse services;
  ASSERT_TRUE(stream->Read(&services));
  std::vector<std::string> names;
  for (const auto& s : services.list_services_response().service()) names.push_back(s.name());
  EXPECT_NE(std::find(names.begin(), names.end(), "mergedb.v1.DocumentService"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "mergedb.v1.ClusterService"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());
  // And the descriptors themselves, so tools can call without the .proto files.
  grpc::reflection::v1alpha::ServerReflectionRequest file;
  file.set_file_containing_symbol("mergedb.v1.DocumentService");
  ASSERT_TRUE(stream->Write(file));
  grpc::reflection::v1alpha::ServerReflectionResponse descriptors;
  ASSERT_TRUE(stream->Read(&descriptors));
  EXPECT_GT(descriptors.file_descriptor_response().file_descriptor_proto_size(), 0);
  stream->WritesDone();
  (void)stream->Finish();

  node.Signal(SIGTERM);
  // A node that begins to stop says so to its watchers, then ends their streams itself (not
  // by the server's grace-period cancellation, which would also say UNAVAILABLE).
  ASSERT_TRUE(watch->Read(&watched));
  EXPECT_EQ(watched.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&watched));
  const grpc::Status ended = watch->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ended.error_message(), "the node is shutting down");
  EXPECT_EQ(node.Wait(std::chrono::seconds(20)), 0) << node.Stderr();
}

TEST_F(NodeBinaryTest, SigtermDrainsAndTheDataIsThereAfterARestart) {
  {
    Process node(Args());
    ASSERT_FALSE(Start(node).empty()) << node.Stderr();
    node.Signal(SIGTERM);
    ASSERT_EQ(node.Wait(std::chrono::seconds(20)), 0);
    EXPECT_TRUE(absl::StrContains(node.Stderr(), "stopped"));
  }
  Process again(Args());
  EXPECT_FALSE(Start(again).empty()) << again.Stderr();
}

TEST_F(NodeBinaryTest, BadFlagsAreRefusedWithAClearMessage) {
  Process missing({MERGEDB_NODE_BINARY, "--node_name=n1", "--cluster=c"});
  EXPECT_EQ(missing.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(missing.Stderr(), "--data_dir is required"));
  std::vector<std::string> args = Args();
  args.push_back("--role=leader");
  Process role(args);
  EXPECT_EQ(role.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(role.Stderr(), "--role must be primary or replica"));
  args = Args();
  args.push_back("--max_log_entries=0");
  Process log_bound(args);
  EXPECT_EQ(log_bound.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(log_bound.Stderr(), "--max_log_entries must be positive"));
  args = Args();
  args.push_back("--backup_dir=" + dir_.string() + "/./backups");
  Process backup_into_data(args);
  EXPECT_EQ(backup_into_data.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(backup_into_data.Stderr(), "--backup_dir must be outside --data_dir"))
      << backup_into_data.Stderr();
  args = Args();
  args.push_back("--backup_dir=" + dir_.parent_path().string() + "/");
  Process data_in_backup(args);
  EXPECT_EQ(data_in_backup.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(data_in_backup.Stderr(), "--backup_dir must be outside --data_dir"))
      << data_in_backup.Stderr();
  args = Args();
  args.push_back("--cache_mb=17592186044416");  // 2^44 MiB: would wrap to no cache at all
  Process huge_cache(args);
  EXPECT_EQ(huge_cache.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(huge_cache.Stderr(), "--cache_mb is at most"))
      << huge_cache.Stderr();
  args = Args();
  args.push_back("--peers=n2=127.0.0.1:abc");
  Process bad_port(args);
  EXPECT_EQ(bad_port.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(bad_port.Stderr(), "is not name=host:port")) << bad_port.Stderr();
  args = Args();
  args.push_back("--backup_stall_timeout_s=0");
  Process no_stall_bound(args);
  EXPECT_EQ(no_stall_bound.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(
      absl::StrContains(no_stall_bound.Stderr(), "--backup_stall_timeout_s must be between"))
      << no_stall_bound.Stderr();
  // Membership lists that would miscount QUORUM and ALL are refused before the data dir is made.
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad_members = {
      {{"--peers=n2=127.0.0.1:1", "--members=n1,n3"}, "which --members does not list"},
      {{"--peers=n2=127.0.0.1:1", "--members=n2,n3,n2"}, "--members lists 'n2' twice"},
  };
  for (const auto& [flags, why] : bad_members) {
    args = Args();
    args.insert(args.end(), flags.begin(), flags.end());
    Process members(args);
    EXPECT_EQ(members.Wait(std::chrono::seconds(20)), 1);
    EXPECT_TRUE(absl::StrContains(members.Stderr(), why)) << members.Stderr();
    EXPECT_FALSE(std::filesystem::exists(dir_)) << why;
  }
  // TLS files are checked before anything starts (their contents: tests/node/tls_test.cc).
  args = Args();
  args.push_back("--tls_cert=/nonexistent/node.pem");
  Process lone_cert(args);
  EXPECT_EQ(lone_cert.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains(lone_cert.Stderr(), "TLS needs all three of --tls_cert"))
      << lone_cert.Stderr();
  args = Args();
  for (const char* flag : {"--tls_cert", "--tls_key", "--tls_ca"}) {
    args.push_back(std::string(flag) + "=/nonexistent/file.pem");
  }
  Process unreadable(args);
  EXPECT_EQ(unreadable.Wait(std::chrono::seconds(20)), 2);
  EXPECT_TRUE(
      absl::StrContains(unreadable.Stderr(), "--tls_cert=/nonexistent/file.pem: cannot read"))
      << unreadable.Stderr();
  EXPECT_FALSE(std::filesystem::exists(dir_));
  args = Args();
  args.push_back("--no_such_flag=1");
  Process unknown(args);
  EXPECT_NE(unknown.Wait(std::chrono::seconds(20)), 0);
  EXPECT_TRUE(absl::StrContains(unknown.Stderr(), "no_such_flag"));
}

TEST_F(NodeBinaryTest, APortInUseIsRefused) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  Process node(Args(absl::StrCat("127.0.0.1:", ntohs(addr.sin_port))));
  EXPECT_EQ(node.Wait(std::chrono::seconds(20)), 1);
  EXPECT_TRUE(absl::StrContains(node.Stderr(), "cannot listen on")) << node.Stderr();
  close(fd);
}

TEST_F(NodeBinaryTest, ADataDirInUseIsRefused) {
  Process first(Args());
  ASSERT_FALSE(Start(first).empty()) << first.Stderr();
  Process second(Args());
  EXPECT_EQ(second.Wait(std::chrono::seconds(20)), 1);
  EXPECT_TRUE(absl::StrContains(second.Stderr(), "is locked")) << second.Stderr();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(std::chrono::seconds(20)), 0);
}

}  // namespace

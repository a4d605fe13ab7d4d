// A TCP proxy on 127.0.0.1 for fault injection: forwards connections to a target, or
// blackholes them (accepts and reads, forwards nothing, keeps them open), as a network partition
// that stalls connections instead of closing them. Bounded: every loop polls with a timeout and
// stops when the proxy is destroyed.
#ifndef MERGEDB_TESTS_NODE_TCP_PROXY_H_
#define MERGEDB_TESTS_NODE_TCP_PROXY_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace mergedb::node::testing {

class TcpProxy {
 public:
  enum class Mode { kPass, kBlackhole };

  explicit TcpProxy(int target_port) : target_port_(target_port) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    listen(listen_fd_, 64);
    socklen_t len = sizeof addr;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~TcpProxy() {
    stop_ = true;
    acceptor_.join();
    absl::MutexLock lock(&mu_);
    for (auto& t : pumps_) t.join();
    close(listen_fd_);
  }

  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  void set_mode(Mode mode) { mode_ = mode; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const int client = accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      const int server = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(target_port_));
      if (connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        close(client);
        close(server);
        continue;
      }
      absl::MutexLock lock(&mu_);
      pumps_.emplace_back([this, client, server] { Pump(client, server); });
    }
  }

  // Moves bytes both ways until either side closes or the proxy stops. In blackhole mode
  // bytes are read and dropped, so both ends see a silent, open connection.
  void Pump(int a, int b) {
    char buf[16384];
    while (!stop_) {
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (poll(p, 2, 50) <= 0) continue;
      bool closed = false;
      for (int k = 0; k < 2; ++k) {
        if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t n = read(p[k].fd, buf, sizeof buf);
        if (n <= 0) {
          closed = true;
          break;
        }
        if (mode_ == Mode::kPass) {
          const int to = k == 0 ? b : a;
          ssize_t off = 0;
          while (off < n) {
            // MSG_NOSIGNAL: when the far side has closed, a write() raises SIGPIPE, which
            // kills the whole test binary instead of failing this copy.
            const ssize_t w = send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
            if (w <= 0) break;
            off += w;
          }
        }
      }
      if (closed) break;
    }
    close(a);
    close(b);
  }

  const int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<Mode> mode_{Mode::kPass};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<std::thread> pumps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergedb::node::testing

#endif  // MERGEDB_TESTS_NODE_TCP_PROXY_H_

// The Prometheus endpoint (--metrics_listen): over HTTP, what Status reports, and clear errors
// for an address the node cannot listen on.
#include "node/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/node/cluster_test_util.h"
#include "tests/node/node_test_util.h"

namespace mergedb::node {
namespace {

using testing::Cluster;
using testing::Incr;
using testing::UpdateOf;

// GET `path` from 127.0.0.1:`port` over HTTP/1.0, with `headers` (each ending in CRLF): the
// status line, headers and body, or "" when the connection fails.
std::string HttpGet(int port, const std::string& path, const std::string& headers = "") {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    const std::string request =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n", headers, "\r\n");
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = recv(fd, buffer, sizeof buffer, 0)) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  return response;
}

// Scrapes `port` until its metrics hold every one of `lines` (at most 400 tries, 50 ms apart:
// a loaded machine may take seconds to notice a peer gone); returns the last scrape.
std::string AwaitMetrics(int port, const std::vector<std::string>& lines) {
  std::string scraped;
  for (int attempt = 0; attempt < 400; ++attempt) {
    scraped = HttpGet(port, "/metrics");
    bool all = true;
    for (const std::string& line : lines)
      all = all && absl::StrContains(scraped, "\n" + line + "\n");
    if (all) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return scraped;
}

TEST(Metrics, AScrapeShowsWhatStatusReports) {
  Cluster cluster(3);
  cluster.options(0).metrics_listen = "127.0.0.1:0";
  cluster.StartAll();
  const int port = cluster.node(0)->metrics_port();
  ASSERT_GT(port, 0);
  EXPECT_EQ(cluster.node(1)->metrics_port(), 0) << "no endpoint unless asked for";

  for (int i = 0; i < 3; ++i) {
    auto request = UpdateOf("c", absl::StrCat("doc", i));
    Incr(&request, {"n"}, 1);
    if (i == 2) {
      request.set_write_concern(mergedb::v1::QUORUM);
      request.set_request_id("once");
      ASSERT_TRUE(cluster.Update(0, request).ok());
      // Below, its retry: no commit of its own.
    }
    ASSERT_TRUE(cluster.Update(0, request).ok());
  }
  ASSERT_TRUE(cluster.WaitConverged());
  const mergedb::v1::StatusResponse status = cluster.Status(0);
  // Server-side latencies: three commits (the retry made none), and two waits for a quorum
  // (the retry waits again).
  ASSERT_EQ(status.latencies_size(), 3);
  EXPECT_EQ(status.latencies(0).what(), mergedb::v1::LatencyHistogram::COMMIT);
  EXPECT_EQ(status.latencies(0).count(), 3u);
  EXPECT_EQ(status.latencies(0).cumulative_counts(status.latencies(0).cumulative_counts_size() - 1),
            3u);
  EXPECT_GT(status.latencies(0).sum_seconds(), 0);
  EXPECT_EQ(status.latencies(1).write_concern(), mergedb::v1::QUORUM);
  EXPECT_EQ(status.latencies(1).count(), 2u);
  EXPECT_EQ(status.latencies(2).write_concern(), mergedb::v1::ALL);
  EXPECT_EQ(status.latencies(2).count(), 0u);
  const std::string own = absl::StrCat(absl::Hex(status.replica_id(), absl::kZeroPad16));
  const std::string scraped = AwaitMetrics(
      port,
      {"mergedb_documents 3", absl::StrCat("mergedb_applied_position{origin=\"", own, "\"} 3"),
       "mergedb_peer_up{peer=\"n2\"} 1", "mergedb_peer_up{peer=\"n3\"} 1",
       "mergedb_peer_entries_behind{peer=\"n2\"} 0", "mergedb_peer_entries_behind{peer=\"n3\"} 0",
       // The three writes that committed, once per peer, once its ack is back.
       "mergedb_replication_delay_seconds_count{peer=\"n2\"} 3",
       "mergedb_replication_delay_seconds_count{peer=\"n3\"} 3"});
  EXPECT_TRUE(absl::StartsWith(scraped, "HTTP/1.1 200")) << scraped.substr(0, 200);
  for (const std::string& line :
       {std::string("mergedb_documents 3"),
        absl::StrCat("mergedb_applied_position{origin=\"", own, "\"} 3"),
        std::string("mergedb_peer_up{peer=\"n2\"} 1"),
        std::string("mergedb_peer_entries_behind{peer=\"n3\"} 0"),
        absl::StrCat("mergedb_node_info{node=\"n1\",cluster=\"", status.cluster_id(),
                     "\",role=\"PRIMARY\",replica_id=\"", own, "\"} 1"),
        std::string("# TYPE mergedb_applied_position gauge"),
        std::string("mergedb_refusing_writes 0"),
        std::string("# TYPE mergedb_peer_sent_bytes_total counter"),
        std::string("# TYPE mergedb_peer_full_state_transfers_total counter"),
        std::string("mergedb_peer_log_damage_total{peer=\"n2\"} 0"),
        std::string("# TYPE mergedb_commit_duration_seconds histogram"),
        std::string("mergedb_commit_duration_seconds_count 3"),
        std::string("mergedb_commit_duration_seconds_bucket{le=\"+Inf\"} 3"),
        std::string("mergedb_write_concern_wait_seconds_count{write_concern=\"quorum\"} 2"),
        std::string("mergedb_write_concern_wait_seconds_count{write_concern=\"all\"} 0"),
        std::string("# TYPE mergedb_replication_delay_seconds histogram"),
        std::string("mergedb_replication_delay_seconds_count{peer=\"n2\"} 3"),
        std::string("mergedb_replication_delay_seconds_bucket{peer=\"n3\",le=\"+Inf\"} 3")}) {
    EXPECT_TRUE(absl::StrContains(scraped, "\n" + line + "\n")) << line << "\nin\n" << scraped;
  }
  EXPECT_FALSE(absl::StrContains(scraped, "mergedb_tls_")) << "a plaintext node has no certificate";

  // A peer that goes away shows as down, and the entries it misses as behind.
  cluster.Stop(2);
  auto request = UpdateOf("c", "doc0");
  Incr(&request, {"n"}, 1);
  ASSERT_TRUE(cluster.Update(0, request).ok());
  const std::string after = AwaitMetrics(
      port, {"mergedb_peer_up{peer=\"n3\"} 0", "mergedb_peer_entries_behind{peer=\"n3\"} 1",
             "mergedb_replication_delay_seconds_count{peer=\"n2\"} 4"});
  for (const std::string line :
       {"mergedb_peer_up{peer=\"n3\"} 0", "mergedb_peer_entries_behind{peer=\"n3\"} 1",
        "mergedb_replication_delay_seconds_count{peer=\"n2\"} 4",
        "mergedb_replication_delay_seconds_count{peer=\"n3\"} 3"}) {
    EXPECT_TRUE(absl::StrContains(after, "\n" + line + "\n")) << line << "\nin\n" << after;
  }

  // The endpoint goes with the node.
  cluster.Stop(0);
  EXPECT_EQ(HttpGet(port, "/metrics"), "");
}

// The delay runs from the writer's commit, not from when its frame left: a write made while
// the link was cut counts the time the cut lasted.
TEST(Metrics, AReplicationDelayRunsFromTheCommit) {
  Cluster cluster(2);
  cluster.StartAll();
  auto request = UpdateOf("c", "before");
  Incr(&request, {"n"}, 1);
  ASSERT_TRUE(cluster.Update(0, request).ok());
  ASSERT_TRUE(cluster.WaitConverged());

  cluster.SetLink(0, 1, false);
  request = UpdateOf("c", "during");
  Incr(&request, {"n"}, 1);
  ASSERT_TRUE(cluster.Update(0, request).ok());
  absl::SleepFor(absl::Milliseconds(600));
  cluster.SetLink(0, 1, true);
  ASSERT_TRUE(cluster.WaitConverged());

  mergedb::v1::LatencyHistogram delay;
  for (int attempt = 0; attempt < 400; ++attempt) {  // the ack may trail the convergence
    const mergedb::v1::StatusResponse status = cluster.Status(0);
    ASSERT_EQ(status.peers_size(), 1);
    delay = status.peers(0).replication_delay();
    if (delay.count() >= 2) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(delay.what(), mergedb::v1::LatencyHistogram::REPLICATION_DELAY);
  ASSERT_EQ(delay.count(), 2u) << "each write once";
  ASSERT_EQ(delay.upper_bounds_seconds(10), 0.25);
  EXPECT_EQ(delay.cumulative_counts(10), 1u) << "only the write before the cut came within 250 ms";
  EXPECT_GE(delay.sum_seconds(), 0.6);
}

// With --metrics_auth_file a scrape needs its credentials (HTTP basic authentication); a file
// others may read, or one without USER:PASSWORD, stops the node at start-up.
TEST(Metrics, ACredentialsFileMakesScrapesAuthenticate) {
  const char* tmp = getenv("TMPDIR");
  std::string dir = std::string(tmp != nullptr ? tmp : "/tmp") + "/mergedb-metrics-XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  const std::string file = dir + "/scrape.auth";
  auto write = [&](const std::string& contents, mode_t mode) {
    std::ofstream(file, std::ios::trunc) << contents;
    ASSERT_EQ(chmod(file.c_str(), mode), 0);
  };
  Cluster cluster(1);
  cluster.options(0).metrics_listen = "127.0.0.1:0";
  cluster.options(0).metrics_auth_file = file;
  for (const auto& [contents, mode, error] :
       {std::tuple{"scraper:s3cret\n", 0644, "readable or writable by other users (mode 0644)"},
        std::tuple{"no colon here\n", 0600, "expected USER:PASSWORD"},
        std::tuple{":s3cret\n", 0600, "expected USER:PASSWORD"}}) {
    write(contents, mode);
    auto refused = Node::Start(cluster.options(0));
    ASSERT_FALSE(refused.ok()) << contents;
    EXPECT_TRUE(absl::StrContains(refused.status().message(), error)) << refused.status();
  }
  write("scraper:s3cret-pass\n", 0600);
  cluster.Start(0);
  const int port = cluster.node(0)->metrics_port();
  auto basic = [](const std::string& credentials) {
    return absl::StrCat("Authorization: Basic ", absl::Base64Escape(credentials), "\r\n");
  };
  EXPECT_TRUE(absl::StartsWith(HttpGet(port, "/metrics"), "HTTP/1.1 401"));
  EXPECT_TRUE(
      absl::StartsWith(HttpGet(port, "/metrics", basic("scraper:s3cret-pas")), "HTTP/1.1 401"));
  EXPECT_TRUE(
      absl::StartsWith(HttpGet(port, "/metrics", basic("scraper:s3cret-pasS")), "HTTP/1.1 401"));
  EXPECT_TRUE(
      absl::StartsWith(HttpGet(port, "/metrics", basic("Scraper:s3cret-pass")), "HTTP/1.1 401"));
  const std::string scraped = HttpGet(port, "/metrics", basic("scraper:s3cret-pass"));
  EXPECT_TRUE(absl::StartsWith(scraped, "HTTP/1.1 200")) << scraped.substr(0, 200);
  EXPECT_TRUE(absl::StrContains(scraped, "\nmergedb_documents 0\n")) << scraped;
  cluster.Stop(0);

  // Without an endpoint, a credentials file is a mistake.
  cluster.options(0).metrics_listen = "";
  auto alone = Node::Start(cluster.options(0));
  ASSERT_FALSE(alone.ok());
  EXPECT_TRUE(absl::StrContains(alone.status().message(), "needs --metrics_listen"));
  std::filesystem::remove_all(dir);
}

TEST(Metrics, AnAddressTheNodeCannotListenOnIsAClearError) {
  Cluster cluster(1);
  cluster.options(0).metrics_listen = "nonsense";
  auto node = Node::Start(cluster.options(0));
  ASSERT_FALSE(node.ok());
  EXPECT_TRUE(
      absl::StrContains(node.status().message(), "--metrics_listen=nonsense: expected HOST:PORT"))
      << node.status();

  for (const std::string bad : {"127.0.0.1:9464s", "127.0.0.1:1,127.0.0.1:2", "127.0.0.1:"}) {
    cluster.options(0).metrics_listen = bad;
    auto refused = Node::Start(cluster.options(0));
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_TRUE(absl::StrContains(refused.status().message(), "expected HOST:PORT"))
        << refused.status();
  }

  // A port already taken (by another node's metrics).
  cluster.options(0).metrics_listen = "127.0.0.1:0";
  cluster.Start(0);
  const int taken = cluster.node(0)->metrics_port();
  Cluster other(1);
  other.options(0).metrics_listen = absl::StrCat("127.0.0.1:", taken);
  auto refused = Node::Start(other.options(0));
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "cannot listen there"))
      << refused.status();
  // ...before it touched its data dir or served a call.
  EXPECT_FALSE(other.options(0).env->FileExists(other.options(0).data_dir + "/CURRENT"))
      << "the refused node opened its data dir";
}

}  // namespace
}  // namespace mergedb::node

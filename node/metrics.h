// Prometheus metrics over HTTP (--metrics_listen): what ClusterService.Status reports, in the
// text exposition format, for monitoring systems that scrape instead of calling gRPC.
//
// Every scrape builds its families from one Status answer (FillStatus in node/services.h), so
// the two never disagree; the write path's only instrumentation is the latency histograms that
// Status reports (node/latency_histogram.h). The
// endpoint is plain HTTP, like most exporters, without authentication unless given a
// credentials file (HTTP basic authentication, whose password crosses the network in the
// clear): bind it to an address only the monitoring system reaches. It shows no document data,
// only counts, positions, peer names and certificate expiry times.
#ifndef MERGEDB_NODE_METRICS_H_
#define MERGEDB_NODE_METRICS_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergedb/v1/api.pb.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace prometheus {
class Exposer;
}

namespace mergedb::node {

// The metric families for one Status answer, e.g. mergedb_documents, mergedb_peer_up{peer=...}.
std::vector<prometheus::MetricFamily> MetricFamilies(const mergedb::v1::StatusResponse& status);

class MetricsServer {
 public:
  // Listens on `listen` (HOST:PORT; port 0 picks a free one) and serves GET /metrics, empty
  // until Serve. A node listens before it opens its data dir and serves anything else, so an
  // address it cannot take stops it before it has accepted a write. INVALID_ARGUMENT for an
  // address it cannot listen on. With `auth_file` (--metrics_auth_file: USER:PASSWORD on one
  // line, readable by its owner only) a scrape without those credentials gets 401; a file that
  // does not read, is malformed or is readable by others is INVALID_ARGUMENT.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Listen(const std::string& listen,
                                                               const std::string& auth_file = "");
  // From now on every scrape calls `status` once, from the HTTP server's thread. Once only.
  void Serve(std::function<mergedb::v1::StatusResponse()> status);
  // Stops serving; a scrape in progress finishes first.
  ~MetricsServer();

  int port() const { return port_; }

 private:
  class Collector;
  MetricsServer() = default;

  std::shared_ptr<Collector> collector_;  // set by Serve
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_METRICS_H_

// Server-side latencies, as histograms with fixed buckets: what a node reports in
// ClusterService.Status (StatusResponse.latencies) and its metrics endpoint as Prometheus
// histograms, so that an operator sees the local commit and the wait for the peers (QUORUM,
// ALL) on a running cluster, not only in the benchmarks.
//
// Observing costs two relaxed atomic additions and a search of 16 bounds; no lock, no
// allocation. A snapshot taken while writes go on reads each bucket once and builds `count`
// from them, so its cumulative counts never pass `count`; only the sum may be a write ahead or
// behind. Durations are taken on a monotonic clock by the callers.
#ifndef MERGEDB_NODE_LATENCY_HISTOGRAM_H_
#define MERGEDB_NODE_LATENCY_HISTOGRAM_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "absl/time/time.h"
#include "mergedb/v1/api.pb.h"

namespace mergedb::node {

class LatencyHistogram {
 public:
  // Upper bounds of the buckets, in seconds (a last bucket takes everything above).
  static constexpr std::array<double, 16> kBoundsSeconds = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};

  // Records `count` operations that each took `duration`.
  void Observe(absl::Duration duration, uint64_t count = 1) {
    const double seconds = absl::ToDoubleSeconds(duration);
    const size_t bucket = static_cast<size_t>(
        std::lower_bound(kBoundsSeconds.begin(), kBoundsSeconds.end(), seconds) -
        kBoundsSeconds.begin());
    buckets_[bucket].fetch_add(count, std::memory_order_relaxed);
    // Microseconds: 64 bits hold half a million years of summed waits.
    sum_micros_.fetch_add(
        count * static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Microseconds(duration))),
        std::memory_order_relaxed);
  }

  // Fills `out`'s bounds, cumulative counts, count and sum (not its name).
  void FillTo(mergedb::v1::LatencyHistogram* out) const {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < kBoundsSeconds.size(); ++i) {
      cumulative += buckets_[i].load(std::memory_order_relaxed);
      out->add_upper_bounds_seconds(kBoundsSeconds[i]);
      out->add_cumulative_counts(cumulative);
    }
    cumulative += buckets_[kBoundsSeconds.size()].load(std::memory_order_relaxed);
    out->set_count(cumulative);
    out->set_sum_seconds(static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) * 1e-6);
  }

 private:
  std::array<std::atomic<uint64_t>, kBoundsSeconds.size() + 1> buckets_{};
  std::atomic<uint64_t> sum_micros_{0};
};

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_LATENCY_HISTOGRAM_H_

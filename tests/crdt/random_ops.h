// Seeded random operations on every CRDT type, for the property tests. Every generator draws from
// a small vocabulary (few paths, few elements) so that operations collide often: collisions are
// where merge bugs live.
#ifndef MERGEDB_TESTS_CRDT_RANDOM_OPS_H_
#define MERGEDB_TESTS_CRDT_RANDOM_OPS_H_

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "crdt/document.h"
#include "crdt/types.h"

namespace mergedb::crdt::testing {

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  // Uniform in [lo, hi].
  int64_t Range(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(engine_);
  }
  bool Chance(double p) { return std::bernoulli_distribution(p)(engine_); }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(Range(0, static_cast<int64_t>(v.size()) - 1))];
  }

 private:
  std::mt19937_64 engine_;
};

// The seeds a property test runs: `count` seeds starting at `base`. MERGEDB_SEED=<n> replays
// exactly one; MERGEDB_SEEDS=<count> and MERGEDB_SEED_BASE=<first> run a longer or another
// series than the suite's fixed one.
inline std::vector<uint64_t> SeedsToRun(uint64_t base, int count) {
  if (const char* env = std::getenv("MERGEDB_SEED")) return {std::strtoull(env, nullptr, 10)};
  if (const char* env = std::getenv("MERGEDB_SEEDS")) count = std::atoi(env);
  if (const char* env = std::getenv("MERGEDB_SEED_BASE")) base = std::strtoull(env, nullptr, 10);
  std::vector<uint64_t> seeds;
  for (int i = 0; i < count; ++i) seeds.push_back(base + static_cast<uint64_t>(i));
  return seeds;
}

// Replica ids as a node would draw them: large random-looking 64-bit values.
inline ReplicaId ReplicaIdOf(int index) {
  return 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(index + 1);
}

// A replica's hybrid clock over a simulated, skewed physical clock.
struct ClockState {
  Hlc last;
  uint64_t skew_ms = 0;
  Hlc Tick(uint64_t now_ms) { return last = HlcTick(last, now_ms + skew_ms); }
};

inline Scalar RandomScalar(Rng& rng) {
  switch (rng.Range(0, 5)) {
    case 0:
      return Scalar::OfNull();
    case 1:
      return Scalar::OfBool(rng.Chance(0.5));
    case 2:
      return Scalar::OfInt(rng.Range(0, 3));
    case 3:
      return Scalar::OfDouble(static_cast<double>(rng.Range(0, 3)));  // 1.0 vs int 1
    default:
      return Scalar::OfString(std::string(1, static_cast<char>('a' + rng.Range(0, 3))));
  }
}

inline RegisterValue RandomRegisterValue(Rng& rng) {
  if (rng.Chance(0.2)) {
    google::protobuf::Value json;
    (*json.mutable_struct_value()->mutable_fields())["k"].set_number_value(
        static_cast<double>(rng.Range(0, 3)));
    return RegisterValue::OfJson(json);
  }
  return RegisterValue::OfScalar(RandomScalar(rng));
}

// Ops<T>::Mutate applies one random mutation to `state` at `replica` and returns its delta.
template <typename T>
struct Ops;

template <>
struct Ops<PnCounter> {
  static PnCounter Mutate(PnCounter& state, ReplicaId replica, Rng& rng, ClockState&, uint64_t) {
    return *state.Add(replica, rng.Range(-3, 5));
  }
};

template <>
struct Ops<MvRegister> {
  static MvRegister Mutate(MvRegister& state, ReplicaId replica, Rng& rng, ClockState& clock,
                           uint64_t now) {
    return state.Write(replica, RandomRegisterValue(rng), clock.Tick(now));
  }
};

template <>
struct Ops<EwFlag> {
  static EwFlag Mutate(EwFlag& state, ReplicaId replica, Rng& rng, ClockState&, uint64_t) {
    return rng.Chance(0.5) ? state.Enable(replica) : state.Disable(replica);
  }
};

template <>
struct Ops<AwSet> {
  static AwSet Mutate(AwSet& state, ReplicaId replica, Rng& rng, ClockState&, uint64_t) {
    Scalar element = RandomScalar(rng);
    return rng.Chance(0.6) ? state.Add(replica, element) : state.Remove(element);
  }
};

template <>
struct Ops<Document> {
  static Document Mutate(Document& state, ReplicaId replica, Rng& rng, ClockState& clock,
                         uint64_t now) {
    static const std::vector<Path> kPaths = {{"a"},      {"b"},           {"m", "x"},
                                             {"m", "y"}, {"m", "n", "z"}, {"m"}};
    const Path& path = rng.Pick(kPaths);
    absl::StatusOr<Document> delta;
    switch (rng.Range(0, 9)) {
      case 0:
      case 1:
        delta = state.SetRegister(path, RandomRegisterValue(rng), replica, clock.Tick(now));
        break;
      case 2:
      case 3:
        delta = state.Increment(path, rng.Range(-2, 5), replica);
        break;
      case 4:
        delta = state.SetFlag(path, rng.Chance(0.5), replica);
        break;
      case 5:
      case 6: {
        std::vector<Scalar> elements = {RandomScalar(rng), RandomScalar(rng)};
        delta = state.AddElements(path, elements, replica);
        break;
      }
      case 7: {
        std::vector<Scalar> elements = {RandomScalar(rng)};
        delta = state.RemoveElements(path, elements);
        break;
      }
      case 8:
        delta = state.RemoveField(path);
        break;
      default:
        delta = rng.Chance(0.3) ? state.Delete() : state.RemoveField(path);
        break;
    }
    // A local write against a field of another kind is refused; the replica did nothing.
    return delta.ok() ? *std::move(delta) : Document();
  }
};

}  // namespace mergedb::crdt::testing

#endif  // MERGEDB_TESTS_CRDT_RANDOM_OPS_H_

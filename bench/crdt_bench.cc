// Micro-benchmarks of the CRDT core: delta application and full-state Join per type, and the
// encoding. Built by default, never run by the suite: `build/bench/crdt_bench`.
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "crdt/document.h"
#include "crdt/types.h"

namespace mergedb::crdt {
namespace {

constexpr ReplicaId kA = 0xa1;
constexpr ReplicaId kB = 0xb2;

// Applying a fresh increment delta to a counter that three replicas write.
void BM_CounterDeltaApply(benchmark::State& state) {
  PnCounter writer, reader;
  for (auto _ : state) {
    PnCounter delta = *writer.Add(kA, 1);
    reader.Join(delta);
  }
  benchmark::DoNotOptimize(reader.Value());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CounterDeltaApply);

void BM_RegisterDeltaApply(benchmark::State& state) {
  MvRegister writer, reader;
  uint64_t t = 0;
  const RegisterValue value = RegisterValue::OfScalar(Scalar::OfString(std::string(64, 'x')));
  for (auto _ : state) {
    reader.Join(writer.Write(kA, value, Hlc::FromParts(++t, 0)));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RegisterDeltaApply);

void BM_FlagDeltaApply(benchmark::State& state) {
  EwFlag writer, reader;
  bool on = false;
  for (auto _ : state) {
    on = !on;
    reader.Join(on ? writer.Enable(kA) : writer.Disable(kA));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FlagDeltaApply);

// Adding one element to a set of `range(0)` elements and applying it on a second replica.
void BM_SetAddDeltaApply(benchmark::State& state) {
  AwSet writer;
  for (int64_t i = 0; i < state.range(0); ++i) writer.Add(kA, Scalar::OfInt(i));
  AwSet reader = writer;
  int64_t next = state.range(0);
  for (auto _ : state) {
    reader.Join(writer.Add(kA, Scalar::OfInt(next++)));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SetAddDeltaApply)->Arg(10)->Arg(100000);

// One Update-sized document delta (set a 64-byte string field, or increment a counter) applied
// to a document with `range(0)` fields.
void BM_DocumentDeltaApply(benchmark::State& state) {
  Document writer;
  for (int64_t i = 0; i < state.range(0); ++i) {
    (void)writer.Increment({"f" + std::to_string(i)}, 1, kA);
  }
  Document reader = writer;
  const RegisterValue value = RegisterValue::OfScalar(Scalar::OfString(std::string(64, 'v')));
  uint64_t t = 0;
  for (auto _ : state) {
    ++t;
    Document delta = (t % 2) ? *writer.SetRegister({"name"}, value, kA, Hlc::FromParts(t, 0))
                             : *writer.Increment({"f0"}, 1, kA);
    reader.Join(delta);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DocumentDeltaApply)->Arg(10)->Arg(10000);

// Full-state join of two diverged 1,000-field documents.
void BM_DocumentFullJoin(benchmark::State& state) {
  Document a, b;
  for (int i = 0; i < 1000; ++i) {
    (void)a.Increment({"f" + std::to_string(i)}, 1, kA);
    (void)b.Increment({"f" + std::to_string(i)}, 1, kB);
  }
  for (auto _ : state) {
    Document c = a;
    c.Join(b);
    benchmark::DoNotOptimize(c);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DocumentFullJoin);

Document SampleDocument(int fields) {
  Document doc;
  for (int i = 0; i < fields; ++i) {
    const std::string name = "f" + std::to_string(i);
    switch (i % 3) {
      case 0:
        (void)doc.Increment({name}, i, kA);
        break;
      case 1:
        (void)doc.SetRegister({"m", name}, RegisterValue::OfScalar(Scalar::OfString("value")), kA,
                              Hlc::FromParts(static_cast<uint64_t>(i), 0));
        break;
      default:
        (void)doc.AddElements({name}, {Scalar::OfInt(i), Scalar::OfString("x")}, kB);
    }
  }
  return doc;
}

void BM_DocumentEncode(benchmark::State& state) {
  const Document doc = SampleDocument(static_cast<int>(state.range(0)));
  size_t bytes = 0;
  for (auto _ : state) {
    std::string encoded = doc.Encode();
    bytes += encoded.size();
    benchmark::DoNotOptimize(encoded);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
BENCHMARK(BM_DocumentEncode)->Arg(30)->Arg(3000);

void BM_DocumentDecode(benchmark::State& state) {
  const std::string encoded = SampleDocument(static_cast<int>(state.range(0))).Encode();
  for (auto _ : state) {
    auto doc = Document::Decode(encoded);
    benchmark::DoNotOptimize(doc);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * encoded.size()));
}
BENCHMARK(BM_DocumentDecode)->Arg(30)->Arg(3000);

}  // namespace
}  // namespace mergedb::crdt

BENCHMARK_MAIN();

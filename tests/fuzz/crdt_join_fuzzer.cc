// Fuzzes the CRDT layer alone: bytes -> mergedb.fuzz.EncodedStates -> crdt::Document::Decode of
// each encoded state (what storage and replication decode) -> joins, delta mutators, encodings
// and reads. Whatever decodes must behave as a lattice and encode canonically:
//   - Encode(Decode(x)) decodes to an equal document and encodes to the same bytes again;
//   - join is commutative, associative and idempotent, and inflates both contexts;
//   - the change journal of a join names exactly the leaves that changed, with their old content
//     (storage rewrites only those leaves and updates its digest from them);
//   - dots in a join's `keep` set stay live;
//   - a delta mutator's delta, joined into the state before it, gives the state after it, and the
//     mutated state still decodes (mergedb's delta-state rule);
//   - every state reads back (fuzz::ReadBack).
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "crdt/document.h"
#include "fuzz_input.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace mergedb::fuzz {
namespace {

constexpr int kMaxStates = 3;
constexpr int kMaxMutations = 8;

using crdt::Document;

void CheckCanonical(const Document& doc, absl::string_view what) {
  const std::string bytes = doc.Encode();
  auto again = Document::Decode(bytes);
  MERGEDB_FUZZ_CHECK(again.ok(), what,
                     " does not decode after encoding: ", again.status().ToString(), " ",
                     doc.DebugString());
  MERGEDB_FUZZ_CHECK(*again == doc, what, " changes through its encoding: ", doc.DebugString());
  MERGEDB_FUZZ_CHECK(again->Encode() == bytes, what, " encodes to other bytes after decoding");
}

Document Joined(const Document& a, const Document& b) {
  Document out = a;
  out.Join(b);
  return out;
}

// Whether `a` and `b` can be states of one document: a dot live in both is the same event in
// both (the same leaf and payload). In mergedb a dot names one event for good (replica ids are
// random and never reused), so only forged or mixed-up states break this; the join laws hold
// only among states that keep it, while the join must stay memory-safe on any input.
bool Compatible(const Document& a, const Document& b) {
  for (const auto& [key, leaf] : a.kernel().leaves()) {
    for (const auto& [dot, payload] : leaf) {
      if (!b.kernel().IsLive(dot)) continue;
      const crdt::DotStore* other = b.kernel().FindLeaf(key);
      if (other == nullptr) return false;
      auto it = other->find(dot);
      if (it == other->end() || !(it->second == payload)) return false;
    }
  }
  return true;
}

void CheckJoin(const Document& a, const Document& b, const Document& c) {
  const Document ab = Joined(a, b);
  CheckCanonical(ab, "a join");
  MERGEDB_FUZZ_CHECK(ab.context().Includes(a.context()) && ab.context().Includes(b.context()),
                     "a join lost part of a context");
  if (Compatible(a, b) && Compatible(b, c) && Compatible(a, c)) {
    const Document ba = Joined(b, a);
    MERGEDB_FUZZ_CHECK(ab == ba, "join is not commutative: a=", a.DebugString(),
                       "\nb=", b.DebugString(), "\na+b=", ab.DebugString(),
                       "\nb+a=", ba.DebugString());
    MERGEDB_FUZZ_CHECK(Joined(ab, b) == ab && Joined(a, a) == a, "join is not idempotent");
    MERGEDB_FUZZ_CHECK(Joined(ab, c) == Joined(a, Joined(b, c)), "join is not associative");
  }

  // The journal: every leaf that differs is recorded with its content before the join, and
  // every recorded leaf did change.
  Document x = a;
  crdt::LeafChanges changes;
  x.Join(b, &changes);
  std::set<std::string> keys;
  for (const auto& [key, leaf] : a.kernel().leaves()) keys.insert(key);
  for (const auto& [key, leaf] : x.kernel().leaves()) keys.insert(key);
  for (const std::string& key : keys) {
    const crdt::DotStore* was = a.kernel().FindLeaf(key);
    const crdt::DotStore* now = x.kernel().FindLeaf(key);
    const bool changed = (was == nullptr) != (now == nullptr) || (was != nullptr && *was != *now);
    auto recorded = changes.before.find(key);
    if (recorded == changes.before.end()) {
      MERGEDB_FUZZ_CHECK(!changed, "a join changed a leaf its journal does not record");
      continue;
    }
    MERGEDB_FUZZ_CHECK(recorded->second.has_value() == (was != nullptr) &&
                           (was == nullptr || *recorded->second == *was),
                       "a join's journal records a wrong pre-image");
  }

  // `keep` protects a's live dots from b's context.
  std::set<crdt::Dot> keep;
  for (const auto& [key, leaf] : a.kernel().leaves()) {
    for (const auto& entry : leaf) keep.insert(entry.first);
  }
  Document kept = a;
  kept.Join(b, nullptr, &keep);
  for (const crdt::Dot& dot : keep) {
    MERGEDB_FUZZ_CHECK(kept.kernel().IsLive(dot), "a join removed a dot it was told to keep");
  }
}

// Applies mutation `op` to `doc` and checks the delta-state rule. The op picks the kind of
// mutation, the field (among those the document shows, or a new one) and the replica (among
// those its context knows, or a fixed one), so that writes hit existing state.
void Mutate(Document& doc, uint32_t op) {
  std::vector<crdt::Path> paths = {{"f"}, {"m", "g"}};
  const mergedb::v1::MapView view = doc.ToTyped();
  for (const auto& field : view.fields()) {
    paths.push_back({field.name()});
    if (field.value().has_map()) {
      for (const auto& inner : field.value().map().fields()) {
        paths.push_back({field.name(), inner.name()});
      }
    }
  }
  std::vector<crdt::ReplicaId> replicas = {kLocalReplica};
  for (const auto& [replica, counter] : doc.context().vector()) replicas.push_back(replica);
  for (const crdt::Dot& dot : doc.context().cloud()) replicas.push_back(dot.replica);

  const crdt::Path& path = paths[(op >> 4) % paths.size()];
  const crdt::ReplicaId replica = replicas[(op >> 12) % replicas.size()];
  const int64_t amount = static_cast<int64_t>(op >> 20) - 2048;
  const Document before = doc;
  absl::StatusOr<Document> delta;
  switch (op & 0xf) {
    case 0:
      delta = doc.Increment(path, amount, replica);
      break;
    case 1:
      delta = doc.SetRegister(path, crdt::RegisterValue::OfScalar(crdt::Scalar::OfInt(amount)),
                              replica, crdt::Hlc::FromPacked(static_cast<uint64_t>(op) << 16));
      break;
    case 2:
      delta = doc.SetFlag(path, (op >> 20) & 1, replica);
      break;
    case 3:
      delta = doc.AddElements(path, {crdt::Scalar::OfInt(amount)}, replica);
      break;
    case 4:
      delta = doc.RemoveElements(path, {crdt::Scalar::OfInt(amount)});
      break;
    case 5:
      delta = doc.RemoveField(path);
      break;
    case 6:
      delta = doc.Delete();
      break;
    default:
      return;
  }
  if (!delta.ok()) {
    MERGEDB_FUZZ_CHECK(doc == before, "a refused mutation changed the document");
    return;
  }
  CheckCanonical(doc, "a mutated document");
  CheckCanonical(*delta, "a delta");
  MERGEDB_FUZZ_CHECK(Joined(before, *delta) == doc,
                     "a delta joined into the state before it is not the state");
}

void Run(const EncodedStates& input) {
  std::vector<Document> docs;
  for (int i = 0; i < input.states_size() && i < kMaxStates; ++i) {
    auto doc = Document::Decode(input.states(i));
    if (!doc.ok()) continue;
    CheckCanonical(*doc, "a decoded document");
    ReadBack(*doc);
    docs.push_back(*std::move(doc));
  }
  if (docs.empty()) return;
  const Document& a = docs[0];
  const Document& b = docs.size() > 1 ? docs[1] : docs[0];
  const Document& c = docs.size() > 2 ? docs[2] : Document();
  CheckJoin(a, b, c);
  Document ab = Joined(a, b);
  ReadBack(ab);
  for (int i = 0; i < input.mutations_size() && i < kMaxMutations; ++i) {
    Mutate(ab, input.mutations(i));
  }
  ReadBack(ab);
}

}  // namespace
}  // namespace mergedb::fuzz

MERGEDB_FUZZ_TARGET(mergedb::fuzz::EncodedStates)

#include "tests/fuzz/fuzz_util.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "crdt/scalar.h"
#include "crdt/status_macros.h"
#include "google/protobuf/stubs/logging.h"
#include "leveldb/env.h"
#include "leveldb/helpers/memenv.h"
#include "node/log.h"
#include "node/services.h"

namespace mergedb::fuzz {

namespace {

// Readers of a large document stop after this many fields: the cost of an input should follow
// its size, not the square of it.
constexpr size_t kMaxFieldsReadBack = 64;

std::string Name(const DocName& doc) {
  return absl::StrCat(absl::CHexEscape(doc.first), "/", absl::CHexEscape(doc.second));
}

// What a client receives: the message serialized, then parsed on the other side.
void CheckSurvivesTransfer(const google::protobuf::Message& message, absl::string_view what) {
  const std::string bytes = crdt::SerializeDeterministic(message);
  std::unique_ptr<google::protobuf::Message> parsed(message.New());
  MERGEDB_FUZZ_CHECK(parsed->ParseFromString(bytes), what,
                     ": a client cannot parse the answer: ", message.ShortDebugString());
  MERGEDB_FUZZ_CHECK(crdt::SerializeDeterministic(*parsed) == bytes, what,
                     ": the answer changes on its way to a client");
}

// Collects the paths of the fields of `view` (depth first), at most kMaxFieldsReadBack.
void CollectPaths(const mergedb::v1::MapView& view, crdt::Path* prefix,
                  std::vector<std::pair<crdt::Path, const mergedb::v1::TypedField*>>* out) {
  for (const auto& field : view.fields()) {
    if (out->size() >= kMaxFieldsReadBack) return;
    prefix->push_back(field.name());
    out->emplace_back(*prefix, &field);
    if (field.value().has_map()) CollectPaths(field.value().map(), prefix, out);
    prefix->pop_back();
  }
}

}  // namespace

void SilenceLogs() {
  node::SetMinLogLevel(node::LogLevel::kError);
  google::protobuf::SetLogHandler(nullptr);
}

void Fail(absl::string_view what) {
  std::fprintf(stderr, "==mergedb fuzz== invariant broken: %.*s\n", static_cast<int>(what.size()),
               what.data());
  std::abort();
}

MemNode::MemNode(const std::string& name, crdt::ReplicaId replica)
    : name_(name), env_(leveldb::NewMemEnv(leveldb::Env::Default())), hlc_(&clock_) {
  storage::StoreOptions options;
  options.path = "/" + name;
  options.cluster_id = kClusterId;
  options.node_name = name;
  options.env = env_.get();
  options.cache_bytes = size_t{4} << 20;
  options.random = [replica] { return replica; };
  auto store = storage::Store::Open(options);
  if (!store.ok()) Fail(absl::StrCat("opening an in-memory store: ", store.status().ToString()));
  store_ = *std::move(store);
}

// The store closes before its Env goes.
MemNode::~MemNode() { store_.reset(); }

absl::StatusOr<storage::WriteResult> ApplyClientUpdate(MemNode& node,
                                                       const mergedb::v1::UpdateRequest& request,
                                                       const node::Limits& limits) {
  MERGEDB_ASSIGN_OR_RETURN(node::PreparedUpdate update,
                           node::PreparedUpdate::Prepare(request, limits));
  if (update.has_base_version()) {
    bool covered = false;
    MERGEDB_RETURN_IF_ERROR(
        node.store()->Read(request.collection(), request.id(), [&](const crdt::Document& doc) {
          covered = doc.context().Includes(update.base_version());
        }));
    if (!covered) return absl::DeadlineExceededError("base version not applied here");
  }
  return node.store()->ApplyLocal(node::MakeLocalWrite(request, update, node.store()->replica_id(),
                                                       node.hlc(), 1'700'000'000'000));
}

void ReadBack(const crdt::Document& doc) {
  const mergedb::v1::GetResponse whole = node::RenderGetResponse(doc, {});
  MERGEDB_FUZZ_CHECK(whole.found() == doc.exists(), "Get's found disagrees with the document");
  CheckSurvivesTransfer(whole, "Get of a whole document");
  mergedb::v1::MapView view;
  for (const auto& field : whole.fields()) *view.add_fields() = field;
  crdt::Path prefix;
  std::vector<std::pair<crdt::Path, const mergedb::v1::TypedField*>> fields;
  CollectPaths(view, &prefix, &fields);
  for (const auto& [path, field] : fields) {
    const mergedb::v1::GetResponse one = node::RenderGetResponse(doc, path);
    CheckSurvivesTransfer(one, "Get of a field");
    // The field read by its path is the one the whole document shows.
    bool seen = false;
    for (const auto& read : one.fields()) {
      if (read.name() == field->name() && read.kind() == field->kind()) {
        seen = true;
        MERGEDB_FUZZ_CHECK(
            crdt::SerializeDeterministic(read) == crdt::SerializeDeterministic(*field), "field ",
            field->ShortDebugString(), " reads back by its path as ", read.ShortDebugString());
      }
    }
    MERGEDB_FUZZ_CHECK(seen, "field ", field->name(), " is missing when read by its path");
  }
}

void CheckStore(storage::Store* store, const std::set<DocName>& touched) {
  auto cursor = store->OpenSnapshot();
  MERGEDB_FUZZ_CHECK(cursor.ok(), "opening a snapshot: ", cursor.status().ToString());
  std::map<DocName, crdt::Document> stored;
  while (true) {
    storage::SnapshotDoc doc;
    auto more = (*cursor)->Next(&doc);
    MERGEDB_FUZZ_CHECK(more.ok(), "reading the stored documents: ", more.status().ToString());
    if (!*more) break;
    const DocName name{doc.collection, doc.id};
    // Encoding is canonical: what decodes encodes again to the same bytes.
    const std::string encoded = doc.state.Encode();
    auto decoded = crdt::Document::Decode(encoded);
    MERGEDB_FUZZ_CHECK(decoded.ok() && *decoded == doc.state && decoded->Encode() == encoded,
                       "document ", Name(name), " does not survive its encoding");
    ReadBack(doc.state);
    // List and Watch name the document in protobuf strings.
    mergedb::v1::WatchEvent event;
    event.set_collection(doc.collection);
    event.set_id(doc.id);
    CheckSurvivesTransfer(event, "the name of a stored document");
    stored.emplace(name, std::move(doc.state));
  }
  cursor->reset();
  std::set<DocName> names = touched;
  for (const auto& entry : stored) names.insert(entry.first);
  const crdt::Document never_written;
  for (const DocName& name : names) {
    auto it = stored.find(name);
    const crdt::Document& on_disk = it == stored.end() ? never_written : it->second;
    auto cached = store->Get(name.first, name.second);
    MERGEDB_FUZZ_CHECK(cached.ok(), "reading ", Name(name), ": ", cached.status().ToString());
    MERGEDB_FUZZ_CHECK(*cached == on_disk, "document ", Name(name), ": the cache holds ",
                       cached->DebugString(), " but LevelDB holds ", on_disk.DebugString());
  }

  // The state digest, kept incrementally at every commit, against one computed in one go.
  MemNode fresh("digest", kThirdReplica);
  std::vector<storage::SnapshotDoc> docs;
  for (auto& [name, state] : stored)
    docs.push_back({name.first, name.second, std::move(state)});
  const absl::Status joined = fresh.store()->ApplySnapshot(docs);
  MERGEDB_FUZZ_CHECK(joined.ok(), "joining the stored documents: ", joined.ToString());
  MERGEDB_FUZZ_CHECK(
      fresh.store()->state_digest() == store->state_digest(),
      "the state digest differs from the digest of the same documents joined afresh");
  MERGEDB_FUZZ_CHECK(
      fresh.store()->document_count() == store->document_count(),
      "the document count differs from the count of the same documents joined afresh");
}

}  // namespace mergedb::fuzz

#include "storage/keys.h"

#include "absl/base/internal/endian.h"
#include "absl/strings/str_cat.h"
#include "crdt/leaf_key.h"

namespace mergedb::storage::keys {

std::string EncodeBe64(uint64_t v) {
  char buf[8];
  absl::big_endian::Store64(buf, v);
  return std::string(buf, 8);
}

uint64_t DecodeBe64(absl::string_view bytes) { return absl::big_endian::Load64(bytes.data()); }

std::string Meta(absl::string_view name) { return absl::StrCat(std::string(1, kMetaTag), name); }

std::string CollectionPrefix(absl::string_view collection) {
  std::string key(1, kDocTag);
  crdt::AppendName(&key, collection);
  return key;
}

std::string DocSpaceEnd() { return std::string{kDocTag, '\xFF'}; }

std::string DocPrefix(absl::string_view collection, absl::string_view id) {
  std::string key = CollectionPrefix(collection);
  crdt::AppendName(&key, id);
  return key;
}

std::string DocContext(absl::string_view doc_prefix) {
  return absl::StrCat(doc_prefix, std::string(1, '\0'));
}

std::string DocLeaf(absl::string_view doc_prefix, absl::string_view leaf_key) {
  return absl::StrCat(doc_prefix, "\x01", leaf_key);
}

std::string Log(crdt::ReplicaId origin, uint64_t seq) {
  return absl::StrCat(std::string(1, kLogTag), EncodeBe64(origin), EncodeBe64(seq));
}

std::string LogOrigin(crdt::ReplicaId origin) {
  return absl::StrCat(std::string(1, kLogTag), EncodeBe64(origin));
}

std::string Applied(crdt::ReplicaId origin) {
  return absl::StrCat(std::string(1, kAppliedTag), EncodeBe64(origin));
}

std::string PeerAckPrefix(absl::string_view peer) {
  std::string key(1, kPeerAckTag);
  crdt::AppendName(&key, peer);
  return key;
}

std::string PeerAck(absl::string_view peer, crdt::ReplicaId origin) {
  return absl::StrCat(PeerAckPrefix(peer), EncodeBe64(origin));
}

std::string Change(uint64_t seq) {
  return absl::StrCat(std::string(1, kChangeTag), EncodeBe64(seq));
}

std::string Request(absl::string_view request_id) {
  return absl::StrCat(std::string(1, kRequestTag), request_id);
}

std::string LogFloor(crdt::ReplicaId origin) {
  return absl::StrCat(std::string(1, kLogFloorTag), EncodeBe64(origin));
}

}  // namespace mergedb::storage::keys

// mergedb-repair DATA_DIR: salvages a corrupted data directory (the node must be stopped).
// Runs LevelDB's repair, which keeps every readable record and drops damaged ones, and marks the
// directory so that the node's next open takes a new replica id and clears the documents, which
// come back from the peers (storage/FORMAT.md, "Corruption and repair").
#include <cstdio>

#include "storage/store.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DATA_DIR\n", argv[0]);
    return 2;
  }
  const absl::Status status = mergedb::storage::Store::Repair(argv[1]);
  if (!status.ok()) {
    std::fprintf(stderr, "mergedb-repair: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("repaired %s; start the node and let it catch up from its peers\n", argv[1]);
  return 0;
}

// The write RPCs (Update, UpdateStream, UpdateBatchStream) on the asynchronous server; see
// async_writes.cc.
#ifndef MERGEDB_NODE_ASYNC_WRITES_H_
#define MERGEDB_NODE_ASYNC_WRITES_H_

#include "node/async_server.h"

namespace mergedb::node {

class DocumentServiceImpl;

// Before server->Start(): serves `service`'s write RPCs on `server`. Both are borrowed and
// `service` outlives the server's calls.
void ServeWrites(DocumentServiceImpl* service, AsyncServer* server);

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_ASYNC_WRITES_H_

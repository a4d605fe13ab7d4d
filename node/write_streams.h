// UpdateStream and UpdateBatchStream on the asynchronous server; see write_streams.cc.
#ifndef MERGEDB_NODE_WRITE_STREAMS_H_
#define MERGEDB_NODE_WRITE_STREAMS_H_

#include "node/async_server.h"

namespace mergedb::node {

class DocumentServiceImpl;

// Before server->Start(): serves `service`'s streaming write RPCs on `server`. Both are borrowed
// and `service` outlives the server's calls.
void ServeWriteStreams(DocumentServiceImpl* service, AsyncServer* server);

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_WRITE_STREAMS_H_

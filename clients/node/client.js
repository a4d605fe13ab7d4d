// A small Node.js client for mergedb: loads protos/ at run time with @grpc/proto-loader.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'protos');

function load() {
  const definition = protoLoader.loadSync(path.join(PROTO_ROOT, 'mergedb/v1/api.proto'), {
    keepCase: true,
    longs: String,  // int64 counters stay exact
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [PROTO_ROOT],
  });
  return grpc.loadPackageDefinition(definition).mergedb.v1;
}

// caFile: PEM certificates of the CA of a cluster serving TLS (mergedb-node --tls_ca);
// omitted: plaintext. certFile and keyFile: the client certificate (PEM, leaf first) and its
// key, for nodes that require one (mergedb-node --tls_client_ca).
function connect(address, caFile, certFile, keyFile) {
  const api = load();
  if (!certFile !== !keyFile) throw new Error('certFile and keyFile go together');
  if (certFile && !caFile) throw new Error('certFile needs caFile');
  const fs = require('fs');
  const credentials = caFile ?
      grpc.credentials.createSsl(
          fs.readFileSync(caFile), keyFile ? fs.readFileSync(keyFile) : null,
          certFile ? fs.readFileSync(certFile) : null) :
      grpc.credentials.createInsecure();
  return {
    documents: new api.DocumentService(address, credentials),
    cluster: new api.ClusterService(address, credentials),
  };
}

function call(client, method, request, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    client[method](request, {deadline: Date.now() + timeoutMs}, (err, response) =>
      err ? reject(err) : resolve(response));
  });
}

// The JSON view (google.protobuf.Value as proto-loader decodes it) as a plain JS value.
// protobufjs bundles the well-known types with camelCase names, so both spellings are accepted.
function toJs(value) {
  if (!value || !value.kind) return undefined;
  const kind = value.kind.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
  const v = value[value.kind];
  switch (kind) {
    case 'nullValue': return null;
    case 'numberValue':
    case 'stringValue':
    case 'boolValue': return v;
    case 'structValue': {
      const out = {};
      for (const [k, field] of Object.entries(v.fields || {})) out[k] = toJs(field);
      return out;
    }
    case 'listValue': return (v.values || []).map(toJs);
    default: return undefined;
  }
}

module.exports = {connect, call, toJs};

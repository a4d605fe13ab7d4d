"""A small Python client for mergedb, on Debian's python3-grpcio and python3-protobuf.

The stubs are generated from protos/ into the build tree (build/clients/python); put that folder
and this one on PYTHONPATH. Values are typed: int stays int64, float is a double.
"""
import grpc

from mergedb.v1 import api_pb2, api_pb2_grpc, crdt_pb2


def scalar(value):
    """A Python value as a typed mergedb Scalar."""
    s = crdt_pb2.Scalar()
    if value is None:
        s.null_value.SetInParent()
    elif isinstance(value, bool):
        s.bool_value = value
    elif isinstance(value, int):
        s.int_value = value
    elif isinstance(value, float):
        s.double_value = value
    elif isinstance(value, str):
        s.string_value = value
    else:
        raise TypeError(f"not a mergedb scalar: {value!r}")
    return s


class Update:
    """Builds one atomic UpdateRequest: Update("users", "ada").set("name", "Ada").incr("visits")."""

    def __init__(self, collection, id, request_id="", write_concern=api_pb2.LOCAL):
        self.request = api_pb2.UpdateRequest(collection=collection, id=id, request_id=request_id,
                                             write_concern=write_concern)

    def _op(self, path):
        op = self.request.ops.add()
        op.path.extend(path.split(".") if isinstance(path, str) else path)
        return op

    def set(self, path, value):
        self._op(path).set.value.scalar.CopyFrom(scalar(value))
        return self

    def incr(self, path, by=1):
        self._op(path).increment.by = by
        return self

    def add(self, path, *elements):
        self._op(path).add.elements.extend(scalar(e) for e in elements)
        return self

    def remove(self, path, *elements):
        self._op(path).remove.elements.extend(scalar(e) for e in elements)
        return self

    def enable(self, path):
        self._op(path).enable.SetInParent()
        return self

    def disable(self, path):
        self._op(path).disable.SetInParent()
        return self


class Client:
    def __init__(self, address, timeout=5.0, ca_file=None, cert_file=None, key_file=None):
        """`ca_file`: PEM certificates of the CA of a cluster serving TLS (mergedb-node
        --tls_ca); None: plaintext. `cert_file` and `key_file`: the client certificate (PEM,
        leaf first) and its key, for nodes that require one (mergedb-node --tls_client_ca)."""
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        if ca_file is None:
            if cert_file is not None:
                raise ValueError("cert_file needs ca_file")
            self.channel = grpc.insecure_channel(address)
        else:
            def read(path):
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(ca_file), private_key=read(key_file),
                certificate_chain=read(cert_file))
            self.channel = grpc.secure_channel(address, credentials)
        self.documents = api_pb2_grpc.DocumentServiceStub(self.channel)
        self.cluster = api_pb2_grpc.ClusterServiceStub(self.channel)
        self.timeout = timeout

    def update(self, update):
        return self.documents.Update(update.request, timeout=self.timeout)

    def update_many(self, updates, per_message=1000, message_bytes=4 << 20):
        """Applies `updates` over one UpdateBatchStream. A message holds at most `per_message`
        updates (the node's --max_batch_updates) and at most `message_bytes` of them (the
        node's --max_update_bytes; a single larger update goes alone). Returns one
        UpdateResponse per update, in order; a failed update has a nonzero `code` (a gRPC status
        code number, e.g. grpc.StatusCode.INVALID_ARGUMENT.value[0]) and a `message`, and does
        not stop the others. A stream the node ends raises grpc.RpcError: set request_id on the
        updates, so that a retry of the ones without an answer is applied once."""
        if per_message < 1 or message_bytes < 1:
            raise ValueError("per_message and message_bytes must be positive")
        messages, batch, size = [], [], 0
        for update in updates:
            n = update.request.ByteSize() + 8  # the field's tag and length
            if batch and (len(batch) == per_message or size + n > message_bytes):
                messages.append(api_pb2.UpdateBatch(updates=batch))
                batch, size = [], 0
            batch.append(update.request)
            size += n
        if batch:
            messages.append(api_pb2.UpdateBatch(updates=batch))
        answers = []
        for answer in self.documents.UpdateBatchStream(iter(messages), timeout=self.timeout):
            answers.extend(answer.responses)
        sent = sum(len(m.updates) for m in messages)
        if len(answers) != sent:
            raise RuntimeError(f"UpdateBatchStream answered {len(answers)} of {sent} updates")
        return answers

    def get(self, collection, id, after=b"", path=()):
        return self.documents.Get(
            api_pb2.GetRequest(collection=collection, id=id, after=after, path=list(path)),
            timeout=self.timeout)

    def status(self):
        return self.cluster.Status(api_pb2.StatusRequest(), timeout=self.timeout)

    def backup(self, name, timeout=3600.0):
        """Has the node write a consistent copy of its data to <its --backup_dir>/name on its
        machine, while it serves; returns the BackupResponse (path, applied vector, size). A
        backup can take much longer than other calls, hence its own timeout."""
        return self.cluster.Backup(api_pb2.BackupRequest(name=name), timeout=timeout)

    def close(self):
        self.channel.close()

#!/usr/bin/python3
"""End-to-end test, writer side: e2e_write.py ADDRESS. Writes through the Python client and
prints the version token (hex) for the reader on another node."""
import sys

from mergedb_client import Client, Update


def main():
    client = Client(sys.argv[1])
    client.update(Update("e2e", "doc", request_id="py-1").incr("count", 40).set("writer", "python"))
    # A retry of the same request id is not applied twice.
    retry = client.update(Update("e2e", "doc", request_id="py-1").incr("count", 40).set("writer", "python"))
    assert retry.duplicate, "a retried request id must be recognised"
    # Seven increments over UpdateBatchStream, three to a message, answered in order.
    answers = client.update_many(
        [Update("e2e", "batched", request_id=f"py-b{i}").incr("n", 1) for i in range(7)],
        per_message=3)
    assert [a.request_id for a in answers] == [f"py-b{i}" for i in range(7)], answers
    assert all(a.code == 0 for a in answers), answers
    batched = client.get("e2e", "batched", after=answers[-1].version)
    assert batched.value.struct_value.fields["n"].number_value == 7, batched
    last = client.update(Update("e2e", "doc").incr("count", 2).add("tags", "py", 7))
    print(last.version.hex())
    client.close()


if __name__ == "__main__":
    main()

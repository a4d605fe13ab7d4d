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
    last = client.update(Update("e2e", "doc").incr("count", 2).add("tags", "py", 7))
    print(last.version.hex())
    client.close()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Writes a document to a mergedb node and reads it back: example.py [HOST:PORT]."""
import sys

from google.protobuf import json_format

from mergedb_client import Client, Update


def main():
    client = Client(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7701")
    written = client.update(
        Update("users", "ada").set("name", "Ada Lovelace").incr("visits", 1).add("tags", "math", 1815))
    read = client.get("users", "ada", after=written.version)
    print(json_format.MessageToJson(read.value))
    client.close()


if __name__ == "__main__":
    main()

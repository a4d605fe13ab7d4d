#!/usr/bin/python3
"""Three mergedb-node processes, each in a network namespace this test creates, linked pairwise by
veth pairs; links are cut with `ip link set ... down`, as a failed cable or switch port would be,
so the kernel (not a proxy) stalls the connections. Clients in the root namespace write to every
node throughout.

Checks: a cut link is noticed within a few seconds (Status shows the peer disconnected); an
isolated node keeps accepting LOCAL writes while its QUORUM writes time out; after the heal the
nodes converge and every acknowledged write took effect.

Exits 77 (skipped) when it cannot create namespaces (not root, or no `ip netns`).
Usage: netns_test.py BUILD_DIR
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.abspath(sys.argv[1]), "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

import harness  # noqa: E402
from harness import log  # noqa: E402
from mergedb.v1 import api_pb2, api_pb2_grpc  # noqa: E402

SKIP = 77
PORT = 7700
# Private ranges for the test's own links; the test skips if the host already routes them.
CLIENT_NET = "10.213"  # root <-> node i: 10.213.i.1 (root) and 10.213.i.2 (node)
PEER_NET = "10.214"  # node i <-> node j (i < j): 10.214.<10i+j>.i and .j


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Namespaces:
    def __init__(self, count):
        self.tag = f"mdb{os.getpid() % 100000}"
        self.names = [f"{self.tag}-n{i}" for i in range(1, count + 1)]
        self.created = []

    def ns(self, i):
        return self.names[i - 1]

    def create(self):
        count = len(self.names)
        for name in self.names:
            ip("netns", "add", name)
            self.created.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        for i in range(1, count + 1):
            root_end = f"{self.tag}r{i}"
            ip("link", "add", root_end, "type", "veth", "peer", "name", "c", "netns", self.ns(i))
            ip("addr", "add", f"{CLIENT_NET}.{i}.1/24", "dev", root_end)
            ip("link", "set", root_end, "up")
            ip("-n", self.ns(i), "addr", "add", f"{CLIENT_NET}.{i}.2/24", "dev", "c")
            ip("-n", self.ns(i), "link", "set", "c", "up")
        for i in range(1, count + 1):
            for j in range(i + 1, count + 1):
                # Created in namespace i, the peer end moved to namespace j: no name is ever
                # in the root namespace.
                ip("-n", self.ns(i), "link", "add", f"p{j}", "type", "veth", "peer", "name",
                   f"p{i}", "netns", self.ns(j))
                subnet = f"{PEER_NET}.{10 * i + j}"
                ip("-n", self.ns(i), "addr", "add", f"{subnet}.{i}/24", "dev", f"p{j}")
                ip("-n", self.ns(j), "addr", "add", f"{subnet}.{j}/24", "dev", f"p{i}")
                ip("-n", self.ns(i), "link", "set", f"p{j}", "up")
                ip("-n", self.ns(j), "link", "set", f"p{i}", "up")

    def peer_address(self, i, j):
        """Where node i reaches node j."""
        a, b = min(i, j), max(i, j)
        return f"{PEER_NET}.{10 * a + b}.{j}:{PORT}"

    def set_link(self, i, j, state):
        # Down on one end is enough: the veth pair carries nothing either way.
        ip("-n", self.ns(i), "link", "set", f"p{j}", state)
        if state == "up":
            ip("-n", self.ns(j), "link", "set", f"p{i}", "up")

    def destroy(self):
        for i, name in enumerate(self.created, start=1):
            ip("link", "del", f"{self.tag}r{i}", check=False)
            ip("netns", "del", name, check=False)


def peer_connected(node, peer_name):
    answer = harness.status(node.address, 1.0)
    return {p.name: p.connected for p in answer.peers}.get(peer_name)


def wait_for(predicate, limit):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            if predicate():
                return time.monotonic() - start
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    return None


def write(node, doc, concern, timeout=1.5):
    with grpc.insecure_channel(node.address) as channel:
        request = api_pb2.UpdateRequest(collection="netns", id=doc, write_concern=concern)
        operation = request.ops.add()
        operation.path.append("n")
        operation.increment.by = 1
        try:
            api_pb2_grpc.DocumentServiceStub(channel).Update(request, timeout=timeout)
            return "ok"
        except grpc.RpcError as error:
            return error.code().name


def main():
    _, binary = harness.find_paths(sys.argv)
    if os.geteuid() != 0:
        print("SKIPPED: network namespaces need root")
        return SKIP
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"SKIPPED: `ip netns` is not available: {probe.stderr.strip()}")
        return SKIP
    routes = ip("-4", "route", "show").stdout
    if f"{CLIENT_NET}." in routes or f"{PEER_NET}." in routes:
        print(f"SKIPPED: this host already routes {CLIENT_NET}.0.0/16 or {PEER_NET}.0.0/16")
        return SKIP
    namespaces = Namespaces(3)
    nodes = []
    work = tempfile.mkdtemp(prefix="mergedb-netns-")
    failed = True
    try:
        try:
            namespaces.create()
        except subprocess.CalledProcessError as error:
            print(f"SKIPPED: cannot create network namespaces here: {error.stderr.strip()}")
            failed = False
            return SKIP
        for i in range(1, 4):
            node = harness.NodeProcess(binary, f"n{i}", "netns", work, listen_host="0.0.0.0",
                                       port=PORT, client_host=f"{CLIENT_NET}.{i}.2")
            node.exec_prefix = ["ip", "netns", "exec", namespaces.ns(i)]
            node.peers = ",".join(f"n{j}={namespaces.peer_address(i, j)}"
                                  for j in range(1, 4) if j != i)
            nodes.append(node)
        for node in nodes:
            node.start()
        n1, n2, n3 = nodes
        connected = wait_for(lambda: all(peer_connected(a, b.name) for a in nodes
                                         for b in nodes if a is not b), 30)
        assert connected is not None, "the links never came up"
        log(f"all links up after {connected:.1f} s")

        history = harness.History()
        workload = harness.Workload(nodes, history, seed=random.randrange(1 << 31),
                                    timeout=1.5)
        workload.start()
        time.sleep(3)

        log("cut n1-n3 (ip link set down); n2 still links both")
        namespaces.set_link(1, 3, "down")
        noticed = wait_for(lambda: peer_connected(n1, "n3") is False, 15)
        assert noticed is not None, "n1 did not notice the dead link to n3 within 15 s"
        log(f"n1 noticed the dead link to n3 after {noticed:.1f} s")
        time.sleep(2)

        log("isolate n3: cut n2-n3 too")
        namespaces.set_link(2, 3, "down")
        noticed_isolated = wait_for(lambda: peer_connected(n3, "n2") is False, 15)
        assert noticed_isolated is not None, "n3 did not notice it is isolated within 15 s"
        local = write(n3, "isolated", api_pb2.LOCAL)
        quorum = write(n3, "isolated", api_pb2.QUORUM)
        log(f"isolated n3: LOCAL write {local}, QUORUM write {quorum}")
        assert local == "ok", f"an isolated node must accept LOCAL writes, got {local}"
        assert quorum == "DEADLINE_EXCEEDED", \
            f"an isolated node cannot confirm QUORUM, got {quorum}"
        majority = write(n1, "majority", api_pb2.QUORUM)
        assert majority == "ok", f"n1 and n2 are a majority; QUORUM must succeed, got {majority}"
        time.sleep(3)

        log("heal every link")
        namespaces.set_link(1, 3, "up")
        namespaces.set_link(2, 3, "up")
        healed = time.monotonic()
        workload.finish()
        assert harness.wait_converged(nodes, 60) is not None, \
            "the nodes did not converge within 60 s of the heal"
        converged = time.monotonic() - healed
        problems = harness.check_nodes(nodes, history)
        attempted, acked, outcomes, _ = harness.summarize_ops(history)
        harness.report(
            sys.argv[1], "chaos-netns",
            f"==== netns summary: attempted {sum(attempted.values())}, acknowledged "
            f"{sum(acked.values())}, outcomes {dict(outcomes)}; dead link noticed after "
            f"{noticed:.1f} s; converged {converged:.2f} s after the heal; lost = {len(problems)}",
            attempted=sum(attempted.values()), acknowledged=sum(acked.values()),
            dead_link_noticed_s=round(noticed, 2), convergence_s=round(converged, 3),
            lost=len(problems))
        for problem in problems[:50]:
            print("VIOLATION " + problem)
        failed = bool(problems)
        return 1 if failed else 0
    finally:
        for node in nodes:
            node.terminate()
        namespaces.destroy()
        if failed:
            print(f"FAILED; logs kept in {work}")
            for node in nodes:
                print(f"--- {node.name}\n{node.tail_log()}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

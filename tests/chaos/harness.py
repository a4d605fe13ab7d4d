"""Process-level fault harness: real mergedb-node processes on 127.0.0.1 whose peer links pass
through fault-injecting TCP proxies, clients that record every acknowledgement, and a history
checker that proves nothing acknowledged was lost.

Runs on Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf) with the stubs generated
into the build tree (BUILD/clients/python).
"""
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import grpc

from mergedb.v1 import api_pb2, api_pb2_grpc


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Fault-injecting TCP proxy.
#
# A link A->B is the TCP connection node A opens to node B (A's frames one way, B's
# acknowledgements the other). Every mode keeps TCP's guarantee that bytes arrive in order and
# without gaps, as a real network does: a blackholed direction holds its bytes (the peer sees a
# stalled connection, as under packet loss, and they flow on after a heal unless a side gave up
# on the connection first); "drop" resets every connection and refuses new ones, as an
# unreachable host would.

PASS, DROP, BLACKHOLE, ONE_WAY, DELAY, LOSSY = "pass", "drop", "blackhole", "one-way", "delay", "lossy"


class Link:
    """One proxied link; its mode can change at any time from any thread."""

    def __init__(self, name, loop):
        self.name = name
        self.loop = loop
        self.target = None  # (host, port), set once the target node is listening
        self.mode = PASS
        self.delay = 0.0  # seconds, DELAY and LOSSY
        self.blocked_direction = "out"  # ONE_WAY
        self.bytes = 0
        self.connections = set()  # writers, to reset on DROP
        self.server = None
        self.port = None

    def set(self, mode, delay=0.0, blocked_direction="out"):
        self.mode, self.delay, self.blocked_direction = mode, delay, blocked_direction
        if mode == DROP:
            self.loop.call_soon_threadsafe(self._reset_all)

    def _reset_all(self):
        for writer in list(self.connections):
            transport = writer.transport
            if transport is not None:
                transport.abort()
        self.connections.clear()

    def forward_blocked(self, direction):
        # direction: "out" = from the dialing node to its peer, "back" = the answers.
        if self.mode in (BLACKHOLE, DROP):
            return True
        return self.mode == ONE_WAY and direction == self.blocked_direction


class ProxyNetwork:
    """Every proxy runs on one asyncio loop in a background thread."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.links = {}

    def add_link(self, name):
        link = Link(name, self.loop)
        future = asyncio.run_coroutine_threadsafe(self._listen(link), self.loop)
        future.result(timeout=10)
        self.links[name] = link
        return link

    async def _listen(self, link):
        link.server = await asyncio.start_server(
            lambda r, w: self._accept(link, r, w), "127.0.0.1", 0)
        link.port = link.server.sockets[0].getsockname()[1]

    async def _accept(self, link, client_reader, client_writer):
        if link.mode == DROP or link.target is None:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*link.target)
        except OSError:
            client_writer.transport.abort()
            return
        link.connections.update((client_writer, server_writer))
        await asyncio.gather(self._pump(link, "out", client_reader, server_writer),
                             self._pump(link, "back", server_reader, client_writer),
                             return_exceptions=True)
        for writer in (client_writer, server_writer):
            link.connections.discard(writer)
            writer.transport.abort()

    async def _pump(self, link, direction, reader, writer):
        # Reading stops while the direction is blocked, so the bytes stay in TCP's buffers and
        # the sender stalls, as on a lossy or cut path.
        try:
            while True:
                while link.forward_blocked(direction):
                    if link.mode == DROP:
                        return
                    await asyncio.sleep(0.01)
                data = await reader.read(65536)
                if not data:
                    return
                hold = 0.0
                if link.mode in (DELAY, LOSSY):
                    hold = link.delay
                    # A lost segment costs a retransmission timeout; later bytes wait behind it.
                    if link.mode == LOSSY and self.rng.random() < 0.05:
                        hold += 0.2
                if hold > 0:
                    await asyncio.sleep(hold)
                while link.forward_blocked(direction):
                    if link.mode == DROP:
                        return
                    await asyncio.sleep(0.01)
                writer.write(data)
                link.bytes += len(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            return
        finally:
            writer.transport.abort()

    def heal_all(self):
        for link in self.links.values():
            link.set(PASS)

    def close(self):
        async def stop():
            for link in self.links.values():
                link.server.close()
                link._reset_all()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# Node processes.

class NodeProcess:
    def __init__(self, binary, name, cluster, work_dir, listen_host="127.0.0.1", port=0,
                 client_host=None, extra_args=()):
        self.binary = binary
        self.name = name
        self.cluster = cluster
        self.data_dir = os.path.join(work_dir, name)
        self.log_path = os.path.join(work_dir, name + ".log")
        self.listen_host = listen_host
        self.client_host = client_host or listen_host  # where clients reach it
        self.port = port  # 0: picked by the kernel at the first start, kept across restarts
        self.peers = ""
        self.extra_args = list(extra_args)
        self.clock_offset_ms = 0
        self.proc = None
        self.stopped = False  # SIGSTOPped
        self.exec_prefix = []  # e.g. ["ip", "netns", "exec", NS]

    @property
    def address(self):
        return f"{self.client_host}:{self.port}"

    def start(self):
        args = self.exec_prefix + [
            self.binary, f"--data_dir={self.data_dir}", f"--node_name={self.name}",
            f"--cluster={self.cluster}", f"--listen={self.listen_host}:{self.port}",
            f"--peers={self.peers}", f"--testonly_clock_offset_ms={self.clock_offset_ms}",
        ] + self.extra_args
        log_file = open(self.log_path, "a")
        log_file.write(f"==== start {' '.join(args)}\n")
        log_file.flush()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                     start_new_session=True)
        log_file.close()
        deadline = time.time() + 30
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line or not line:
                break
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.name} did not start: {self.tail_log()}")
        if self.port == 0:
            self.port = int(line.rsplit(":", 1)[1])
        self.stopped = False
        # Nothing more is read from stdout; the node writes nothing else there.

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        code = self.exited_unexpectedly()
        if code is not None:
            # Dead by itself before the nemesis came to kill it: a crash, not a fault we made.
            raise RuntimeError(f"{self.name} exited with {code} by itself:\n{self.tail_log()}")
        if self.alive():
            if self.stopped:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.stopped = False

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self):
        if self.alive() and self.stopped:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def wipe(self):
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def terminate(self):
        if self.proc is None:
            return
        if self.alive():
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def exited_unexpectedly(self):
        """The exit code when the process died by itself (not by our SIGKILL)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return None if self.proc.returncode == -signal.SIGKILL else self.proc.returncode

    def tail_log(self, lines=30):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------------------------
# The workload and its history.

COUNTER, SET_ADD, SET_REMOVE, REGISTER = "counter", "add", "remove", "register"
CONCERNS = {"LOCAL": api_pb2.LOCAL, "QUORUM": api_pb2.QUORUM, "ALL": api_pb2.ALL}


class Op:
    __slots__ = ("kind", "node", "doc", "arg", "concern", "invoked", "acked", "outcome",
                 "attempts")

    def __init__(self, kind, node, doc, arg, concern):
        self.kind, self.node, self.doc, self.arg, self.concern = kind, node, doc, arg, concern
        self.invoked = time.monotonic()
        self.acked = None  # monotonic time of the acknowledgement
        self.outcome = "pending"
        self.attempts = 0


class History:
    """Every operation clients attempted, with its outcome; and the data-dir wipes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []
        # node name -> monotonic times of its kills for a wipe (taken just before the kill)
        self.wipes = collections.defaultdict(list)
        # node name -> per wipe, a moment before which every write the node had acknowledged
        # had reached a running peer (None: unknown, e.g. the node was cut off), and when the
        # node came back
        self.wipe_covered = collections.defaultdict(list)
        self.wipe_restarts = collections.defaultdict(list)

    def add(self, op):
        with self.lock:
            self.ops.append(op)

    def wiped(self, node, at=None, covered=None):
        with self.lock:
            self.wipes[node].append(time.monotonic() if at is None else at)
            self.wipe_covered[node].append(covered)
            self.wipe_restarts[node].append(float("inf"))

    def restarted_after_wipe(self, node):
        with self.lock:
            if self.wipe_restarts[node]:
                self.wipe_restarts[node][-1] = time.monotonic()

    def required(self, op):
        """Acknowledged, and must survive. A LOCAL write dies with its node's data dir only if the
        wipe came while it was in flight or before it reached any peer: a write the node
        acknowledged before a moment at which a peer had everything the node had acknowledged
        must survive a later wipe, as must one the restarted node acknowledged."""
        if op.acked is None:
            return False
        if op.concern != "LOCAL":
            return True
        with self.lock:
            wipes = list(zip(self.wipes[op.node], self.wipe_covered[op.node],
                             self.wipe_restarts[op.node]))
        for i, kill in enumerate(wipes):
            kill_at, covered, restart = kill if isinstance(kill, tuple) else (kill, None, None)
            if restart is None:
                restart = float("inf")
            # Invoked before the kill and answered before the node came back: the answer may
            # have left just before the kill (its time is taken when the client thread runs).
            if op.invoked < kill_at and op.acked < restart and not (
                    covered is not None and op.acked <= covered):
                return False
        return True


class Workload:
    """One client thread per writable node, writing through the public API until stopped."""

    COLLECTION = "chaos"

    def __init__(self, nodes, history, seed, docs_per_kind=6, quorum_share=0.25, timeout=2.0):
        self.nodes = nodes
        self.history = history
        self.seed = seed
        self.docs = docs_per_kind
        self.quorum_share = quorum_share
        self.timeout = timeout
        self.stop = threading.Event()
        self.threads = []
        self.added = collections.defaultdict(list)  # set doc -> elements acknowledged added
        self.added_lock = threading.Lock()
        self.errors = []  # what ended a client thread early (a refused valid write, a bug here)

    def start(self):
        for index, node in enumerate(self.nodes):
            thread = threading.Thread(target=self._run_reporting, args=(index, node), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self):
        """Stops the clients; raises if any of them ended early (its node then went unchecked
        for the rest of the run, and what ended it is itself a failure)."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout * 3 + 5)
        if self.errors:
            raise RuntimeError("client threads failed:\n" + "\n".join(self.errors))

    def _run_reporting(self, index, node):
        try:
            self._run(index, node)
        except Exception as error:  # reported by finish(): a daemon thread's exception is lost
            with self.added_lock:
                self.errors.append(f"{node.name}: {type(error).__name__}: {error}")

    def _run(self, index, node):
        rng = random.Random(self.seed * 1000 + index)
        channel = grpc.insecure_channel(node.address)
        stub = api_pb2_grpc.DocumentServiceStub(channel)
        sequence = 0
        while not self.stop.is_set():
            sequence += 1
            roll = rng.random()
            concern = "LOCAL"
            if rng.random() < self.quorum_share:
                concern = "ALL" if rng.random() < 0.2 else "QUORUM"
            request = api_pb2.UpdateRequest(collection=self.COLLECTION,
                                            request_id=f"{node.name}-{sequence}",
                                            write_concern=CONCERNS[concern])
            operation = request.ops.add()
            if roll < 0.35:
                doc = f"counter-{rng.randrange(self.docs)}"
                op = Op(COUNTER, node.name, doc, rng.randint(1, 5), concern)
                operation.path.append("n")
                operation.increment.by = op.arg
            elif roll < 0.65:
                doc = f"set-{rng.randrange(self.docs)}"
                op = Op(SET_ADD, node.name, doc, f"{node.name}-{sequence}", concern)
                operation.path.append("tags")
                operation.add.elements.add().string_value = op.arg
            elif roll < 0.75:
                doc = f"set-{rng.randrange(self.docs)}"
                with self.added_lock:
                    known = self.added[doc]
                    element = rng.choice(known) if known else "never-added"
                op = Op(SET_REMOVE, node.name, doc, element, concern)
                operation.path.append("tags")
                operation.remove.elements.add().string_value = element
            else:
                doc = f"register-{rng.randrange(self.docs)}"
                op = Op(REGISTER, node.name, doc, f"{node.name}-{sequence}", concern)
                operation.path.append("v")
                operation.set.value.scalar.string_value = op.arg
            request.id = doc
            self.history.add(op)
            # One retry with the same request id: the node must not apply it twice.
            for attempt in range(2):
                op.attempts += 1
                try:
                    stub.Update(request, timeout=self.timeout)
                    op.acked = time.monotonic()
                    op.outcome = "ok"
                    break
                except grpc.RpcError as error:
                    op.outcome = error.code().name
                    if error.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                        grpc.StatusCode.FAILED_PRECONDITION):
                        raise RuntimeError(f"{node.name} refused a valid write: {error.details()}")
                    if self.stop.is_set():
                        break
                    time.sleep(0.05)
            if op.kind == SET_ADD and op.acked is not None:
                with self.added_lock:
                    self.added[doc].append(op.arg)
        channel.close()


# ---------------------------------------------------------------------------------------------
# Convergence and the history check.

def status(address, timeout=2.0):
    with grpc.insecure_channel(address) as channel:
        return api_pb2_grpc.ClusterServiceStub(channel).Status(api_pb2.StatusRequest(),
                                                               timeout=timeout)


def applied_vector(response):
    return {entry.replica: entry.counter for entry in response.applied}


def replicated_point(node, peers, limit=2.0):
    """A moment before which every write `node` acknowledged had reached one of `peers`: the
    node's log position for its own writes, asked at that moment, then seen applied on a peer
    within `limit` seconds (the node keeps running meanwhile). None when no peer shows it in
    time (the node is cut off) or the node does not answer."""
    try:
        asked = time.monotonic()
        own = status(node.address, timeout=1.0)
    except grpc.RpcError:
        return None
    position = applied_vector(own).get(own.replica_id, 0)
    deadline = time.monotonic() + limit
    while True:
        for peer in peers:
            try:
                if applied_vector(status(peer.address, timeout=1.0)).get(own.replica_id, 0) \
                        >= position:
                    return asked
            except grpc.RpcError:
                pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def wait_converged(nodes, limit_seconds):
    """Seconds until every node reports the same applied vector and state digest, twice in a row
    (None after limit_seconds)."""
    start = time.monotonic()
    agreed = 0
    while time.monotonic() - start < limit_seconds:
        try:
            answers = [status(node.address) for node in nodes]
        except grpc.RpcError:
            answers = None
        if answers and all(a.state_digest == answers[0].state_digest and
                           applied_vector(a) == applied_vector(answers[0]) for a in answers):
            agreed += 1
            if agreed == 2:
                return time.monotonic() - start
        else:
            agreed = 0
        time.sleep(0.1)
    return None


def read_documents(address, collection):
    """Every document of the collection on one node: id -> {field name: TypedValue}."""
    documents = {}
    with grpc.insecure_channel(address) as channel:
        stub = api_pb2_grpc.DocumentServiceStub(channel)
        token = ""
        ids = []
        while True:
            page = stub.List(api_pb2.ListRequest(collection=collection, page_size=100,
                                                 page_token=token), timeout=10)
            ids.extend(d.id for d in page.documents)
            token = page.next_page_token
            if not token:
                break
        for doc_id in ids:
            answer = stub.Get(api_pb2.GetRequest(collection=collection, id=doc_id), timeout=10)
            documents[doc_id] = {f.name: f.value for f in answer.fields}
    return documents


def register_values(typed):
    register = typed.register
    if register.siblings:
        return [s.value.scalar.string_value for s in register.siblings]
    return [register.winner.scalar.string_value]


def check_history(history, documents):
    """Returns a list of violations (empty when the history is explained by the final state)."""
    problems = []
    by_doc = collections.defaultdict(list)
    for op in history.ops:
        by_doc[op.doc].append(op)

    for doc, ops in sorted(by_doc.items()):
        fields = documents.get(doc, {})
        kind = ops[0].kind
        if kind == COUNTER:
            value = fields["n"].counter if "n" in fields else 0
            floor = sum(op.arg for op in ops if history.required(op))
            # A retry after its node lost its data (and the request id record) may apply twice.
            ceiling = sum(op.arg * (1 + (op.attempts > 1) * sum(
                op.invoked < t < (op.acked or float("inf")) for t in history.wipes[op.node]))
                for op in ops)
            if not floor <= value <= ceiling:
                problems.append(f"{doc}: counter {value} outside [{floor} acknowledged, "
                                f"{ceiling} attempted]")
        elif kind in (SET_ADD, SET_REMOVE):
            present = set(e.string_value for e in fields["tags"].set.elements) \
                if "tags" in fields else set()
            adds = [op for op in ops if op.kind == SET_ADD]
            removes = [op for op in ops if op.kind == SET_REMOVE]
            attempted = set(op.arg for op in adds)
            for element in present - attempted:
                problems.append(f"{doc}: element {element} present but never added")
            for add in adds:
                if not history.required(add) or add.arg in present:
                    continue
                # A remove invoked after the add may have observed it; one invoked before could not.
                if not any(r.arg == add.arg and r.invoked >= add.invoked for r in removes):
                    problems.append(f"{doc}: acknowledged add of {add.arg} ({add.concern} on "
                                    f"{add.node}) lost, and no remove could have observed it")
            # Elements are unique to their add. A remove acknowledged by the node that had
            # acknowledged the add before the remove was invoked there observed the add (the
            # node kept its data meanwhile, so it held the add's every dot): the element must be
            # gone, whatever else happened.
            for remove in removes:
                if remove.acked is None or remove.arg not in present:
                    continue
                for add in adds:
                    if (add.arg == remove.arg and add.node == remove.node and
                            add.acked is not None and add.acked < remove.invoked and
                            not any(add.invoked < t < remove.acked
                                    for t in history.wipes[add.node])):
                        problems.append(f"{doc}: {remove.arg} present, but {remove.node} "
                                        f"acknowledged its remove after acknowledging its add")
        elif kind == REGISTER:
            final = register_values(fields["v"]) if "v" in fields else []
            writes = {op.arg: op for op in ops}
            for value in final:
                if value not in writes:
                    problems.append(f"{doc}: register value {value!r} was never written")
            for write in ops:
                if not history.required(write) or write.arg in final:
                    continue
                # Only a write that saw it supersedes it, and what superseded it was itself
                # superseded only by a later one: so some surviving value was invoked after it.
                if not any(writes[v].invoked > write.invoked for v in final if v in writes):
                    problems.append(f"{doc}: acknowledged write {write.arg} lost, and no "
                                    f"surviving value was written after it")
            # Two siblings cannot be causally ordered: a write the same node acknowledged before
            # another was invoked there is dominated by it (unless the node lost its data between).
            survivors = [writes[v] for v in final if v in writes]
            for first in survivors:
                for second in survivors:
                    if (first is not second and first.node == second.node and
                            first.acked is not None and second.invoked > first.acked and
                            not any(first.acked < t < second.invoked
                                    for t in history.wipes[first.node])):
                        problems.append(f"{doc}: {first.arg} and {second.arg} are siblings, "
                                        f"but {second.node} wrote the second after the first")
    return problems


def check_nodes(nodes, history):
    """Reads every node's documents and checks the history against each; the nodes must also
    hold identical documents. Returns the violations, each naming its node."""
    problems = []
    states = []
    for node in nodes:
        documents = read_documents(node.address, Workload.COLLECTION)
        states.append(documents)
        problems += [f"{node.name}: {p}" for p in check_history(history, documents)]
    if any(state != states[0] for state in states):
        problems.append("nodes report equal digests but different documents")
    return problems


def summarize_ops(history):
    attempted = collections.Counter(op.kind for op in history.ops)
    acked = collections.Counter(op.kind for op in history.ops if op.acked is not None)
    outcomes = collections.Counter(op.outcome for op in history.ops)
    concerns = collections.Counter(op.concern for op in history.ops if op.acked is not None)
    return attempted, acked, outcomes, concerns


def find_paths(argv):
    """BUILD_DIR from argv[1]: the node binary and the Python stubs' folder."""
    build = os.path.abspath(argv[1])
    binary = os.path.join(build, "node", "mergedb-node")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"no node binary at {binary}")
    return build, binary


def report(build, name, summary, **fields):
    """Prints the summary and its JSON line, and keeps both in BUILD/Testing/NAME.txt, which
    scripts/test.sh shows after the suite (ctest hides a passing test's output)."""
    text = summary + "\nRESULT " + json.dumps(fields, sort_keys=True) + "\n"
    print(text, flush=True)
    os.makedirs(os.path.join(build, "Testing"), exist_ok=True)
    with open(os.path.join(build, "Testing", name + ".txt"), "w") as f:
        f.write(text)

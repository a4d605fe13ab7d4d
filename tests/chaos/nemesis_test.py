#!/usr/bin/python3
"""The nemesis: real mergedb-node processes under a random, seed-printed schedule of faults
(kill -9 and restart, SIGSTOP/SIGCONT, partitions full, partial and one-way, delays, clock
offsets, a wiped data dir at a time) while clients write to every node; then everything heals
and every node must reach the same state, in which every acknowledged write took effect.

Usage: nemesis_test.py BUILD_DIR [--seconds=75] [--nodes=3] [--seed=N]
Environment: MERGEDB_CHAOS_SECONDS, MERGEDB_SEED override the defaults.
"""
import argparse
import collections
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.abspath(sys.argv[1]), "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

import harness  # noqa: E402
from harness import log  # noqa: E402


class Nemesis:
    def __init__(self, nodes, network, history, rng):
        self.nodes = nodes
        self.network = network
        self.history = history
        self.rng = rng
        self.faults = collections.Counter()
        self.healers = []  # (monotonic time, description, function)
        self.down = set()  # names killed, stopped or wiped, until healed
        self.rebuilding = None  # (name, {peer name: applied vector or None}) after a wipe
        self.max_down = (len(nodes) - 1) // 2 or 1

    def step(self):
        now = time.monotonic()
        due = [h for h in self.healers if h[0] <= now]
        self.healers = [h for h in self.healers if h[0] > now]
        for _, description, heal in due:
            log(f"nemesis: heal {description}")
            heal()
        self._check_rebuilt()
        actions = [self.kill, self.pause, self.partition, self.isolate, self.one_way,
                   self.delay, self.clock_skew_restart]
        if self.rebuilding is None:
            actions.append(self.wipe)
        self.rng.choice(actions)()

    def _later(self, seconds, description, heal):
        self.healers.append((time.monotonic() + seconds, description, heal))

    def _pick_up_node(self):
        candidates = [n for n in self.nodes if n.name not in self.down]
        if len(self.down) >= self.max_down or not candidates:
            return None
        return self.rng.choice(candidates)

    def _restart(self, node):
        node.start()
        self.down.discard(node.name)

    def kill(self):
        node = self._pick_up_node()
        if node is None:
            return
        log(f"nemesis: kill -9 {node.name}")
        node.kill9()
        self.down.add(node.name)
        self.faults["kill -9"] += 1
        self._later(self.rng.uniform(0.5, 4), f"restart {node.name}", lambda: self._restart(node))

    def clock_skew_restart(self):
        node = self._pick_up_node()
        if node is None:
            return
        node.kill9()
        node.clock_offset_ms = self.rng.choice([-30000, -2000, -200, 0, 200, 2000, 30000])
        log(f"nemesis: kill -9 {node.name}, restart with clock offset {node.clock_offset_ms} ms")
        self.faults["clock offset"] += 1
        node.start()

    def pause(self):
        node = self._pick_up_node()
        if node is None:
            return
        log(f"nemesis: SIGSTOP {node.name}")
        node.pause()
        self.down.add(node.name)
        self.faults["SIGSTOP"] += 1

        def resume():
            node.resume()
            self.down.discard(node.name)
        self._later(self.rng.uniform(0.5, 5), f"SIGCONT {node.name}", resume)

    def wipe(self):
        node = self._pick_up_node()
        if node is None:
            return
        # Which of its acknowledged LOCAL writes may die with it: those after the last moment a
        # peer was seen holding everything it had acknowledged (History.required).
        covered = harness.replicated_point(
            node, [n for n in self.nodes if n is not node and n.name not in self.down])
        log(f"nemesis: kill -9 {node.name} and wipe its data dir"
            f"{'' if covered is not None else ' (its last writes may be on no peer)'}")
        killed_at = time.monotonic()
        node.kill9()
        node.wipe()
        self.history.wiped(node.name, at=killed_at, covered=covered)
        self.down.add(node.name)
        self.faults["wipe"] += 1

        def restart():
            self._restart(node)
            self.history.restarted_after_wipe(node.name)
            # The next wipe waits until this node holds everything any other node held after
            # it came back: wiping a second node before would lose QUORUM writes by design.
            self.rebuilding = (node, {n.name: None for n in self.nodes if n is not node})
        self._later(self.rng.uniform(0.5, 3), f"restart wiped {node.name}", restart)

    def _check_rebuilt(self):
        if self.rebuilding is None:
            return
        node, wanted = self.rebuilding
        try:
            for other in self.nodes:
                if other.name in wanted and wanted[other.name] is None and \
                        other.name not in self.down:
                    wanted[other.name] = harness.applied_vector(harness.status(other.address, 0.5))
            if any(v is None for v in wanted.values()) or node.name in self.down:
                return
            have = harness.applied_vector(harness.status(node.address, 0.5))
        except grpc.RpcError:
            return
        if all(have.get(origin, 0) >= counter
               for vector in wanted.values() for origin, counter in vector.items()):
            log(f"nemesis: {node.name} rebuilt after its wipe")
            self.rebuilding = None

    def _cut(self, pairs, mode, description, delay=0.0):
        for a, b in pairs:
            self.network.links[(a, b)].set(mode, delay)
        self.faults[description.split(" ")[0]] += 1
        log(f"nemesis: {description}")

        def heal():
            for a, b in pairs:
                self.network.links[(a, b)].set(harness.PASS)
        self._later(self.rng.uniform(1, 6), description, heal)

    def partition(self):
        names = [n.name for n in self.nodes]
        self.rng.shuffle(names)
        cut = self.rng.randrange(1, len(names))
        left, right = names[:cut], names[cut:]
        pairs = [(a, b) for a in left for b in right] + [(b, a) for a in left for b in right]
        mode = self.rng.choice([harness.BLACKHOLE, harness.DROP])
        self._cut(pairs, mode, f"partition {left} | {right} ({mode})")

    def isolate(self):
        # A partial partition: one link pair only; the others can still forward around it.
        a, b = self.rng.sample([n.name for n in self.nodes], 2)
        mode = self.rng.choice([harness.BLACKHOLE, harness.DROP])
        self._cut([(a, b), (b, a)], mode, f"partial-partition {a}-{b} ({mode})")

    def one_way(self):
        a, b = self.rng.sample([n.name for n in self.nodes], 2)
        # Nothing travels from a to b: neither a's frames on its link to b nor a's
        # acknowledgements on b's link to a; b -> a still flows.
        self.network.links[(a, b)].set(harness.ONE_WAY, blocked_direction="out")
        self.network.links[(b, a)].set(harness.ONE_WAY, blocked_direction="back")
        self.faults["one-way"] += 1
        log(f"nemesis: one-way cut {a} -/-> {b}")

        def heal():
            self.network.links[(a, b)].set(harness.PASS)
            self.network.links[(b, a)].set(harness.PASS)
        self._later(self.rng.uniform(1, 5), f"one-way cut {a} -/-> {b}", heal)

    def delay(self):
        a, b = self.rng.sample([n.name for n in self.nodes], 2)
        mode = self.rng.choice([harness.DELAY, harness.LOSSY])
        ms = self.rng.choice([5, 20, 100, 400])
        self._cut([(a, b), (b, a)], mode, f"delay {a}-{b} {ms} ms ({mode})", ms / 1000)

    def heal_everything(self):
        for _, description, heal in self.healers:
            log(f"nemesis: heal {description}")
            heal()
        self.healers = []
        self.network.heal_all()
        for node in self.nodes:
            if not node.alive():
                code = node.exited_unexpectedly()
                if code is not None:
                    raise RuntimeError(f"{node.name} exited with {code} by itself:\n"
                                       f"{node.tail_log()}")
                node.start()
            node.resume()
        self.down.clear()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("MERGEDB_CHAOS_SECONDS", 75)))
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seed", type=int,
                        default=int(os.environ.get("MERGEDB_SEED", random.SystemRandom().randrange(1 << 31))))
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args()
    if not 3 <= args.nodes <= 5:
        parser.error("--nodes is 3 to 5")
    _, binary = harness.find_paths([None, args.build])
    log(f"nemesis: seed {args.seed} (replay: MERGEDB_SEED={args.seed}), {args.nodes} nodes, "
        f"{args.seconds:.0f} s")
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="mergedb-chaos-")
    network = harness.ProxyNetwork(args.seed)
    nodes = [harness.NodeProcess(binary, f"n{i + 1}", "chaos", work) for i in range(args.nodes)]
    for a in nodes:
        for b in nodes:
            if a is not b:
                network.add_link((a.name, b.name))
    for a in nodes:
        a.peers = ",".join(f"{b.name}=127.0.0.1:{network.links[(a.name, b.name)].port}"
                           for b in nodes if b is not a)
    history = harness.History()
    failed = True
    try:
        for node in nodes:
            node.start()
            for b in nodes:
                if b is not node:
                    network.links[(b.name, node.name)].target = ("127.0.0.1", node.port)
        workload = harness.Workload(nodes, history, args.seed)
        nemesis = Nemesis(nodes, network, history, rng)
        workload.start()
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.3, 1.5))
            for node in nodes:
                code = node.exited_unexpectedly()
                if code is not None:
                    raise RuntimeError(f"{node.name} exited with {code}:\n{node.tail_log()}")
            nemesis.step()
        log("nemesis: stop the clients, then heal everything")
        workload.finish()
        nemesis.heal_everything()
        converged = harness.wait_converged(nodes, 120)
        if converged is None:
            for node in nodes:
                log(f"{node.name} log tail:\n{node.tail_log()}")
            raise RuntimeError("the nodes did not converge within 120 s of the heal")
        problems = harness.check_nodes(nodes, history)
        attempted, acked, outcomes, concerns = harness.summarize_ops(history)
        lost = len(problems)
        lines = [f"==== nemesis summary (seed {args.seed}, {args.nodes} nodes, "
                 f"{args.seconds:.0f} s; replay: MERGEDB_SEED={args.seed})"]
        for kind in (harness.COUNTER, harness.SET_ADD, harness.SET_REMOVE, harness.REGISTER):
            lines.append(f"  {kind:9s} attempted {attempted[kind]:6d}  "
                         f"acknowledged {acked[kind]:6d}")
        lines += [f"  acknowledged by concern: {dict(concerns)}",
                  f"  outcomes: {dict(outcomes)}",
                  f"  faults injected: {dict(nemesis.faults)}",
                  f"  convergence: {converged:.2f} s from the heal (every process running, "
                  f"every link passing) to equal digests on all nodes",
                  f"  lost = {lost}"]
        harness.report(args.build, "chaos-nemesis", "\n".join(lines), seed=args.seed,
                       nodes=args.nodes, seconds=args.seconds,
                       attempted=sum(attempted.values()), acknowledged=sum(acked.values()),
                       faults=dict(nemesis.faults), convergence_s=round(converged, 3), lost=lost)
        for problem in problems[:50]:
            print("VIOLATION " + problem)
        if sum(acked.values()) < 50:
            raise RuntimeError("too few acknowledged operations for the check to mean anything")
        failed = lost > 0
    finally:
        for node in nodes:
            node.terminate()
        network.close()
        if failed:
            print(f"FAILED (seed {args.seed}); logs kept in {work}")
        elif not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

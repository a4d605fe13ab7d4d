#!/usr/bin/python3
"""mergedb-bench end to end: it starts its own cluster, loads it, and reports figures that
hang together; bad options get a usage error. Small runs: this checks the tool, not the speed.

usage: mergedb_bench_smoke.py PATH/TO/mergedb-bench
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

BENCH = sys.argv[1]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def run(args, timeout=150):
    with tempfile.TemporaryDirectory(prefix="mergedb-bench-smoke-") as tmp:
        return subprocess.run([BENCH, "--dir=" + tmp] + args, capture_output=True, text=True,
                              timeout=timeout)


def last_json(proc):
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def check_run(label, args, writes, want_baselines):
    proc = run(args)
    check(proc.returncode == 0, f"{label}: exit status {proc.returncode}: {proc.stderr[-2000:]}")
    r = last_json(proc)
    check(r is not None, f"{label}: no JSON line in {proc.stdout[-2000:]}")
    if r is None:
        return
    check(r["writes"] == writes, f"{label}: {r['writes']} writes acknowledged, asked {writes}")
    if any(a.startswith("--read_ratio=") for a in args):
        check(r["reads"] > 0 and r["reads_per_s"] > 0, f"{label}: reads {r['reads']}")
    check(r["writes_per_s"] > 0, f"{label}: writes/s {r['writes_per_s']}")
    lat = r["latency_us"]
    check(0 < lat["p50"] <= lat["p99"] <= lat["p999"], f"{label}: latency percentiles {lat}")
    check(r["convergence_ms"] >= 0, f"{label}: convergence {r['convergence_ms']}")
    # Every write reaches two other nodes: some replication bytes per write, but not absurdly
    # many for a 64-byte value.
    check(20 < r["bytes_between_nodes_per_write"] < 2000,
          f"{label}: bytes between nodes per write {r['bytes_between_nodes_per_write']}")
    check(len(r["node_stats"]) == 3, f"{label}: node stats {r['node_stats']}")
    for n in r["node_stats"]:
        check(n["cpu_s"] > 0 and n["peak_rss_mib"] > 1, f"{label}: node stats {n}")
    # The kernel's count of the same traffic adds gRPC's and HTTP/2's framing (and TLS's).
    if shutil.which("ss"):
        tcp = r.get("tcp_bytes_between_nodes_per_write", -1)
        check(r["bytes_between_nodes_per_write"] <= tcp < 4000, f"{label}: TCP bytes per write {tcp}")
    check(("lag_ms" in r) == ("--lag=off" not in args), f"{label}: lag present: {'lag_ms' in r}")
    if "lag_ms" in r:
        lag = r["lag_ms"]
        check(lag["samples"] == lag["expected"] and lag["samples"] > 0,
              f"{label}: lag samples {lag}")
        check(0 <= lag["p50"] <= lag["p99"], f"{label}: lag percentiles {lag}")
    check(("baselines" in r) == want_baselines, f"{label}: baselines present: {'baselines' in r}")
    if want_baselines and "baselines" in r:
        b = r["baselines"]
        check(b["echo_calls_per_s"] > 0 and b["leveldb_puts_per_s"] > 0, f"{label}: {b}")
        check(abs(b["mergedb_over_echo"] * b["echo_calls_per_s"] - r["writes_per_s"]) <
              0.01 * r["writes_per_s"], f"{label}: echo ratio {b} for {r['writes_per_s']} writes/s")
    if "--json_only" in args:
        check(proc.stdout.count("\n") == 1,
              f"{label}: --json_only printed more than the JSON line: {proc.stdout[:500]!r}")
    else:
        check("acknowledged writes/s" in proc.stdout, f"{label}: no table in the output")


check_run("stream LOCAL with baselines",
          ["--mode=stream", "--writes=3000", "--warmup=200", "--documents=500",
           "--baseline_calls=2000", "--leveldb_baseline_puts=5000", "--sample_every=20"],
          3000, True)
check_run("batch QUORUM", ["--mode=batch", "--write_concern=quorum", "--writes=2000",
                           "--warmup=200", "--nobaselines", "--json_only"], 2000, False)
check_run("unary ALL with reads", ["--mode=unary", "--write_concern=all", "--writes=1000",
                                   "--warmup=100", "--read_ratio=0.3", "--nobaselines",
                                   "--lag=off"], 1000, False)

# Over TLS: nodes started with certificates made here and requiring client certificates, the
# tool trusting their CA and presenting a client certificate (lag on, so the Watch streams
# connect over TLS too).
with tempfile.TemporaryDirectory(prefix="mergedb-bench-tls-") as certs:
    make_certs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "scripts", "make_certs.sh")
    subprocess.run([make_certs, "ca", certs, "ca", "2"], check=True)
    subprocess.run([make_certs, "cert", certs, "node", "ca", "2"], check=True)
    subprocess.run([make_certs, "ca", certs, "clients", "2"], check=True)
    subprocess.run([make_certs, "cert", certs, "app", "clients", "2"], check=True)
    check_run("stream LOCAL over TLS",
              ["--mode=stream", "--writes=1000", "--warmup=100", "--nobaselines",
               "--lag=inline", "--sample_every=20", "--json_only", f"--tls_ca={certs}/ca.pem",
               f"--tls_cert={certs}/app.pem", f"--tls_key={certs}/app.key",
               f"--node_flags=--tls_cert={certs}/node.pem --tls_key={certs}/node.key "
               f"--tls_ca={certs}/ca.pem --tls_client_ca={certs}/clients.pem"], 1000, False)

for bad, says in [(["--write_concern=bogus"], "write_concern"),
                  (["--tls_ca=/nonexistent/ca.pem"], "--tls_ca=/nonexistent/ca.pem: cannot read"),
                  (["--tls_cert=/nonexistent/app.pem"], "--tls_cert and --tls_key go together"),
                  (["--mode=carrier-pigeon"], "mode"),
                  (["--concurrency=0"], "concurrency"),
                  (["--read_ratio=1.5"], "read_ratio")]:
    proc = run(bad, timeout=30)
    check(proc.returncode == 2, f"{bad}: exit status {proc.returncode}, want 2")
    check(says in proc.stderr, f"{bad}: the error does not name {says}: {proc.stderr!r}")

if failures:
    print(f"{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("mergedb-bench smoke: all checks passed")

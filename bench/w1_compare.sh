#!/usr/bin/env bash
# W1 on mergedb beside Redis, on this machine, in one run, and one table of ratios.
#
#   bench/w1_compare.sh [--quick] [--fsync] [--duration S | --writes N] [--concurrency C]
#                       [--streams S] [--wait-quiet S] [--keep]
#
#   --quick        5 s per run instead of 20 (about 3 minutes in all; the default about 7)
#   --fsync        Redis appendfsync always, mergedb-node --fsync (default: Redis appendfsync
#                  everysec, mergedb without fsync: both acknowledge writes that survive a
#                  process kill but not a power loss)
#   --duration S   seconds each measurement runs (default 20); --writes N: N writes instead
#   --concurrency C  outstanding writes (default 16)
#   --streams S    mergedb UpdateStream streams and Redis connections (default 6)
#   --wait-quiet S before each run, wait up to S seconds until the machine is 90% idle (it is
#                  shared: each tool reports the CPU other processes took during its run, and
#                  the table warns about runs that shared the machine)
#   --keep         keep the working directory (Redis logs, each tool's output)
#
# Installs what is missing (scripts/deps.sh, plus redis-server, libhiredis-dev and iproute2 for
# ss, which counts the TCP bytes), builds
# mergedb-bench, mergedb-node and redis-w1, starts redis-server as a primary and 2 replicas on
# free 127.0.0.1 ports (appendonly yes, RDB snapshots off) in a temporary directory, then runs:
#   redis-w1 async, WAIT 1 0 after each write, WAIT 2 0 after each write;
#   mergedb-bench (a fresh 3-node cluster each time) UpdateStream LOCAL (with the echo and
#   LevelDB baselines), UpdateStream QUORUM, UpdateStream ALL, the same three on
#   UpdateBatchStream (one stream per node), unary LOCAL;
# and prints the table. Every process it started is stopped on exit, also on Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"
build_dir=${MERGEDB_BUILD_DIR:-$root/build}
python=/usr/bin/python3

die() { echo "w1_compare.sh: $*" >&2; exit 1; }
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

duration=20
writes=""
concurrency=16
streams=6
wait_quiet=0
fsync=0
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) duration=5; shift ;;
    --fsync) fsync=1; shift ;;
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    --duration=*) duration=${1#*=}; shift ;;
    --writes) writes=${2:?--writes needs a number}; shift 2 ;;
    --writes=*) writes=${1#*=}; shift ;;
    --concurrency) concurrency=${2:?--concurrency needs a number}; shift 2 ;;
    --concurrency=*) concurrency=${1#*=}; shift ;;
    --streams) streams=${2:?--streams needs a number}; shift 2 ;;
    --streams=*) streams=${1#*=}; shift ;;
    --wait-quiet) wait_quiet=${2:?--wait-quiet needs seconds}; shift 2 ;;
    --wait-quiet=*) wait_quiet=${1#*=}; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$duration" =~ ^[1-9][0-9]*$ ]] || die "--duration must be a whole number of seconds"
[ -z "$writes" ] || [[ "$writes" =~ ^[1-9][0-9]*$ ]] || die "--writes must be a positive number"
[[ "$concurrency" =~ ^[1-9][0-9]*$ ]] || die "--concurrency must be a positive number"
[[ "$streams" =~ ^[1-9][0-9]*$ ]] || die "--streams must be a positive number"
[[ "$wait_quiet" =~ ^[0-9]+$ ]] || die "--wait-quiet must be a whole number of seconds"
if [ -n "$writes" ]; then
  amount=(--writes="$writes")
  amount_text="$writes writes per run"
else
  amount=(--duration="$duration")
  amount_text="$duration s per run"
fi

mergedb_ensure_packages redis-server libhiredis-dev iproute2
# A build dir configured before libhiredis-dev was installed has no redis-w1 target: configure
# again (CMake searches again for what it did not find).
if [ ! -f "$build_dir/build.ninja" ] || ! grep -q "redis-w1" "$build_dir/build.ninja"; then
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${MERGEDB_BUILD_TYPE:-RelWithDebInfo}" >/dev/null
fi
# The machine is shared: at most two compile jobs, only the targets this needs.
build_log=$(mktemp "${TMPDIR:-/tmp}/w1-compare-build-XXXXXX.log")
if ! cmake --build "$build_dir" --target mergedb-bench mergedb-node redis-w1 \
    -j "${MERGEDB_BUILD_JOBS:-2}" >"$build_log" 2>&1; then
  tail -n 30 "$build_log" >&2
  die "build failed (log: $build_log)"
fi
rm -f "$build_log"
bench=$build_dir/bench/mergedb-bench
redis_w1=$build_dir/bench/redis-w1

work=$(mktemp -d "${TMPDIR:-/tmp}/w1-compare-XXXXXX")
pids=()
cleanup() {
  local pid tries
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    tries=0
    while kill -0 "$pid" 2>/dev/null && [ $tries -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$keep" = 1 ]; then echo "w1_compare.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Three ports free on 127.0.0.1 right now (held together while chosen, so distinct).
read -r p_primary p_replica1 p_replica2 < <("$python" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

appendfsync=everysec
mergedb_fsync=false
if [ "$fsync" = 1 ]; then appendfsync=always; mergedb_fsync=true; fi

start_redis() {  # NAME PORT [PRIMARY_PORT]
  local name=$1 port=$2 args=()
  mkdir -p "$work/$name"
  [ $# -ge 3 ] && args=(--replicaof 127.0.0.1 "$3")
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --daemonize no \
    --dir "$work/$name" --logfile "$work/$name.log" --save "" \
    --appendonly yes --appendfsync "$appendfsync" "${args[@]}" &
  pids+=($!)
  local tries=0
  until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
    tries=$((tries + 1))
    [ $tries -lt 200 ] || { tail -n 5 "$work/$name.log" >&2; die "redis $name did not start"; }
    sleep 0.1
  done
}
start_redis primary "$p_primary"
start_redis replica1 "$p_replica1" "$p_primary"
start_redis replica2 "$p_replica2" "$p_primary"
tries=0
until redis-cli -p "$p_primary" info replication | grep -q '^connected_slaves:2' &&
      redis-cli -p "$p_replica1" info replication | grep -q '^master_link_status:up' &&
      redis-cli -p "$p_replica2" info replication | grep -q '^master_link_status:up'; do
  tries=$((tries + 1))
  [ $tries -lt 300 ] || die "the Redis replicas did not connect"
  sleep 0.1
done

echo "w1_compare: $amount_text, $concurrency outstanding, $streams streams/connections, fsync $([ "$fsync" = 1 ] && echo on || echo off), nproc $(nproc), $(redis-server --version | cut -d' ' -f1-3)"
echo "working directory $work"

idle_percent() {  # over the next 2 seconds, from /proc/stat (all CPUs)
  local a b
  read -r -a a < /proc/stat
  sleep 2
  read -r -a b < /proc/stat
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(( total > 0 ? 100 * (b[4] - a[4]) / total : 100 ))
}

wait_for_quiet() {
  [ "$wait_quiet" -gt 0 ] || return 0
  local start=$SECONDS idle
  while idle=$(idle_percent); [ "$idle" -lt 90 ]; do
    if [ $((SECONDS - start)) -ge "$wait_quiet" ]; then
      echo "(the machine is still only $idle% idle after $wait_quiet s: measuring anyway)" >&2
      return 0
    fi
  done
}

run() {  # LABEL COMMAND...: the table to stdout, progress to stderr, the JSON line kept
  local label=$1
  shift
  wait_for_quiet
  echo
  echo "== $label: ${*#"$root"/}"
  "$@" >"$work/$label.out" &
  local pid=$!
  pids+=("$pid")
  local status=0
  wait "$pid" || status=$?
  local kept=() p
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  pids=("${kept[@]}")
  cat "$work/$label.out"
  [ "$status" = 0 ] || die "$label failed (exit status $status)"
  tail -n 1 "$work/$label.out" >"$work/$label.json"
}

common=("${amount[@]}" --concurrency="$concurrency" --warmup=2000)
# Async: pipelined over as many connections as mergedb has UpdateStream streams. WAIT: one
# connection per outstanding write (redis-w1's default there), since Redis reads nothing more
# from a connection blocked in WAIT: as many writes wait for replicas at once as in mergedb's
# QUORUM and ALL runs.
run "redis-async" "$redis_w1" --port="$p_primary" --mode=async --connections="$streams" "${common[@]}"
for mode in wait1 wait2; do
  run "redis-$mode" "$redis_w1" --port="$p_primary" --mode="$mode" "${common[@]}"
done
# Redis is idle from here on; stop it so that mergedb has the machine to itself.
cleanup_redis() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
cleanup_redis

stream=(--mode=stream --streams="$streams" --fsync="$mergedb_fsync")
run "mergedb-stream-local" "$bench" "${stream[@]}" --write_concern=local --baselines "${common[@]}"
run "mergedb-stream-quorum" "$bench" "${stream[@]}" --write_concern=quorum --nobaselines "${common[@]}"
run "mergedb-stream-all" "$bench" "${stream[@]}" --write_concern=all --nobaselines "${common[@]}"
# UpdateBatchStream, one stream per node (the tool's default for it): what a client queued
# while its previous message was unanswered leaves as one message.
batch=(--mode=batch --fsync="$mergedb_fsync")
run "mergedb-batch-local" "$bench" "${batch[@]}" --write_concern=local --nobaselines "${common[@]}"
run "mergedb-batch-quorum" "$bench" "${batch[@]}" --write_concern=quorum --nobaselines "${common[@]}"
run "mergedb-batch-all" "$bench" "${batch[@]}" --write_concern=all --nobaselines "${common[@]}"
run "mergedb-unary-local" "$bench" --mode=unary --fsync="$mergedb_fsync" --write_concern=local \
  --nobaselines "${common[@]}"

echo
"$python" - "$work" "$amount_text" "$concurrency" "$streams" "$fsync" "$(nproc)" <<'EOF'
import json, sys
work, amount, concurrency, streams, fsync, nproc = sys.argv[1:]
def load(label):
    with open(f"{work}/{label}.json") as f:
        return json.load(f)
runs = [
    ("mergedb UpdateStream LOCAL", load("mergedb-stream-local")),
    ("mergedb UpdateStream QUORUM", load("mergedb-stream-quorum")),
    ("mergedb UpdateStream ALL", load("mergedb-stream-all")),
    ("mergedb UpdateBatchStream LOCAL", load("mergedb-batch-local")),
    ("mergedb UpdateBatchStream QUORUM", load("mergedb-batch-quorum")),
    ("mergedb UpdateBatchStream ALL", load("mergedb-batch-all")),
    ("mergedb unary LOCAL", load("mergedb-unary-local")),
    ("Redis async replicas", load("redis-async")),
    ("Redis WAIT 1 0", load("redis-wait1")),
    ("Redis WAIT 2 0", load("redis-wait2")),
]
durability = ("fsync each commit / appendfsync always" if fsync == "1"
              else "no fsync / appendfsync everysec")
print(f"W1: {amount}, {concurrency} outstanding, {streams} UpdateStream streams / Redis "
      f"connections, {durability}, nproc {nproc}")
header = ("run", "writes/s", "p50 us", "p99 us", "p99.9 us", "bytes/write", "TCP B/write",
          "converge ms", "lag p50/p99 ms", "others cores")
fmt = "{:<35} {:>9} {:>8} {:>8} {:>9} {:>11} {:>11} {:>11} {:>15} {:>12}"
print(fmt.format(*header))
def tcp(r):
    v = r.get("tcp_bytes_between_nodes_per_write", -1)
    return v if v >= 0 and r.get("tcp_sockets_closed_meanwhile", 0) == 0 else -1
for name, r in runs:
    lag = r.get("lag_ms")
    print(fmt.format(
        name, f"{r['writes_per_s']:.0f}", f"{r['latency_us']['p50']:.0f}",
        f"{r['latency_us']['p99']:.0f}", f"{r['latency_us']['p999']:.0f}",
        f"{r['bytes_between_nodes_per_write']:.0f}",
        f"{tcp(r):.0f}" if tcp(r) >= 0 else "?",
        f"{r['convergence_ms']:.1f}" if r["convergence_ms"] >= 0 else "NO",
        f"{lag['p50']:.2f}/{lag['p99']:.2f}" if lag else "-",
        f"{r['other_processes_cores']:.2f}" if "other_processes_cores" in r else "?"))
print()
print("ratios mergedb / Redis              writes/s  bytes/write  TCP B/write  converge ms")
pairs = [
    ("stream LOCAL / Redis async", "mergedb-stream-local", "redis-async"),
    ("stream QUORUM / Redis WAIT 1", "mergedb-stream-quorum", "redis-wait1"),
    ("stream ALL / Redis WAIT 2", "mergedb-stream-all", "redis-wait2"),
    ("batch stream LOCAL / Redis async", "mergedb-batch-local", "redis-async"),
    ("batch stream QUORUM / Redis WAIT 1", "mergedb-batch-quorum", "redis-wait1"),
    ("batch stream ALL / Redis WAIT 2", "mergedb-batch-all", "redis-wait2"),
    ("unary LOCAL / Redis async", "mergedb-unary-local", "redis-async"),
]
def ratio(a, b):
    return f"{a / b:.2f}x" if b > 0 and a >= 0 else "-"
for name, m, r in pairs:
    m, r = load(m), load(r)
    print("{:<35} {:>9} {:>12} {:>12} {:>12}".format(
        name, ratio(m["writes_per_s"], r["writes_per_s"]),
        ratio(m["bytes_between_nodes_per_write"], r["bytes_between_nodes_per_write"]),
        ratio(tcp(m), tcp(r)) if tcp(m) >= 0 and tcp(r) > 0 else "-",
        ratio(m["convergence_ms"], r["convergence_ms"])))
b = load("mergedb-stream-local").get("baselines")
if b:
    print()
    unary = load("mergedb-unary-local")["writes_per_s"]
    print(f"baselines (same machine, after the stream LOCAL run): gRPC unary echo "
          f"{b['echo_calls_per_s']:.0f} calls/s: unary LOCAL / echo "
          f"{unary / b['echo_calls_per_s']:.2f}x (the like-for-like ratio: one call per write; "
          f"stream LOCAL / echo {b['mergedb_over_echo']:.2f}x, a stream message costs less than "
          f"a call); bare LevelDB {b['leveldb_puts_per_s']:.0f} puts/s (stream LOCAL / LevelDB "
          f"{b['mergedb_over_leveldb']:.2f}x)")
busy = [name for name, r in runs if r.get("other_processes_cores", 0) > 0.1]
if busy:
    print()
    print("WARNING: other processes used more than 0.1 core during: " + ", ".join(busy) + ".")
    print("Those figures are low; run again on a quiet machine (--wait-quiet 120 helps).")
print()
print("bytes/write: mergedb = replication payload every node sent its peers (frames, acks,")
print("heartbeats; the PeerStatus counters, the issue's definition); Redis = what the primary wrote")
print("to its replicas (stream, GETACK) and read from them (REPLCONF ACK). TCP B/write: what the")
print("kernel counts the nodes' (or Redis processes') sockets to one another as having sent, all")
print("framing included (gRPC, HTTP/2, RESP), the like-for-like comparison; '?' when unknown. Neither")
print("counts TCP/IP headers. 'others cores': CPU other processes of the machine used during the")
print("run, in cores; above 0.1 the run shared the machine.")
EOF

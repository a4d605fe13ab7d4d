#!/usr/bin/env bash
# End-to-end: scripts/cluster.sh leaves alone what is not its own. A --base-port out of range,
# or one whose ports are taken, makes no cluster, so the next 'up' may choose other ports; a
# made cluster refuses other ports. A pid file left by a node killed outside the script, that
# now names another process, neither keeps 'up' from starting the node nor gets that process
# signalled by 'down'. 'wipe' refuses a folder without a cluster, and keeps the files the
# cluster did not make.
# Usage: cluster_script_e2e.sh BUILD_DIR SOURCE_DIR. Cleans up after itself.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_cluster_setup "$@"
base=$(free_base_port)
[ -n "$base" ] || { echo "no three free consecutive ports"; exit 1; }
dir=$work/cluster
holder="" bystander=""
cleanup() {
  for pid in $holder $bystander; do kill "$pid" 2>/dev/null || true; done
  e2e_cleanup
}
trap cleanup EXIT
fail() { echo "$*"; exit 1; }
node_pid() { cat "$dir/n$1.pid"; }
# Whether a process runs (a zombie, left for a parent to reap, does not).
running() { [ -n "$({ tr -d '\0' <"/proc/$1/cmdline"; } 2>/dev/null)" ]; }

if cluster up 2 --base-port 80 2>"$work/low.err"; then fail "--base-port 80 was taken"; fi
grep -q "base-port must be from 1024" "$work/low.err" || { cat "$work/low.err"; exit 1; }
[ ! -e "$dir" ] || fail "a refused --base-port left $(ls "$dir")"

# A program on the first node's port: nothing is made, and other ports are free to choose.
/usr/bin/python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(300)' "$base" &
holder=$!
for _ in $(seq 1 50); do ss -Hltn "sport = :$base" | grep -q . && break; sleep 0.1; done
if cluster up 2 --base-port "$base" 2>"$work/busy.err"; then fail "up took a port in use"; fi
grep -q "already in use by another program; choose another --base-port" "$work/busy.err" ||
  { cat "$work/busy.err"; exit 1; }
[ ! -e "$dir/cluster.conf" ] || fail "a port in use left a cluster.conf"
cluster up 2 --base-port $((base + 1)) >/dev/null
grep -qx "BASE_PORT=$((base + 1))" "$dir/cluster.conf" || fail "the cluster is not on the ports asked for"
if cluster up --base-port "$base" 2>"$work/move.err"; then fail "a made cluster moved"; fi
grep -q "uses ports $((base + 1))-$((base + 2))" "$work/move.err" || { cat "$work/move.err"; exit 1; }

# Stale pid files naming another process.
sleep 300 &
bystander=$!
kill -KILL "$(node_pid 2)"
echo "$bystander" >"$dir/n2.pid"
cluster up >/dev/null
running "$bystander" || fail "up signalled the process a stale pid file named"
[ "$(node_pid 2)" != "$bystander" ] || fail "up took the process of a stale pid file for n2"
[ "$(cluster status | grep -c serving)" = 2 ] || { cluster status; fail "n2 was not started"; }
n2=$(node_pid 2)
kill -KILL "$(node_pid 1)"
echo "$bystander" >"$dir/n1.pid"
cluster down >/dev/null
running "$bystander" || fail "down signalled the process a stale pid file named"
if running "$n2"; then fail "down left n2 running"; fi
[ ! -e "$dir/n1.pid" ] && [ ! -e "$dir/n2.pid" ] || fail "down left pid files"

# wipe: only a cluster's folder, and only what the cluster made.
echo notes >"$dir/notes.txt"
cluster wipe >/dev/null
[ "$(ls -A "$dir")" = notes.txt ] || fail "wipe left $(ls -A "$dir")"
if cluster wipe 2>"$work/wipe.err"; then fail "wipe of a folder without a cluster went through"; fi
grep -q "no cluster in $dir" "$work/wipe.err" || { cat "$work/wipe.err"; exit 1; }
[ -f "$dir/notes.txt" ] || fail "a refused wipe deleted a file"
echo "1 passed, 0 failed"

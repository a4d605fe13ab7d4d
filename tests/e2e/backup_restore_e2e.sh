#!/usr/bin/env bash
# End-to-end: an operator's backup and restore with scripts/cluster.sh on three real nodes.
# A backup of n3 taken while the cluster runs; n3 then writes more, is killed and restored from
# the backup; it must take writes at once and every node must end with every acknowledged write.
# Then the same with a copy of n2 fetched to the client's side (`mergedb fetch-backup`).
# Usage: backup_restore_e2e.sh BUILD_DIR SOURCE_DIR. Cleans up after itself.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_cluster_setup "$@"
base=$(free_base_port)
[ -n "$base" ] || { echo "no three free consecutive ports"; exit 1; }

cluster up 3 --base-port "$base" >/dev/null
expected=0
for k in $(seq 1 30); do
  mergedb_cli --node="$(node $((k % 3 + 1)))" update c d incr n 1 >/dev/null
  expected=$((expected + 1))
done
cluster backup n3 first | tee "$work/backup.json"
grep -q '"path"' "$work/backup.json"
[ -f "$work/cluster/backups/n3/first/CURRENT" ] || { echo "the backup is not a data dir"; exit 1; }
# n3's own writes after the backup: the copy lacks them, the cluster has them (ALL: n3 is
# killed next, and its data dir set aside).
for k in $(seq 1 5); do
  mergedb_cli --node="$(node 3)" --write_concern=all update c d incr n 100 >/dev/null
  expected=$((expected + 100))
done
cluster kill n3 >/dev/null
cluster restore n3 first
mergedb_cli --node="$(node 3)" update c d incr n 1 >/dev/null
expected=$((expected + 1))
every_node_sees "$expected" n3
echo "every node holds all $expected acknowledged increments after the restore"
# The same call from the Python client.
PYTHONPATH="$build/clients/python:$src/clients/python" /usr/bin/python3 - "$(node 1)" <<'PY'
import sys
import mergedb_client
answer = mergedb_client.Client(sys.argv[1]).backup("from-python")
assert answer.path.endswith("/backups/n1/from-python"), answer
assert answer.records > 0 and len(answer.applied) >= 3, answer
print("python client backup:", answer.path, answer.records, "records")
PY

# A copy kept off the node's machine: streamed by `mergedb fetch-backup` into a directory of
# the client's (here outside the cluster's folder), then restored from there.
mergedb_cli --node="$(node 2)" fetch-backup "$work/offsite/n2" | tee "$work/fetch.json"
grep -q '"records"' "$work/fetch.json"
[ -f "$work/offsite/n2/CURRENT" ] || { echo "the fetched copy is not a data dir"; exit 1; }
if mergedb_cli --node="$(node 2)" fetch-backup "$work/offsite/n2" 2>"$work/again.err"; then
  echo "a second fetch into the same directory must be refused"; exit 1
fi
grep -q "already exists" "$work/again.err" || { cat "$work/again.err"; exit 1; }
# A copy of another node is refused by the node it is put in front of; restore then puts the
# node's own data dir back and restarts it.
if cluster restore n1 "$work/offsite/n2" >"$work/wrong.out" 2>&1; then
  echo "n1 accepted n2's copy"; exit 1
fi
grep -q "refused that copy" "$work/wrong.out" || { cat "$work/wrong.out"; exit 1; }
[ "$(counter_on 1)" = "$expected" ] || { echo "n1 lost data after a refused restore"; exit 1; }
for k in $(seq 1 5); do
  mergedb_cli --node="$(node 2)" --write_concern=all update c d incr n 10 >/dev/null
  expected=$((expected + 10))
done
cluster kill n2 >/dev/null
cluster restore n2 "$work/offsite/n2"
mergedb_cli --node="$(node 2)" update c d incr n 1 >/dev/null
expected=$((expected + 1))
every_node_sees "$expected" n2
echo "every node holds all $expected acknowledged increments after restoring the fetched copy"

# An interrupted fetch keeps nothing. 10 MB more in the store keep the copy running for a while;
# the fetch is stopped (SIGSTOP) as soon as its sentinel file shows the copy has begun, checked
# to be mid-copy, then sent SIGINT and continued.
big=$(head -c 100000 /dev/zero | tr '\0' x)
for k in $(seq 1 100); do
  mergedb_cli --node="$(node 1)" update big "b$k" set payload "$big" >/dev/null
done
# The binary itself, not the mergedb_cli function: $! must be the process the signals reach.
"$build/node/mergedb" --node="$(node 1)" fetch-backup "$work/offsite/cut" >/dev/null 2>"$work/cut.err" &
fetch=$!
for _ in $(seq 1 2000); do
  [ -f "$work/offsite/cut/BACKUP-INCOMPLETE" ] && break
  kill -0 "$fetch" 2>/dev/null || break
  sleep 0.005
done
kill -STOP "$fetch" 2>/dev/null || true
if [ ! -f "$work/offsite/cut/BACKUP-INCOMPLETE" ]; then
  kill -CONT "$fetch" 2>/dev/null || true
  wait "$fetch" || true
  echo "the fetch was not caught mid-copy (it finished or never began)"; cat "$work/cut.err"; exit 1
fi
kill -INT "$fetch"
kill -CONT "$fetch"
status=0
wait "$fetch" || status=$?
[ "$status" = 1 ] || { echo "an interrupted fetch exited with $status, not 1"; cat "$work/cut.err"; exit 1; }
grep -q "interrupted by signal 2; nothing was kept" "$work/cut.err" || { cat "$work/cut.err"; exit 1; }
[ ! -e "$work/offsite/cut" ] || { echo "an interrupted fetch left $(ls "$work/offsite/cut")"; exit 1; }
# The node frees its backup slot as soon as it sees the stream cancelled (ABORTED until then).
for attempt in $(seq 1 50); do
  if mergedb_cli --node="$(node 1)" fetch-backup "$work/offsite/whole" >/dev/null 2>"$work/whole.err"; then
    break
  fi
  grep -q "another backup is running" "$work/whole.err" && [ "$attempt" -lt 50 ] ||
    { cat "$work/whole.err"; exit 1; }
  sleep 0.1
done
echo "an interrupted fetch-backup removed its partial copy; the next one went through"
echo "1 passed, 0 failed"

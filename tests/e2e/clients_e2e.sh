#!/usr/bin/env bash
# End-to-end: three real mergedb-node processes on 127.0.0.1; the Python client writes to node 1,
# the Node.js client reads the converged value from node 3. Cleans up after itself.
# Usage: clients_e2e.sh BUILD_DIR SOURCE_DIR. Exit 77 (skipped) only when a runtime is absent.
set -euo pipefail
build=$1
src=$2
skip() { echo "SKIPPED: $*"; exit 77; }
/usr/bin/python3 -c 'import grpc' 2>/dev/null || skip "Debian's python3-grpcio is not installed"
command -v node >/dev/null || skip "node is not installed"
[ -d "$src/clients/node/node_modules/@grpc/grpc-js" ] || skip "clients/node dependencies are not installed (npm ci --prefix clients/node)"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Three free ports, picked by the kernel.
read -r p1 p2 p3 < <(/usr/bin/python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()
PY
)
ports=("$p1" "$p2" "$p3")
for i in 1 2 3; do
  peers=""
  for j in 1 2 3; do
    [ "$j" = "$i" ] && continue
    peers+="${peers:+,}n$j=127.0.0.1:${ports[$((j-1))]}"
  done
  "$build/node/mergedb-node" --data_dir="$work/n$i" --node_name="n$i" --cluster=e2e \
    --listen="127.0.0.1:${ports[$((i-1))]}" --peers="$peers" >"$work/n$i.out" 2>"$work/n$i.err" &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 100); do
    grep -q "listening on" "$work/n$i.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "listening on" "$work/n$i.out" || { cat "$work/n$i.err"; echo "node n$i did not start"; exit 1; }
done

version=$(PYTHONPATH="$build/clients/python:$src/clients/python" /usr/bin/python3 \
  "$src/clients/python/e2e_write.py" "127.0.0.1:$p1")
echo "python client wrote through n1 (version $version)"
node "$src/clients/node/e2e_read.js" "127.0.0.1:$p3" "$version"
echo "1 passed, 0 failed"

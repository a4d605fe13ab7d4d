# Sourced by the end-to-end scripts.

# e2e_cluster_setup BUILD_DIR SOURCE_DIR: sets $build, $src and $work (a temporary folder that
# holds the cluster's state), and wipes the cluster and removes $work when the script exits.
e2e_cluster_setup() {
  build=$1
  src=$2
  work=$(mktemp -d)
  export MERGEDB_BUILD_DIR=$build MERGEDB_CLUSTER_DIR=$work/cluster
  trap e2e_cleanup EXIT
}
cluster() { "$src/scripts/cluster.sh" "$@"; }
e2e_cleanup() {
  cluster wipe >/dev/null 2>&1 || true
  rm -rf "$work"
}

# Prints the first of three consecutive ports on 127.0.0.1 that are free now (found by binding
# them), or nothing.
free_base_port() {
  /usr/bin/python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randint(20000, 60000)
    socks = []
    try:
        for p in range(base, base + 3):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", p))
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
}

# With $base set (free_base_port): node I's address, and the CLI with $cli_flags (an array,
# e.g. --tls_ca=...; may be unset).
node() { echo "127.0.0.1:$((base + $1 - 1))"; }
mergedb_cli() { "$build/node/mergedb" ${cli_flags[@]+"${cli_flags[@]}"} "$@"; }
counter_on() {  # the counter c/d.n as node $1 sees it (0 while the document is absent)
  mergedb_cli --node="$(node "$1")" get c d |
    /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin).get("value", {}).get("n", 0))'
}
# every_node_sees N [NODE]: waits (bounded) until every node's counter is N; on failure shows
# the log of NODE (default: the node that lags).
every_node_sees() {
  local i seen
  for i in 1 2 3; do
    seen=""
    for _ in $(seq 1 100); do
      seen=$(counter_on "$i")
      [ "$seen" = "$1" ] && break
      sleep 0.1
    done
    [ "$seen" = "$1" ] || { echo "n$i sees n = $seen, expected $1"; cluster logs "${2:-n$i}" | tail -20; exit 1; }
  done
}

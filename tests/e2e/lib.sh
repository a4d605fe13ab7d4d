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

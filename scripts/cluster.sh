#!/usr/bin/env bash
# A local mergedb cluster on 127.0.0.1, one command away.
#
#   scripts/cluster.sh up [N] [--replicas M] [--base-port P] [--dir DIR] [--tls]
#        installs what is missing, builds the node and the tools, starts N nodes (default 3; the
#        last M are read-only replicas) on ports P.. (default 7701), waits until all are healthy,
#        prints addresses and examples. Safe on a running cluster: starts only the nodes that are
#        down (N, M, P and --tls are fixed when the cluster is first made). --tls: a CA and a
#        certificate per node in DIR/tls, every call and link TLS, member names bound to the
#        nodes' certificates, and a client CA and client certificate (app) that every client
#        must present.
#   scripts/cluster.sh status            one line per node: pid, address, role, health, lag
#   scripts/cluster.sh kill NODE         SIGKILL (e.g. kill n2)
#   scripts/cluster.sh start NODE | restart NODE | logs NODE
#   scripts/cluster.sh backup NODE NAME  a consistent copy of a running node's data, taken while
#        writes go on, into DIR/backups/NODE/NAME
#   scripts/cluster.sh restore NODE NAME|PATH  stops NODE, moves its data dir aside, puts that
#        backup (NAME in DIR/backups/NODE, or a PATH with a '/' in it, e.g. a copy made by
#        `mergedb fetch-backup ./n3-copy`) in its place and starts it: it comes back as a new
#        incarnation and its peers send it everything written since the backup
#   scripts/cluster.sh down              SIGTERM every node (they drain and close cleanly)
#   scripts/cluster.sh wipe              down, then delete what the cluster made in DIR (data
#        dirs, logs, backups, certificates) and DIR itself if nothing else is left in it
#
# State lives in one folder (default .cluster/ in the repository, or --dir / MERGEDB_CLUSTER_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"

build_dir=${MERGEDB_BUILD_DIR:-$root/build}
dir=${MERGEDB_CLUSTER_DIR:-$root/.cluster}
node_bin=$build_dir/node/mergedb-node
cli_bin=$build_dir/node/mergedb

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

# ---- arguments ----
command=${1:-}
[ -n "$command" ] || usage
shift
count=""
replicas=""
base_port=""
target=""
name=""
tls=""
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) replicas=${2:?--replicas needs a number}; shift 2 ;;
    --replicas=*) replicas=${1#*=}; shift ;;
    --base-port) base_port=${2:?--base-port needs a port}; shift 2 ;;
    --base-port=*) base_port=${1#*=}; shift ;;
    --dir) dir=${2:?--dir needs a folder}; shift 2 ;;
    --dir=*) dir=${1#*=}; shift ;;
    --tls) tls=1; shift ;;
    -h|--help) usage ;;
    -*) die "unknown option $1" ;;
    *)
      if [ "$command" = up ] && [ -z "$count" ]; then count=$1
      elif [ -z "$target" ]; then target=$1
      elif [ -z "$name" ]; then name=$1
      else die "unexpected argument $1"; fi
      shift ;;
  esac
done

[ -n "$dir" ] || die "--dir needs a folder"
# One spelling of the folder (absolute, no trailing slash): the nodes' --data_dir is made of it,
# and pid_of recognizes a node by that flag.
dir=$(realpath -m -s -- "$dir")
if [ "$command" != up ] && [ -n "$replicas$base_port$tls" ]; then
  die "--replicas, --base-port and --tls are for 'up' (a cluster keeps what it was made with)"
fi

conf=$dir/cluster.conf
# The cluster's settings (set by use_conf from cluster.conf, or by 'up' for a new cluster), not
# taken from the environment.
N="" REPLICAS="" BASE_PORT="" TLS=""
# What the nodes and the CLI add for TLS (set by use_conf).
node_tls=()
cli_tls=()
use_conf() {
  # shellcheck source=/dev/null
  source "$conf"
  TLS=${TLS:-0}
  node_tls=()
  cli_tls=()
  if [ "$TLS" = 1 ]; then
    node_tls=(--tls_ca="$dir/tls/ca.pem")
    cli_tls=(--tls_ca="$dir/tls/ca.pem")
    # Clusters made before client certificates have no client CA: their clients present none.
    if [ -f "$dir/tls/clients.pem" ]; then
      node_tls+=(--tls_client_ca="$dir/tls/clients.pem")
      cli_tls+=(--tls_cert="$dir/tls/app.pem" --tls_key="$dir/tls/app.key")
    fi
  fi
}
load_conf() {
  [ -f "$conf" ] || die "no cluster in $dir (run: scripts/cluster.sh up)"
  use_conf
}

# In DIR/tls: the cluster's CA and a certificate for each node, named after it (nI.pem, common
# name nI, for 127.0.0.1), so that the nodes bind member names to certificates
# (--tls_bind_member_names); a CA for application clients and one client certificate ("app"),
# which nodes require (--tls_client_ca). The CAs' keys stay there too: a local cluster for
# trying things out, not a way to keep keys.
make_certs() {
  rm -rf "$dir/tls"  # a new cluster: certificates left by an earlier one go
  local i
  "$root/scripts/make_certs.sh" ca "$dir/tls" ca || die "could not make the TLS CA in $dir/tls"
  for i in $(seq 1 "$N"); do
    "$root/scripts/make_certs.sh" cert "$dir/tls" "n$i" ca ||
      die "could not make the TLS certificate of n$i in $dir/tls"
  done
  "$root/scripts/make_certs.sh" ca "$dir/tls" clients &&
    "$root/scripts/make_certs.sh" cert "$dir/tls" app clients ||
    die "could not make the TLS certificates in $dir/tls"
}

# Node i's TLS certificate flags: its own certificate with bound member names, or, in a
# cluster made before per-node certificates, the one certificate all its nodes share.
node_cert_flags() {
  local i=$1
  if [ -f "$dir/tls/n$i.pem" ]; then
    printf '%s\n' --tls_cert="$dir/tls/n$i.pem" --tls_key="$dir/tls/n$i.key" --tls_bind_member_names
  else
    printf '%s\n' --tls_cert="$dir/tls/node.pem" --tls_key="$dir/tls/node.key"
  fi
}

node_index() {  # n2 -> 2
  local name=$1
  [[ "$name" =~ ^n([1-9][0-9]*)$ ]] || die "nodes are named n1..n$N, not '$name'"
  local i=${BASH_REMATCH[1]}
  [ "$i" -ge 1 ] && [ "$i" -le "$N" ] || die "no node $name in this $N-node cluster"
  echo "$i"
}
port_of() { echo $((BASE_PORT + $1 - 1)); }

# A process's arguments, one a line (empty once it has exited, also while it is a zombie).
cmdline_of() { { tr '\0' '\n' <"/proc/$1/cmdline"; } 2>/dev/null; }
# runs_node CMDLINE I: whether that command line is node I's: mergedb-node (from whichever build
# dir) on this node's data dir, which only one process at a time can hold.
runs_node() {
  local cmdline=$1 i=$2 program
  program=${cmdline%%$'\n'*}
  [ "${program##*/}" = mergedb-node ] && grep -qxF -- "--data_dir=$dir/n$i" <<<"$cmdline"
}
# The pid of node I, if it runs. A pid file outlives its node (a reboot, a kill -9, a crash) and
# its number may since belong to another program, which must never be signalled nor taken for
# the node: such a stale file is removed.
pid_of() {
  local f=$dir/n$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || pid=""
  if [[ "$pid" =~ ^[1-9][0-9]*$ ]] && runs_node "$(cmdline_of "$pid")" "$1"; then
    echo "$pid"
    return 0
  fi
  rm -f "$f"
  return 1
}
role_of() { if [ "$1" -gt $((N - REPLICAS)) ]; then echo replica; else echo primary; fi; }

port_in_use() {
  # A listening TCP socket on 127.0.0.1:PORT (ss from iproute2, else bash's /dev/tcp).
  if command -v ss >/dev/null; then
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# A port taken by another program: a cluster being made ('up' sets new) can choose other ports;
# a made one keeps its own.
new=""
port_taken() {  # port_taken I
  local advice="stop that program, or 'wipe' this cluster and make it again with another --base-port"
  [ -z "$new" ] || advice="choose another --base-port"
  die "port $(port_of "$1") (node n$1) is already in use by another program; $advice"
}

start_node() {  # start_node I [EXTRA FLAG...]: the extra flags are for this start only
  local i=$1
  shift
  if pid_of "$i" >/dev/null; then return 0; fi
  local port; port=$(port_of "$i")
  ! port_in_use "$port" || port_taken "$i"
  local peers="" j
  for j in $(seq 1 "$N"); do
    [ "$j" = "$i" ] && continue
    peers+="${peers:+,}n$j=127.0.0.1:$(port_of "$j")"
  done
  mkdir -p "$dir"
  local cert_flags=()
  [ "$TLS" = 1 ] && mapfile -t cert_flags < <(node_cert_flags "$i")
  nohup "$node_bin" --data_dir="$dir/n$i" --node_name="n$i" --cluster=local \
    --listen="127.0.0.1:$port" --peers="$peers" --role="$(role_of "$i")" \
    --backup_dir="$dir/backups/n$i" ${node_tls[@]+"${node_tls[@]}"} \
    ${cert_flags[@]+"${cert_flags[@]}"} "$@" >>"$dir/n$i.log" 2>&1 &
  # The pid is the node's once nohup has exec'd it; until then pid_of would take the file for a
  # stale one. (A start that failed at once leaves an empty command line: wait_healthy says so.)
  local pid=$! tries=0 cmdline
  while cmdline=$(cmdline_of "$pid") && [ -n "$cmdline" ] && ! runs_node "$cmdline" "$i" &&
    [ $tries -lt 250 ]; do
    sleep 0.02
    tries=$((tries + 1))
  done
  echo "$pid" >"$dir/n$i.pid"
}

cli() { "$cli_bin" ${cli_tls[@]+"${cli_tls[@]}"} "$@"; }
healthy() { cli --node="127.0.0.1:$(port_of "$1")" --timeout_ms=500 status >/dev/null 2>&1; }

wait_healthy() {
  local i=$1 tries=0
  while ! healthy "$i"; do
    tries=$((tries + 1))
    if ! pid_of "$i" >/dev/null; then
      echo "node n$i exited; the end of its log ($dir/n$i.log):" >&2
      tail -n 5 "$dir/n$i.log" >&2
      return 1
    fi
    [ $tries -lt 150 ] || { echo "node n$i is not healthy after 30 s" >&2; return 1; }
    sleep 0.2
  done
}

stop_node() {  # SIGTERM, then wait (bounded) for the drain
  local i=$1 pid
  pid=$(pid_of "$i") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  # Checked by command line, not kill -0: the number is not signalled again once the node is
  # gone (or a zombie, when this script started it).
  local tries=0
  while runs_node "$(cmdline_of "$pid")" "$i" && [ $tries -lt 100 ]; do
    sleep 0.1
    tries=$((tries + 1))
  done
  if runs_node "$(cmdline_of "$pid")" "$i"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$dir/n$i.pid"
}

# Whether a node of the cluster in DIR ever started: it then has a data dir. A cluster.conf
# without one is from an 'up' that started nothing (earlier versions wrote it before checking
# the ports), and a new 'up' may replace it.
made_nodes() {
  local d
  for d in "$dir"/n[0-9]*; do
    if [ -d "$d" ]; then return 0; fi
  done
  return 1
}

# What a cluster runs and the README's next steps use: the node, the CLI, mergedb-repair and
# the Python client's stubs (a target where grpc_python_plugin is installed, which deps.sh
# does); not the tests and benchmarks, most of a whole build. The output goes to a file and is
# shown only when the build fails.
build_cluster() {
  local targets=(mergedb-node mergedb mergedb-repair) log
  echo "cluster.sh: building ${targets[*]} and the Python stubs in $build_dir" \
    "(the first build takes several minutes)" >&2
  log=$(mktemp "${TMPDIR:-/tmp}/mergedb-cluster-build.XXXXXX")
  if mergedb_configure "$build_dir" >>"$log" 2>&1; then
    if grep -q '^build mergedb_python_stubs:' "$build_dir/build.ninja"; then
      targets+=(mergedb_python_stubs)
    fi
    if mergedb_build "$build_dir" "${targets[@]}" >>"$log" 2>&1; then
      rm -f "$log"
      return 0
    fi
  fi
  # From the first failed step (ninja's FAILED line), else the end.
  if grep -q '^FAILED: ' "$log"; then
    sed -n '/^FAILED: /,$p' "$log" | head -n 60 >&2
  else
    tail -n 40 "$log" >&2
  fi
  die "build failed (all of its output: $log)"
}

status_line() {
  local i=$1 pid health lag role port
  port=$(port_of "$i")
  role=$(role_of "$i")
  if pid=$(pid_of "$i"); then
    if healthy "$i"; then
      health=serving
      lag=$(cli --node="127.0.0.1:$port" --timeout_ms=1000 status --json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys
s=json.load(sys.stdin)
print(" ".join("%s:%s%s" % (p["name"], p.get("entries_behind","0"), "" if p.get("connected") else "(down)") for p in s.get("peers",[])) or "-")' 2>/dev/null || echo "?")
    else
      health=starting; lag="-"
    fi
  else
    pid="-"; health=down; lag="-"
  fi
  printf "%-4s pid %-8s 127.0.0.1:%-6s %-8s %-9s behind %s\n" "n$i" "$pid" "$port" "$role" "$health" "$lag"
}

case "$command" in
  up)
    # Everything is checked before anything is written (or built). Numbers in decimal without
    # leading zeros (bash arithmetic would read 07701 as octal), short enough not to overflow.
    [ -z "$count" ] || [[ "$count" =~ ^[1-9][0-9]{0,4}$ ]] || die "N must be a positive number, not '$count'"
    [ -z "$replicas" ] || [[ "$replicas" =~ ^(0|[1-9][0-9]{0,4})$ ]] ||
      die "--replicas must be a number, not '$replicas'"
    [ -z "$base_port" ] || [[ "$base_port" =~ ^[1-9][0-9]{0,4}$ ]] ||
      die "--base-port must be a port number from 1024 to 65535, not '$base_port'"
    if [ -f "$conf" ] && { use_conf; made_nodes; }; then
      if [ -n "$count" ] && [ "$count" != "$N" ]; then
        die "a $N-node cluster already lives in $dir (run 'wipe' first to change its size)"
      fi
      if [ -n "$replicas" ] && [ "$replicas" != "$REPLICAS" ]; then
        die "the cluster in $dir has $REPLICAS read-only replicas (run 'wipe' first to change that)"
      fi
      if [ -n "$base_port" ] && [ "$base_port" != "$BASE_PORT" ]; then
        die "the cluster in $dir uses ports $BASE_PORT-$((BASE_PORT + N - 1)) (run 'wipe' first to" \
          "move it, or give another --dir for a second cluster)"
      fi
      if [ -n "$tls" ] && [ "$TLS" != 1 ]; then
        die "a plaintext cluster already lives in $dir (run 'wipe' first to make it TLS)"
      fi
    else
      new=1
      N=${count:-3}
      REPLICAS=${replicas:-0}
      BASE_PORT=${base_port:-7701}
      TLS=${tls:-0}
      [ "$REPLICAS" -lt "$N" ] || die "--replicas must be below N ($N)"
      [ "$N" -le $((65536 - 1024)) ] || die "$N nodes do not fit in ports 1024-65535"
      if [ "$BASE_PORT" -lt 1024 ] || [ $((BASE_PORT + N - 1)) -gt 65535 ]; then
        die "--base-port must be from 1024 to $((65536 - N)) for $N nodes (ports P to P+$((N - 1))), not $BASE_PORT"
      fi
    fi
    mergedb_ensure_packages
    build_cluster
    # Check every port first, so that a port in use starts nothing (and makes no cluster).
    for i in $(seq 1 "$N"); do
      pid_of "$i" >/dev/null && continue
      ! port_in_use "$(port_of "$i")" || port_taken "$i"
    done
    if [ -n "$new" ]; then
      mkdir -p "$dir"
      [ "$TLS" = 1 ] && make_certs
      printf 'N=%s\nREPLICAS=%s\nBASE_PORT=%s\nTLS=%s\n' "$N" "$REPLICAS" "$BASE_PORT" "$TLS" >"$conf"
      use_conf
    fi
    for i in $(seq 1 "$N"); do start_node "$i"; done
    for i in $(seq 1 "$N"); do wait_healthy "$i" || die "cluster did not come up"; done
    echo "mergedb cluster up: $N nodes ($REPLICAS read-only$([ "$TLS" = 1 ] && echo ", TLS with the CA in $dir/tls/ca.pem")), data and logs in $dir"
    for i in $(seq 1 "$N"); do status_line "$i"; done
    p1=$(port_of 1); p2=$(port_of $(( N > 1 ? 2 : 1 )))
    c="$cli_bin${cli_tls[*]+ ${cli_tls[*]}}"
    cat <<EOF

Try:
  $c --node=127.0.0.1:$p1 update users ada set name '"Ada"' incr visits 1
  $c --node=127.0.0.1:$p2 get users ada
  $c --node=127.0.0.1:$p1 status
  scripts/cluster.sh kill n2; scripts/cluster.sh start n2; scripts/cluster.sh status
EOF
    ;;
  down)
    load_conf
    for i in $(seq 1 "$N"); do stop_node "$i"; done
    echo "cluster down (data kept in $dir; 'up' brings it back)"
    ;;
  status)
    load_conf
    for i in $(seq 1 "$N"); do status_line "$i"; done
    ;;
  kill)
    load_conf
    [ -n "$target" ] || die "kill needs a node name (n1..n$N)"
    i=$(node_index "$target")
    pid=$(pid_of "$i") || die "$target is not running"
    kill -KILL "$pid"
    rm -f "$dir/n$i.pid"
    echo "$target killed (SIGKILL)"
    ;;
  start)
    load_conf
    [ -n "$target" ] || die "start needs a node name"
    i=$(node_index "$target")
    build_cluster
    start_node "$i"
    wait_healthy "$i"
    status_line "$i"
    ;;
  restart)
    load_conf
    [ -n "$target" ] || die "restart needs a node name"
    i=$(node_index "$target")
    stop_node "$i"
    start_node "$i"
    wait_healthy "$i"
    status_line "$i"
    ;;
  backup)
    load_conf
    [ -n "$target" ] && [ -n "$name" ] || die "usage: backup NODE NAME"
    i=$(node_index "$target")
    cli --node="127.0.0.1:$(port_of "$i")" backup "$name"
    ;;
  restore)
    load_conf
    [ -n "$target" ] && [ -n "$name" ] || die "usage: restore NODE NAME|PATH"
    i=$(node_index "$target")
    if [[ "$name" == */* ]]; then
      backup=${name%/}
      [ -f "$backup/CURRENT" ] || die "$backup is not a backup (no LevelDB CURRENT file in it)"
    else
      [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "a backup name is letters, digits, '.', '_' and '-', not '$name'"
      backup=$dir/backups/n$i/$name
      [ -f "$backup/CURRENT" ] || die "no backup '$name' of $target in $dir/backups/n$i"
    fi
    real_backup=$(realpath "$backup")
    real_data=$(realpath -m "$dir/n$i")
    if [ "$real_backup" = "$real_data" ] || [[ "$real_backup" == "$real_data"/* ]]; then
      die "$backup is $target's own data dir, not a backup"
    fi
    # The backup is copied, never used in place (its first start uses up its marker), and
    # copied while the node still serves: it is stopped only for the swap.
    staging=$(mktemp -u -d "$dir/n$i.restoring-XXXX")
    cp -a "$backup" "$staging"
    stop_node "$i"
    aside=""
    if [ -d "$dir/n$i" ]; then
      aside=$(mktemp -u -d "$dir/n$i.before-restore-$(date +%Y%m%d-%H%M%S)-XXXX")
      mv -T "$dir/n$i" "$aside"
      echo "$target's previous data dir is now $aside"
    fi
    mv -T "$staging" "$dir/n$i"
    # A new replica id for this start: a backup draws one by itself, and so must any other copy
    # (a cold copy under the old id could reuse sequence numbers the node issued since).
    start_node "$i" --new_incarnation
    if ! wait_healthy "$i"; then
      # The node refused the copy (another node's or cluster's, or cut off): put back what was
      # there and restart it, so that a bad copy costs a restart, not the node.
      stop_node "$i"
      refused=$(mktemp -u -d "$dir/n$i.refused-XXXX")
      mv -T "$dir/n$i" "$refused"
      [ -z "$aside" ] || mv -T "$aside" "$dir/n$i"
      start_node "$i"
      wait_healthy "$i" || true
      die "$target refused that copy (its log above says why; the copy is now $refused); its previous data dir is back in place and it was restarted"
    fi
    echo "$target restored from backup '$name'; its peers send it what was written since"
    status_line "$i"
    ;;
  logs)
    load_conf
    [ -n "$target" ] || die "logs needs a node name"
    i=$(node_index "$target")
    cat "$dir/n$i.log"
    ;;
  wipe)
    # Only a folder that holds a cluster, and in it only what the cluster made: a mistyped --dir
    # (or one shared with other files) loses nothing else.
    [ -f "$conf" ] || die "no cluster in $dir (no cluster.conf there): nothing wiped"
    use_conf
    for i in $(seq 1 "$N"); do stop_node "$i"; done
    for i in $(seq 1 "$N"); do
      # The data dir, and what 'restore' leaves beside it.
      rm -rf "$dir/n$i" "$dir/n$i".restoring-* "$dir/n$i".before-restore-* "$dir/n$i".refused-* \
        "$dir/backups/n$i"
      rm -f "$dir/n$i.pid" "$dir/n$i.log"
    done
    rm -rf "$dir/tls"
    rmdir "$dir/backups" 2>/dev/null || true
    # Last, so that a wipe cut short can be run again.
    rm -f "$conf"
    if rmdir "$dir" 2>/dev/null; then
      echo "cluster wiped ($dir removed, with its data dirs, logs and backups)"
    else
      echo "cluster wiped (its data dirs, logs, backups and certificates); $dir is kept: it holds other files"
    fi
    ;;
  *)
    usage
    ;;
esac
